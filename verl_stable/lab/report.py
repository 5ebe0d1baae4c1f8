"""The lab's Markdown report and its command line: ``report.md`` and ``summary.json`` of a lab run, from the
summaries (:mod:`verl_stable.lab.metrics`), the judged claims (:mod:`verl_stable.lab.findings`) and the figures
(:mod:`verl_stable.lab.plots`); nothing here is a hard-coded claim.

    python -m verl_stable.lab.report OUT     # redraw and rewrite the report of a finished `verl-stable lab` run
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

from verl_stable.lab.findings import COLLAPSE_RULE, MARGIN, METHOD, Finding, evaluate
from verl_stable.lab.metrics import Summary, finite_or_null, in_gradient_steps, mean_summary, run_dir, summarize
from verl_stable.lab.plots import BAND, draw, per_seed
from verl_stable.lab.variants import STEP_UNIT, Variant


def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _interval(iv: Mapping) -> str:
    """One paired comparison for the findings table: ``a − b: mean [lo, hi], K=k``."""
    spec = ".2e" if iv["metric"].startswith(("train_infer_kl", "staleness_kl")) else "+.3f"
    if not iv["diffs"]:
        return f"{iv['a']} − {iv['b']}: no seed in common"
    text = f"{iv['a']} − {iv['b']}: {format(iv['mean'], spec)}"
    if iv["lo"] is None:
        text += f", no interval (K={iv['k']})"
    else:
        text += f" [{format(iv['lo'], spec)}, {format(iv['hi'], spec)}], K={iv['k']}"
    return text + (f" (dropped from both: {', '.join(iv['dropped'])})" if iv["dropped"] else "")


def _collapsed_cell(by_seed: Mapping[int, Summary]) -> str:
    flags = [s.collapsed for s in by_seed.values()]
    if len(flags) == 1:
        return _fmt(flags[0]) if flags[0] is not None else "too short"
    short = sum(f is None for f in flags)
    return f"{sum(f is True for f in flags)} of {len(flags)}" + (f" ({short} too short)" if short else "")


def render(
    chosen: Sequence[Variant],
    summaries: Mapping[str, Mapping[int, Summary]],
    found: Sequence[Finding],
    meta: Mapping,
    plots: Sequence[Path],
) -> str:
    """The report; ``summaries`` is ``{variant: {seed: Summary}}`` (one seed: a single entry per variant)."""
    args, setup = meta.get("args", {}), meta.get("setup", {})
    size = args.get("size", {})
    seeds = list(meta.get("seeds") or [args.get("seed", "?")])
    several = len(seeds) > 1
    seed_text = (
        f"seeds {', '.join(map(str, seeds))} (K = {len(seeds)}; "
        + ("each cold start re-drawn per seed" if args.get("redraw_cold_start") else "the same cold start for every seed")
        + ")"
        if several
        else f"seed {seeds[0]}"
    )
    where = "runs/<variant>/seed<s>" if several else "runs/<variant>"
    lines = [
        "# verl-stable lab report",
        "",
        f"Task **{setup.get('name', '?')}** ({setup.get('task', '')}), model {setup.get('model', '')}; "
        + _sizes(size, meta.get("step_unit"))
        + f", rollout mismatch setting `{setup.get('mismatch', '?')}`, "
        f"held-out accuracy avg@{setup.get('eval_k', '?')}, {seed_text}, trainer path "
        f"`{args.get('trainer', '?')}`. Every {'(variant, seed)' if several else 'variant'} is one "
        f"`python -m verl_stable.main` run through verl's trainer "
        f"(`{where}/command.txt`); the numbers below are computed from verl's metrics "
        f"(`{where}/metrics.jsonl`). Total wall time {meta.get('wall_s', float('nan')):.0f} s"
        + (f", {args['jobs']} runs at a time (`--jobs`)." if args.get("jobs", 1) > 1 else "."),
        "",
        "## Results",
        "",
        "| variant | regime | steps | reward first → last | held-out first → last | train-infer KL | staleness KL "
        "| clip frac | entropy first → last | route agreement | collapsed | step / compute |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in chosen:
        s = mean_summary([summaries[v.name][seed] for seed in sorted(summaries[v.name])])
        lines.append(
            f"| {s.label} (`{s.name}`) | {s.regime} | {s.steps} | {_fmt(s.reward_first)} → {_fmt(s.reward_last)} "
            f"| {_fmt(s.heldout_first)} → {_fmt(s.heldout_last)} | {_fmt(s.train_infer_kl, '.2e')} "
            f"| {_fmt(s.staleness_kl, '.2e')} | {_fmt(s.clipfrac)} | {_fmt(s.entropy_first)} → {_fmt(s.entropy_last)} "
            f"| {_fmt(s.route_agreement)} | {_collapsed_cell(summaries[v.name])} "
            f"| {_fmt(s.overhead, '.2f')} |"
        )
    lines += [
        "",
        "*reward last* and *entropy last*: mean over the last third of the steps; *held-out*: verl's validation "
        "accuracy before training and at the last step; KLs, clip fraction and route agreement: means over steps "
        "(route agreement only for R2/R3 runs: mini-batch one agrees by construction under R2); *step / compute*: "
        "median of verl's `timing_s/step` over the sum of its compute phases (generation, reward, π_old pass, "
        "advantage, update, weight sync), every step after the first (it carries start-up); off-policy, a step is "
        "a rollout of N updates and the curves put its training numbers at its first update, its held-out "
        "accuracy at its last."
        + (
            f" With {len(seeds)} seeds every number is the mean over the seeds and *collapsed* counts the seeds "
            "that collapsed (k of K); each seed's own numbers are in `summary.json` (`per_seed`)."
            if several
            else ""
        ),
        "",
        "## The paper's findings, checked",
        "",
        f"Method: {METHOD}. *difference*: the claim's variant A minus the variant B it is compared with, on the "
        "claim's metric (held-out accuracy, else the last-third training reward; the step-1 training-inference KL "
        f"for the KL claim; for the cold starts, final spread minus max(2 x {MARGIN}, start spread)). "
        f"Collapse: the training reward fell below half its best 3-step mean for the last third of the run; "
        f"{COLLAPSE_RULE}.",
        "",
        "| finding (arXiv 2512.01374) | here | difference A − B: mean [95% interval], K seeds | evidence |",
        "|---|---|---|---|",
    ]
    tested = [f for f in found if f.status != "not tested"]
    lines += [
        f"| {f.claim} | **{f.verdict}** | {'; '.join(_interval(iv) for iv in f.intervals) or '-'} "
        f"| {(f.notes if f.intervals else f.evidence) or '-'} |"
        for f in tested
    ]
    if not tested:
        lines.append("| (no finding is testable with the variants run) | | | |")
    untested = [f for f in found if f.status == "not tested"]
    if untested:
        lines += ["", "Not tested by the variants run (`verl-stable lab --full` runs them all):", ""]
        lines += [f"- {f.claim} ({f.evidence})" for f in untested]
    counts = {
        k: sum(f.status == k for f in found) for k in ("reproduced", "not reproduced", "inconclusive", "not tested")
    }
    n_collapsed = sum(s.collapsed is True for v in chosen for s in summaries[v.name].values())
    lines += [
        "",
        f"Summary: {counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, "
        f"{counts['inconclusive']} inconclusive, {counts['not tested']} not tested (variants not run). "
        + (
            f"{n_collapsed} run(s) collapsed{' (variant x seed)' if several else ''}. "
            if n_collapsed
            else "No run collapsed: at this scale (a few steps, a tiny model, short answers) the instabilities the paper "
            "reports over hundreds of large-model steps may not develop, so a missing collapse is not evidence "
            "against the paper. "
        )
        + (
            ""
            if several
            else "One seed gives no interval, so no finding gets a verdict: `--seeds K` runs every variant K times. "
        )
        + "Run `verl-stable lab --full` (more variants, longer runs) for a stronger test.",
        "",
        "## Plots",
        "",
    ]
    if several:
        lines += [f"Each curve is the mean over the seeds; the band is the {BAND}.", ""]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += [
        "",
        "## Determinism",
        "",
        "Data, model initialisation, cold-start SFT and verl's seeds (`data.seed`, `actor_rollout_ref.rollout.seed`, "
        "`actor_rollout_ref.actor.data_loader_seed`) are the same for every variant of a seed (with several "
        "seeds, each seed sets verl's three; data and cold start stay the same unless the cold start is re-drawn "
        "per seed, `--redraw-cold-start`). The `hf_cpu` rollout seeds "
        "each request from (seed, prompt, how often the prompt was asked), so a rerun samples the same responses "
        "from the same weights: step 1's samples and the held-out accuracy before training repeat exactly"
        + (" (the variants of a seed share that evaluation: it ran once)" if meta.get("baseline_eval") else "")
        + _determinism(args),
        "",
        f"Platform: {json.dumps(meta.get('platform', {}))}.",
        "",
    ]
    return "\n".join(lines)


def _sizes(size: Mapping, unit: str | None) -> str:
    steps, prompts, group = size.get("steps", "?"), size.get("prompts_per_step", "?"), size.get("group_size", "?")
    if unit == STEP_UNIT:
        return (
            f"{steps} gradient steps per variant of {prompts} prompts x {group} responses each (off-policy N: "
            f"{steps} / N rollouts of N x {prompts} prompts, N updates per rollout; the steps below count updates)"
        )
    return (
        f"{steps} GRPO steps per variant, {prompts} prompts x {group} responses per step (off-policy N: each "
        "rollout split into N smaller updates; this run predates the lab's equal-update sizing)"
    )


def _determinism(args: Mapping) -> str:
    """What repeats after step 1: every number where the lab ordered the batches and fixed the thread count."""
    if "threads" not in args:
        return _completion_ordered("this run predates the lab's content-ordered batches and fixed thread count")
    if args.get("trainer") == "v1":
        return _completion_ordered("`--trainer v1` runs verl's own sampler")
    return _repeats(args["threads"])


def _repeats(threads) -> str:
    return (
        ". The trainer gets each step's batch in an order that is a function of its content (prompts in "
        "submission order, a prompt's responses by their tokens; verl's own sampler hands them over in the order "
        "they finished) and every verl process runs on "
        + f"{threads} thread(s) (`--threads`), whatever `OMP_NUM_THREADS` the shell exports, so a rerun on the same "
        "machine repeats every run bit for bit. Another machine's kernels, or another `--threads`, sum the bf16 "
        "update in another order: the weights differ in their last bits from the first update on, and at a high lr "
        "those differences can grow into different runs. A verdict rests on the intervals over seeds, not on one "
        "machine's runs."
    )


def _completion_ordered(why: str) -> str:
    return (
        f". Not bit for bit after that: {why}, which hands the "
        "trainer each batch in the order the rollouts finished, and off-policy that decided which trajectories "
        "shared a mini-batch, so reruns of it differ from the first update on."
    )


NULL_MEANS = "null: not measured (the run reported no such metric) or not finite (NaN/inf, which JSON cannot hold)"


def _failed(meta: Mapping) -> set[tuple[str, int]]:
    """(variant, seed) runs that exited non-zero, from the run's meta (both layouts)."""
    bad = set()
    runs = meta.get("runs")
    for name, info in (runs.items() if isinstance(runs, Mapping) else ()):
        for seed, one in (info.get("seeds") or {}).items():
            if one.get("returncode", 0) != 0:
                bad.add((name, int(seed)))
        if "seeds" not in info and info.get("returncode", 0) != 0:
            bad.add((name, int((meta.get("seeds") or [meta.get("args", {}).get("seed", 0)])[0])))
    return bad


