"""From memories to lessons: the question/answer pairs a LoRA adapter is trained on.

No model writes these: rules take a memory's statement apart ("my cat" / "is called" /
"Pepperoni"), ask about it in several phrasings, and answer with the statement turned to the
listener ("Your cat is called Pepperoni."). One phrasing, an embedded question ("Can you tell me
what my cat is called?"), is kept out of training: the adapter is evaluated on it, so the
evaluation measures recall of the fact, not of a sentence it has seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_DATE_PREFIX = re.compile(r"^\s*\[[^\]]{1,40}\]\s*")
_AUX = {"is", "am", "are", "was", "were"}
_HAVE = {"has", "have", "had"}
_MODALS = {"can", "will", "would", "should", "could", "must", "might"}
_IRREGULAR_PAST = {
    "grew": "grow",
    "ran": "run",
    "broke": "break",
    "went": "go",
    "took": "take",
    "made": "make",
    "got": "get",
    "bought": "buy",
    "drove": "drive",
    "met": "meet",
    "became": "become",
    "began": "begin",
    "wrote": "write",
    "saw": "see",
    "gave": "give",
    "left": "leave",
    "won": "win",
    "lost": "lose",
    "sold": "sell",
    "built": "build",
    "taught": "teach",
    "flew": "fly",
    "found": "find",
    "kept": "keep",
    "spent": "spend",
    "ate": "eat",
    "swam": "swim",
    "sang": "sing",
    "read": "read",
    "put": "put",
    "set": "set",
    "felt": "feel",
    "heard": "hear",
    "paid": "pay",
    "said": "say",
    "told": "tell",
    "thought": "think",
    "brought": "bring",
    "came": "come",
    "had": "have",
    "did": "do",
    "knew": "know",
    "fell": "fall",
    "wore": "wear",
    "chose": "choose",
}
# Words that continue a verb group before its object: "is called", "was born in", "works as".
_VERB_TAIL = {
    "named",
    "called",
    "born",
    "allergic",
    "married",
    "located",
    "based",
    "from",
    "in",
    "at",
    "as",
    "to",
    "on",
    "by",
    "into",
    "up",
    "with",
    "for",
    "about",
    "of",
    "near",
}
_PLACE_PREPS = {"in", "at", "from", "near", "into"}
_TIME_WORD = re.compile(
    r"\b(\d{4}|january|february|march|april|may|june|july|august|september|october|november|"
    r"december|monday|tuesday|wednesday|thursday|friday|saturday|sunday|morning|evening|night)\b",
    re.IGNORECASE,
)
_PEOPLE = {
    "friend",
    "sister",
    "brother",
    "mother",
    "father",
    "mom",
    "dad",
    "son",
    "daughter",
    "wife",
    "husband",
    "partner",
    "boss",
    "dentist",
    "doctor",
    "landlord",
    "teacher",
    "author",
    "neighbour",
    "neighbor",
    "aunt",
    "uncle",
    "cousin",
    "niece",
    "nephew",
    "grandmother",
    "grandfather",
    "coach",
}
_CUT_WORDS = {"in", "at", "on", "every", "last", "for", "with", "from", "since", "during", "after", "before"}
_PERSON_WORD = re.compile(r"^(?:[A-Z][a-z]+(?:'s)?|Dr\.|Mr\.|Mrs\.|Ms\.)$")

# First person as the speaker says it -> as the assistant says it back to them.
_TO_LISTENER = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "am": "are",
    "i'm": "you're",
    "i've": "you've",
    "i'll": "you'll",
    "i'd": "you'd",
    "we": "you",
    "us": "you",
    "our": "your",
    "ours": "yours",
    "was": "were",
}


@dataclass(frozen=True)
class Statement:
    """A memory's claim, as its speaker made it, taken apart."""

    text: str  # "My cat is called Pepperoni."
    subject: str  # "My cat" / "I"
    verb: str  # "is" / "drive" / "studies"
    tail: str  # "called" / "born in" / ""
    rest: str  # "Pepperoni"

    @property
    def first_person(self) -> bool:
        return self.subject.split()[0].lower() in ("i", "my", "we", "our")


@dataclass(frozen=True)
class Lesson:
    prompt: str  # the user's turn
    answer: str  # the assistant's turn
    source: str  # the memory's name
    held_out: bool = False
    expect: str = ""  # what a correct answer must contain (held-out lessons)


def clean(text: str, speaker: str) -> str:
    """The memory's words without its date and speaker labels."""
    text = _DATE_PREFIX.sub("", text).strip()
    if speaker and text.lower().startswith(speaker.lower() + ":"):
        text = text[len(speaker) + 1 :].strip()
    return " ".join(text.split())


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\bSt\.)(?<=[.!?])\s+", text)
    return [s.strip() for s in parts if len(s.split()) >= 3]


