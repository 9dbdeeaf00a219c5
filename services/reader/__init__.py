"""MemReader: turns conversations and documents into memory items and writes them to the log."""
