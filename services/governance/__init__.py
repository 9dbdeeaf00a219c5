"""MemGovernance service."""
