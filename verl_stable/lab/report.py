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

from verl_stable.lab.findings import MARGIN, Finding, evaluate
from verl_stable.lab.metrics import Summary, finite_or_null, summarize
from verl_stable.lab.plots import draw
from verl_stable.lab.variants import Variant


def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def render(
    chosen: Sequence[Variant],
    summaries: Mapping[str, Summary],
    found: Sequence[Finding],
    meta: Mapping,
    plots: Sequence[Path],
) -> str:
    args, setup = meta.get("args", {}), meta.get("setup", {})
    size = args.get("size", {})
    lines = [
        "# verl-stable lab report",
        "",
        f"Task **{setup.get('name', '?')}** ({setup.get('task', '')}), model {setup.get('model', '')}; "
        f"{size.get('steps', '?')} GRPO steps per variant, {size.get('prompts_per_step', '?')} prompts x "
        f"{size.get('group_size', '?')} responses per step, rollout mismatch setting `{setup.get('mismatch', '?')}`, "
        f"held-out accuracy avg@{setup.get('eval_k', '?')}, seed {args.get('seed', '?')}, trainer path "
        f"`{args.get('trainer', '?')}`. Every variant is one `python -m verl_stable.main` run through verl's trainer "
        f"(`runs/<variant>/command.txt`); the numbers below are computed from verl's metrics "
        f"(`runs/<variant>/metrics.jsonl`). Total wall time {meta.get('wall_s', float('nan')):.0f} s.",
        "",
        "## Results",
        "",
        "| variant | regime | steps | reward first → last | held-out first → last | train-infer KL | staleness KL "
        "| clip frac | entropy first → last | route agreement | collapsed | step / compute |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in chosen:
        s = summaries[v.name]
        lines.append(
            f"| {s.label} (`{s.name}`) | {s.regime} | {s.steps} | {_fmt(s.reward_first)} → {_fmt(s.reward_last)} "
            f"| {_fmt(s.heldout_first)} → {_fmt(s.heldout_last)} | {_fmt(s.train_infer_kl, '.2e')} "
            f"| {_fmt(s.staleness_kl, '.2e')} | {_fmt(s.clipfrac)} | {_fmt(s.entropy_first)} → {_fmt(s.entropy_last)} "
            f"| {_fmt(s.route_agreement)} | {_fmt(s.collapsed) if s.collapsed is not None else 'too short'} "
            f"| {_fmt(s.overhead, '.2f')} |"
        )
    lines += [
        "",
        "*reward last* and *entropy last*: mean over the last third of the steps; *held-out*: verl's validation "
        "accuracy before training and at the last step; KLs, clip fraction and route agreement: means over steps "
        "(route agreement only for R2/R3 runs: mini-batch one agrees by construction under R2); *step / compute*: "
        "median of verl's `timing_s/step` over the sum of its compute phases (generation, reward, π_old pass, "
        "advantage, update, weight sync), steps 2 on (step 1 carries start-up).",
        "",
        "## The paper's findings, checked",
        "",
        f"A comparison counts only beyond a gap of {MARGIN} (one seed, a tiny model: smaller gaps are noise). A "
        "collapse means the training reward fell below half its best 3-step mean for the last third of the run.",
        "",
        "| finding (arXiv 2512.01374) | here | evidence |",
        "|---|---|---|",
    ]
    tested = [f for f in found if f.status != "not tested"]
    lines += [f"| {f.claim} | **{f.status}** | {f.evidence} |" for f in tested]
    if not tested:
        lines.append("| (no finding is testable with the variants run) | | |")
    untested = [f for f in found if f.status == "not tested"]
    if untested:
        lines += ["", "Not tested by the variants run (`verl-stable lab --full` runs them all):", ""]
        lines += [f"- {f.claim} ({f.evidence})" for f in untested]
    counts = {
        k: sum(f.status == k for f in found) for k in ("reproduced", "not reproduced", "inconclusive", "not tested")
    }
    n_collapsed = sum(summaries[v.name].collapsed is True for v in chosen)
    lines += [
        "",
        f"Summary: {counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, "
        f"{counts['inconclusive']} inconclusive, {counts['not tested']} not tested (variants not run). "
        + (
            f"{n_collapsed} run(s) collapsed. "
            if n_collapsed
            else "No run collapsed: at this scale (a few steps, a tiny model, short answers) the instabilities the paper "
            "reports over hundreds of large-model steps may not develop, so a missing collapse is not evidence "
            "against the paper. "
        )
        + "Run `verl-stable lab --full` (more variants, longer runs) for a stronger test.",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += [
        "",
        "## Determinism",
        "",
        "Data, model initialisation, cold-start SFT and verl's seeds (`data.seed`, `actor_rollout_ref.rollout.seed`, "
        "`actor_rollout_ref.actor.data_loader_seed`) are the same for every variant. The `hf_cpu` rollout seeds "
        "each request from (seed, prompt, how often the prompt was asked), so a rerun samples the same responses "
        "from the same weights: step 1 and the held-out accuracy before training repeat exactly. Not bit for bit "
        "after that: the trainer's bf16 update sums the batch in the order verl's replay buffer returns it, which "
        "varies, so later weights differ at ~1e-3 relative and a rare sample flips; rewards stay within a response "
        "or two, the KLs vary more (tests/lab/test_lab_e2e_on_cpu.py states the tolerances).",
        "",
        f"Platform: {json.dumps(meta.get('platform', {}))}.",
        "",
    ]
    return "\n".join(lines)


NULL_MEANS = "null: not measured (the run reported no such metric) or not finite (NaN/inf, which JSON cannot hold)"


def write(out: Path, chosen: Sequence[Variant], runs: Mapping[str, Sequence[dict]], meta: Mapping) -> Path:
    """Plots under ``out/plots``, ``out/summary.json`` and ``out/report.md``; returns the report's path."""
    out = Path(out)
    summaries = {v.name: summarize(v, runs.get(v.name, ())) for v in chosen}
    found = evaluate(summaries)
    plots = draw(out, chosen, runs)
    (out / "summary.json").write_text(
        json.dumps(
            finite_or_null(
                {
                    "null": NULL_MEANS,
                    "meta": meta,
                    "variants": {k: vars(v) for k, v in summaries.items()},
                    "findings": [vars(f) for f in found],
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
    run list and meta, each ``runs/<variant>/metrics.jsonl``), on the grid as :mod:`verl_stable.lab.variants`
    declares it now: ``python -m verl_stable.lab.report OUT``."""
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
    runs = {v.name: read_metrics(out / "runs" / v.name / "metrics.jsonl") for v in chosen}
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