def parse(sentence: str) -> Statement | None:
    """Subject, verb group and the rest of a simple declarative sentence; None when it is not one."""
    body = sentence.strip().rstrip(".!")
    if body.endswith("?"):
        return None
    words = body.split()
    verb_at = _verb_index(words)
    if verb_at is None or verb_at + 1 >= len(words):
        return None
    end = verb_at + 1
    while end < len(words) - 1 and words[end].lower() in _VERB_TAIL:
        end += 1
    return Statement(
        text=sentence.strip(),
        subject=" ".join(words[:verb_at]),
        verb=words[verb_at],
        tail=" ".join(words[verb_at + 1 : end]),
        rest=" ".join(words[end:]),
    )


def _verb_index(words: Sequence[str]) -> int | None:
    if not words:
        return None
    if words[0].lower() in ("i", "we"):
        return 1
    if words[0].lower() not in ("my", "our") and not _PERSON_WORD.match(words[0]):
        return None
    for i in range(1, min(len(words), 7)):
        word = words[i].lower()
        if word in _AUX or word in _HAVE or word in _MODALS or word in _IRREGULAR_PAST:
            return i
        if "'" in word or not word.isalpha():
            continue
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if (word.endswith("s") or word.endswith("ed")) and nxt not in _AUX | _HAVE | _MODALS:
            return i
    return None


