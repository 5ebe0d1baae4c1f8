"""The CPU demo: ``python -m verl_stable.main`` through verl's real trainer on a tiny MoE, with a short console.

    python -m verl_stable.apps.demo                                   # algorithm=minirl, 3 steps
    python -m verl_stable.apps.demo algorithm=minirl_no_is routing_replay=R3
    python -m verl_stable.apps.demo --steps 5 --quantization fp8 actor_rollout_ref.actor.ppo_mini_batch_size=2

Arguments that are not options are Hydra overrides; they win over the CPU settings (which only say what
CPU needs) and pick the preset (``algorithm=minirl`` unless one is given). The console shows a header, one
line per step and a final table; verl's full output goes to ``<run dir>/train.log`` (``--verbose`` or
``VERBOSE=1`` streams it too). Everything the run writes stays under the run directory.
Environment defaults: RUN_DIR, STEPS, ROLLOUT_QUANT, LR, PROMPTS, VERBOSE (what scripts/demo_cpu.sh passes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

from verl_stable.apps import console
from verl_stable.cpu import ROLLOUT_NAME
from verl_stable.cpu.hf_engine import SUPPORTED_QUANTIZATION
from verl_stable.apps.cpu_overrides import cpu_overrides

GROUP_SIZE = 8


def _override_value(overrides: list[str], key: str):
    for item in reversed(overrides):
        if item.lstrip("+~").split("=", 1)[0] == key and "=" in item:
            return item.split("=", 1)[1]
    return None


def _describe_model(path: str | None) -> str:
    """The header's model line: the demo's own tiny model, or what a ``model.path`` override's config says."""
    if path is None:
        return "tiny Qwen3-MoE (2 layers, 4 experts, top-2)"
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return f"model {path}"
    experts = config.get("num_experts") or config.get("num_local_experts")
    shape = f"{config.get('num_hidden_layers', '?')} layers" + (
        f", {experts} experts, top-{config.get('num_experts_per_tok', '?')}" if experts else ""
    )
    return f"{config.get('model_type', 'model')} ({shape}) from {path}"


def parse_args(argv: list[str] | None = None):
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m verl_stable.apps.demo", description=__doc__.splitlines()[0],
        epilog="Other arguments are Hydra overrides for verl's trainer, e.g. algorithm=seq_is routing_replay=R3.",
    )
    parser.add_argument("--run-dir", default=env.get("RUN_DIR", "runs/cpu_demo"), help="where everything goes")
    parser.add_argument("--steps", type=int, default=int(env.get("STEPS", 3) or 3), help="GRPO steps (>= 1)")
    parser.add_argument("--quantization", default=env.get("ROLLOUT_QUANT") or None,
                        help=f"rollout weights: {', '.join(str(q) for q in SUPPORTED_QUANTIZATION if q)} (default bf16)")
    parser.add_argument("--lr", type=float, default=float(env.get("LR", 5e-3) or 5e-3))
    parser.add_argument("--prompts", type=int, default=int(env.get("PROMPTS", 4) or 4), help="prompts per step")
    parser.add_argument("--verbose", action="store_true",
                        default=env.get("VERBOSE", "").strip().lower() in ("1", "true", "yes"),
                        help="stream verl's full output to the console too")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}; Hydra overrides look like key=value")
    if args.steps < 1:
        parser.error(f"--steps / STEPS must be >= 1, got {args.steps}")
    if args.prompts < 1:
        parser.error(f"--prompts / PROMPTS must be >= 1, got {args.prompts}")
    if args.quantization not in SUPPORTED_QUANTIZATION:
        parser.error(f"--quantization / ROLLOUT_QUANT={args.quantization!r}: the hf_cpu rollout supports "
                     f"{', '.join(str(q) for q in SUPPORTED_QUANTIZATION if q)} (or nothing for bf16 weights)")
    return args, overrides


def _int_or_none(value):
    try:
        return int(str(value))
    except (TypeError, ValueError):  # null, "three", 1.5: the config check names the key
        return None


