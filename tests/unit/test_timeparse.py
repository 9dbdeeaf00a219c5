import datetime as dt

import pytest

from services.common.timeparse import human_date, named_period, parse_time, resolve_relative


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


ASKED = dt.datetime(2023, 12, 21, 21, 31, tzinfo=dt.UTC)  # a Thursday


@pytest.mark.parametrize(
    ("question", "start", "end"),
    [
        ("What did she show me on October 13, 2023?", dt.date(2023, 10, 13), dt.date(2023, 10, 14)),
        ("What did Gina find on 1 February, 2023?", dt.date(2023, 2, 1), dt.date(2023, 2, 2)),
        ("What book did Tim finish on 8th December, 2023?", dt.date(2023, 12, 8), dt.date(2023, 12, 9)),
        ("What class did Maria start in December 2023?", dt.date(2023, 12, 1), dt.date(2024, 1, 1)),
        ("Which spot did Joanna visit in May?", dt.date(2023, 5, 1), dt.date(2023, 6, 1)),
        ("Which spot did Joanna visit in December?", dt.date(2023, 12, 1), dt.date(2024, 1, 1)),
        ("Where did we go on Dec 25?", dt.date(2022, 12, 25), dt.date(2022, 12, 26)),  # not yet this year
        ("How often did I go to the beach in 2022?", dt.date(2022, 1, 1), dt.date(2023, 1, 1)),
        ("What game did I beat last weekend?", dt.date(2023, 12, 16), dt.date(2023, 12, 18)),
        ("The museum I visited two months ago?", dt.date(2023, 10, 1), dt.date(2023, 11, 1)),
        ("What did I cook yesterday?", dt.date(2023, 12, 20), dt.date(2023, 12, 21)),
        ("Where was John between August 11 and August 15 2023?", dt.date(2023, 8, 11), dt.date(2023, 8, 16)),
    ],
)
def test_a_question_names_a_period(question, start, end):
    period = named_period(question, ASKED)
    assert (period.start, period.end) == (start, end)


@pytest.mark.parametrize(
    "question",
    [
        "May I ask what my dog's name is?",
        "What did I march for?",
        "How many pre-1920 coins do I have?",
        "What happened on February 30, 2023?",
        "Where did I go in the summer?",
    ],
)
def test_a_question_without_a_time_names_none(question):
    assert named_period(question, ASKED) is None
