"""What the lab reads off verl's metrics: per-step series, collapse detection, the step-overhead ratio, and one
:class:`Summary` per variant. The keys are the producers' (:data:`verl_stable.losses.METRICS`,
:data:`verl_stable.routing.agreement.METRICS`) and verl's own (:mod:`verl_stable.apps.console`)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from verl_stable.apps.console import ENTROPY, HELD_OUT, REWARD, STEP_TIME, TRAIN_INFER_KL_K3
from verl_stable.losses import METRICS as LOSS_METRICS
from verl_stable.routing.agreement import METRICS as ROUTING_METRICS

if TYPE_CHECKING:
    from verl_stable.lab.variants import Variant

#: Phases of a step that compute (verl's timing_s/*): generation, reward, π_old pass, advantage, update, sync.
PHASES = ("gen", "reward", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor", "update_weights")

ROUTE_AGREEMENT = ROUTING_METRICS.logged(ROUTING_METRICS.AGREEMENT_MEAN)
_VAL = re.compile(r"^val-core/.+/(acc|reward)/mean@(\d+)$")
_LAYER = re.compile(
    rf"^{re.escape(ROUTING_METRICS.ACTOR + ROUTING_METRICS.UPDATE)}"
    rf"({re.escape(ROUTING_METRICS.OLD_PASS[len(ROUTING_METRICS.UPDATE):])})?"
    rf"{re.escape(ROUTING_METRICS.AGREEMENT_LAYER)}(\d+)$"
)


#: verl's validation keys: the held-out evaluation's numbers in a metrics row
HELD_OUT_PREFIXES = ("val-core/", "val-aux/")


def val_key(data: Mapping) -> str | None:
    for key in data:
        if _VAL.match(key):
            return key
    return None


def series(rows: Sequence[dict], keys: Sequence[str]) -> list[tuple[int, float]]:
    """(step, value) for the first of ``keys`` each row has; :data:`~verl_stable.apps.console.HELD_OUT` is the
    held-out accuracy key."""
    out = []
    for row in rows:
        data = row.get("data", {})
        for key in keys:
            key = val_key(data) if key == HELD_OUT else key
            if key is not None and key in data and isinstance(data[key], (int, float)):
                out.append((int(row["step"]), float(data[key])))
                break
    return out


def baseline_eval(rows: Sequence[dict]) -> dict | None:
    """The held-out evaluation before training (verl's step-0 row, ``trainer.val_before_train``), its
    ``val-core`` / ``val-aux`` values only; None where the run has none."""
    for row in rows:
        data = row.get("data", {})
        if int(row.get("step", -1)) == 0 and val_key(data) is not None:
            return {"step": 0, "data": {k: v for k, v in data.items() if k.startswith(HELD_OUT_PREFIXES)}}
    return None


def with_baseline_eval(rows: Sequence[dict], baseline: dict | None, source: str) -> list[dict]:
    """``rows`` with ``baseline`` (another variant's :func:`baseline_eval`, same cold start and seed) as their
    step-0 row, marked ``shared_from: source``; unchanged where the run has its own or there is none."""
    if baseline is None or baseline_eval(rows) is not None:
        return list(rows)
    return [{**baseline, "shared_from": source}, *rows]


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


def mean(values: Iterable[float]) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def tail_mean(points: Sequence[tuple[int, float]], frac: float = 1 / 3) -> float:
    """Mean over the last ``frac`` of the points (at least one)."""
    if not points:
        return float("nan")
    n = max(1, math.ceil(len(points) * frac))
    return mean(v for _, v in points[-n:])


def collapsed(rewards: Sequence[tuple[int, float]], entropy: Sequence[tuple[int, float]] = ()) -> bool | None:
    """A collapse, as the paper sees one: the training reward falls well below its own best and stays there
    (last-third mean < half the best 3-step running mean, best >= 0.1), or a metric went non-finite.
    None when the run is too short to tell (< 6 steps)."""
    values = [v for _, v in rewards]
    if any(not math.isfinite(v) for v in values) or any(not math.isfinite(v) for _, v in entropy):
        return True
    if len(values) < 6:
        return None
    running = [mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    best = max(running)
    return best >= 0.1 and tail_mean(rewards) < 0.5 * best


def in_gradient_steps(rows: Sequence[dict], n: int) -> list[dict]:
    """An off-policy run's rows on the axis of updates made, so runs of different N compare at equal gradient steps.
    verl's step k is a rollout of ``n`` updates: what it measured of the rollout and the updates (reward, KLs, loss)
    lands on the first of those updates, ``n (k - 1) + 1``, as an on-policy step k does; its held-out evaluation
    (``val-*``), made after them, on the last, ``n k``. The evaluation before training stays at step 0."""
    if n == 1:
        return list(rows)
    out = []
    for row in rows:
        step = int(row.get("step", 0))
        if step < 1:
            out.append(row)
            continue
        data = row.get("data", {})
        held_out = {k: v for k, v in data.items() if k.startswith(HELD_OUT_PREFIXES)}
        train = {k: v for k, v in data.items() if k not in held_out}
        if train:
            out.append({**row, "step": n * (step - 1) + 1, "data": train})
        if held_out:
            out.append({**row, "step": n * step, "data": held_out})
    return out


def step_overhead(rows: Sequence[dict]) -> float:
    """Median over the steps after the first (it carries start-up) of timing_s/step / sum of compute phases."""
    ratios = []
    timed = sorted((r for r in rows if STEP_TIME in r.get("data", {})), key=lambda r: int(r.get("step", 0)))
    for row in timed[1:]:
        data = row.get("data", {})
        step = data.get(STEP_TIME)
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
    steps: int  # the last step logged (gradient steps where the rows count them)
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

    @property
    def start(self) -> float:
        """Where the variant started: the held-out accuracy before training, else the first training reward."""
        return self.heldout_first if math.isfinite(self.heldout_first) else self.reward_first


def summarize(variant: Variant, rows: Sequence[dict]) -> Summary:
    reward = series(rows, (REWARD,))
    heldout = series(rows, (HELD_OUT,))
    entropy = series(rows, (ENTROPY,))
    agreement = series(rows, (ROUTE_AGREEMENT,))
    kl = series(rows, (TRAIN_INFER_KL_K3,))
    return Summary(
        name=variant.name,
        label=variant.label,
        regime=variant.regime,
        steps=max((int(r.get("step", 0)) for r in rows), default=0),
        reward_first=reward[0][1] if reward else float("nan"),
        reward_last=tail_mean(reward),
        heldout_first=heldout[0][1] if heldout else float("nan"),
        heldout_last=heldout[-1][1] if heldout else float("nan"),
        train_infer_kl=mean(v for _, v in kl),
        # the first rollout's (step 1; step N where the rows count gradient steps)
        train_infer_kl_step1=kl[0][1] if kl else float("nan"),
        staleness_kl=mean(v for _, v in series(rows, (LOSS_METRICS.STALENESS_KL_K3,))),
        clipfrac=mean(v for _, v in series(rows, (LOSS_METRICS.CLIPFRAC,))),
        entropy_first=entropy[0][1] if entropy else float("nan"),
        entropy_last=tail_mean(entropy),
        route_agreement=mean(v for _, v in agreement),
        collapsed=collapsed(reward, entropy),
        overhead=step_overhead(rows),
    )


def run_dir(out: str | Path, variant: str, seed: int, seeds: Sequence[int]) -> Path:
    """Where one (variant, seed) run lives: ``runs/<variant>`` when the lab ran one seed (its layout since
    the start), ``runs/<variant>/seed<seed>`` when it ran several."""
    base = Path(out) / "runs" / variant
    return base if len(seeds) <= 1 else base / f"seed{seed}"


def mean_summary(summaries: Sequence[Summary]) -> Summary:
    """One variant over its seeds: every number the mean of the seeds' finite values, ``steps`` the fewest any
    seed ran, ``collapsed`` True / False when every seed agrees (else None); one seed: that seed's summary."""
    if not summaries:
        raise ValueError("mean_summary needs at least one seed's summary")
    if len(summaries) == 1:
        return summaries[0]
    values = {}
    for f in dataclasses.fields(Summary):
        vals = [getattr(s, f.name) for s in summaries]
        if f.name in ("name", "label", "regime"):
            values[f.name] = vals[0]
        elif f.name == "steps":
            values[f.name] = min(vals)
        elif f.name == "collapsed":
            values[f.name] = True if all(v is True for v in vals) else False if all(v is False for v in vals) else None
        else:
            values[f.name] = mean(vals)
    return Summary(**values)


def finite_or_null(value):
    """``value`` with every NaN/inf float replaced by None (JSON's null), in dicts, lists and tuples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
