"""MemScheduler: chooses memories for a task and assembles them under a token budget."""
