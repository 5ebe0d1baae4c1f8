"""The lab's figures: every metric that matters for the paper's argument against the step, variants overlaid.
matplotlib (the ``lab`` extra, Agg backend) is imported only when :func:`draw` runs; :data:`PLOTS` is plain data.

With several seeds a variant's curve is the mean over its seeds at each step, drawn with a band from the seeds'
minimum to their maximum (:data:`BAND`); with one seed it is that seed's line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from verl_stable.apps.console import ENTROPY, HELD_OUT, REWARD, TRAIN_INFER_KL_K3
from verl_stable.lab.metrics import finite_or_null, layer_series, series
from verl_stable.lab.variants import Variant
from verl_stable.losses import METRICS as LOSS_METRICS
from verl_stable.routing.agreement import METRICS as ROUTING_METRICS


@dataclass(frozen=True)
class Plot:
    file: str
    title: str
    keys: tuple[str, ...]  # first key present in a row wins
    ylabel: str
    log: bool = False


PLOTS: tuple[Plot, ...] = (
    Plot("reward.png", "Training reward (mean over the step's responses)", (REWARD,), "reward"),
    Plot("heldout_accuracy.png", "Held-out accuracy (avg@k, verl validation)", (HELD_OUT,), "accuracy"),
    Plot("entropy.png", "Policy entropy", (ENTROPY,), "entropy (nats)"),
    Plot(
        "train_infer_kl.png",
        f"Training-inference KL: k3 estimate of D_KL[mu_old || pi_old]  ({TRAIN_INFER_KL_K3})",
        (TRAIN_INFER_KL_K3,),
        "k3 KL",
        log=True,
    ),
    Plot(
        "staleness_kl.png",
        f"Staleness KL  pi_theta vs pi_old  ({LOSS_METRICS.STALENESS_KL_K3})",
        (LOSS_METRICS.STALENESS_KL_K3,),
        "k3 KL",
        log=True,
    ),
    Plot(
        "clip_fraction.png",
        f"Clipped (masked) token fraction ({LOSS_METRICS.CLIPFRAC})",
        (LOSS_METRICS.CLIPFRAC,),
        "fraction",
    ),
)
#: overview.png: held-out accuracy, reward, training-inference KL and entropy, one panel each
OVERVIEW = ("heldout_accuracy.png", "reward.png", "train_infer_kl.png", "entropy.png")
#: what the band around a several-seed curve shows
BAND = "min-max over seeds"

Points = list[tuple[int, float]]


def per_seed(runs: Mapping) -> dict[str, dict[int, Sequence[dict]]]:
    """``{variant: {seed: rows}}`` from either that or one seed's ``{variant: rows}`` (seed 0)."""
    return {name: (dict(v) if isinstance(v, Mapping) else {0: v}) for name, v in runs.items()}


def spread(curves: Mapping[int, Points]) -> dict:
    """Several seeds' curves of one variant: per step the mean, min and max over the seeds that logged it."""
    steps: dict[int, list[float]] = {}
    for pts in curves.values():
        for x, y in pts:
            steps.setdefault(x, []).append(y)
    xs = sorted(steps)
    return {
        "mean": [(x, sum(steps[x]) / len(steps[x])) for x in xs],
        "min": [(x, min(steps[x])) for x in xs],
        "max": [(x, max(steps[x])) for x in xs],
        "seeds": {str(s): list(pts) for s, pts in sorted(curves.items())},
    }


def _curve(ax, curves: Mapping[int, Points], label: str):
    """One variant on ``ax``: its line (one seed) or mean line + min-max band (several); what data.json keeps."""
    curves = {s: pts for s, pts in curves.items() if pts}
    if not curves:
        return None
    if len(curves) == 1:
        pts = next(iter(curves.values()))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        return pts
    agg = spread(curves)
    (line,) = ax.plot(
        [p[0] for p in agg["mean"]], [p[1] for p in agg["mean"]], marker="o", ms=3,
        label=f"{label} (mean of {len(curves)} seeds)",
    )
    ax.fill_between(
        [p[0] for p in agg["min"]], [p[1] for p in agg["min"]], [p[1] for p in agg["max"]],
        color=line.get_color(), alpha=0.2, linewidth=0,
    )
    return agg


def draw(out: Path, chosen: Sequence[Variant], runs: Mapping, xlabel: str = "step") -> list[Path]:
    """``out/plots/*.png`` (overview, one per :data:`PLOTS`, per-layer route agreement) and ``plots/data.json``,
    the points each figure shows: a variant's points (one seed), or its mean / min / max / per-seed points.
    ``runs``: ``{variant: {seed: rows}}`` or one seed's ``{variant: rows}``."""
    runs = per_seed(runs)
    several = any(len(v) > 1 for v in runs.values())
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
            curves = {}
            for seed, rows in runs.get(v.name, {}).items():
                pts = series(rows, spec.keys)
                curves[seed] = [(x, y) for x, y in pts if y > 0] if spec.log else pts
            shown = _curve(ax, curves, v.label)
            if shown is not None:
                if record:
                    plotted.setdefault(spec.file, {})[v.name] = shown
                drawn += 1
        title = spec.title + (f"\n(band: {BAND})" if several else "")
        ax.set_title(title, fontsize=10 if record else 8)
        ax.set_xlabel(xlabel)
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

    layered = {
        v.name: {seed: layer_series(rows) for seed, rows in runs.get(v.name, {}).items()} for v in chosen
    }
    names = sorted({k for d in layered.values() for by_layer in d.values() for k in by_layer})
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(max(7, 3.2 * len(names)), 3.8), squeeze=False)
    for ax, lname in zip(axes[0], names or ["(none)"]):
        for v in chosen:
            curves = {seed: by_layer.get(lname, []) for seed, by_layer in layered[v.name].items()}
            shown = _curve(ax, curves, v.label)
            if shown is not None:
                plotted.setdefault("route_agreement.png", {})[f"{v.name}/{lname}"] = shown
        ax.set_title(lname, fontsize=9)
        ax.set_xlabel(xlabel)
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
    fig.suptitle(
        f"Per-layer route agreement ({ROUTING_METRICS.logged(ROUTING_METRICS.AGREEMENT_LAYER)}*)"
        + (f"; band: {BAND}" if several else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(plots / "route_agreement.png", dpi=100)
    plt.close(fig)
    written.append(plots / "route_agreement.png")
    (plots / "data.json").write_text(json.dumps(finite_or_null(plotted), indent=1, allow_nan=False))
    return written
