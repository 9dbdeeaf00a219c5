"""Absolute times from the free-text dates conversations carry."""

from __future__ import annotations

import datetime as dt
import re

from dateutil import parser

_PARENTHESES = re.compile(r"\([^)]*\)")


def parse_time(text: str) -> dt.datetime:
    """Parse dates like "1:56 pm on 8 May, 2023" or "2023/05/20 (Sat) 02:21"; naive times are UTC.

    Raises ValueError when the text holds no date.
    """
    cleaned = _PARENTHESES.sub(" ", text).strip()
    if not cleaned or not re.search(r"\d", cleaned):
        raise ValueError(f"no date in {text!r}")
    try:
        when = parser.parse(cleaned, fuzzy=True)
    except (ValueError, OverflowError) as err:
        raise ValueError(f"no date in {text!r}") from err
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def human_date(when: dt.datetime) -> str:
    """The date as items show it to a model: "8 May 2023"."""
    return f"{when.day} {when:%B %Y}"


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "a couple of": 2, "couple of": 2,
}  # fmt: skip
_COUNT = r"(\d{1,2}|a couple of|couple of|an?|one|two|three|four|five|six|seven|eight|nine|ten)"
_RELATIVE = re.compile(
    r"\b(?:"
    r"(?P<day>yesterday|today|tonight|tomorrow|last night|this (?:morning|afternoon|evening))"
    r"|(?P<ago>" + _COUNT + r" (?P<unit>day|week|month|year)s? ago)"
    r"|(?P<which>last|this|next|past) (?P<span>week(?:end)?|month|year|" + "|".join(_WEEKDAYS) + r")"
    r")\b",
    re.IGNORECASE,
)


def _shift_months(day: dt.date, months: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def _week_of(day: dt.date) -> str:
    return f"the week of {human_date(day - dt.timedelta(days=day.weekday()))}"


def _absolute(match: re.Match[str], today: dt.date) -> str | None:
    """The absolute date a relative phrase names, said on ``today``; None when it names none."""
    if phrase := match.group("day"):
        offset = {"yesterday": -1, "last night": -1, "tomorrow": 1}.get(phrase.lower(), 0)
        return human_date(today + dt.timedelta(days=offset))
    if match.group("ago"):
        count = match.group(0).lower().rsplit(" ", 2)[0]
        n = int(count) if count.isdigit() else _NUMBERS[count]
        unit = match.group("unit").lower()
        if unit == "day":
            return human_date(today - dt.timedelta(days=n))
        if unit == "week":
            return _week_of(today - dt.timedelta(weeks=n))
        if unit == "month":
            return f"{_shift_months(today, -n):%B %Y}"
        return str(today.year - n)
    which, span = match.group("which").lower(), match.group("span").lower()
    step = {"last": -1, "past": -1, "this": 0, "next": 1}[which]
    if span in _WEEKDAYS:
        target = _WEEKDAYS.index(span)
        if which == "this":
            return None  # "this Friday" may be either side of today
        if step < 0:
            back = (today.weekday() - target) % 7 or 7
            return human_date(today - dt.timedelta(days=back))
        ahead = (target - today.weekday()) % 7 or 7
        return human_date(today + dt.timedelta(days=ahead))
    if span == "week":
        return _week_of(today + dt.timedelta(weeks=step))
    if span == "weekend":
        saturday = today + dt.timedelta(days=(5 - today.weekday()) % 7)
        if step < 0 or (step == 0 and today.weekday() == 6):
            saturday -= dt.timedelta(weeks=1)
        elif step > 0 and today.weekday() < 5:
            saturday += dt.timedelta(weeks=1)
        return f"the weekend of {human_date(saturday)}"
    if span == "month":
        return f"{_shift_months(today, step):%B %Y}"
    return str(today.year + step)


def resolve_relative(text: str, when: dt.datetime) -> str:
    """Follow each relative time phrase with the absolute date it names, said at ``when``.

    "I went yesterday" said on 8 May 2023 -> "I went yesterday (7 May 2023)". The words stay as
    said; the date in parentheses is what a reader of the memory much later needs.
    """
    today = when.date()

    def annotate(match: re.Match[str]) -> str:
        absolute = _absolute(match, today)
        return f"{match.group(0)} ({absolute})" if absolute else match.group(0)

    return _RELATIVE.sub(annotate, text)
