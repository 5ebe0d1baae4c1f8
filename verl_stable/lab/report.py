"""The lab's plots and Markdown report, computed from verl's metrics (nothing here is a hard-coded claim).

:func:`write` draws every metric that matters for the paper's argument against the step, variants overlaid
(matplotlib, Agg backend), summarises each variant in a results table and checks the paper's findings
(docs/method.md §4) that the variants run can test: each check says *reproduced*, *not reproduced* or *not
tested*, with the numbers it compared. At laptop scale differences are small and one seed is noisy: a
comparison only counts when the gap exceeds :data:`MARGIN`, and a collapse is called only when the reward
really falls (:func:`collapsed`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from verl_stable.lab.variants import Variant

#: A comparison between two variants' scores counts only beyond this gap (accuracy / reward units).
MARGIN = 0.02
#: A KL counts as lower only below (1 - KL_MARGIN) x the other.
KL_MARGIN = 0.05
#: Phases of a step that compute (verl's timing_s/*): generation, reward, π_old pass, advantage, update, sync.
PHASES = ("gen", "reward", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor", "update_weights")

_VAL = re.compile(r"^val-core/.+/(acc|reward)/mean@(\d+)$")
_LAYER = re.compile(r"^actor/routing/(old_pass/)?agreement_layer_(\d+)$")


@dataclass(frozen=True)
class Plot:
    file: str
    title: str
    keys: tuple[str, ...]  # first key present in a row wins
    ylabel: str
    log: bool = False


PLOTS: tuple[Plot, ...] = (
    Plot("reward.png", "Training reward (mean over the step's responses)", ("critic/score/mean",), "reward"),
    Plot("heldout_accuracy.png", "Held-out accuracy (avg@k, verl validation)", ("<val>",), "accuracy"),
    Plot("entropy.png", "Policy entropy", ("actor/entropy",), "entropy (nats)"),
    Plot(
        "train_infer_kl.png",
        "Training-inference KL: k3 estimate of D_KL[mu_old || pi_old]  (rollout_corr/k3_kl)",
        ("rollout_corr/k3_kl",),
        "k3 KL",
        log=True,
    ),
    Plot(
        "staleness_kl.png",
        "Staleness KL  pi_theta vs pi_old  (actor/staleness_kl_k3)",
        ("actor/staleness_kl_k3",),
        "k3 KL",
        log=True,
    ),
    Plot(
        "clip_fraction.png", "Clipped (masked) token fraction (actor/pg_clipfrac)", ("actor/pg_clipfrac",), "fraction"
    ),
)
#: overview.png: held-out accuracy, reward, training-inference KL and entropy, one panel each
OVERVIEW = ("heldout_accuracy.png", "reward.png", "train_infer_kl.png", "entropy.png")


# ----------------------------------------------------------------------------------------------- series
def val_key(data: Mapping) -> str | None:
    for key in data:
        if _VAL.match(key):
            return key
    return None


def series(rows: Sequence[dict], keys: Sequence[str]) -> list[tuple[int, float]]:
    """(step, value) for the first of ``keys`` each row has; ``"<val>"`` is the held-out accuracy key."""
    out = []
    for row in rows:
        data = row.get("data", {})
        for key in keys:
            key = val_key(data) if key == "<val>" else key
            if key is not None and key in data and isinstance(data[key], (int, float)):
                out.append((int(row["step"]), float(data[key])))
                break
    return out


def layer_series(rows: Sequence[dict]) -> dict[str, list[tuple[int, float]]]:
    """Per-layer route agreement: ``{"update layer 0": [...], "pi_old pass layer 0": [...], ...}``."""
    found: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.get("data", {}).items():
            m = _LAYER.match(key)
            if m:
                name = f"{'pi_old pass' if m.group(1) else 'update'} layer {m.group(2)}"
                found.setdefault(name, []).append((int(row["step"]), float(value)))
    return dict(sorted(found.items()))


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def tail_mean(points: Sequence[tuple[int, float]], frac: float = 1 / 3) -> float:
    """Mean over the last ``frac`` of the points (at least one)."""
    if not points:
        return float("nan")
    n = max(1, math.ceil(len(points) * frac))
    return _mean(v for _, v in points[-n:])


def collapsed(rewards: Sequence[tuple[int, float]], entropy: Sequence[tuple[int, float]] = ()) -> bool | None:
    """A collapse, as the paper sees one: the training reward falls well below its own best and stays there
    (last-third mean < half the best 3-step running mean, best >= 0.1), or a metric went non-finite.
    None when the run is too short to tell (< 6 steps)."""
    values = [v for _, v in rewards]
    if any(not math.isfinite(v) for v in values) or any(not math.isfinite(v) for _, v in entropy):
        return True
    if len(values) < 6:
        return None
    running = [_mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    best = max(running)
    return best >= 0.1 and tail_mean(rewards) < 0.5 * best


def step_overhead(rows: Sequence[dict], first_step: int = 2) -> float:
    """Median over steps from ``first_step`` on (step 1 carries start-up) of timing_s/step / sum of compute phases."""
    ratios = []
    for row in rows:
        if int(row.get("step", 0)) < first_step:
            continue
        data = row.get("data", {})
        step = data.get("timing_s/step")
        phases = sum(data.get(f"timing_s/{p}", 0.0) for p in PHASES)
        if step and phases > 0:
            ratios.append(step / phases)
    if not ratios:
        return float("nan")
    ratios.sort()
    return ratios[len(ratios) // 2]


@dataclass
class Summary:
    name: str
    label: str
    regime: str
    steps: int
    reward_first: float
    reward_last: float
    heldout_first: float
    heldout_last: float
    train_infer_kl: float
    train_infer_kl_step1: float  # same weights and samples in every variant of a seed: a paired comparison
    staleness_kl: float
    clipfrac: float
    entropy_first: float
    entropy_last: float
    route_agreement: float
    collapsed: bool | None
    overhead: float

    @property
    def score(self) -> float:
        """What comparisons use: the last held-out accuracy, else the last-third training reward."""
        return self.heldout_last if math.isfinite(self.heldout_last) else self.reward_last


def summarize(variant: Variant, rows: Sequence[dict]) -> Summary:
    reward = series(rows, ("critic/score/mean",))
    heldout = series(rows, ("<val>",))
    entropy = series(rows, ("actor/entropy",))
    agreement = series(rows, ("actor/routing/agreement_mean",))
    kl = series(rows, ("rollout_corr/k3_kl",))
    return Summary(
        name=variant.name,
        label=variant.label,
        regime=variant.regime,
        steps=len(reward),
        reward_first=reward[0][1] if reward else float("nan"),
        reward_last=tail_mean(reward),
        heldout_first=heldout[0][1] if heldout else float("nan"),
        heldout_last=heldout[-1][1] if heldout else float("nan"),
        train_infer_kl=_mean(v for _, v in kl),
        train_infer_kl_step1=next((v for step, v in kl if step == 1), float("nan")),
        staleness_kl=_mean(v for _, v in series(rows, ("actor/staleness_kl_k3",))),
        clipfrac=_mean(v for _, v in series(rows, ("actor/pg_clipfrac",))),
        entropy_first=entropy[0][1] if entropy else float("nan"),
        entropy_last=tail_mean(entropy),
        route_agreement=_mean(v for _, v in agreement),
        collapsed=collapsed(reward, entropy),
        overhead=step_overhead(rows),
    )


# ----------------------------------------------------------------------------------------------- findings
@dataclass
class Finding:
    claim: str
    status: str  # "reproduced" | "not reproduced" | "not tested" | "inconclusive"
    evidence: str


#: A finding that "A beats B" read off _cmp(A, B).
_VERDICT = {"better": "reproduced", "worse": "not reproduced", "tie": "inconclusive"}


def _cmp(a: Summary, b: Summary, what: str = "score") -> tuple[str, str]:
    """('better'|'worse'|'tie', text) for a vs b on ``what``, with MARGIN."""
    x, y = getattr(a, what), getattr(b, what)
    text = f"{a.name} {x:.3f} vs {b.name} {y:.3f}"
    if not (math.isfinite(x) and math.isfinite(y)):
        return "tie", text + " (missing)"
    if x > y + MARGIN:
        return "better", text
    if x < y - MARGIN:
        return "worse", text
    return "tie", text + f" (within {MARGIN})"


def _collapse_word(s: Summary) -> str:
    return {True: "collapsed", False: "did not collapse", None: "too short to tell"}[s.collapsed]


def findings(s: Mapping[str, Summary], cold_names: Sequence[str] = ()) -> list[Finding]:
    out: list[Finding] = []

    def have(*names: str) -> bool:
        return all(n in s for n in names)

    def missing(claim: str, *names: str) -> Finding:
        return Finding(claim, "not tested", "needs variants " + ", ".join(n for n in names if n not in s))

    # on-policy
    claim = "On-policy, MiniRL is best: it beats w/o train-infer IS, w/ length-norm and + R3"
    rivals = [n for n in ("minirl_no_is", "minirl_length_norm", "minirl_r3") if n in s]
    if "minirl" in s and rivals:
        results = [_cmp(s["minirl"], s[n]) for n in rivals]
        status = (
            "reproduced"
            if all(r == "better" for r, _ in results)
            else "not reproduced"
            if any(r == "worse" for r, _ in results)
            else "inconclusive"
        )
        out.append(Finding(claim, status, "; ".join(t for _, t in results)))
    else:
        out.append(missing(claim, "minirl", "minirl_no_is"))

    claim = "On-policy, w/o train-infer IS collapses (reward falls, entropy drops)"
    if have("minirl_no_is"):
        c = s["minirl_no_is"].collapsed
        out.append(
            Finding(
                claim,
                {True: "reproduced", False: "not reproduced", None: "inconclusive"}[c],
                f"minirl_no_is {_collapse_word(s['minirl_no_is'])}: reward {s['minirl_no_is'].reward_first:.3f}"
                f" -> {s['minirl_no_is'].reward_last:.3f}, entropy {s['minirl_no_is'].entropy_first:.3f} -> "
                f"{s['minirl_no_is'].entropy_last:.3f}",
            )
        )
    else:
        out.append(missing(claim, "minirl_no_is"))

    claim = "On-policy, length normalisation trains worse than MiniRL"
    if have("minirl", "minirl_length_norm"):
        r, t = _cmp(s["minirl"], s["minirl_length_norm"])
        out.append(Finding(claim, _VERDICT[r], t))
    else:
        out.append(missing(claim, "minirl", "minirl_length_norm"))

    claim = "R3 lowers the training-inference KL (on-policy)"
    if have("minirl", "minirl_r3"):
        # Step 1 is paired: both runs start from the same weights and sample the same responses, so the KL
        # differs only by the routes the π_old pass uses. Later steps' KLs follow diverged weights and spike
        # by 10x from step to step: their means are shown, not judged.
        a, b = s["minirl_r3"].train_infer_kl_step1, s["minirl"].train_infer_kl_step1
        text = (
            f"step-1 rollout_corr/k3_kl (same weights and samples): minirl_r3 {a:.3e} vs minirl {b:.3e}; means "
            f"over steps {s['minirl_r3'].train_infer_kl:.2e} vs {s['minirl'].train_infer_kl:.2e}"
        )
        if not (math.isfinite(a) and math.isfinite(b)):
            verdict = "inconclusive"
        else:
            verdict = "reproduced" if a < b * (1 - KL_MARGIN) else "not reproduced"
            text += f" (counts below {1 - KL_MARGIN:.2f}x)"
        out.append(Finding(claim, verdict, text))
    else:
        out.append(missing(claim, "minirl", "minirl_r3"))

    claim = "R3 brings no gain on-policy (score within the margin of MiniRL, or lower)"
    if have("minirl", "minirl_r3"):
        r, t = _cmp(s["minirl_r3"], s["minirl"])
        out.append(Finding(claim, "not reproduced" if r == "better" else "reproduced", t))
    else:
        out.append(missing(claim, "minirl", "minirl_r3"))

    # off-policy
    for n in (2, 4):
        claim = f"Off-policy N={n}: without clipping the run collapses (or trains worse than with clipping + R2)"
        if have(f"n{n}_no_clip"):
            nc = s[f"n{n}_no_clip"]
            ev = f"n{n}_no_clip {_collapse_word(nc)}"
            status = {True: "reproduced", False: "not reproduced", None: "inconclusive"}[nc.collapsed]
            if f"n{n}_r2" in s:
                r, t = _cmp(s[f"n{n}_r2"], nc)
                ev += f"; {t}"
                if nc.collapsed is not True:
                    status = _VERDICT[r]
            out.append(Finding(claim, status, ev))
        else:
            out.append(missing(claim, f"n{n}_no_clip"))
        claim = f"Off-policy N={n}: routing replay helps a run without clipping (R2 w/o clip beats w/o clip)"
        if have(f"n{n}_no_clip", f"n{n}_r2_no_clip"):
            r, t = _cmp(s[f"n{n}_r2_no_clip"], s[f"n{n}_no_clip"])
            out.append(Finding(claim, _VERDICT[r], t))
        else:
            out.append(missing(claim, f"n{n}_no_clip", f"n{n}_r2_no_clip"))
    for n, winner, loser in ((2, "r2", "r3"), (4, "r3", "r2")):
        claim = f"Off-policy N={n}: MiniRL + {winner.upper()} beats MiniRL + {loser.upper()}"
        if have(f"n{n}_{winner}", f"n{n}_{loser}"):
            r, t = _cmp(s[f"n{n}_{winner}"], s[f"n{n}_{loser}"])
            out.append(Finding(claim, _VERDICT[r], t))
        else:
            out.append(missing(claim, f"n{n}_{winner}", f"n{n}_{loser}"))

    claim = "Different cold starts with MiniRL + R2 converge to similar final scores"
    cold = [s[f"cold_{c}_r2"] for c in cold_names if f"cold_{c}_r2" in s]
    if len(cold) >= 2:
        scores = [c.score for c in cold]
        first = [c.heldout_first if math.isfinite(c.heldout_first) else c.reward_first for c in cold]
        spread, start_spread = max(scores) - min(scores), max(first) - min(first)
        ok = spread <= max(2 * MARGIN, start_spread)
        out.append(
            Finding(
                claim,
                "reproduced" if ok else "not reproduced",
                f"final spread {spread:.3f} (start spread {start_spread:.3f}): "
                + ", ".join(f"{c.name} {c.score:.3f}" for c in cold),
            )
        )
    else:
        out.append(Finding(claim, "not tested", "needs at least two cold_<name>_r2 variants"))
    return out


# ----------------------------------------------------------------------------------------------- output
def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def draw(out: Path, chosen: Sequence[Variant], runs: Mapping[str, Sequence[dict]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    plotted: dict[str, dict[str, list]] = {}  # plots/data.json: what each figure shows, per variant

    def panel(ax, spec: Plot, record: bool) -> None:
        drawn = 0
        for v in chosen:
            pts = series(runs.get(v.name, ()), spec.keys)
            if spec.log:
                pts = [(x, y) for x, y in pts if y > 0]
            if pts:
                if record:
                    plotted.setdefault(spec.file, {})[v.name] = pts
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=v.label)
                drawn += 1
        ax.set_title(spec.title, fontsize=10 if record else 8)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(spec.ylabel)
        if spec.log and drawn:
            ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no variant logged this metric", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)

    # One figure with the four curves a reader looks at first (the README shows it), then one per metric.
    by_file = {spec.file: spec for spec in PLOTS}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, name in zip(axes.flat, OVERVIEW):
        panel(ax, by_file[name], record=False)
    fig.tight_layout()
    fig.savefig(plots / "overview.png", dpi=90)
    plt.close(fig)
    written.append(plots / "overview.png")
    for spec in PLOTS:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        panel(ax, spec, record=True)
        fig.tight_layout()
        fig.savefig(plots / spec.file, dpi=100)
        plt.close(fig)
        written.append(plots / spec.file)

    layered = {v.name: layer_series(runs.get(v.name, ())) for v in chosen}
    names = sorted({k for d in layered.values() for k in d})
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(max(7, 3.2 * len(names)), 3.8), squeeze=False)
    for ax, lname in zip(axes[0], names or ["(none)"]):
        for v in chosen:
            pts = layered[v.name].get(lname)
            if pts:
                plotted.setdefault("route_agreement.png", {})[f"{v.name}/{lname}"] = pts
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=v.label)
        ax.set_title(lname, fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if names:
        axes[0][0].set_ylabel("native = replayed experts")
        axes[0][0].legend(fontsize=7)
    else:
        axes[0][0].text(
            0.5,
            0.5,
            "no replay variant ran (R2/R3 log route agreement)",
            ha="center",
            va="center",
            transform=axes[0][0].transAxes,
            fontsize=8,
        )
    fig.suptitle("Per-layer route agreement (actor/routing/agreement_layer_*)", fontsize=10)
    fig.tight_layout()
    fig.savefig(plots / "route_agreement.png", dpi=100)
    plt.close(fig)
    written.append(plots / "route_agreement.png")
    (plots / "data.json").write_text(json.dumps(finite_or_null(plotted), indent=1, allow_nan=False))
    return written


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


def finite_or_null(value):
    """``value`` with every NaN/inf float replaced by None (JSON's null), in dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def write(out: Path, chosen: Sequence[Variant], runs: Mapping[str, Sequence[dict]], meta: Mapping) -> Path:
    """Plots under ``out/plots``, ``out/summary.json`` and ``out/report.md``; returns the report's path."""
    out = Path(out)
    summaries = {v.name: summarize(v, runs.get(v.name, ())) for v in chosen}
    cold = [v.cold_start for v in chosen if v.regime == "cold start"]
    found = findings(summaries, cold)
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
    run list and meta, each ``runs/<variant>/metrics.jsonl``): ``python -m verl_stable.lab.report OUT``."""
    from verl_stable.apps.console import read_metrics
    from verl_stable.lab import variants as vt
    from verl_stable.lab.setup import default_setup

    out = Path(out)
    saved = out / "summary.json"
    if not saved.exists():
        raise FileNotFoundError(f"{saved} not found: not the output directory of a finished `verl-stable lab` run")
    meta = json.loads(saved.read_text())["meta"]
    table = vt.grid(default_setup().cold_starts)
    chosen = [table[name] for name in meta["runs"]]
    runs = {v.name: read_metrics(out / "runs" / v.name / "metrics.jsonl") for v in chosen}
    return write(out, chosen, runs, meta)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m verl_stable.lab.report OUT   (a finished `verl-stable lab` output dir)")
    print(rewrite(Path(sys.argv[1])))
