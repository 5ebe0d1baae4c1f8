"""Fixtures for the plugin's tests: the tiny model, tokenizer and addition data of the hf_cpu rollout tests."""

from tests.workers.rollout.conftest import tiny_assets  # noqa: F401  (a fixture: shared, not redefined)
