"""The paper's findings judged on the lab's summaries: one evaluator for the declared
:data:`verl_stable.lab.variants.CLAIMS`.

Each claim comes out *reproduced*, *not reproduced*, *inconclusive* or *not tested* (its variants were not run
in this lab invocation), with the numbers it compared. At laptop scale differences are small and one seed is
noisy: a comparison only counts when the gap exceeds :data:`MARGIN`, and a collapse is called only when the
reward really falls (:func:`verl_stable.lab.metrics.collapsed`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from verl_stable.lab.metrics import Summary
from verl_stable.lab.variants import CLAIMS, Claim

#: A comparison between two variants' scores counts only beyond this gap (accuracy / reward units).
MARGIN = 0.02
#: A KL counts as lower only below (1 - KL_MARGIN) x the other.
KL_MARGIN = 0.05

_METRICS = {f.name for f in dataclasses.fields(Summary)} | {"score"}
for _claim in CLAIMS:
    if _claim.metric not in _METRICS or (_claim.shown and _claim.shown not in _METRICS):
        raise ValueError(f"claim {_claim.text!r}: metric {_claim.metric!r} is not a Summary field ({sorted(_METRICS)})")


@dataclass
class Finding:
    claim: str
    status: str  # "reproduced" | "not reproduced" | "not tested" | "inconclusive"
    evidence: str


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
        if a.collapsed is not True:
            status = _VERDICT[r]
    return Finding(claim.text, status, text)


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
    enough = {"a>b": bool(rivals), "a collapses": True}.get(claim.expect, len(rivals) == len(claim.b))
    if claim.a not in summaries or not enough:
        needed = (claim.a,) if claim.expect == "a collapses" else (claim.a, *claim.b)
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
    raise ValueError(f"claim {claim.text!r}: no evaluator for expect={claim.expect!r}")


def evaluate(summaries: Mapping[str, Summary], claims: Sequence[Claim] = CLAIMS) -> list[Finding]:
    """Every claim, in declaration order."""
    return [judge(claim, summaries) for claim in claims]
