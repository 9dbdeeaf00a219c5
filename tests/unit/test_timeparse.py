import datetime as dt

import pytest

from services.reader.timeparse import human_date, parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:56 pm on 8 May, 2023", dt.datetime(2023, 5, 8, 13, 56, tzinfo=dt.UTC)),
        ("2023/05/20 (Sat) 02:21", dt.datetime(2023, 5, 20, 2, 21, tzinfo=dt.UTC)),
        ("10:37 am on 27 June, 2023", dt.datetime(2023, 6, 27, 10, 37, tzinfo=dt.UTC)),
        ("2024-01-02T03:04:05+02:00", dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.UTC)),
    ],
)
def test_parses_the_formats_of_the_data_sets(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "no date here", "(Sat)"])
def test_text_without_a_date_is_an_error(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_human_date_has_no_leading_zero():
    assert human_date(dt.datetime(2023, 5, 8)) == "8 May 2023"
