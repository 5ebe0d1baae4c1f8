"""The lab over seeds: paired differences with bootstrap intervals as the findings' verdicts (synthetic
summaries from hand-made metric rows), the (variant, seed) layout the report reads back from real files, the
plots' seed spread, and the CLI's --seeds / --redraw-cold-start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lab.addition_setup import addition_setup
from verl_stable.lab import findings, metrics, plots, report, run, variants
from verl_stable.lab.setup import LabSetup

TABLE = variants.grid()
BEST = "On-policy, MiniRL is best: it beats w/o train-infer IS, w/ length-norm and + R3"
NO_GAIN = "R3 brings no gain on-policy (score within the margin of MiniRL, or lower)"
NO_IS_COLLAPSES = "On-policy, w/o train-infer IS collapses (reward falls, entropy drops)"
N2_NO_CLIP = "Off-policy N=2: without clipping the run collapses (or trains worse than with clipping + R2)"
KL = "R3 lowers the training-inference KL (on-policy)"


def _rows(rewards, **extra) -> list[dict]:
    rows = []
    for i, r in enumerate(rewards, 1):
        data = {"critic/score/mean": r, "actor/entropy": 2.0, "rollout_corr/k3_kl": 1e-4}
        data.update({k: (v[i - 1] if isinstance(v, list) else v) for k, v in extra.items()})
        rows.append({"step": i, "data": data})
    return rows


def _flat(level: float, n: int = 6) -> list[float]:
    return [level] * n


def _per_seed(levels: dict[str, dict[int, float]]) -> dict[str, dict[int, metrics.Summary]]:
    """Each (variant, seed) a flat reward curve at the given level: its score is that level."""
    return {
        name: {s: metrics.summarize(TABLE[name], _rows(_flat(x))) for s, x in by_seed.items()}
        for name, by_seed in levels.items()
    }


def _found(per_seed) -> dict[str, findings.Finding]:
    return {f.claim: f for f in findings.evaluate(per_seed)}


# --------------------------------------------------------------------------------------------------- statistics
def test_the_bootstrap_is_deterministic_and_brackets_the_mean():
    d = [0.05, 0.02, 0.08, 0.04, 0.01]
    first = findings.bootstrap_interval(d)
    assert first == findings.bootstrap_interval(list(d))  # the fixed RNG seed: the same interval every time
    lo, hi = first
    assert min(d) <= lo < sum(d) / len(d) < hi <= max(d)
    many = [0.013 * i + 0.001 * i * i for i in range(12)]
    assert findings.bootstrap_interval(many, rng_seed=1) != findings.bootstrap_interval(many)  # the seed fixes it
    assert findings.bootstrap_interval([0.3]) is None and findings.bootstrap_interval([]) is None
    assert findings.bootstrap_interval([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))


def test_pairing_is_by_seed_and_a_missing_seed_is_dropped_from_both_and_said():
    iv = findings.paired_interval("a", "b", {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.2}, {0: 0.4, 1: 0.4, 3: float("nan")})
    assert iv.seeds == [0, 1] and iv.diffs == pytest.approx([0.1, 0.2])
    assert iv.dropped == ["seed 2 (b did not run)", "seed 3 (b has no finite value)"]
    assert "dropped from both: seed 2 (b did not run)" in iv.text()
    assert iv.mean == pytest.approx(0.15)


def test_an_interval_above_zero_reproduces_a_claim_and_below_zero_refutes_it():
    better = {0: 0.6, 1: 0.55, 2: 0.7, 3: 0.65}
    s = _per_seed({"minirl": better, "minirl_no_is": {k: v - 0.1 - 0.01 * k for k, v in better.items()}})
    f = _found(s)[BEST]
    assert f.status == f.verdict == "reproduced" and f.seeds == 4
    (iv,) = f.intervals
    assert (iv["a"], iv["b"], iv["k"]) == ("minirl", "minirl_no_is", 4)
    assert 0 < iv["lo"] <= iv["mean"] <= iv["hi"]
    assert iv["mean"] == pytest.approx(0.115)
    worse = _per_seed({"minirl": better, "minirl_no_is": {k: v + 0.05 for k, v in better.items()}})
    assert _found(worse)[BEST].status == "not reproduced"


def test_an_interval_across_zero_is_inconclusive_however_large_the_mean():
    s = _per_seed({"minirl": {0: 0.9, 1: 0.3, 2: 0.9}, "minirl_no_is": {0: 0.3, 1: 0.5, 2: 0.3}})
    f = _found(s)[BEST]
    (iv,) = f.intervals
    assert iv["mean"] > findings.MARGIN and iv["lo"] < 0 < iv["hi"]
    assert f.status == f.verdict == "inconclusive"


def test_one_seed_is_never_a_verdict():
    s = _per_seed({"minirl": {0: 0.9}, "minirl_no_is": {0: 0.1}, "minirl_r3": {0: 0.1}})
    found = _found(s)
    for claim in (BEST, NO_GAIN, NO_IS_COLLAPSES):
        assert found[claim].status == "inconclusive" and found[claim].verdict == "inconclusive (1 seed)", claim
    assert "no interval (1 seed)" in found[BEST].evidence
    # the same numbers as one seed's own reading (MARGIN) would have called it
    one = {n: by_seed[0] for n, by_seed in s.items()}
    assert {f.claim: f for f in findings.evaluate(one)}[BEST].status == "reproduced"


def test_several_rivals_each_need_their_interval_and_the_fewest_paired_seeds_is_k():
    s = _per_seed(
        {
            "minirl": {0: 0.6, 1: 0.62, 2: 0.64},
            "minirl_no_is": {0: 0.3, 1: 0.31, 2: 0.35},
            "minirl_r3": {0: 0.5, 2: 0.52},  # seed 1 missing: dropped from minirl's pair with it only
        }
    )
    f = _found(s)[BEST]
    assert f.status == "reproduced" and f.seeds == 2
    assert "minirl - minirl_r3 (score)" in f.evidence and "dropped from both: seed 1 (minirl_r3 did not run)" in f.evidence
    s["minirl_r3"] = _per_seed({"minirl_r3": {0: 0.55, 1: 0.7, 2: 0.6}})["minirl_r3"]  # ties overall
    assert _found(s)[BEST].status == "inconclusive"


def test_no_gain_is_reproduced_only_by_an_interval_below_zero():
    r3_lower = _per_seed({"minirl_r3": {0: 0.5, 1: 0.52, 2: 0.49}, "minirl": {0: 0.6, 1: 0.61, 2: 0.62}})
    assert _found(r3_lower)[NO_GAIN].status == "reproduced"
    r3_same = _per_seed({"minirl_r3": {0: 0.61, 1: 0.6, 2: 0.62}, "minirl": {0: 0.6, 1: 0.61, 2: 0.61}})
    assert _found(r3_same)[NO_GAIN].status == "inconclusive"
    r3_higher = _per_seed({"minirl_r3": {0: 0.7, 1: 0.72, 2: 0.71}, "minirl": {0: 0.6, 1: 0.61, 2: 0.62}})
    assert _found(r3_higher)[NO_GAIN].status == "not reproduced"


def test_the_kl_claim_pairs_the_step1_kl():
    def kl(first: float) -> list[dict]:
        return _rows(_flat(0.5), **{"rollout_corr/k3_kl": [first, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6]})

    s = {
        "minirl_r3": {seed: metrics.summarize(TABLE["minirl_r3"], kl(1e-4 * (1 + seed))) for seed in range(3)},
        "minirl": {seed: metrics.summarize(TABLE["minirl"], kl(3e-4 * (1 + seed))) for seed in range(3)},
    }
    f = _found(s)[KL]
    assert f.status == "reproduced" and f.intervals[0]["metric"] == "train_infer_kl_step1"
    assert f.intervals[0]["mean"] == pytest.approx(-4e-4)


def test_collapses_are_counted_per_seed_with_the_rule():
    falls = [0.3, 0.4, 0.5, 0.5, 0.4, 0.1, 0.0, 0.0, 0.05]
    up = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    no_is = {seed: metrics.summarize(TABLE["minirl_no_is"], _rows(falls)) for seed in range(3)}
    f = _found({"minirl_no_is": no_is})[NO_IS_COLLAPSES]
    assert f.status == "reproduced" and "minirl_no_is collapsed in 3 of 3 seeds" in f.evidence
    no_is[1] = metrics.summarize(TABLE["minirl_no_is"], _rows(up))
    f = _found({"minirl_no_is": no_is})[NO_IS_COLLAPSES]
    assert f.status == "inconclusive" and "collapsed in 2 of 3 seeds" in f.evidence
    steady = {seed: metrics.summarize(TABLE["minirl_no_is"], _rows(up)) for seed in range(3)}
    assert _found({"minirl_no_is": steady})[NO_IS_COLLAPSES].status == "not reproduced"
    # a claim with a comparison: no collapse, but the stable variant trains better in every seed
    s = _per_seed({"n2_r2": {0: 0.6, 1: 0.62, 2: 0.65}, "n2_r2_no_clip": {0: 0.4, 1: 0.45, 2: 0.41}})
    f = _found(s)[N2_NO_CLIP]
    assert f.status == "reproduced" and "n2_r2_no_clip collapsed in 0 of 3 seeds" in f.evidence
    assert f.intervals[0]["a"] == "n2_r2" and f.intervals[0]["lo"] > 0
    assert "every one of K >= 2 seeds" in findings.COLLAPSE_RULE
    # both collapse (the lab's N=4 at lr 1e-3): the rival's collapse leaves the paired interval to decide
    no_clip = {seed: metrics.summarize(TABLE["n2_r2_no_clip"], _rows(falls)) for seed in range(2)}
    clipped = {0: metrics.summarize(TABLE["n2_r2"], _rows(up)),
               1: metrics.summarize(TABLE["n2_r2"], _rows([0.3, 0.4, 0.5, 0.5, 0.4, 0.1, 0.0, 0.0, 0.0]))}
    f = _found({"n2_r2": clipped, "n2_r2_no_clip": no_clip})[N2_NO_CLIP]
    assert "n2_r2_no_clip collapsed in 2 of 2 seeds" in f.evidence and "n2_r2 collapsed in 1 of 2 seeds" in f.evidence
    assert f.status == "inconclusive" and f.intervals[0]["lo"] < 0 < f.intervals[0]["hi"]
    clipped[1] = metrics.summarize(TABLE["n2_r2"], _rows([0.1, 0.2, 0.3, 0.3, 0.3, 0.3]))
    assert _found({"n2_r2": clipped, "n2_r2_no_clip": no_clip})[N2_NO_CLIP].status == "reproduced"


def test_a_stable_run_is_one_that_ends_above_its_own_start_in_every_seed():
    """'a learns' pairs each seed's end with that seed's start (the held-out accuracy before training, else the first
    training reward): all seeds up reproduce it, all down refute it, a split says nothing; one seed only reads."""
    claim = "Off-policy N=4: MiniRL + R3 (clipping and routing replay) trains stably: it ends above its start"

    def learned(curves: dict[int, list[float]]):
        by_seed = {s: metrics.summarize(TABLE["n4_r3"], _rows(c)) for s, c in curves.items()}
        return _found({"n4_r3": by_seed})[claim]

    up = learned({0: [0.2] * 3 + [0.5] * 3, 1: [0.3] * 3 + [0.45] * 3})
    assert up.status == "reproduced" and up.seeds == 2
    assert up.intervals[0]["diffs"] == pytest.approx([0.3, 0.15])
    assert learned({0: [0.5] * 3 + [0.2] * 3, 1: [0.4] * 3 + [0.1] * 3}).status == "not reproduced"
    assert learned({0: [0.2] * 3 + [0.5] * 3, 1: [0.5] * 3 + [0.2] * 3}).status == "inconclusive"
    one = {f.claim: f for f in findings.evaluate({"n4_r3": metrics.summarize(TABLE["n4_r3"], _rows([0.2, 0.5]))})}
    assert one[claim].status == "reproduced" and "start 0.200 -> end 0.500" in one[claim].evidence
    assert _found({"minirl": _per_seed({"minirl": {0: 0.5}})["minirl"]})[claim].status == "not tested"
    with pytest.raises(ValueError, match="'a learns' compares a's score with its own start"):
        variants.check_claims([variants.Claim("x", "a learns", "n4_r3", ("n4_r2",))], TABLE)


def test_claims_on_variants_not_run_are_still_not_tested_over_seeds():
    found = findings.evaluate({"minirl": {}, "n2_r2": _per_seed({"n2_r2": {0: 0.5, 1: 0.5}})["n2_r2"]})
    # n2_r2 alone is enough for its own stability claim, and for nothing else
    assert {f.status for f in found if not f.claim.startswith("Off-policy N=2: MiniRL + R2 (")} == {"not tested"}


def test_the_mean_summary_averages_the_seeds():
    a = metrics.summarize(TABLE["minirl"], _rows(_flat(0.2)))
    b = metrics.summarize(TABLE["minirl"], _rows(_flat(0.4, 8)))
    m = metrics.mean_summary([a, b])
    assert m.reward_last == pytest.approx(0.3) and m.steps == 6 and m.collapsed is False
    assert metrics.mean_summary([a]) is a


# ------------------------------------------------------------------------------------------------- files, plots
def _write_runs(out: Path, runs: dict[str, dict[int, list[dict]]]) -> dict:
    seeds = sorted({s for by_seed in runs.values() for s in by_seed})
    for name, by_seed in runs.items():
        for seed, rows in by_seed.items():
            d = metrics.run_dir(out, name, seed, seeds)
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "args": {"seed": seeds[0], "size": {"steps": 6}},
        "seeds": seeds,
        "runs": {n: {"seeds": {str(s): {"returncode": 0} for s in by_seed}} for n, by_seed in runs.items()},
        "wall_s": 1.0,
    }


def test_the_report_reads_every_seed_from_its_own_directory_and_is_rewritten_from_them(tmp_path):
    assert metrics.run_dir(tmp_path, "minirl", 3, [3]) == tmp_path / "runs" / "minirl"
    assert metrics.run_dir(tmp_path, "minirl", 3, [3, 4]) == tmp_path / "runs" / "minirl" / "seed3"
    runs = {
        "minirl": {s: _rows([0.1, 0.2, 0.3, 0.4, 0.5, 0.6 + 0.01 * s]) for s in range(3)},
        "minirl_no_is": {s: _rows([0.1, 0.1, 0.2, 0.2, 0.2, 0.2 + 0.01 * s]) for s in range(3)},
    }
    meta = _write_runs(tmp_path, runs)
    text = report.write(tmp_path, [TABLE["minirl"], TABLE["minirl_no_is"]], runs, meta).read_text()
    assert "seeds 0, 1, 2 (K = 3; the same cold start for every seed)" in text
    assert "Method: paired by seed" in text and "10,000 resamples" in text
    assert "runs/<variant>/seed<s>/metrics.jsonl" in text
    best = next(line for line in text.splitlines() if line.startswith(f"| {BEST}"))
    assert "**reproduced**" in best and "minirl − minirl_no_is: +0.350 [" in best and "K=3" in best
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["per_seed"]["minirl"]) == {"0", "1", "2"}
    # last-third reward per seed (0.5 + 0.6 + 0.01 s) / 2: 0.55, 0.555, 0.56; the table shows their mean
    assert summary["variants"]["minirl"]["reward_last"] == pytest.approx(0.555)
    shown = json.loads((tmp_path / "plots" / "data.json").read_text())["reward.png"]["minirl"]
    assert shown["mean"][-1] == pytest.approx([6, 0.61]) and shown["min"][-1] == [6, 0.6]
    assert shown["max"][-1] == pytest.approx([6, 0.62]) and set(shown["seeds"]) == {"0", "1", "2"}
    (tmp_path / "report.md").unlink()
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == text
    meta["args"]["redraw_cold_start"] = True
    redrawn = report.write(tmp_path / "redrawn", [TABLE["minirl"]], {"minirl": runs["minirl"]}, meta).read_text()
    assert "(K = 3; each cold start re-drawn per seed)" in redrawn


def test_a_failed_seed_is_tabled_but_dropped_from_the_pairs(tmp_path):
    runs = {
        "minirl": {s: _rows(_flat(0.6 + 0.01 * s)) for s in range(3)},
        "minirl_no_is": {s: _rows(_flat(0.3)) for s in range(3)},
    }
    meta = _write_runs(tmp_path, runs)
    meta["runs"]["minirl_no_is"]["seeds"]["2"]["returncode"] = 1
    report.write(tmp_path, [TABLE["minirl"], TABLE["minirl_no_is"]], runs, meta)
    summary = json.loads((tmp_path / "summary.json").read_text())
    best = next(f for f in summary["findings"] if f["claim"] == BEST)
    assert best["intervals"][0]["seeds"] == [0, 1] and "seed 2 (minirl_no_is did not run)" in best["evidence"]
    assert set(summary["per_seed"]["minirl_no_is"]) == {"0", "1", "2"}


def test_a_single_seed_report_says_there_is_no_verdict(tmp_path):
    runs = {"minirl": _rows(_flat(0.9)), "minirl_no_is": _rows(_flat(0.1))}
    text = report.write(tmp_path, [TABLE["minirl"], TABLE["minirl_no_is"]], runs, {"wall_s": 1.0}).read_text()
    best = next(line for line in text.splitlines() if line.startswith(f"| {BEST}"))
    assert "**inconclusive (1 seed)**" in best and "no interval (K=1)" in best
    assert "One seed gives no interval" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert next(f for f in summary["findings"] if f["claim"] == BEST)["verdict"] == "inconclusive (1 seed)"


def test_spread_is_mean_min_max_over_the_seeds_that_logged_a_step():
    agg = plots.spread({0: [(1, 0.2), (2, 0.4)], 1: [(1, 0.4)]})
    assert agg["mean"] == [(1, pytest.approx(0.3)), (2, 0.4)]
    assert agg["min"] == [(1, 0.2), (2, 0.4)] and agg["max"] == [(1, 0.4), (2, 0.4)]
    assert plots.BAND == "min-max over seeds"


# ------------------------------------------------------------------------------------------------ CLI, seeds in
def test_the_cli_takes_seeds_and_refuses_none():
    args = run.parse_args(["--seeds", "3", "--seed", "5", "--redraw-cold-start"])
    assert (args.seeds, args.redraw_cold_start, args.seed_list) == (3, True, [5, 6, 7])
    plain = run.parse_args([])  # the default grid: two seeds, the fewest that give a verdict
    assert (plain.seeds, plain.redraw_cold_start, plain.seed_list) == (2, False, [0, 1])
    assert run.parse_args(["--quick"]).seeds == 1 and run.parse_args(["--full"]).seeds == 3
    assert run.parse_args(["--seeds", "1"]).seed_list == [0]
    with pytest.raises(SystemExit):
        run.parse_args(["--seeds", "0"])


def test_each_seed_reaches_verls_three_seeds(tmp_path):
    setup = addition_setup()
    args = run.Args(out=tmp_path, size=variants.GridSize(steps=3, prompts_per_step=8), seed=4)
    common = dict(run_dir=tmp_path / "r", model_dir=str(tmp_path / "m"), train=str(tmp_path / "t.parquet"),
                  val=str(tmp_path / "v.parquet"))
    keys = ("data.seed", "actor_rollout_ref.rollout.seed", "actor_rollout_ref.actor.data_loader_seed")
    default = run.base_overrides(args, setup, **common)
    seeded = run.base_overrides(args, setup, **common, seed=6)
    assert all(f"{k}=4" in default for k in keys) and all(f"{k}=6" in seeded for k in keys)
    assert [o for o in default if not o.startswith(keys)] == [o for o in seeded if not o.startswith(keys)]


def test_the_cold_start_is_redrawn_only_when_asked(tmp_path):
    calls = []

    def builder(out_dir, *, cold_start, redraw=None):
        calls.append((cold_start, redraw))
        return str(out_dir / f"{cold_start}-{redraw}")

    setup = LabSetup("t", builder, lambda out, seed=0: ("a", "b"), "r", "f", {"default": {}}, {"x": []})
    assert setup.build_model(tmp_path, "default").endswith("default-None")
    assert setup.build_model(tmp_path, "default", redraw=2).endswith("default-2")
    assert calls == [("default", None), ("default", 2)]
    with pytest.raises(ValueError, match="cannot re-draw its cold starts"):
        addition_setup().build_model(tmp_path, "default", redraw=1)


def test_a_redrawn_cold_start_is_its_own_model_and_offset_zero_is_the_declared_one(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from verl_stable.lab import model as lab_model

    monkeypatch.setitem(lab_model.COLD_STARTS, "init_only", {**lab_model.COLD_STARTS["ci"], "sft_steps": 0})
    plain = lab_model.build_lab_model(tmp_path, cold_start="init_only")
    assert lab_model.build_lab_model(tmp_path, cold_start="init_only", seed_offset=0) == plain
    redrawn = lab_model.build_lab_model(tmp_path, cold_start="init_only", seed_offset=1)
    assert redrawn != plain
    w0, w1 = (load_file(next(Path(d).glob("*.safetensors"))) for d in (plain, redrawn))
    assert w0.keys() == w1.keys() and any(not torch.equal(w0[k], w1[k]) for k in w0)


def test_cold_starts_converge_when_every_seed_ends_within_the_margin():
    table = variants.grid(("default", "seed1"))
    claim = "Different cold starts with MiniRL + R2 converge to similar final scores"

    def runs(ends: dict[str, list[float]]):
        return {
            name: {s: metrics.summarize(table[name], _rows([0.1, 0.1, 0.1, x, x, x])) for s, x in enumerate(xs)}
            for name, xs in ends.items()
        }

    close = runs({"cold_default_r2": [0.5, 0.6, 0.55], "cold_seed1_r2": [0.51, 0.59, 0.56]})
    f = {x.claim: x for x in findings.evaluate(close)}[claim]
    assert f.status == "reproduced" and f.seeds == 3 and f.intervals[0]["hi"] < 0
    apart = runs({"cold_default_r2": [0.5, 0.6, 0.55], "cold_seed1_r2": [0.2, 0.3, 0.25]})
    assert {x.claim: x for x in findings.evaluate(apart)}[claim].status == "not reproduced"
