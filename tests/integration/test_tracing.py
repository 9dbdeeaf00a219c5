"""One trace follows a write: client -> reader -> JetStream -> vault."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from tests.conftest import SPANS

pytestmark = pytest.mark.integration


async def test_one_trace_spans_client_reader_and_vault(mesh, cube):
    SPANS.clear()
    with trace.get_tracer("test").start_as_current_span("client.add") as root:
        await mesh.client.add_messages(
            cube, [{"id": "t1", "speaker": "a", "text": "traced write"}], wait_applied=True
        )
        trace_id = root.get_span_context().trace_id
    spans = [s for s in SPANS.get_finished_spans() if s.context.trace_id == trace_id]
    names = {s.name for s in spans}
    assert "/memos.reader.v1.ReaderService/AddMessages" in names
    assert "vault.apply" in names
    assert "vault.publish_event" in names
    by_id = {s.context.span_id: s for s in spans}
    apply = next(s for s in spans if s.name == "vault.apply")
    reader = next(s for s in spans if s.name.endswith("AddMessages"))
    # the vault's span descends from the reader's through the message header
    parent = by_id.get(apply.parent.span_id)
    while parent is not None and parent is not reader:
        parent = by_id.get(parent.parent.span_id) if parent.parent else None
    assert parent is reader
