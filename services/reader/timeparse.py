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