def write(out: Path, chosen: Sequence[Variant], runs: Mapping, meta: Mapping) -> Path:
    """Plots under ``out/plots``, ``out/summary.json`` and ``out/report.md``; returns the report's path.
    ``runs``: ``{variant: {seed: rows}}``, or one seed's ``{variant: rows}``. A (variant, seed) whose run failed
    (meta's returncode) is tabled but left out of the findings: its seed is dropped from the pairs."""
    out = Path(out)
    meta = dict(meta)
    if not any(isinstance(v, Mapping) for v in runs.values()):
        seed = int((meta.get("seeds") or [meta.get("args", {}).get("seed", 0)])[0])
        runs = {name: {seed: rows} for name, rows in runs.items()}
    runs = per_seed(runs)
    gradient = meta.get("step_unit") == STEP_UNIT
    if gradient:  # every variant on one axis: updates made
        n_of = {v.name: v.n_minibatches for v in chosen}
        runs = {name: {s: in_gradient_steps(rows, n_of.get(name, 1)) for s, rows in by.items()} for name, by in runs.items()}
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    meta.setdefault("seeds", seeds or [meta.get("args", {}).get("seed", 0)])
    summaries = {
        v.name: {s: summarize(v, rows) for s, rows in sorted(runs.get(v.name, {}).items())}
        or {meta["seeds"][0]: summarize(v, ())}
        for v in chosen
    }
    failed = _failed(meta)
    judged = {name: {s: x for s, x in by_seed.items() if (name, s) not in failed} for name, by_seed in summaries.items()}
    found = evaluate(judged)
    plots = draw(out, chosen, runs, xlabel="gradient step (off-policy: N per rollout)" if gradient else "step")
    (out / "summary.json").write_text(
        json.dumps(
            finite_or_null(
                {
                    "null": NULL_MEANS,
                    "meta": meta,
                    "variants": {k: vars(mean_summary([v[s] for s in sorted(v)])) for k, v in summaries.items()},
                    "per_seed": {k: {str(s): vars(x) for s, x in v.items()} for k, v in summaries.items()},
                    "findings": [{**vars(f), "verdict": f.verdict} for f in found],
                }
            ),
            indent=2,
            default=str,
            allow_nan=False,  # a bare NaN is not JSON: jq, JavaScript and strict parsers refuse the file
        )
    )
    path = out / "report.md"
    path.write_text(render(chosen, summaries, found, meta, plots))
    return path


