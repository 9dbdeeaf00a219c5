"""A cube's redaction policy through the mesh: personal data is masked before it is stored."""

from __future__ import annotations

import pytest

from memos.lifecycle.v1 import lifecycle_pb2
from tests.conftest import in_process_mesh

pytestmark = [pytest.mark.integration, pytest.mark.security]


async def test_pii_is_masked_before_it_is_stored_and_updates_are_masked_too(nats, triton_addr, tmp_path):
    async with in_process_mesh(nats, triton_addr, tmp_path, lifecycle={}) as mesh:
        client = mesh.client
        await client.set_policy(
            "private",
            redact=[lifecycle_pb2.PII_KIND_EMAIL, lifecycle_pb2.PII_KIND_PHONE, lifecycle_pb2.PII_KIND_CARD],
            redact_names=["Caroline"],
        )
        reply = await client.add_messages(
            "private",
            [
                {
                    "speaker": "Caroline",
                    "text": "Write to caroline.smith@example.com or call +1 415-555-0132.",
                },
                {"speaker": "bob", "text": "Caroline paid with 4111 1111 1111 1111."},
            ],
            wait_applied=True,
        )
        texts = [(await client.get(n)).text for n in reply.memory_names]
        assert all(
            "Caroline" not in t and "example.com" not in t and "555" not in t and "4111" not in t
            for t in texts
        )
        assert "[EMAIL]" in texts[0] and "[PHONE]" in texts[0] and "[CARD]" in texts[1]
        first = await client.get(reply.memory_names[0])
        assert first.speaker == "[NAME]"
        updated = await client.update(reply.memory_names[1], text="Caroline's new mail is c@example.org.")
        assert updated.text == "[NAME]'s new mail is [EMAIL]."
        # Another cube without a policy keeps its text as given.
        other = await client.add_messages(
            "open", [{"speaker": "x", "text": "mail c@example.org"}], wait_applied=True
        )
        assert "c@example.org" in (await client.get(other.memory_names[0])).text
        # A policy with an unknown kind or an empty name is refused.
        with pytest.raises(Exception) as err:
            await client.set_policy("private", redact_names=[" "])
        assert "INVALID_POLICY" in str(err.value)
