"""The report's verdicts come from the metrics: collapse detection, the step-overhead ratio and the paper's
findings on hand-made metric rows (verl's file-logger format), and the plots/report written from them."""

from __future__ import annotations

import json
import math

import pytest

from verl_stable.lab import findings, metrics, plots, report, variants

TABLE = variants.grid()


def _rows(rewards, **extra) -> list[dict]:
    rows = []
    for i, r in enumerate(rewards, 1):
        data = {"critic/score/mean": r, "actor/entropy": 2.0, "rollout_corr/k3_kl": 1e-4}
        data.update({k: (v[i - 1] if isinstance(v, list) else v) for k, v in extra.items()})
        rows.append({"step": i, "data": data})
    return rows


def test_collapse_needs_a_real_fall_and_enough_steps():
    assert metrics.collapsed([(i, v) for i, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.4, 0.5])]) is False
    falls = [0.3, 0.4, 0.5, 0.5, 0.4, 0.1, 0.0, 0.0, 0.05]
    assert metrics.collapsed(list(enumerate(falls))) is True
    assert metrics.collapsed(list(enumerate([0.05, 0.0, 0.0, 0.02, 0.0, 0.0]))) is False  # never learned: no collapse
    assert metrics.collapsed(list(enumerate([0.3, 0.0]))) is None  # too short
    assert metrics.collapsed(list(enumerate([0.3, 0.2])), [(1, float("nan"))]) is True  # NaN is never silent


def test_step_overhead_is_the_median_ratio_from_step_two():
    phases = {"timing_s/gen": 0.5, "timing_s/old_log_prob": 0.2, "timing_s/update_actor": 0.3}
    rows = [
        {"step": 1, "data": {**phases, "timing_s/step": 30.0}},  # start-up, left out
        {"step": 2, "data": {**phases, "timing_s/step": 1.1}},
        {"step": 3, "data": {**phases, "timing_s/step": 1.3}},
        {"step": 4, "data": {**phases, "timing_s/step": 5.0}},
    ]
    assert metrics.step_overhead(rows) == pytest.approx(1.3)
    assert math.isnan(metrics.step_overhead(rows[:1]))


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
    s = {n: metrics.summarize(TABLE[n], rows) for n, rows in runs.items()}
    found = {f.claim: f for f in findings.evaluate(s)}
    assert found["On-policy, w/o train-infer IS collapses (reward falls, entropy drops)"].status == "reproduced"
    assert found["R3 lowers the training-inference KL (on-policy)"].status == "reproduced"
    assert "1.000e-05" in found["R3 lowers the training-inference KL (on-policy)"].evidence
    # The verdict is the paired step-1 KL: a run whose later steps drift does not change it.
    runs["minirl_r3"] = _rows(up, **{"rollout_corr/k3_kl": [0.98e-4, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6]})
    s["minirl_r3"] = metrics.summarize(TABLE["minirl_r3"], runs["minirl_r3"])
    found = {f.claim: f for f in findings.evaluate(s)}
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
    assert len(list((tmp_path / "plots").glob("*.png"))) == len(plots.PLOTS) + 2  # + route agreement, overview


def test_off_policy_rollouts_are_drawn_and_summarised_at_the_gradient_steps_they_stand_for(tmp_path):
    """N=2 rollouts k = 1, 2 are updates 1-2 and 3-4: the rollout's numbers land on its first update (as on-policy
    step k's do), its held-out evaluation on its last. A run from before the lab's equal-update sizing (no
    ``step_unit`` in its meta) keeps verl's steps."""
    val = "val-core/lab/acc/mean@8"
    rows = [{"step": 0, "data": {val: 0.5}}, *_rows([0.1, 0.3], **{val: [0.55, 0.6]})]
    moved = metrics.in_gradient_steps(rows, 2)
    assert [(r["step"], sorted(r["data"])[-1]) for r in moved] == [
        (0, val), (1, "rollout_corr/k3_kl"), (2, val), (3, "rollout_corr/k3_kl"), (4, val)
    ]
    assert metrics.in_gradient_steps(rows, 1) == rows
    summary = metrics.summarize(TABLE["n2_r2"], moved)
    assert summary.steps == 4 and summary.heldout_last == 0.6 and summary.train_infer_kl_step1 == 1e-4

    chosen = [TABLE["minirl"], TABLE["n2_r2"]]
    on_policy = _rows([0.1, 0.2, 0.3, 0.4], **{val: [0.5, 0.5, 0.5, 0.7]})
    meta = {"args": {"size": {"steps": 4}}, "wall_s": 1.0, "step_unit": variants.STEP_UNIT}
    report.write(tmp_path / "now", chosen, {"minirl": on_policy, "n2_r2": rows}, meta)
    shown = json.loads((tmp_path / "now" / "plots" / "data.json").read_text())
    assert shown["reward.png"]["n2_r2"] == [[1, 0.1], [3, 0.3]]
    assert shown["heldout_accuracy.png"]["n2_r2"] == [[0, 0.5], [2, 0.55], [4, 0.6]]
    assert shown["reward.png"]["minirl"] == [[1, 0.1], [2, 0.2], [3, 0.3], [4, 0.4]]
    old = {k: v for k, v in meta.items() if k != "step_unit"}
    text = report.write(tmp_path / "before", chosen, {"minirl": on_policy, "n2_r2": rows}, old).read_text()
    shown = json.loads((tmp_path / "before" / "plots" / "data.json").read_text())
    assert shown["reward.png"]["n2_r2"] == [[1, 0.1], [2, 0.3]] and "predates the lab's equal-update sizing" in text