def rewrite(out: Path) -> Path:
    """Redraw the plots and rewrite the report of a finished lab run from what it saved (``summary.json``'s
    run list, seeds and meta, each ``runs/<variant>[/seed<s>]/metrics.jsonl``), on the grid as
    :mod:`verl_stable.lab.variants` declares it now: ``python -m verl_stable.lab.report OUT``."""
    from verl_stable.apps.console import read_metrics
    from verl_stable.lab import variants as vt
    from verl_stable.lab.setup import default_setup

    out = Path(out)
    saved = out / "summary.json"
    if not saved.exists():
        raise FileNotFoundError(f"{saved} not found: not the output directory of a finished `verl-stable lab` run")
    meta = json.loads(saved.read_text())["meta"]
    table = vt.grid(default_setup().cold_starts)
    unknown = [name for name in meta["runs"] if name not in table]
    if unknown:
        raise ValueError(
            f"{out} ran variant(s) {unknown} that the lab's grid no longer has (known: {', '.join(table)})"
        )
    chosen = [table[name] for name in meta["runs"]]
    seeds = [int(s) for s in meta.get("seeds") or [meta.get("args", {}).get("seed", 0)]]
    runs = {}
    for v in chosen:
        ran = meta["runs"][v.name].get("seeds")
        runs[v.name] = {
            s: read_metrics(run_dir(out, v.name, s, seeds) / "metrics.jsonl")
            for s in seeds
            if ran is None or str(s) in ran
        }
    from verl_stable.lab.run import share_baseline_evals

    share_baseline_evals(runs, {(b["variant"], int(b["seed"])): b["from"] for b in meta.get("baseline_eval", ())})
    return write(out, chosen, runs, meta)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m verl_stable.lab.report",
        description="Redraw the plots and rewrite report.md / summary.json of a finished `verl-stable lab` run.",
    )
    parser.add_argument("out", type=Path, help="the lab run's output directory (lab --out)")
    args = parser.parse_args(argv)
    try:
        print(rewrite(args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"python -m verl_stable.lab.report: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
