"""MemVault: memory items, their versions and their index; applies the write log idempotently."""
