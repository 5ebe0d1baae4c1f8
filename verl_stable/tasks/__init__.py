"""Verifiable toy tasks (data, tiny models, rewards) for CPU runs of verl's real trainer."""
