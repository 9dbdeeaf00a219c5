"""Conversation bundles (bench/FORMAT.md): reading them and writing them into a cube session by session."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .client import MemosClient

Bundle = dict[str, Any]


def read_bundles(path: Path) -> Iterator[Bundle]:
    """Bundles from a .jsonl file (one a line) or a .json file (one bundle, a list of them,
    or a plain list of messages, taken as one session)."""
    text = Path(path).read_text()
    if Path(path).suffix == ".jsonl":
        # JSON Lines are split at "\n" only: splitlines() would also split inside strings that
        # hold U+2028 and the like (LongMemEval has them).
        for line_no, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not JSON: {err}") from err
        return
    data = json.loads(text)
    if isinstance(data, dict):
        yield data
    elif data and all("sessions" in b for b in data):
        yield from data
    else:
        yield {"id": Path(path).stem, "sessions": [{"id": "S1", "date": "", "turns": data}]}


def session_messages(session: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {
            "id": turn.get("id", ""),
            "speaker": turn.get("speaker", ""),
            "text": turn.get("text", ""),
            "time_text": turn.get("time", "") or session.get("date", ""),
            "session_id": session.get("id", ""),
            "image_caption": turn.get("image_caption", "") or "",
        }
        for turn in session.get("turns", [])
        if str(turn.get("text", "")).strip()
    ]


def count_turns(bundle: Bundle) -> int:
    return sum(len(session_messages(s)) for s in bundle.get("sessions", []))


async def ingest_bundle(
    client: MemosClient,
    cube_id: str,
    bundle: Bundle,
    *,
    wait_applied: bool = True,
    on_session: Callable[[int], None] | None = None,
    max_batch: int = 500,
    wait_each: bool = False,
) -> int:
    """Write every session of a bundle in order, at most ``max_batch`` turns a request; returns
    the number of turns written.

    Each request carries a request_id derived from the bundle and session, so a retry is not a
    second write. With ``wait_applied`` only the last request waits for the vault: writes are
    applied in log order, so when it returns the whole bundle is searchable, and meanwhile the
    reader embeds the next session while the vault applies the last. ``wait_each`` waits for
    every request, as a chat does that adds its turns as they are said (``max_batch=1``).
    """
    parts = [
        (session, start, messages[start : start + max_batch])
        for session in bundle.get("sessions", [])
        for messages in [session_messages(session)]
        for start in range(0, len(messages), max_batch)
    ]
    written = 0
    for n, (session, start, part) in enumerate(parts, 1):
        raw_id = f"bundle:{bundle.get('id', '')}:{session.get('id', '')}:{start}"
        request_id = re.sub(r"[^\x21-\x7e]", "_", raw_id)[-128:]
        await client.add_messages(
            cube_id, part, request_id=request_id, wait_applied=wait_each or (wait_applied and n == len(parts))
        )
        written += len(part)
        if on_session:
            on_session(len(part))
    return written
