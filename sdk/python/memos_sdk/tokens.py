"""The token count the API's token budgets are measured in.

A model-free stand-in for a tokenizer (bench/FORMAT.md): the number of matches of
``\\w+|[^\\w\\s]``. Budgets in SearchRequest use it so every client counts the same way.
"""

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def head_tokens(text: str, n: int) -> str:
    """The start of ``text`` up to its ``n``-th token."""
    for i, match in enumerate(_TOKEN.finditer(text), 1):
        if i == n:
            return text[: match.end()]
    return text


def tail_tokens(text: str, n: int) -> str:
    """The end of ``text`` from its ``n``-th last token."""
    starts = [m.start() for m in _TOKEN.finditer(text)]
    return text[starts[-n] :] if n and len(starts) > n else text
