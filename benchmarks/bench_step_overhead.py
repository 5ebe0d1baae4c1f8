"""Per-step wall time against the compute it contains, for verl's v1 trainer as shipped and the lab's path.

    python benchmarks/bench_step_overhead.py [--steps 6] [--paths v1,v1-fast[,legacy]] [--out /tmp/bench-overhead]

Runs the lab's ``minirl`` variant (same seed, data, model, sizes) once per trainer path, in this one
invocation, through ``python -m verl_stable.main``, and reads verl's ``timing_s/*`` metrics. For every step
after the first (start-up):

* ``step``: verl's ``timing_s/step`` (the whole step: sample, π_old pass, advantage, update, weight sync);
* ``compute``: the sum of the phases that compute -- generation, reward, π_old pass (``old_log_prob``),
  advantage, actor update, weight sync (``update_weights``). verl's v1 ``gen`` phase is the wait for the
  replay buffer, which polls every 2 s, so it measures the poll rather than the generation; the generation
  compute is therefore taken from the path whose poll is shortest (``v1-fast``: 0.02 s poll, so its ``gen``
  is the generation plus at most one poll) for both rows; the legacy loop's ``gen`` is the generation call
  itself.

It prints, per path, the medians and ``step / compute`` (the lab keeps this <= 1.3 on its default path).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from verl_stable.lab import metrics, run
from verl_stable.lab import variants as vt
from verl_stable.lab.setup import default_setup

COMPUTE = tuple(p for p in metrics.PHASES if p != "gen")


def medians(rows: list[dict]) -> dict[str, float]:
    later = [r["data"] for r in rows if r.get("step", 0) >= 2 and "timing_s/step" in r["data"]]
    if not later:
        raise SystemExit("no step after the first logged timing_s/step: run more --steps")
    out = {
        "step": statistics.median(d["timing_s/step"] for d in later),
        "gen": statistics.median(d.get("timing_s/gen", 0.0) for d in later),
    }
    out["other"] = statistics.median(sum(d.get(f"timing_s/{p}", 0.0) for p in COMPUTE) for d in later)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--paths", default="v1,v1-fast", help="trainer paths, comma list of " + ",".join(run.TRAINER_PATHS)
    )
    parser.add_argument("--out", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--variant", default="minirl")
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-overhead-"))
    setup = default_setup()
    variant = vt.grid(setup.cold_starts)[args.variant]
    size = vt.GridSize(steps=args.steps, prompts_per_step=4, eval_every=10**6)
    train, val = setup.build_data(out / "data", seed=0)
    model = setup.build_model(out / "models" / variant.cold_start, cold_start=variant.cold_start)

    results = {}
    for i, path in enumerate(paths, 1):
        lab_args = run.Args(out=out, size=size, trainer=path)
        run_dir = out / "runs" / path
        base = run.base_overrides(lab_args, setup, run_dir=run_dir, model_dir=model, train=train, val=val)
        overrides = [
            *run.variant_overrides(variant, lab_args, base),
            "trainer.val_before_train=False",
            "trainer.test_freq=-1",
        ]
        result = run.run_variant(variant, overrides, run_dir, index=i, count=len(paths), size=size)
        if result.returncode != 0:
            return result.returncode
        results[path] = medians(result.rows)

    # generation compute: the gen phase of the path with the shortest wait (v1-fast, else legacy, else own)
    gen_ref = next((p for p in ("v1-fast", "legacy") if p in results), None)
    print(
        f"\nstep overhead, {args.variant}, {args.steps} steps, medians over steps 2..{args.steps} "
        f"(generation compute from {gen_ref or 'each path'}'s gen phase)"
    )
    print(f"{'path':<9} {'step_s':>7} {'gen_s':>7} {'other_compute_s':>16} {'compute_s':>10} {'step/compute':>13}")
    for path, m in results.items():
        gen = results[gen_ref]["gen"] if gen_ref else m["gen"]
        compute = gen + m["other"]
        print(
            f"{path:<9} {m['step']:>7.2f} {m['gen']:>7.2f} {m['other']:>16.2f} {compute:>10.2f} "
            f"{m['step'] / compute:>13.2f}"
        )
    print(f"runs: {out / 'runs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
