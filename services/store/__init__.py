"""MemStore service."""
