"""The first-node check: before a grid run, three short runs on one node and one verdict line per check.

    scripts/first_node_check.sh data.train_files=... data.val_files=... [hydra overrides]   # one 8-GPU node, vLLM
    VERL_PLATFORM=cpu scripts/first_node_check.sh                                          # the CPU recipe

Runs the smoke recipe (recipes/smoke/smoke.yaml; on ``VERL_PLATFORM=cpu`` the CPU recipe recipes/cpu/tiny_moe.yaml
with the hf_cpu rollout) for ``--steps`` steps (3) each as ``minirl``, ``minirl`` + R2 and ``minirl`` + R3, then:

* ``run <variant>``: the run finished every step.
* ``routes-arrive``: under R3 the coverage guard stayed quiet (no ``UnroutedTokensError``: the rollout engine
  returned a route for every token it should) and the π_old pass compared them on every step
  (``actor/routing/old_pass/...``); under R2 the update replayed the routes its π_old pass recorded
  (``actor/routing/agreement_mean`` on every step).
* ``r3-vs-r2-route-mismatch``: the routes each update replays, against the experts the rollout engine sampled
  with. R3 replays the rollout's own routes: mismatch 0 by construction. R2 replays the routes of its π_old pass
  (the training engine at the same weights as the rollout), and those differ from the rollout's exactly where the
  π_old pass's native routing differs from them: R3's ``actor/routing/old_pass/tokens_mismatch_any_layer`` (the
  fraction of tokens whose expert set differs in at least one MoE layer, verl_stable.routing.agreement), averaged over
  the steps. PASS when that is above 0, i.e. R3 removes a route mismatch that R2 would train with. A run with no
  mismatch at all has nothing to show: SKIP on CPU (where it means the two engines' numerics agree; the CPU path
  rolls out in the hf_cpu rollout's int4 so that they do not), FAIL on GPU (vLLM and the training engine never
  route identically at scale; suspect routes that are not the rollout's).
* ``memory-plan`` (GPU only): ``python -m verl_stable.apps.recipes dry-run smoke --json``'s ``per_gpu_peak_gb``
  against the largest ``actor/perf/max_memory_allocated_gb`` verl logged (the training engine's peak, from
  ``torch.cuda.max_memory_allocated``; the colocated vLLM engine's memory is its own process's and not in it).
  PASS when the measured peak is within the plan; the margin is printed.

Exit status 1 when any check FAILs; SKIP lines say why the check cannot run here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from verl_stable.apps.console import last_error, read_metrics, run_logged, step_line
from verl_stable.routing.agreement import METRICS

ROOT = Path(__file__).resolve().parents[2]
#: (variant, its overrides). The smoke recipe defaults to R3, so no-replay deletes the group; the CPU recipe has none.
VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("minirl", ("algorithm=minirl", "~routing_replay")),
    ("minirl_r2", ("algorithm=minirl", "routing_replay=R2")),
    ("minirl_r3", ("algorithm=minirl", "routing_replay=R3")),
)
OLD_PASS_MISMATCH = METRICS.logged(METRICS.TOKENS_MISMATCH_ANY_LAYER, METRICS.OLD_PASS)
OLD_PASS_UNROUTED = METRICS.logged(METRICS.TOKENS_WITHOUT_ROUTE, METRICS.OLD_PASS)
UPDATE_AGREEMENT = METRICS.logged(METRICS.AGREEMENT_MEAN)
PEAK_MEMORY = "actor/perf/max_memory_allocated_gb"
PLAN_FIELD = "per_gpu_peak_gb"


@dataclass(frozen=True)
class Verdict:
    status: str  # PASS, FAIL or SKIP
    check: str
    reason: str

    def line(self) -> str:
        return f"{self.status} {self.check}: {self.reason}"


@dataclass
class RunResult:
    variant: str
    rc: int
    rows: list[dict] = field(default_factory=list)
    log: Optional[Path] = None

    def values(self, key: str) -> list[float]:
        return [float(r["data"][key]) for r in self.rows if key in r.get("data", {})]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


# ------------------------------------------------------------------------------------------------ verdicts
def run_verdict(run: RunResult, steps: int) -> Verdict:
    done = [r.get("step") for r in run.rows]
    if run.rc == 0 and done == list(range(1, steps + 1)):
        return Verdict("PASS", f"run {run.variant}", f"{steps}/{steps} steps")
    why = " | ".join(last_error(run.log)[:3]) if run.log else ""
    return Verdict("FAIL", f"run {run.variant}", f"exit {run.rc}, steps {done} of {steps}; {why} (log: {run.log})")


def routes_verdict(r3: RunResult, r2: RunResult, steps: int) -> Verdict:
    if "UnroutedTokensError" in r3.log_text():
        return Verdict("FAIL", "routes-arrive", f"R3's coverage guard stopped the run: the rollout engine returned no "
                       f"routes for most tokens (UnroutedTokensError in {r3.log})")
    compared, replayed = r3.values(OLD_PASS_MISMATCH), r2.values(UPDATE_AGREEMENT)
    if len(compared) < steps:
        return Verdict("FAIL", "routes-arrive", f"R3 logged {OLD_PASS_MISMATCH} on {len(compared)} of {steps} steps: "
                       f"the rollout's routes did not reach the π_old pass (log: {r3.log})")
    if len(replayed) < steps:
        return Verdict("FAIL", "routes-arrive", f"R2 logged {UPDATE_AGREEMENT} on {len(replayed)} of {steps} steps: "
                       f"the recorded routes did not reach the update (log: {r2.log})")
    unrouted = max(r3.values(OLD_PASS_UNROUTED) or [0.0])
    return Verdict("PASS", "routes-arrive", f"R3: rollout routes on every step, coverage guard quiet (at most "
                   f"{unrouted:.2%} of tokens without a route: the final sampled tokens); R2: recorded routes replayed")


def mismatch_verdict(r3: RunResult, steps: int, on_gpu: bool) -> Verdict:
    name = "r3-vs-r2-route-mismatch"
    values = [v for v in r3.values(OLD_PASS_MISMATCH) if math.isfinite(v)]
    if len(values) < steps:
        return Verdict("FAIL", name, f"R3 logged a finite {OLD_PASS_MISMATCH} on {len(values)} of {steps} steps")
    mismatch = sum(values) / len(values)
    if mismatch > 0:
        return Verdict("PASS", name, f"routes replayed vs the rollout's: R3 0 (replays them), R2 {mismatch:.2%} of "
                       f"tokens (replays its π_old pass's; {OLD_PASS_MISMATCH}, mean of {steps} steps)")
    if on_gpu:
        return Verdict("FAIL", name, f"{OLD_PASS_MISMATCH} is 0 on every step: vLLM and the training engine routed "
                       "identically, which they do not at scale; check that R3's routes are the rollout engine's")
    return Verdict("SKIP", name, f"no train-inference route mismatch on CPU ({OLD_PASS_MISMATCH} = 0): the two engines' "
                   "numerics agree here, so R2 and R3 replay the same routes")


def memory_verdict(runs: Sequence[RunResult], plan_gb: Optional[float], plan_error: str, on_gpu: bool) -> Verdict:
    name = "memory-plan"
    if not on_gpu:
        return Verdict("SKIP", name, "GPU only: the CPU backend has no device memory to measure")
    if plan_gb is None:
        return Verdict("FAIL", name, f"no plan: {plan_error}")
    peaks = [v for run in runs for v in run.values(PEAK_MEMORY)]
    if not peaks:
        return Verdict("FAIL", name, f"no {PEAK_MEMORY} in the runs' metrics")
    peak = max(peaks)
    if not math.isfinite(peak) or peak <= 0:
        return Verdict("FAIL", name, f"{PEAK_MEMORY} is {peak}: nothing measured")
    margin = f"measured {peak:.1f} GB, plan {plan_gb:.1f} GB per GPU ({peak / plan_gb:.0%} of the plan)"
    if peak <= plan_gb:
        return Verdict("PASS", name, margin)
    return Verdict("FAIL", name, f"{margin}: the plan under-estimates; the grid cells may not fit")


def memory_plan(backend: str, python: str = sys.executable) -> tuple[Optional[float], str]:
    """``per_gpu_peak_gb`` of the smoke recipe's dry run, or None and why not."""
    cmd = [python, "-m", "verl_stable.apps.recipes", "dry-run", "smoke", "--backend", backend, "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    for text in [p.stdout, *reversed(p.stdout.splitlines())]:
        try:
            plan = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(plan, dict) and isinstance(plan.get(PLAN_FIELD), (int, float)):
            return float(plan[PLAN_FIELD]), ""
    tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[-1]
    return None, f"`{' '.join(cmd[1:])}` (exit {p.returncode}) gave no {PLAN_FIELD}: {tail}"


# ------------------------------------------------------------------------------------------------ launches
def _cpu_assets(run_dir: Path) -> Path:
    from verl_stable.tasks.addition import build_dataset, build_model_dir

    assets = run_dir / "assets"
    if not (assets / "model" / "config.json").exists():
        build_model_dir(assets / "model", seed=0)
        build_dataset(assets / "data", n_train=64, n_val=8, seed=0)
    return assets


def launch_overrides(run: Path, steps: int, on_gpu: bool) -> list[str]:
    metrics = run / "metrics.jsonl"
    common = [
        f"trainer.total_training_steps={steps}", "trainer.save_freq=-1", "trainer.test_freq=-1",
        "trainer.val_before_train=False", f"trainer.default_local_dir={run / 'checkpoints'}",
        f"hydra.run.dir={run / 'hydra'}",
        # verl's file logger reads its path in the Ray actor that trains
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}",
    ]
    if on_gpu:
        return common
    return [
        *common,
        # a train-inference mismatch for the R3 check to measure: the tiny MoE's top-2 of 4 experts routes alike
        # in bf16 and fp8 rollouts (0 mismatched tokens); the hf_cpu rollout's int4 (the CPU lab's default
        # mismatch setting, verl_stable.lab.model) gives ~10% of tokens
        "actor_rollout_ref.rollout.quantization=int4",
        # logical Ray resources for a local cluster (verl's placement groups want a GPU slot)
        "ray_kwargs.ray_init.num_cpus=8", "++ray_kwargs.ray_init.num_gpus=1",
        "++ray_kwargs.ray_init.include_dashboard=False", "++ray_kwargs.ray_init.object_store_memory=268435456",
    ]