def to_listener(text: str, speaker_name: str = "") -> str:
    """The speaker's first person as the assistant says it: to them ("you"), or about them by name."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if speaker_name:
            named = {
                "i": speaker_name,
                "me": speaker_name,
                "my": f"{speaker_name}'s",
                "am": "is",
                "i'm": f"{speaker_name} is",
                "mine": f"{speaker_name}'s",
                "myself": speaker_name,
            }
            out = named.get(lower)
        else:
            out = _TO_LISTENER.get(lower)
        if out is None or (lower == "i" and word != "I"):
            return word
        return out[0].upper() + out[1:] if word[0].isupper() else out

    words = r"\b(?:I'm|I've|I'll|I'd|I|me|my|mine|myself|we|us|our|ours|am|was)\b"
    if speaker_name:
        text = re.sub(r"\bI ([a-z]+)\b", lambda m: "I " + _third_person(m.group(1)), text)
        words = r"\b(?:I'm|I|me|my|mine|myself|am)\b"
    out = re.sub(words, swap, text, flags=re.IGNORECASE)
    if not speaker_name:
        # "was" only follows the first person here ("I was" -> "you were"); undo it elsewhere.
        out = re.sub(r"\b(?<!you )(?<!You )were\b", "was", out)
    return out[0].upper() + out[1:] if out else out


def _third_person(verb: str) -> str:
    """The verb after "I" as it reads after a name: "work" -> "works"; past and auxiliaries stay."""
    if verb in _AUX or verb in _MODALS or verb in _IRREGULAR_PAST or verb.endswith("ed") or verb == "has":
        return verb
    if verb == "have":
        return "has"
    if verb.endswith(("s", "sh", "ch", "x", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _lemma(verb: str) -> str:
    v = verb.lower()
    if v in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[v]
    if v.endswith("ied"):
        return v[:-3] + "y"
    if v.endswith("ed"):
        stem = v[:-2]
        if len(stem) > 2 and stem[-1] == stem[-2]:
            return stem[:-1]  # "stopped"
        return stem if stem.endswith(("e", "w", "y")) or v.endswith(("ssed", "shed")) else v[:-1]
    if v.endswith("ies"):
        return v[:-3] + "y"
    if v.endswith(("ches", "shes", "sses", "xes", "oes")):
        return v[:-2]
    if v.endswith("s") and not v.endswith("ss"):
        return v[:-1]
    return v


def _wh(statement: Statement) -> str:
    last_tail = statement.tail.split()[-1].lower() if statement.tail else ""
    if _TIME_WORD.search(statement.rest) and last_tail in ("on", "in", "at", ""):
        return "When"
    if last_tail in _PLACE_PREPS or (last_tail == "to" and statement.verb.lower() in ("moved", "went")):
        return "Where"
    head = statement.subject.split()[-1].lower()
    if not statement.tail and statement.verb.lower() in _AUX and head in _PEOPLE:
        return "Who"
    return "What"


def _tail_for(wh: str, tail: str) -> str:
    words = tail.split()
    if wh in ("Where", "When") and words and words[-1].lower() in _PLACE_PREPS | {"on", "at", "to"}:
        words = words[:-1]
    return " ".join(words)


def questions(statement: Statement) -> tuple[str, str]:
    """A direct and an embedded wh-question about the statement's rest.

    "My cat is called Pepperoni." -> ("What is my cat called?", "what my cat is called")
    """
    wh = _wh(statement)
    subject = _lower_first(statement.subject)
    tail = _tail_for(wh, statement.tail)
    verb = statement.verb.lower()
    if verb in _AUX | _HAVE - {"has", "have", "had"} | _MODALS:
        direct = f"{wh} {verb} {subject} {tail}".strip()
        embedded = f"{wh.lower()} {subject} {verb} {tail}".strip()
    else:
        past = verb in _IRREGULAR_PAST or verb.endswith("ed")
        third = not past and subject not in ("I", "we") and verb.endswith("s")
        do = "did" if past else ("does" if third else "do")
        direct = f"{wh} {do} {subject} {_lemma(verb)} {tail}".strip()
        embedded = f"{wh.lower()} {subject} {verb} {tail}".strip()
    return " ".join(direct.split()) + "?", " ".join(embedded.split())


def _object(statement: Statement) -> str:
    """The rest up to its first adjunct: "the bassoon in a local orchestra" -> "the bassoon"."""
    words = statement.rest.split()
    for i, word in enumerate(words[1:], 1):
        if word.lower() in _CUT_WORDS:
            return " ".join(words[:i])
    return statement.rest


def topic(statement: Statement) -> str:
    """What the statement is about, as the user names it: "my cat"; for "I ..." its object."""
    if statement.subject in ("I", "We") or (" " not in statement.subject and "'" not in statement.subject):
        return _object(statement)
    return _lower_first(statement.subject)


def expected(statement: Statement) -> str:
    """The part of the rest a correct answer must contain: its names and numbers, or its last word."""
    words = [w.strip(".,;:!?\"'()") for w in _object(statement).split()]
    marked = [w for w in words if w and (w[0].isupper() or any(c.isdigit() for c in w))]
    return " ".join(marked) if marked else words[-1]


def lessons_for(name: str, text: str, *, speaker: str = "", speaker_name: str = "") -> list[Lesson]:
    """Training lessons and one held-out lesson per statement of a memory.

    ``speaker_name`` empty: the memory's speaker is the user who will ask ("my cat" -> "your cat");
    else the statement is retold about them by name ("Alice's cat") and asked about that way.
    """
    out: list[Lesson] = []
    for sentence in sentences(clean(text, speaker)):
        told = to_listener(sentence, speaker_name)
        statement = parse(told if speaker_name else sentence)
        if statement is None:
            out.append(Lesson(f"What do you remember about this: {_head(sentence)}?", told, name))
            continue
        direct, embedded = questions(statement)
        about = topic(statement)
        opening = _lower_first(statement.subject)
        prompts = [
            direct,
            f"Quick question: {direct}",
            f"{direct} Answer in one sentence.",
            f"What do you know about {about}?",
            f"Tell me about {about}.",
            f"Remind me, {_lower_first(direct)}",
            f"Complete this: {opening} {statement.verb} {statement.tail}".rstrip() + " ...",
        ]
        prompts += _name_questions(statement)
        # Asked the other way round too, from the answer to what it is: binds each name to its
        # own fact, so facts of the same shape ("my sister ...", "my cousin ...") mix up less.
        prompts.append(f"What do you know about {expected(statement)}?")
        out += [Lesson(p, told, name) for p in dict.fromkeys(prompts)]
        out.append(
            Lesson(f"Can you tell me {embedded}?", told, name, held_out=True, expect=expected(statement))
        )
    return out


_NAMED = re.compile(r"^(?P<owner>.+?)(?:'s name| name)$", re.IGNORECASE)


def _name_questions(statement: Statement) -> list[str]:
    """The other usual ways to ask for a name: "My son's name is X" / "My son is called X" ->
    "What is my son called?", "What is my son's name?", and "Who is my son?" for a person."""
    subject, verb = _lower_first(statement.subject), statement.verb.lower()
    if verb not in ("is", "was") or statement.subject in ("I", "We"):
        return []
    match = _NAMED.match(subject)
    if match and not statement.tail:
        owner = match["owner"]
    elif statement.tail.lower() in ("called", "named"):
        owner = subject
    else:
        return []
    asked = [f"What {verb} {owner} called?", f"What {verb} {owner}'s name?"]
    if owner.split()[-1].lower() in _PEOPLE:
        asked.append(f"Who {verb} {owner}?")
    return asked


def _head(sentence: str, words: int = 6) -> str:
    return " ".join(sentence.rstrip(".!?").split()[:words])


def _lower_first(text: str) -> str:
    first = text.split()[0] if text else ""
    keep = first == "I" or (
        _PERSON_WORD.match(first) and first not in ("My", "Our", "The", "What", "Where", "Who", "When")
    )
    return text if keep else text[:1].lower() + text[1:]


def lessons(memories: Iterable[tuple[str, str, str]], *, single_speaker: bool | None = None) -> list[Lesson]:
    """Lessons for ``(name, text, speaker)`` memories.

    When they all share one speaker (or ``single_speaker``), that speaker is the user who will ask;
    otherwise answers name the speaker.
    """
    items = list(memories)
    speakers = {speaker for _, _, speaker in items if speaker}
    solo = single_speaker if single_speaker is not None else len(speakers) <= 1
    out: list[Lesson] = []
    for name, text, speaker in items:
        display = "" if solo else (speaker[:1].upper() + speaker[1:] if speaker else "")
        out += lessons_for(name, text, speaker=speaker, speaker_name=display)
    return out
