"""The lab's seam to its task and model: what the grid needs, behind one small object.

:class:`LabSetup` answers four questions for the runner: where the model for a cold start is
(:meth:`~LabSetup.build_model`, cached), where the data is (:meth:`~LabSetup.build_data`), which reward
function verl calls (``reward_path`` / ``reward_name``), and which Hydra overrides set a rollout-mismatch
setting (:meth:`~LabSetup.mismatch_overrides`). :func:`default_setup` uses ``verl_stable.lab.task`` and
``verl_stable.lab.model`` when they exist (adjustable difficulty, held-out eval set, several cold starts, the
mismatch dial) and the single-digit addition task of :mod:`verl_stable.tasks.addition` otherwise.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from verl_stable.tasks import addition

# The addition task's stand-ins for lab/model.py's cold starts and mismatch dial.
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


@dataclass(frozen=True)
class LabSetup:
    """What the lab's grid needs from a task and a model family.

    ``model_builder(out_dir, cold_start=name) -> str`` builds (or reuses) a Hugging Face model directory;
    ``data_builder(out_dir, seed=...) -> (train_parquet, eval_parquet)``; ``mismatch`` maps a dial setting to
    its Hydra overrides. ``eval_k`` is the number of samples per held-out prompt (avg@k).
    """

    name: str
    model_builder: Callable[..., str]
    data_builder: Callable[..., tuple[str, str]]
    reward_path: str
    reward_name: str
    cold_starts: Mapping[str, dict]
    mismatch: Mapping[str, Sequence[str]]
    eval_k: int = 4
    default_mismatch: str = "fp8"
    notes: dict = field(default_factory=dict)
    #: the cold start ``--quick`` (CI) trains from: not one of the grid's ``cold_starts``
    ci_cold_start: str | None = None
    #: one line per cold start for the report's header
    describe_model: Callable[[str], str] | None = None

    def check_cold_start(self, cold_start: str) -> str:
        known = [*self.cold_starts, *([self.ci_cold_start] if self.ci_cold_start else [])]
        if cold_start not in known:
            raise ValueError(
                f"cold start {cold_start!r} unknown to the {self.name} setup (lab --cold-start); known: "
                f"{', '.join(known)}"
            )
        return cold_start

    def build_model(self, out_dir: str | Path, cold_start: str = "default") -> str:
        return self.model_builder(Path(out_dir), cold_start=self.check_cold_start(cold_start))

    def build_data(self, out_dir: str | Path, *, seed: int = 0) -> tuple[str, str]:
        return self.data_builder(Path(out_dir), seed=seed)

    def mismatch_overrides(self, setting: str | None = None) -> list[str]:
        setting = setting or self.default_mismatch
        if setting not in self.mismatch:
            raise ValueError(
                f"rollout mismatch setting {setting!r} unknown (known: {sorted(self.mismatch)}; lab --mismatch)"
            )
        return list(self.mismatch[setting])


def _addition_model(out_dir: Path, *, cold_start: str = "default") -> str:
    """The addition task's tiny MoE for ``cold_start``, built once per recipe (a marker file says which)."""
    recipe = {"builder": "verl_stable.tasks.addition.build_model_dir", **ADDITION_COLD_STARTS[cold_start]}
    marker = out_dir / "verl_stable_build.json"
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return str(out_dir)
    kwargs = {k: v for k, v in recipe.items() if k != "builder"}
    addition.build_model_dir(out_dir, **kwargs)
    marker.write_text(json.dumps(recipe))
    return str(out_dir)


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


def lab_modules_setup(task, model) -> LabSetup:
    """The setup on ``verl_stable.lab.task`` / ``verl_stable.lab.model`` (their documented interface)."""
    reward_path, reward_name = task.REWARD_FN
    difficulty = getattr(task, "DEFAULT_DIFFICULTY", None)

    def build_data(out_dir: Path, *, seed: int = 0):
        kwargs = {"seed": seed} if difficulty is None else {"seed": seed, "difficulty": difficulty}
        return task.build_datasets(out_dir, **kwargs)

    def build_model(out_dir: Path, *, cold_start: str = "default"):
        def log(line: str) -> None:
            print(f"[lab] cold start {cold_start}: {line}", flush=True)

        return model.build_lab_model(out_dir, cold_start=cold_start, log=log)

    settings = dict(model.MISMATCH_SETTINGS)
    return LabSetup(
        name="lab",
        model_builder=build_model,
        data_builder=build_data,
        reward_path=str(reward_path),
        reward_name=str(reward_name),
        cold_starts={c: model.COLD_STARTS[c] for c in getattr(model, "GRID_COLD_STARTS", model.COLD_STARTS)},
        ci_cold_start=getattr(model, "CI_COLD_START", None),
        describe_model=getattr(model, "describe", None),
        mismatch=settings,
        eval_k=int(getattr(task, "EVAL_K", 4)),
        default_mismatch=getattr(model, "DEFAULT_MISMATCH", "fp8" if "fp8" in settings else next(iter(settings))),
        notes={"task": task.describe(difficulty) if difficulty is not None else task.describe()},
    )


def default_setup() -> LabSetup:
    """lab/task.py + lab/model.py when both are importable, else the addition task."""
    try:
        task = importlib.import_module("verl_stable.lab.task")
        model = importlib.import_module("verl_stable.lab.model")
    except ModuleNotFoundError as exc:
        if exc.name not in ("verl_stable.lab.task", "verl_stable.lab.model"):
            raise
        return addition_setup()
    return lab_modules_setup(task, model)
