"""The report's verdicts come from the metrics: collapse detection, the step-overhead ratio and the paper's
findings on hand-made metric rows (verl's file-logger format), and the plots/report written from them."""

from __future__ import annotations

import json
import math

import pytest

from verl_stable.lab import report, variants

TABLE = variants.grid()


def _rows(rewards, **extra) -> list[dict]:
    rows = []
    for i, r in enumerate(rewards, 1):
        data = {"critic/score/mean": r, "actor/entropy": 2.0, "rollout_corr/k3_kl": 1e-4}
        data.update({k: (v[i - 1] if isinstance(v, list) else v) for k, v in extra.items()})
        rows.append({"step": i, "data": data})
    return rows


def test_collapse_needs_a_real_fall_and_enough_steps():
    assert report.collapsed([(i, v) for i, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.4, 0.5])]) is False
    falls = [0.3, 0.4, 0.5, 0.5, 0.4, 0.1, 0.0, 0.0, 0.05]
    assert report.collapsed(list(enumerate(falls))) is True
    assert report.collapsed(list(enumerate([0.05, 0.0, 0.0, 0.02, 0.0, 0.0]))) is False  # never learned: no collapse
    assert report.collapsed(list(enumerate([0.3, 0.0]))) is None  # too short
    assert report.collapsed(list(enumerate([0.3, 0.2])), [(1, float("nan"))]) is True  # NaN is never silent


def test_step_overhead_is_the_median_ratio_from_step_two():
    phases = {"timing_s/gen": 0.5, "timing_s/old_log_prob": 0.2, "timing_s/update_actor": 0.3}
    rows = [
        {"step": 1, "data": {**phases, "timing_s/step": 30.0}},  # start-up, left out
        {"step": 2, "data": {**phases, "timing_s/step": 1.1}},
        {"step": 3, "data": {**phases, "timing_s/step": 1.3}},
        {"step": 4, "data": {**phases, "timing_s/step": 5.0}},
    ]
    assert report.step_overhead(rows) == pytest.approx(1.3)
    assert math.isnan(report.step_overhead(rows[:1]))


def test_findings_compare_with_a_margin_and_name_what_is_missing():
    up = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    flat = [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    runs = {
        "minirl": _rows(up),
        "minirl_no_is": _rows([0.3, 0.5, 0.6, 0.2, 0.0, 0.0]),
        "minirl_r3": _rows(up, **{"rollout_corr/k3_kl": 1e-5}),
        "n2_r2": _rows(flat),
        "n2_r3": _rows([v + 0.01 for v in flat]),
    }
    s = {n: report.summarize(TABLE[n], rows) for n, rows in runs.items()}
    found = {f.claim: f for f in report.findings(s)}
    assert found["On-policy, w/o train-infer IS collapses (reward falls, entropy drops)"].status == "reproduced"
    assert found["R3 lowers the training-inference KL (on-policy)"].status == "reproduced"
    assert "1.000e-05" in found["R3 lowers the training-inference KL (on-policy)"].evidence
    # The verdict is the paired step-1 KL: a run whose later steps drift does not change it.
    runs["minirl_r3"] = _rows(up, **{"rollout_corr/k3_kl": [0.98e-4, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6]})
    s["minirl_r3"] = report.summarize(TABLE["minirl_r3"], runs["minirl_r3"])
    found = {f.claim: f for f in report.findings(s)}
    assert found["R3 lowers the training-inference KL (on-policy)"].status == "not reproduced"  # 0.98x: within 5%
    assert found["R3 brings no gain on-policy (score within the margin of MiniRL, or lower)"].status == "reproduced"
    assert found["Off-policy N=2: MiniRL + R2 beats MiniRL + R3"].status == "inconclusive"  # 0.01 < MARGIN
    assert found["Off-policy N=4: MiniRL + R3 beats MiniRL + R2"].status == "not tested"
    assert "n4_r3" in found["Off-policy N=4: MiniRL + R3 beats MiniRL + R2"].evidence
    best = found["On-policy, MiniRL is best: it beats w/o train-infer IS, w/ length-norm and + R3"]
    assert best.status == "inconclusive"  # beats no-IS (0.550 vs 0.000) but ties R3 (same rewards)
    assert "minirl 0.550 vs minirl_no_is 0.000" in best.evidence


def test_write_draws_the_plots_and_tables_every_variant(tmp_path):
    chosen = [TABLE["minirl"], TABLE["n2_r2"]]
    layer = {"actor/routing/agreement_layer_0": 1.0, "actor/routing/agreement_layer_1": 0.9}
    runs = {"minirl": _rows([0.1, 0.2]), "n2_r2": _rows([0.1, 0.3], **layer)}
    path = report.write(tmp_path, chosen, runs, {"args": {"size": {"steps": 2}}, "wall_s": 1.0})
    text = path.read_text()
    assert "(`minirl`)" in text and "(`n2_r2`)" in text and "Not tested by the variants run" in text
    shown = json.loads((tmp_path / "plots" / "data.json").read_text())
    assert shown["reward.png"]["n2_r2"] == [[1, 0.1], [2, 0.3]]
    assert sorted(shown["route_agreement.png"]) == ["n2_r2/update layer 0", "n2_r2/update layer 1"]
    assert len(list((tmp_path / "plots").glob("*.png"))) == len(report.PLOTS) + 2  # + route agreement, overview
