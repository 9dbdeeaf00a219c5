"""Conversation bundles (bench/FORMAT.md): reading them and writing them into a cube session by session."""

from __future__ import annotations

import asyncio
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
    in_flight: int = 2,
) -> int:
    """Write every session of a bundle, at most ``max_batch`` turns a request; returns the
    number of turns written.

    Each request carries a request_id derived from the bundle and session, so a retry is not a
    second write. Up to ``in_flight`` sessions are written at once, each session's requests in
    order: the reader embeds one while it stores the other, so the model does not wait between
    sessions. With ``wait_applied`` only the last request waits for the vault, sent once every
    other one is answered: writes are applied in log order, so when it returns the whole bundle
    is searchable. ``wait_each`` writes one request at a time, each waiting for the vault, as a
    chat does that adds its turns as they are said (``max_batch=1``).
    """
    sessions = [
        [
            (session, start, messages[start : start + max_batch])
            for start in range(0, len(messages), max_batch)
        ]
        for session in bundle.get("sessions", [])
        for messages in [session_messages(session)]
        if messages
    ]
    if not sessions:
        return 0
    last = sessions[-1].pop()
    slots = asyncio.Semaphore(1 if wait_each else max(1, in_flight))

    async def write(session: dict[str, Any], start: int, part: list[dict[str, str]], wait: bool) -> None:
        raw_id = f"bundle:{bundle.get('id', '')}:{session.get('id', '')}:{start}"
        request_id = re.sub(r"[^\x21-\x7e]", "_", raw_id)[-128:]
        await client.add_messages(cube_id, part, request_id=request_id, wait_applied=wait)
        if on_session:
            on_session(len(part))

    async def write_session(parts: list[tuple[dict[str, Any], int, list[dict[str, str]]]]) -> None:
        async with slots:
            for session, start, part in parts:
                await write(session, start, part, wait_each)

    await asyncio.gather(*(write_session(parts) for parts in sessions if parts))
    await write(*last, wait_each or wait_applied)
    return sum(len(part) for parts in sessions for _, _, part in parts) + len(last[2])
