import datetime as dt

import pytest

from services.reader.timeparse import human_date, parse_time, resolve_relative


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


MONDAY = dt.datetime(2023, 5, 8, 13, 56, tzinfo=dt.UTC)  # 8 May 2023 was a Monday


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("I went to the group yesterday!", "I went to the group yesterday (7 May 2023)!"),
        ("Last Saturday we hiked", "Last Saturday (6 May 2023) we hiked"),
        ("last Monday", "last Monday (1 May 2023)"),  # never today itself
        ("next Sunday", "next Sunday (14 May 2023)"),
        ("3 days ago", "3 days ago (5 May 2023)"),
        ("two weeks ago I quit", "two weeks ago (the week of 24 April 2023) I quit"),
        ("last week was fun", "last week (the week of 1 May 2023) was fun"),
        ("last weekend", "last weekend (the weekend of 6 May 2023)"),
        ("next month I move", "next month (June 2023) I move"),
        ("a couple of months ago", "a couple of months ago (March 2023)"),
        ("last year", "last year (2022)"),
        ("tonight", "tonight (8 May 2023)"),
    ],
)
def test_relative_times_get_the_absolute_date_they_name(said, expected):
    assert resolve_relative(said, MONDAY) == expected


@pytest.mark.parametrize(
    "said", ["a few days ago", "this Friday", "on the last day", "yesterdays", "a weekday"]
)
def test_vague_or_ambiguous_phrases_are_left_alone(said):
    assert resolve_relative(said, MONDAY) == said


def test_months_roll_over_year_ends():
    new_year = dt.datetime(2024, 1, 3, tzinfo=dt.UTC)
    assert resolve_relative("last month", new_year) == "last month (December 2023)"
    assert resolve_relative("3 months ago", new_year) == "3 months ago (October 2023)"
