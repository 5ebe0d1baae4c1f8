"""The paper's findings judged on the lab's summaries: one evaluator for the declared
:data:`verl_stable.lab.variants.CLAIMS`.

Each claim comes out *reproduced*, *not reproduced*, *inconclusive* or *not tested* (its variants were not run
in this lab invocation), with the numbers it compared. :func:`evaluate` reads either

- summaries over seeds (``{variant: {seed: Summary}}``, what the report passes): every comparison of A with B is
  paired by seed (same seed = same data order and sampling seeds), ``d_s = A_s - B_s``, and judged by the
  95% percentile interval of a paired bootstrap over seeds (:func:`paired_interval`, a fixed RNG seed, so a
  report is reproducible). A verdict needs the interval to exclude zero; one seed gives no interval, so never a
  verdict (``inconclusive``, :attr:`Finding.verdict` says "(1 seed)"). Collapse claims count collapsed seeds
  (k of K), rule in :data:`COLLAPSE_RULE`;
- one seed's summaries (``{variant: Summary}``): that seed's own reading, a gap counting beyond :data:`MARGIN`
  (what each seed shows; the report's verdicts come from the seeds).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from verl_stable.lab.metrics import Summary, mean
from verl_stable.lab.variants import CLAIMS, Claim

#: A comparison between two variants' scores counts only beyond this gap (accuracy / reward units).
MARGIN = 0.02
#: Claims judged on their variant alone (the b's that ran only add a comparison): the others need their b's.
ON_A_ALONE = ("a collapses", "a learns")
#: A KL counts as lower only below (1 - KL_MARGIN) x the other.
KL_MARGIN = 0.05

_METRICS = {f.name for f in dataclasses.fields(Summary)} | {"score"}
for _claim in CLAIMS:
    if _claim.metric not in _METRICS or (_claim.shown and _claim.shown not in _METRICS):
        raise ValueError(f"claim {_claim.text!r}: metric {_claim.metric!r} is not a Summary field ({sorted(_METRICS)})")


#: The paired bootstrap: resamples of the seeds, the interval's level and the RNG seed (fixed: same report twice).
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0
METHOD = (
    f"paired by seed (d_s = A_s - B_s over the seeds both variants ran with a finite value), mean of d with a "
    f"{BOOTSTRAP_LEVEL:.0%} percentile interval from a paired bootstrap over seeds ({BOOTSTRAP_RESAMPLES:,} "
    f"resamples, RNG seed {BOOTSTRAP_SEED}); a verdict only when the interval excludes zero, else inconclusive; "
    f"one seed gives no interval and no verdict. With few seeds the percentile interval cannot be wider than "
    f"the seeds' own range of d (two seeds of one sign exclude zero): read K with it"
)
COLLAPSE_RULE = (
    "a collapse claim is reproduced when its variant collapsed in every one of K >= 2 seeds and the variant it is "
    "set against (if any) in none; otherwise the "
    "comparison the claim names ('or trains worse than ...') decides by its paired interval; a claim without one "
    "is not reproduced when no seed collapsed and inconclusive when some did"
)


@dataclass
class Finding:
    claim: str
    status: str  # "reproduced" | "not reproduced" | "not tested" | "inconclusive"
    evidence: str
    #: seeds the verdict rests on (the fewest paired); None: one seed's own reading (no statistics)
    seeds: int | None = None
    #: the paired comparisons (:meth:`Interval.as_dict`), for the report's table and summary.json
    intervals: list = field(default_factory=list)
    #: the evidence besides the intervals (collapse counts, a metric shown but not judged)
    notes: str = ""

    @property
    def verdict(self) -> str:
        """The status as the report prints it: a verdict from one seed is never given."""
        if self.status == "inconclusive" and self.seeds is not None and self.seeds < 2:
            return f"inconclusive ({self.seeds} seed)"
        return self.status


@dataclass
class Interval:
    """One paired comparison over seeds: mean of ``A_s - B_s`` and its bootstrap interval (None: < 2 seeds)."""

    a: str
    b: str
    metric: str
    seeds: list[int]
    diffs: list[float]
    lo: float | None
    hi: float | None
    dropped: list[str] = field(default_factory=list)  # "seed 2 (n2_r3 did not run)"

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / len(self.diffs) if self.diffs else float("nan")

    def sign(self) -> int:
        """+1: the interval lies above zero, -1: below, 0: it straddles zero or there is none."""
        if self.lo is None or self.hi is None:
            return 0
        return 1 if self.lo > 0 else -1 if self.hi < 0 else 0

    def text(self, spec: str = "+.3f") -> str:
        head = f"{self.a} - {self.b} ({self.metric}): mean {format(self.mean, spec) if self.diffs else '-'}"
        if self.lo is None:
            head += f", no interval ({self.n} seed{'s' if self.n != 1 else ''})"
        else:
            head += f" [{BOOTSTRAP_LEVEL:.0%} CI {format(self.lo, spec)}, {format(self.hi, spec)}], K={self.n}"
        if self.dropped:
            head += "; dropped from both: " + ", ".join(self.dropped)
        return head

    def as_dict(self) -> dict:
        return {
            "a": self.a, "b": self.b, "metric": self.metric, "seeds": self.seeds, "diffs": self.diffs,
            "mean": self.mean, "lo": self.lo, "hi": self.hi, "k": self.n, "dropped": self.dropped,
        }


def bootstrap_interval(
    diffs: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    rng_seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile interval of the mean of ``diffs`` under resampling the seeds with replacement; None below 2
    values. Deterministic: the RNG is seeded with ``rng_seed``."""
    import numpy as np

    d = np.asarray([float(x) for x in diffs], dtype=float)
    if d.size < 2:
        return None
    rng = np.random.default_rng(rng_seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_interval(
    a: str, b: str, values_a: Mapping[int, float], values_b: Mapping[int, float], metric: str = "score"
) -> Interval:
    """Pair A's and B's per-seed values by seed: a seed one of them lacks (or has non-finite) is dropped from
    both, and named; the rest give ``d_s = A_s - B_s`` and its bootstrap interval."""
    seeds, diffs, dropped = [], [], []
    for s in sorted(set(values_a) | set(values_b)):
        x, y = values_a.get(s), values_b.get(s)
        why = [
            f"{name} {'did not run' if v is None else 'has no finite value'}"
            for name, v in ((a, x), (b, y))
            if v is None or not math.isfinite(v)
        ]
        if why:
            dropped.append(f"seed {s} ({', '.join(why)})")
            continue
        seeds.append(s)
        diffs.append(float(x) - float(y))
    ci = bootstrap_interval(diffs)
    return Interval(a, b, metric, seeds, diffs, *(ci if ci else (None, None)), dropped=dropped)


def _values(by_seed: Mapping[int, Summary], metric: str) -> dict[int, float]:
    return {s: float(getattr(summary, metric)) for s, summary in by_seed.items()}


#: A finding that "A beats B" read off _cmp(A, B).
_VERDICT = {"better": "reproduced", "worse": "not reproduced", "tie": "inconclusive"}
_COLLAPSE = {True: "reproduced", False: "not reproduced", None: "inconclusive"}


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


def _beats(claim: Claim, a: Summary, rivals: Sequence[Summary]) -> Finding:
    results = [_cmp(a, b, claim.metric) for b in rivals]
    if all(r == "better" for r, _ in results):
        status = "reproduced"
    elif any(r == "worse" for r, _ in results):
        status = "not reproduced"
    else:
        status = "inconclusive"
    return Finding(claim.text, status, "; ".join(t for _, t in results))


def _no_gain(claim: Claim, a: Summary, b: Summary) -> Finding:
    r, text = _cmp(a, b, claim.metric)
    return Finding(claim.text, "not reproduced" if r == "better" else "reproduced", text)


def _lower(claim: Claim, a: Summary, b: Summary) -> Finding:
    x, y = getattr(a, claim.metric), getattr(b, claim.metric)
    text = f"{claim.measure or claim.metric}: {a.name} {x:.3e} vs {b.name} {y:.3e}"
    if claim.shown:
        text += f"; {claim.shown} {getattr(a, claim.shown):.2e} vs {getattr(b, claim.shown):.2e}"
    if not (math.isfinite(x) and math.isfinite(y)):
        return Finding(claim.text, "inconclusive", text)
    text += f" (counts below {1 - KL_MARGIN:.2f}x)"
    return Finding(claim.text, "reproduced" if x < y * (1 - KL_MARGIN) else "not reproduced", text)


def _collapses(claim: Claim, a: Summary, rivals: Sequence[Summary]) -> Finding:
    status = _COLLAPSE[a.collapsed]
    text = (
        f"{a.name} {_collapse_word(a)}: reward {a.reward_first:.3f} -> {a.reward_last:.3f}, entropy "
        f"{a.entropy_first:.3f} -> {a.entropy_last:.3f}"
    )
    for b in rivals:
        r, compared = _cmp(b, a, claim.metric)
        text += f"; {compared}"
        if a.collapsed is not True or b.collapsed is not False:  # both collapsed: the comparison decides
            status = _VERDICT[r]
    return Finding(claim.text, status, text)


def _learns(claim: Claim, a: Summary) -> Finding:
    text = f"{a.name} start {a.start:.3f} -> end {a.score:.3f}"
    if not (math.isfinite(a.start) and math.isfinite(a.score)):
        return Finding(claim.text, "inconclusive", text + " (missing)")
    gain = a.score - a.start
    status = "reproduced" if gain > MARGIN else "not reproduced" if gain < -MARGIN else "inconclusive"
    return Finding(claim.text, status, text + ("" if abs(gain) > MARGIN else f" (within {MARGIN})"))


def _converge(claim: Claim, group: Sequence[Summary]) -> Finding:
    scores = [getattr(s, claim.metric) for s in group]
    first = [s.start for s in group]
    spread, start_spread = max(scores) - min(scores), max(first) - min(first)
    ok = spread <= max(2 * MARGIN, start_spread)
    return Finding(
        claim.text,
        "reproduced" if ok else "not reproduced",
        f"final spread {spread:.3f} (start spread {start_spread:.3f}): "
        + ", ".join(f"{s.name} {getattr(s, claim.metric):.3f}" for s in group),
    )


def judge(claim: Claim, summaries: Mapping[str, Summary]) -> Finding:
    """One claim on the variants that ran; *not tested* (naming what is missing) when they do not suffice."""
    if claim.expect == "converge":
        group = [s for s in summaries.values() if s.regime == claim.regime]
        if len(group) < 2:
            return Finding(claim.text, "not tested", f"needs at least two {claim.regime} variants")
        return _converge(claim, group)
    rivals = [summaries[n] for n in claim.b if n in summaries]
    # "a>b" over several b's judges the ones that ran; a collapse is judged on a alone (the b's that ran add a
    # comparison); "a<=b" and "a<b" need their b
    enough = claim.expect in ON_A_ALONE or (bool(rivals) if claim.expect == "a>b" else len(rivals) == len(claim.b))
    if claim.a not in summaries or not enough:
        needed = (claim.a,) if claim.expect in ON_A_ALONE else (claim.a, *claim.b)
        missing = [n for n in needed if n not in summaries]
        return Finding(claim.text, "not tested", "needs variants " + ", ".join(missing))
    a = summaries[claim.a]
    if claim.expect == "a>b":
        return _beats(claim, a, rivals)
    if claim.expect == "a<=b":
        return _no_gain(claim, a, rivals[0])
    if claim.expect == "a<b":
        return _lower(claim, a, rivals[0])
    if claim.expect == "a collapses":
        return _collapses(claim, a, rivals)
    if claim.expect == "a learns":
        return _learns(claim, a)
    raise ValueError(f"claim {claim.text!r}: no evaluator for expect={claim.expect!r}")


# ------------------------------------------------------------------------------------------------ over seeds
def _combine(signs: Sequence[int]) -> str:
    """Several comparisons in the claim's direction (+1 holds, -1 fails, 0 straddles): all hold -> reproduced."""
    if signs and all(x > 0 for x in signs):
        return "reproduced"
    if any(x < 0 for x in signs):
        return "not reproduced"
    return "inconclusive"


def _seed_finding(
    claim: Claim, status: str, intervals: Sequence[Interval], notes: Sequence[str], seeds: int, spec: str = "+.3f"
) -> Finding:
    """The evidence: ``notes`` (what is not an interval: collapse counts, a shown metric) then every interval."""
    evidence = "; ".join([*notes, *(iv.text(spec) for iv in intervals)])
    return Finding(
        claim.text, status, evidence, seeds=seeds, intervals=[i.as_dict() for i in intervals], notes="; ".join(notes)
    )


def _collapse_count(name: str, by_seed: Mapping[int, Summary]) -> tuple[int, int, str]:
    flags = [by_seed[s].collapsed for s in sorted(by_seed)]
    k = sum(f is True for f in flags)
    short = sum(f is None for f in flags)
    text = f"{name} collapsed in {k} of {len(flags)} seeds" + (f" ({short} too short to tell)" if short else "")
    return k, len(flags), text


def _judge_seeds(claim: Claim, per_seed: Mapping[str, Mapping[int, Summary]]) -> Finding:
    ran = {n: s for n, s in per_seed.items() if s}
    metric = claim.metric
    if claim.expect == "converge":
        group = {n: s for n, s in ran.items() if next(iter(s.values())).regime == claim.regime}
        if len(group) < 2:
            return Finding(claim.text, "not tested", f"needs at least two {claim.regime} variants")
        common = sorted(set.intersection(*(set(s) for s in group.values())))
        dropped = sorted(set.union(*(set(s) for s in group.values())) - set(common))
        excess = {}
        for seed in common:
            scores = [getattr(group[n][seed], metric) for n in group]
            starts = [group[n][seed].start for n in group]
            if all(math.isfinite(v) for v in scores + starts):
                excess[seed] = (max(scores) - min(scores)) - max(2 * MARGIN, max(starts) - min(starts))
        iv = paired_interval("final spread", "max(2 x margin, start spread)", excess, {s: 0.0 for s in excess}, metric)
        iv.dropped = [f"seed {s} (not every {claim.regime} variant ran it)" for s in dropped] + [
            f"seed {s} (a non-finite score)" for s in common if s not in excess
        ]
        sign = iv.sign()
        status = "reproduced" if sign < 0 else "not reproduced" if sign > 0 else "inconclusive"
        return _seed_finding(claim, status, [iv], [f"variants {', '.join(group)}"], iv.n)
    rivals = [n for n in claim.b if n in ran]
    enough = claim.expect in ON_A_ALONE or (bool(rivals) if claim.expect == "a>b" else len(rivals) == len(claim.b))
    if claim.a not in ran or not enough:
        needed = (claim.a,) if claim.expect in ON_A_ALONE else (claim.a, *claim.b)
        missing = [n for n in needed if n not in ran]
        return Finding(claim.text, "not tested", "needs variants " + ", ".join(missing))
    a = ran[claim.a]
    if claim.expect == "a learns":  # paired with itself: each seed's end minus that seed's start
        iv = paired_interval(f"{claim.a} end", "start", _values(a, "score"), _values(a, "start"), "score")
        return _seed_finding(claim, _combine([iv.sign()]), [iv], [], iv.n)
    if claim.expect == "a collapses":
        k, total, text = _collapse_count(claim.a, a)
        intervals = [paired_interval(b, claim.a, _values(ran[b], metric), _values(a, metric), metric) for b in rivals]
        notes = [text, *(_collapse_count(b, ran[b])[2] for b in rivals)]
        # "a collapses (where b holds)": a collapse of b too says nothing about a; the paired interval decides
        rivals_hold = all(s.collapsed is False for b in rivals for s in ran[b].values())
        if total >= 2 and k == total and rivals_hold:
            status = "reproduced"
        elif intervals:
            status = _combine([iv.sign() for iv in intervals])  # b - a > 0: a trains worse
        elif total >= 2 and k == 0 and all(s.collapsed is False for s in a.values()):
            status = "not reproduced"
        else:
            status = "inconclusive"
        by_count = (total >= 2 and k == total and rivals_hold) or not intervals
        seeds = total if by_count else min(iv.n for iv in intervals)
        return _seed_finding(claim, status, intervals, notes, seeds)
    intervals = [paired_interval(claim.a, b, _values(a, metric), _values(ran[b], metric), metric) for b in rivals]
    spec = "+.2e" if claim.expect == "a<b" else "+.3f"
    notes = [f"compared: {claim.measure}"] if claim.measure else []
    if claim.shown:
        b0 = ran[rivals[0]]
        notes.append(
            f"{claim.shown} (mean over seeds, not judged) {claim.a} {mean(_values(a, claim.shown).values()):.2e} vs "
            f"{rivals[0]} {mean(_values(b0, claim.shown).values()):.2e}"
        )
    direction = {"a>b": 1, "a<=b": -1, "a<b": -1}[claim.expect]
    signs = [iv.sign() * direction for iv in intervals]
    # "a<=b" (no gain): an interval below zero reproduces it, one above refutes it, one across zero says nothing
    status = _combine(signs)
    return _seed_finding(claim, status, intervals, notes, min(iv.n for iv in intervals), spec)


def _is_per_seed(summaries: Mapping) -> bool:
    return any(not isinstance(v, Summary) for v in summaries.values())


def evaluate(
    summaries: Mapping[str, Summary] | Mapping[str, Mapping[int, Summary]], claims: Sequence[Claim] = CLAIMS
) -> list[Finding]:
    """Every claim, in declaration order: over seeds for ``{variant: {seed: Summary}}`` (paired bootstrap), one
    seed's own reading (MARGIN) for ``{variant: Summary}``."""
    if _is_per_seed(summaries):
        return [_judge_seeds(claim, summaries) for claim in claims]
    return [judge(claim, summaries) for claim in claims]