def test_every_claim_names_the_grid_and_claims_on_variants_not_run_are_not_tested():
    variants.check_claims(variants.CLAIMS, TABLE)
    found = findings.evaluate({})
    assert [f.claim for f in found] == [c.text for c in variants.CLAIMS]
    assert {f.status for f in found} == {"not tested"}
    assert "n4_r3_no_clip" in next(f for f in found if f.claim.startswith("Off-policy N=4: without clipping")).evidence


def test_a_claim_on_a_variant_the_grid_lacks_fails_loudly():
    renamed = variants.Claim("N=2 without clipping collapses", "a collapses", "n2_no_clip", ("n2_r2",))
    with pytest.raises(ValueError, match=r"names variant\(s\) \['n2_no_clip'\]"):
        variants.check_claims([renamed], TABLE)
    with pytest.raises(ValueError, match="expect='a>>b'"):
        variants.check_claims([variants.Claim("typo", "a>>b", "n2_r2", ("n2_r3",))], TABLE)


def test_off_policy_ablations_are_judged_against_the_stable_replay_at_their_n():
    up = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    runs = {
        "n4_r3": _rows(up),
        "n4_r3_no_clip": _rows([0.3, 0.5, 0.6, 0.2, 0.0, 0.0]),  # collapses
        "n4_no_replay": _rows([0.1, 0.1, 0.2, 0.2, 0.2, 0.2]),  # does not collapse, trains worse than R3
        "n4_r2": _rows([v - 0.1 for v in up]),
    }
    s = {n: metrics.summarize(TABLE[n], rows) for n, rows in runs.items()}
    found = {f.claim: f for f in findings.evaluate(s)}
    no_clip = found["Off-policy N=4: without clipping the run collapses (or trains worse than with clipping + R3)"]
    assert no_clip.status == "reproduced" and "n4_r3_no_clip collapsed" in no_clip.evidence
    no_replay = found["Off-policy N=4: without routing replay the run collapses (or trains worse than MiniRL + R3)"]
    assert no_replay.status == "reproduced" and "n4_r3 0.550 vs n4_no_replay 0.200" in no_replay.evidence
    assert found["Off-policy N=4: MiniRL + R3 beats MiniRL + R2"].status == "reproduced"
    assert found["Off-policy N=2: MiniRL + R2 beats MiniRL + R3"].status == "not tested"


def test_rewrite_rebuilds_the_report_from_the_saved_run_and_refuses_a_variant_the_grid_lost(tmp_path, capsys):
    runs = {"minirl": _rows([0.1, 0.2]), "n2_r2": _rows([0.1, 0.3])}
    for name, rows in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"runs": {name: {"returncode": 0} for name in runs}, "wall_s": 1.0}
    written = report.write(tmp_path, [TABLE[n] for n in runs], runs, meta).read_text()
    (tmp_path / "report.md").unlink()
    assert report.main([str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == written
    saved = json.loads((tmp_path / "summary.json").read_text())
    saved["meta"]["runs"]["n2_no_clip"] = {"returncode": 0}  # a variant of an older grid
    (tmp_path / "summary.json").write_text(json.dumps(saved))
    assert report.main([str(tmp_path)]) == 2
    assert "['n2_no_clip']" in capsys.readouterr().err


def test_console_reads_the_held_out_key_of_the_callers_data_source():
    from verl_stable.apps import console

    row = {"step": 3, "data": {"val-core/other/reward/mean@1": 0.25, "val-core/mine/acc/mean@4": 0.75}}
    assert "val_acc 0.750" in console.step_line(row, 3, console.val_keys("mine", 4))
    assert "val_acc 0.250" in console.step_line(row, 3)  # no data source: the first val-core key the row has
    assert console.val_keys("mine", 4) == ("val-core/mine/acc/mean@4", "val-core/mine/reward/mean@4")
    table = console.summary_table([row], console.val_keys("mine", 4))
    assert "val_acc" in table and "0.750" in table