def run_variant(variant: str, overrides: Sequence[str], *, recipe: Path, run_dir: Path, steps: int, on_gpu: bool,
                extra: Sequence[str], env: dict, verbose: bool = False) -> RunResult:
    run = run_dir / variant
    run.mkdir(parents=True, exist_ok=True)
    metrics = run / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    ov = [o for o in overrides if on_gpu or o != "~routing_replay"]  # the CPU recipe has no replay to delete
    cmd = [sys.executable, "-m", "verl_stable.main", f"--config-path={recipe.parent}", f"--config-name={recipe.stem}",
           *ov, *launch_overrides(run, steps, on_gpu), *extra]
    print(f"[first-node] {variant}: {' '.join(ov)}  (log: {run / 'train.log'})", flush=True)
    rc = run_logged(cmd, log_path=run / "train.log", metrics_path=metrics, verbose=verbose,
                    on_row=lambda row: print(f"[first-node]   {step_line(row, steps)}", flush=True),
                    env={**env, "VERL_FILE_LOGGER_PATH": str(metrics)}, cwd=ROOT)
    return RunResult(variant, rc, read_metrics(metrics), run / "train.log")


def check(run_dir: Path, *, steps: int, backend: str, extra: Sequence[str], verbose: bool = False) -> list[Verdict]:
    on_gpu = os.environ.get("VERL_PLATFORM", "") != "cpu"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if on_gpu:
        recipe = ROOT / "recipes" / "smoke" / "smoke.yaml"
        extra = [f"backend={backend}", *extra]
    else:
        recipe = ROOT / "recipes" / "cpu" / "tiny_moe.yaml"
        env["VERL_STABLE_RUN_DIR"] = str(_cpu_assets(run_dir))
    runs = {v: run_variant(v, ov, recipe=recipe, run_dir=run_dir, steps=steps, on_gpu=on_gpu, extra=extra, env=env,
                           verbose=verbose) for v, ov in VARIANTS}
    verdicts = [run_verdict(r, steps) for r in runs.values()]
    verdicts.append(routes_verdict(runs["minirl_r3"], runs["minirl_r2"], steps))
    verdicts.append(mismatch_verdict(runs["minirl_r3"], steps, on_gpu))
    plan_gb, plan_error = memory_plan(backend) if on_gpu else (None, "")
    verdicts.append(memory_verdict(list(runs.values()), plan_gb, plan_error, on_gpu))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/first_node_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=str(ROOT / "runs" / "first_node"), help="logs and metrics (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--backend", choices=("fsdp", "megatron"), default="fsdp", help="the smoke recipe's backend (GPU)")
    p.add_argument("--verbose", action="store_true", help="verl's full output on the console too")
    args, extra = p.parse_known_args(argv)
    if args.steps < 1:
        p.error(f"--steps {args.steps}: at least 1")
    verdicts = check(Path(args.run_dir).resolve(), steps=args.steps, backend=args.backend, extra=extra,
                     verbose=args.verbose)
    print("[first-node] verdicts")
    for v in verdicts:
        print(v.line())
    return 1 if any(v.status == "FAIL" for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
