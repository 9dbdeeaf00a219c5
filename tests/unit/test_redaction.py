"""Masking personal data as a cube's redaction policy says."""

from __future__ import annotations

from collections import Counter

import pytest

from memos.lifecycle.v1 import lifecycle_pb2
from services.common.redaction import Redactor

pytestmark = pytest.mark.security

ALL = [
    lifecycle_pb2.PII_KIND_EMAIL,
    lifecycle_pb2.PII_KIND_PHONE,
    lifecycle_pb2.PII_KIND_CARD,
    lifecycle_pb2.PII_KIND_ADDRESS,
]


def _redactor(kinds=ALL, names=()):
    return Redactor.of(lifecycle_pb2.Redaction(kinds=kinds, names=list(names)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail me at jane.doe+memos@example.co.uk tomorrow.", "Mail me at [EMAIL] tomorrow."),
        ("Call +1 415-555-0132 or (020) 7946 0958.", "Call [PHONE] or [PHONE]."),
        ("My card is 4111 1111 1111 1111, expires 09/27.", "My card is [CARD], expires 09/27."),
        ("I live at 221B Baker Street, London.", "I live at [ADDRESS], London."),
        ("We moved to 12 Rua Augusta in Lisbon.", "We moved to [ADDRESS] in Lisbon."),
    ],
)
def test_each_kind_is_masked(text, expected):
    assert _redactor().redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on 2023-05-08 at 13:56.",
        "Order 1234 5678 9012 3456 is not a card (fails the Luhn check).",
        "I ran 10 km in 55 minutes, my best since 2019.",
        "Room 4711 on the 3rd floor.",
        "Version 1.2.3 shipped on 8 May 2023.",
    ],
)
def test_dates_times_and_plain_numbers_are_left_alone(text):
    assert _redactor().redact(text) == text


def test_names_are_masked_as_whole_words_in_any_case_and_counted():
    counts = Counter()
    redactor = _redactor(kinds=[], names=["Caroline", "Mel"])
    out = redactor.redact("caroline met Mel; Melanie and CAROLINE stayed.", counts)
    assert out == "[NAME] met [NAME]; Melanie and [NAME] stayed."
    assert counts["name"] == 3


def test_only_the_kinds_named_are_masked_and_no_policy_changes_nothing():
    text = "jane@example.com, +44 20 7946 0958"
    assert _redactor(kinds=[lifecycle_pb2.PII_KIND_EMAIL]).redact(text) == "[EMAIL], +44 20 7946 0958"
    assert not Redactor.of(None).active
    assert Redactor.of(None).redact(text) == text
