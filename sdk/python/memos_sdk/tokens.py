"""The token count the API's token budgets are measured in.

A model-free stand-in for a tokenizer (bench/FORMAT.md): the number of matches of
``\\w+|[^\\w\\s]``. Budgets in SearchRequest use it so every client counts the same way.
"""

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))
