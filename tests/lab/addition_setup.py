"""A fast stand-in for the lab's setup: the demo's single-digit addition task and format-only cold start.

The variant tests compose and validate every variant's config; with this setup they need only seconds of model
building instead of the lab's cold starts.
"""

from __future__ import annotations

from pathlib import Path

from verl_stable.lab.setup import LabSetup
from verl_stable.tasks import addition

# Stand-ins for the lab model's cold starts and mismatch dial.
ADDITION_COLD_STARTS: dict[str, dict] = {
    # format-only SFT (the demo's model); the seed changes the initial weights and the SFT batches
    "default": {"seed": 0, "format_sft_steps": 40},
    "seed1": {"seed": 1, "format_sft_steps": 40},
    "short_sft": {"seed": 2, "format_sft_steps": 10},
}
ADDITION_MISMATCH: dict[str, list[str]] = {
    # the trainer computes in bf16 (FSDP mixed precision); the rollout's weights set the gap
    "fp32": ["actor_rollout_ref.rollout.dtype=float32", "actor_rollout_ref.rollout.quantization=null"],
    "bf16": ["actor_rollout_ref.rollout.dtype=bfloat16", "actor_rollout_ref.rollout.quantization=null"],
    "fp8": ["actor_rollout_ref.rollout.dtype=bfloat16", "actor_rollout_ref.rollout.quantization=fp8"],
}


def _addition_model(out_dir: Path, *, cold_start: str = "default") -> str:
    return addition.cached_model_dir(out_dir, **ADDITION_COLD_STARTS[cold_start])


def _addition_data(out_dir: Path, *, seed: int = 0) -> tuple[str, str]:
    return addition.build_dataset(out_dir, n_train=256, n_val=32, seed=seed)


def addition_setup() -> LabSetup:
    return LabSetup(
        name="addition",
        model_builder=_addition_model,
        data_builder=_addition_data,
        reward_path=str(Path(addition.__file__).resolve()),
        reward_name="compute_score",
        cold_starts=ADDITION_COLD_STARTS,
        mismatch=ADDITION_MISMATCH,
        eval_k=4,
        notes={"task": "single-digit addition mod 10", "model": "tiny Qwen3-MoE (2 layers, 4 experts, top-2)"},
    )
