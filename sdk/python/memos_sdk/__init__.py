"""Python SDK of the MemOS mesh.

from memos_sdk import MemosClient

async with MemosClient() as memos:
    await memos.add_messages("demo", [{"speaker": "alice", "text": "I moved to Lisbon."}])
    hits = await memos.search("demo", "where does alice live?", token_budget=500)
"""

from .client import MemosClient, to_message
from .endpoints import Endpoints
from .errors import MemosAPIError
from .events import Event, decode_event
from .tokens import count_tokens

__all__ = ["Endpoints", "Event", "MemosAPIError", "MemosClient", "count_tokens", "decode_event", "to_message"]
