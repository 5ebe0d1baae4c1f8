"""``verl-stable lab --seeds 2`` end to end at its smallest size (the CI variant, one step, from the CI cold
start): one real ``python -m verl_stable.main`` run per (variant, seed), each with its own seeds and directory,
one cold start for both; the report, summary and plots read both seeds; the report is rewritten from what the
run saved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from verl_stable.apps.console import read_metrics
from verl_stable.lab import metrics, report, variants

pytestmark = pytest.mark.slow

NAME = variants.QUICK_VARIANTS[0]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, ci_cold_start_models):
    out = tmp_path_factory.mktemp("lab_seeds") / "seeds"
    shutil.copytree(ci_cold_start_models, out / "models")  # the session's cold start: built once for the lab tests
    env = {**os.environ, "RAY_DEDUP_LOGS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "verl_stable.lab", "--out", str(out), "--quick", "--steps", "2", "--seeds", "2",
         "--jobs", "2"],  # both seeds at once: two trainers, two local Ray clusters side by side
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return out, proc.stdout


def test_each_seed_is_its_own_run_with_its_seeds_and_the_same_cold_start(two_seeds):
    out, stdout = two_seeds
    assert "seeds 0, 1 (one cold start for all)" in stdout and "2 runs at a time" in stdout
    assert f"{NAME}" in stdout and " seed 1 " in stdout
    models = set()
    for seed in (0, 1):
        run = out / "runs" / NAME / f"seed{seed}"
        command = (run / "command.txt").read_text()
        for key in ("data.seed", "actor_rollout_ref.rollout.seed", "actor_rollout_ref.actor.data_loader_seed"):
            assert f"{key}={seed} " in command, key
        models |= {line.strip().split("=", 1)[1].rstrip(" \\") for line in command.splitlines()
                   if line.strip().startswith("actor_rollout_ref.model.path=")}
        rows = read_metrics(run / "metrics.jsonl")
        assert [r["step"] for r in rows if "critic/score/mean" in r["data"]] == [1]
    assert len(models) == 1  # one cold start for both seeds
    assert not (out / "runs" / NAME / "metrics.jsonl").exists()


def test_report_summary_and_plots_read_every_seed(two_seeds):
    out, _ = two_seeds
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["seeds"] == [0, 1]
    assert set(summary["meta"]["runs"][NAME]["seeds"]) == {"0", "1"}
    per_seed = summary["per_seed"][NAME]
    for seed in (0, 1):
        rows = read_metrics(out / "runs" / NAME / f"seed{seed}" / "metrics.jsonl")
        reward = metrics.series(rows, ("critic/score/mean",))
        assert per_seed[str(seed)]["reward_last"] == pytest.approx(metrics.tail_mean(reward))
    assert summary["variants"][NAME]["reward_last"] == pytest.approx(
        (per_seed["0"]["reward_last"] + per_seed["1"]["reward_last"]) / 2
    )
    shown = json.loads((out / "plots" / "data.json").read_text())["reward.png"][NAME]
    assert set(shown) == {"mean", "min", "max", "seeds"} and set(shown["seeds"]) == {"0", "1"}
    text = (out / "report.md").read_text()
    assert "seeds 0, 1 (K = 2" in text and "Method: paired by seed" in text and "min-max over seeds" in text
    # one variant: nothing to compare, but its own stability (end against its start), paired over both seeds
    own = [f for f in summary["findings"] if f["status"] != "not tested"]
    assert [f["claim"] for f in own] == [next(c.text for c in variants.CLAIMS if c.expect == "a learns" and c.a == NAME)]
    assert own[0]["intervals"][0]["seeds"] == [0, 1] and own[0]["intervals"][0]["lo"] is not None


def test_the_several_seed_report_is_rewritten_from_what_the_run_saved(two_seeds, tmp_path):
    import shutil

    out, _ = two_seeds
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    shutil.copy(out / "summary.json", copy / "summary.json")
    assert report.rewrite(copy) == copy / "report.md"
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert (copy / "plots" / "data.json").read_text() == (out / "plots" / "data.json").read_text()
