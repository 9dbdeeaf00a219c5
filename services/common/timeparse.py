"""Absolute times from the free-text dates conversations carry, and the periods phrases name."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

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


HUMAN_DATE = r"\d{1,2} [A-Z][a-z]+ \d{4}"  # what human_date writes, as a pattern


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


@dataclass(frozen=True, slots=True)
class Period:
    """Whole days from ``start`` up to (not including) ``end``, and how a reader would say it."""

    start: dt.date
    end: dt.date
    label: str

    @classmethod
    def day(cls, day: dt.date) -> Period:
        return cls(day, day + dt.timedelta(days=1), human_date(day))

    @classmethod
    def week_of(cls, day: dt.date) -> Period:
        monday = day - dt.timedelta(days=day.weekday())
        return cls(monday, monday + dt.timedelta(weeks=1), f"the week of {human_date(monday)}")

    @classmethod
    def month(cls, day: dt.date) -> Period:
        first = day.replace(day=1)
        return cls(first, _shift_months(first, 1), f"{first:%B %Y}")

    @classmethod
    def year(cls, year: int) -> Period:
        return cls(dt.date(year, 1, 1), dt.date(year + 1, 1, 1), str(year))


def _relative_period(match: re.Match[str], today: dt.date) -> Period | None:
    """The period a relative phrase names, said on ``today``; None when it names none."""
    if phrase := match.group("day"):
        offset = {"yesterday": -1, "last night": -1, "tomorrow": 1}.get(phrase.lower(), 0)
        return Period.day(today + dt.timedelta(days=offset))
    if match.group("ago"):
        count = match.group(0).lower().rsplit(" ", 2)[0]
        n = int(count) if count.isdigit() else _NUMBERS[count]
        unit = match.group("unit").lower()
        if unit == "day":
            return Period.day(today - dt.timedelta(days=n))
        if unit == "week":
            return Period.week_of(today - dt.timedelta(weeks=n))
        if unit == "month":
            return Period.month(_shift_months(today, -n))
        return Period.year(today.year - n)
    which, span = match.group("which").lower(), match.group("span").lower()
    step = {"last": -1, "past": -1, "this": 0, "next": 1}[which]
    if span in _WEEKDAYS:
        target = _WEEKDAYS.index(span)
        if which == "this":
            return None  # "this Friday" may be either side of today
        if step < 0:
            back = (today.weekday() - target) % 7 or 7
            return Period.day(today - dt.timedelta(days=back))
        ahead = (target - today.weekday()) % 7 or 7
        return Period.day(today + dt.timedelta(days=ahead))
    if span == "week":
        return Period.week_of(today + dt.timedelta(weeks=step))
    if span == "weekend":
        saturday = today + dt.timedelta(days=(5 - today.weekday()) % 7)
        if step < 0 or (step == 0 and today.weekday() == 6):
            saturday -= dt.timedelta(weeks=1)
        elif step > 0 and today.weekday() < 5:
            saturday += dt.timedelta(weeks=1)
        return Period(saturday, saturday + dt.timedelta(days=2), f"the weekend of {human_date(saturday)}")
    if span == "month":
        return Period.month(_shift_months(today, step))
    return Period.year(today.year + step)


def resolve_relative(text: str, when: dt.datetime) -> str:
    """Follow each relative time phrase with the absolute date it names, said at ``when``.

    "I went yesterday" said on 8 May 2023 -> "I went yesterday (7 May 2023)". The words stay as
    said; the date in parentheses is what a reader of the memory much later needs.
    """
    today = when.date()

    def annotate(match: re.Match[str]) -> str:
        period = _relative_period(match, today)
        return f"{match.group(0)} ({period.label})" if period else match.group(0)

    return _RELATIVE.sub(annotate, text)


_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_MONTH_NAMES = "|".join(_MONTHS) + "|" + "|".join(m[:3] for m in _MONTHS)


def _month(n: int) -> str:
    return rf"(?P<month_{n}>{_MONTH_NAMES})\.?"


def _year(n: int) -> str:
    return rf"(?P<year_{n}>(?:19|20)\d\d)"


def _day(n: int) -> str:
    return rf"(?P<day_{n}>[0-3]?\d)(?:st|nd|rd|th)?"


# "13 October 2023", "October 13, 2023", "8th December, 2023", "May 2023", "in June", "in 2022".
# A month without a year needs "in" or "during" before it, so that "may" the verb is not a month.
# (Group names carry a number because an alternation may not repeat a name.)
_ABSOLUTE = re.compile(
    r"\b(?:"
    rf"{_day(1)} (?:of )?{_month(1)},? {_year(1)}"
    rf"|{_month(2)} {_day(2)}(?:,? {_year(2)})?(?!\d)"
    rf"|{_month(3)},? {_year(3)}"
    rf"|(?:in|during) (?:early |late |mid-?)?{_month(4)}(?! \d)"
    rf"|(?:in|during) {_year(5)}"
    r")\b",
    re.IGNORECASE,
)


def _absolute_period(match: re.Match[str], today: dt.date) -> Period | None:
    """The period an absolute phrase names; a month or day without a year is its latest
    occurrence up to ``today``. None for an impossible date (30 February)."""
    groups = {k.split("_")[0]: v for k, v in match.groupdict().items() if v}
    year = int(groups["year"]) if "year" in groups else None
    if "month" not in groups:
        return Period.year(year) if year else None
    month = next(i for i, m in enumerate(_MONTHS, 1) if m.startswith(groups["month"].lower()[:3]))
    try:
        day = dt.date(year or today.year, month, int(groups.get("day", 1)))
    except ValueError:
        return None
    if year is None and day > today:
        day = day.replace(year=today.year - 1)
    return Period.day(day) if "day" in groups else Period.month(day)


def named_period(text: str, reference: dt.datetime) -> Period | None:
    """The time a question names, read at ``reference``: the span from the earliest to the latest
    period its phrases name ("last weekend", "two months ago", "on October 13, 2023", "in May
    2023"); None when it names no time."""
    today = reference.date()
    periods = [p for m in _RELATIVE.finditer(text) if (p := _relative_period(m, today))]
    periods += [p for m in _ABSOLUTE.finditer(text) if (p := _absolute_period(m, today))]
    if not periods:
        return None
    start, end = min(p.start for p in periods), max(p.end for p in periods)
    labels = " to ".join(dict.fromkeys(p.label for p in sorted(periods, key=lambda p: p.start)))
    return Period(start, end, labels)
