"""Fault injection for ``tests/engines/test_vllm_trainer_on_cpu.py``: with this folder on ``PYTHONPATH`` every Python
process of the run (the driver, and Ray's workers, which inherit the driver's environment) loads this file at start-up.
Where verl's synchronous v1 trainer is imported, its end-of-step weight sync becomes a no-op: the rollout keeps
the weights of the start-up sync while the trainer updates. The weight-sync test runs this to show that its
check fails when the sync is missing."""

from verl_stable.integration._post_import import after_import


def _skip_step_end_sync(module) -> None:
    module.PPOTrainerSync.on_step_end = lambda self: None


after_import("verl.trainer.ppo.v1.trainer_sync", _skip_step_end_sync)
