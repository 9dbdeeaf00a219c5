"""MemLifecycle service."""
