"""Masking personal data before anything is stored or embedded, as a cube's policy asks.

The policy (``Policy.redaction``, set with the lifecycle's SetPolicy) names kinds of personal
data (emails, phone numbers, card numbers, street addresses) and names of people; the reader masks
them in what it is given before extracting, embedding or writing anything, and the vault does the
same to an UpdateMemory's new text. The original never reaches the bus, the index or a model.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from memos.lifecycle.v1 import lifecycle_pb2

from .kvmirror import KvMirror

Pii = lifecycle_pb2.PiiKind

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
# 13-19 digits, spaces or dashes between groups; a Luhn check keeps order numbers out.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# International or national numbers of 7+ digits in the usual groupings; dates (2023-05-08) and
# times do not have the shape.
# A run of digit groups longer than a phone number (an order number) is not one.
_PHONE = re.compile(
    r"(?<![\w+])(?<!\d[\s.-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])?"
    r"\d{3,4}[\s.-]?\d{3,4}(?![\w-])(?![\s.]\d)"
)
_STREET = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Square|Sq|Strasse|Straße"
)
_STREET_FIRST = r"Rua|Calle|Via|Rue|Avenida|Strada"
_ADDRESS = re.compile(
    rf"\b\d{{1,5}}[a-zA-Z]?,?\s+(?:(?:[A-Z][\w'-]*\s+){{0,3}}(?:{_STREET})\b\.?"
    rf"|(?:{_STREET_FIRST})(?:\s+[A-Z][\w'-]*){{1,3}})"
)

MASKS = {
    Pii.PII_KIND_EMAIL: "[EMAIL]",
    Pii.PII_KIND_CARD: "[CARD]",
    Pii.PII_KIND_PHONE: "[PHONE]",
    Pii.PII_KIND_ADDRESS: "[ADDRESS]",
}
NAME_MASK = "[NAME]"


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask_cards(text: str, counts: Counter) -> str:
    def replace(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group())
        if _luhn(digits):
            counts[Pii.PII_KIND_CARD] += 1
            return MASKS[Pii.PII_KIND_CARD]
        return match.group()

    return _CARD.sub(replace, text)


def _mask_phones(text: str, counts: Counter) -> str:
    def replace(match: re.Match[str]) -> str:
        if sum(c.isdigit() for c in match.group()) < 7:
            return match.group()
        counts[Pii.PII_KIND_PHONE] += 1
        return MASKS[Pii.PII_KIND_PHONE]

    return _PHONE.sub(replace, text)


@dataclass(frozen=True)
class Redactor:
    kinds: frozenset[int]
    names: re.Pattern[str] | None

    @classmethod
    def of(cls, redaction: lifecycle_pb2.Redaction | None) -> Redactor:
        if redaction is None:
            return cls(frozenset(), None)
        names = sorted({n.strip() for n in redaction.names if n.strip()}, key=len, reverse=True)
        pattern = (
            re.compile(r"\b(?:" + "|".join(map(re.escape, names)) + r")\b", re.IGNORECASE) if names else None
        )
        return cls(frozenset(redaction.kinds), pattern)

    @property
    def active(self) -> bool:
        return bool(self.kinds or self.names)

    def redact(self, text: str, counts: Counter | None = None) -> str:
        """``text`` with what the policy names masked; ``counts`` tallies the masks by kind."""
        counts = counts if counts is not None else Counter()
        if not text or not self.active:
            return text
        if Pii.PII_KIND_EMAIL in self.kinds:
            text, n = _EMAIL.subn(MASKS[Pii.PII_KIND_EMAIL], text)
            counts[Pii.PII_KIND_EMAIL] += n
        if Pii.PII_KIND_CARD in self.kinds:
            text = _mask_cards(text, counts)
        if Pii.PII_KIND_PHONE in self.kinds:
            text = _mask_phones(text, counts)
        if Pii.PII_KIND_ADDRESS in self.kinds:
            text, n = _ADDRESS.subn(MASKS[Pii.PII_KIND_ADDRESS], text)
            counts[Pii.PII_KIND_ADDRESS] += n
        if self.names is not None:
            text, n = self.names.subn(NAME_MASK, text)
            counts["name"] += n
        return text


class RedactionPolicies:
    """Each cube's redaction policy, from the MEMOS_POLICIES bucket (mirrored by a watch)."""

    def __init__(self, mirror: KvMirror) -> None:
        self._mirror = mirror

    def for_cube(self, cube_id: str) -> Redactor:
        value = self._mirror.get(cube_id)
        if not value:
            return Redactor.of(None)
        return Redactor.of(lifecycle_pb2.Policy.FromString(value).redaction)