def checkpointed_step(overrides: list[str], cwd: Path) -> tuple[Optional[int], Optional[Path]]:
    """The step verl will resume from, read the way verl 0.9.1 does (``trainer.resume_mode``: ``auto`` reads
    ``latest_checkpointed_iteration.txt`` under ``trainer.default_local_dir`` and needs its ``global_step_N``
    folder; ``resume_path`` takes N from ``trainer.resume_from_path``; ``disable`` starts from scratch)."""
    mode = str(_override_value(overrides, "trainer.resume_mode") or "auto")
    if mode == "disable":
        return None, None
    if mode == "resume_path":
        path = _override_value(overrides, "trainer.resume_from_path")
        if not path or "global_step_" not in path:
            return None, None
        folder = (cwd / path).resolve()
        return _int_or_none(folder.name.split("global_step_")[-1]), folder
    root = _override_value(overrides, "trainer.default_local_dir")
    if not root:
        return None, None
    root = (cwd / root).resolve()
    tracker = root / "latest_checkpointed_iteration.txt"
    step = _int_or_none(tracker.read_text().strip()) if tracker.is_file() else None
    if step is None or not (root / f"global_step_{step}").is_dir():
        return None, None
    return step, root / f"global_step_{step}"


def _hydra_errors() -> tuple[type, ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return HydraException, OmegaConfBaseException


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) < 400 else text[:397] + "..."


class _Phase:
    """What the demo is doing, for the one line a Ctrl-C prints."""

    now = "checking the config"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # the launch (if any) is already stopped by console.run_logged, its Ray processes with it
        print(f"\n[demo] interrupted (Ctrl-C) while {_Phase.now}; stopped, nothing of the run left running",
              file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    args, user = parse_args(argv)
    run_dir = Path(args.run_dir).expanduser().resolve()
    metrics, log = run_dir / "metrics.jsonl", run_dir / "train.log"
    # verl's file logger truncates its file at every start: it writes this run's rows here, the demo appends
    # them to metrics.jsonl, which keeps every run's rows
    verl_metrics = run_dir / "verl_metrics.jsonl"
    preset = [] if _override_value(user, "algorithm") else ["algorithm=minirl"]
    logger_key = "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="
    cpu = [
        f"{logger_key}{verl_metrics}" if item.startswith(logger_key) else item
        for item in cpu_overrides(run_dir, steps=args.steps, lr=args.lr, prompts_per_step=args.prompts,
                                  group_size=GROUP_SIZE, quantization=args.quantization)
    ]
    # a Ray instance of the run's own (address=local): ray.init() would join a `ray start` cluster running on this
    # machine (and refuse the CPU settings' num_cpus), and stopping the run must not touch anyone else's Ray
    own_ray = [] if _override_value(user, "ray_kwargs.ray_init.address") else ["+ray_kwargs.ray_init.address=local"]
    overrides = [*preset, *cpu, *own_ray, *user]
    total = _int_or_none(_override_value(overrides, "trainer.total_training_steps") or args.steps)

    # A rerun whose checkpoint already reaches the requested steps would train nothing: say so, touch nothing.
    resume_from, folder = checkpointed_step(overrides, run_dir)
    if resume_from is not None and total is not None and resume_from >= total:
        print(f"[demo] nothing to do: the checkpoint {folder} is at step {resume_from}, and "
              f"trainer.total_training_steps={total}. Ask for more steps (STEPS / --steps / "
              f"trainer.total_training_steps) to resume from it, or trainer.resume_mode=disable to start over.")
        print(f"[demo] earlier runs' metrics: {metrics}")
        return 0

    run_dir.mkdir(parents=True, exist_ok=True)

    from transformers.utils import logging as hf_logging

    from verl_stable import validation
    from verl_stable.tasks.addition import DATA_SOURCE, build_dataset, cached_model_dir

    hf_logging.disable_progress_bar()  # "Writing model shards" bars for a one-shard tiny model

    # Data first (under a second), then the whole guarded config check in this process, before anything below
    # reads a setting: a mistake is refused in seconds -- before the model's short supervised warm-up and
    # before Ray. The trainer checks it again (with the model built, so its check runs there).
    build_dataset(run_dir / "data", seed=0)
    own_model = run_dir / "model"  # built below, after the check: only its own check waits for the trainer's pass
    model_pending = (_override_value(overrides, "actor_rollout_ref.model.path") == str(own_model)
                     and not (own_model / "config.json").exists())
    checks = tuple(c for c in validation.CHECKS if not (model_pending and c is validation.check_model))
    # importing verl here logs its platform choice and warns about optional engines: not for the console
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            error = validation.validate_overrides(overrides, checks=checks)
    except _hydra_errors() as exc:  # a typo'd key, a bad override: Hydra's own message, not its traceback
        print(f"verl-stable: refused before start-up, Hydra could not compose the config: {_one_line(exc)}",
              file=sys.stderr)
        return validation.EXIT_CONFIG_ERROR
    if error is not None:
        validation.report(error)
        return validation.EXIT_CONFIG_ERROR
    trainer = "legacy loop" if str(_override_value(user, "trainer.use_v1")).lower() == "false" else "v1 trainer"
    print(f"[demo] python -m verl_stable.main {' '.join(preset + user) or 'algorithm=minirl'}  (+ CPU settings)")
    rollout = _override_value(user, "actor_rollout_ref.rollout.name") or ROLLOUT_NAME
    weights = args.quantization or _override_value(user, "actor_rollout_ref.rollout.dtype") or "bf16"
    print(f"[demo] {_describe_model(_override_value(user, 'actor_rollout_ref.model.path'))}, addition, "
          f"{args.prompts} prompts x {GROUP_SIZE} per step, {total} steps, verl {trainer}, {rollout} rollout "
          f"({weights} weights)")
    print(f"[demo] run dir {run_dir}: train.log (verl's full output), metrics.jsonl, checkpoints/, hydra/")
    print("[demo] stale updates: actor_rollout_ref.actor.ppo_mini_batch_size=2 (2 updates per step); "
          "full output on screen: VERBOSE=1")
    _Phase.now = "building the model"
    # the seeded tiny model is the same every time: built once per run directory
    cached_model_dir(run_dir / "model", seed=0)

    # Nothing an earlier run wrote is lost: its log and verl's raw metrics move to train.1.log, ...
    kept = [console.rotate(path) for path in (log, verl_metrics)]
    hydra_kept = console.rotate(run_dir / "hydra") if (run_dir / "hydra").exists() else None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    fields = {"run_started": started, **({"resumed_from": resume_from} if resume_from is not None else {})}
    expected = None if total is None else total - (resume_from or 0)
    if resume_from is not None:
        print(f"[demo] resuming from the checkpoint at step {resume_from} ({folder}): steps {resume_from + 1} to "
              f"{total}; earlier rows stay in metrics.jsonl")
    if kept[0] is not None:
        print(f"[demo] the earlier run's log is kept as {kept[0].name}"
              + (f", its Hydra dir as {hydra_kept.name}" if hydra_kept else ""))

    _Phase.now = "starting Ray and verl's trainer"
    start = time.monotonic()
    rows: list[dict] = []
    # verl's validation (one sample per prompt: verl's val_kwargs.n default) of the addition task
    held_out = console.val_keys(DATA_SOURCE)

    def on_row(row: dict) -> None:
        _Phase.now = f"training (after step {row.get('step')})"
        rows.append(row)
        try:
            console.append_rows(metrics, [row], **fields)
        except OSError as exc:  # disk full, or the run dir deleted: keep going, say it at the end
            fields.setdefault("_lost", f"{type(exc).__name__}: {exc}")
        print(f"[demo] {console.step_line(row, total, held_out)}", flush=True)

    rc = console.run_trainer(
        overrides, cwd=run_dir, log_path=log, metrics_path=verl_metrics, on_row=on_row, verbose=args.verbose
    )
    elapsed = time.monotonic() - start
    if not run_dir.exists():
        print(f"[demo] the run directory {run_dir} was deleted while the run was going (exit {rc} after "
              f"{elapsed:.0f} s, {len(rows)} step(s) seen): its log, metrics and checkpoints are gone",
              file=sys.stderr)
        return rc or 1
    if "_lost" in fields:
        print(f"[demo] could not append to {metrics}: {fields['_lost']}", file=sys.stderr)
    if rc != 0:
        print(f"[demo] failed after {elapsed:.0f} s (exit {rc}), {len(rows)} step(s) done:", file=sys.stderr)
        ckpt_root = _override_value(overrides, "trainer.default_local_dir")
        console.print_failure(log, disks=[run_dir, *([run_dir / ckpt_root] if ckpt_root else [])])
        print(f"[demo] full log: {log}" + (f"; the steps done are in {metrics}" if rows else ""), file=sys.stderr)
        return rc
    if expected is not None and len(rows) < expected:
        print(f"[demo] verl exited after {len(rows)} of the {expected} step(s) asked for; full log: {log}",
              file=sys.stderr)
        return 1
    what = f"resumed at step {resume_from}, trained to step {total}" if resume_from is not None else "done"
    print(f"[demo] {what}: {len(rows)} steps in {elapsed:.0f} s")
    print(console.summary_table(rows, held_out))
    print(f"[demo] metrics: {metrics}   log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
