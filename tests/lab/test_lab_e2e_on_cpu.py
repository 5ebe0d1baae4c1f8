"""The lab end to end at its smallest size (``verl-stable lab --quick``, what CI runs): every variant is a real
``python -m verl_stable.main`` run; the report and the plots exist and carry the variants' data; a rerun with
the same seed repeats every metric."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from verl_stable.apps.console import read_metrics
from verl_stable.lab import model as lab_model
from verl_stable.lab import metrics, plots, report, variants

pytestmark = pytest.mark.slow

QUICK = list(variants.QUICK_VARIANTS)


def _lab(out: Path, *args: str, timeout: int = 1500, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_DEDUP_LOGS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    env.pop("VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "verl_stable.lab", "--out", str(out), *args],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


@pytest.fixture(scope="module")
def quick(tmp_path_factory, ci_cold_start_models):
    out = tmp_path_factory.mktemp("lab") / "quick"
    shutil.copytree(ci_cold_start_models, out / "models")  # the session's cold start: built once for the lab tests
    proc = _lab(out, "--quick")
    return out, proc.stdout


def test_quick_lab_prints_progress_and_where_the_report_is(quick):
    out, stdout = quick
    assert f"[lab] report: {out / 'report.md'}" in stdout
    for name in QUICK:
        rollouts = variants.grid()[name].rollout_steps(variants.QUICK)  # verl's steps: N updates each
        assert f" {name} " in stdout and f"step {rollouts}/{rollouts}" in stdout
    assert len(stdout.splitlines()) < 40, stdout  # verl's own output stays in each run's train.log
    assert (out / "runs" / QUICK[0] / "train.log").stat().st_size > 10_000


def test_every_variant_ran_through_verls_launcher_with_its_switches(quick):
    out, _ = quick
    from omegaconf import OmegaConf

    for name in QUICK:
        run = out / "runs" / name
        assert "-m verl_stable.main" in (run / "command.txt").read_text()
        cfg = OmegaConf.load(run / "hydra" / ".hydra" / "config.yaml")
        v = variants.grid()[name]
        mode = next((p.split("=")[1] for p in v.presets if p.startswith("routing_replay=")), "disabled")
        assert cfg.actor_rollout_ref.actor.fsdp_config.router_replay.mode == mode
        # the paper's off-policy sizing: N mini-batches of the gradient step's prompts per rollout
        assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == variants.QUICK.prompts_per_step
        assert cfg.data.train_batch_size == variants.QUICK.prompts_per_step * v.n_minibatches
        rows = read_metrics(run / "metrics.jsonl")
        steps = [r["step"] for r in rows if "critic/score/mean" in r["data"]]
        assert steps == list(range(1, v.rollout_steps(variants.QUICK) + 1))
        assert any(metrics.val_key(r["data"]) for r in rows if r["step"] == 0)  # held-out accuracy before training


def test_plots_exist_and_show_every_variants_metrics(quick):
    out, _ = quick
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) >= 3
    import matplotlib.image as mpimg

    for png in pngs:
        img = mpimg.imread(png)
        assert img.shape[0] > 200 and img.shape[1] > 300 and float(img.std()) > 0.01, png
    shown = json.loads((out / "plots" / "data.json").read_text())
    for spec in plots.PLOTS:  # N=2: the second mini-batch is stale, so even the staleness KL is drawn
        assert set(shown[spec.file]) == set(QUICK), spec.file
        for name in QUICK:  # drawn against gradient steps: rollout k of N updates at step N x k
            n = variants.grid()[name].n_minibatches
            rows = metrics.in_gradient_steps(read_metrics(out / "runs" / name / "metrics.jsonl"), n)
            assert [tuple(p) for p in shown[spec.file][name]] == [
                p for p in metrics.series(rows, spec.keys) if not spec.log or p[1] > 0
            ]
    # the R2 run's per-layer route agreement is drawn (mini-batch one agrees by construction)
    r2 = [k for k in shown["route_agreement.png"] if k.startswith("n2_r2/update layer")]
    assert len(r2) == 2


def test_report_tables_every_variant_from_its_metrics(quick):
    out, _ = quick
    text = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for name in QUICK:
        assert f"(`{name}`)" in text
        rows = read_metrics(out / "runs" / name / "metrics.jsonl")
        reward = metrics.series(rows, ("critic/score/mean",))
        assert summary["variants"][name]["reward_last"] == pytest.approx(metrics.tail_mean(reward))
        assert math.isfinite(summary["variants"][name]["train_infer_kl"])
    assert "## The paper's findings, checked" in text
    assert all(f"![{p.stem}](plots/{p.name})" in text for p in (out / "plots").glob("*.png"))
    statuses = {f["status"] for f in summary["findings"]}
    assert statuses <= {"reproduced", "not reproduced", "inconclusive", "not tested"}
    assert "too short" in text or "No run collapsed" in text or "collapsed" in text


def test_a_rerun_repeats_every_metric_bit_for_bit_whatever_the_shell_exports(quick, tmp_path):
    """Same seed, same variant, a second run with ``OMP_NUM_THREADS=2`` exported (the first ran with the caller's
    environment). The lab lays each batch out by its content (verl's sampler hands it over in completion order,
    which decided the off-policy mini-batches) and runs every verl process on its own thread count, so every metric
    of every step is the same number, but the measured time and memory."""
    out, _ = quick
    name = QUICK[0]
    again = tmp_path / "again"
    steps, prompts = variants.QUICK.steps, variants.QUICK.prompts_per_step
    _lab(
        again, "--variants", name, "--steps", str(steps), "--prompts", str(prompts), "--seeds", "1",
        "--cold-start", lab_model.CI_COLD_START, env={"OMP_NUM_THREADS": "2"},
    )
    first = {r["step"]: r["data"] for r in read_metrics(out / "runs" / name / "metrics.jsonl")}
    second = {r["step"]: r["data"] for r in read_metrics(again / "runs" / name / "metrics.jsonl")}
    rollouts = variants.grid()[name].rollout_steps(variants.QUICK)
    assert first.keys() == second.keys() == {0, *range(1, rollouts + 1)}

    def measured(key: str) -> bool:  # wall time, throughput and memory: not the run's numbers
        return key.startswith(("timing_", "perf/")) or "/perf/" in key or key.endswith("_memory_used_gb")

    for step in first:
        a = {k: v for k, v in first[step].items() if not measured(k)}
        b = {k: v for k, v in second[step].items() if not measured(k)}
        assert a.keys() == b.keys(), step
        differ = {k: (a[k], b[k]) for k in a if a[k] != b[k] and not (a[k] != a[k] and b[k] != b[k])}
        assert not differ, f"step {step}: {differ}"
    assert "actor/pg_loss" in first[1] and "rollout_corr/k3_kl" in first[1]  # the update's numbers were compared


def test_the_report_is_rewritten_from_what_the_run_saved(quick, tmp_path):
    import shutil

    out, _ = quick
    copy = tmp_path / "copy"
    shutil.copytree(out / "runs", copy / "runs")
    shutil.copy(out / "summary.json", copy / "summary.json")
    assert report.rewrite(copy) == copy / "report.md"
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert sorted(p.name for p in (copy / "plots").glob("*.png")) == sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "overview.png" in {p.name for p in (copy / "plots").glob("*.png")}
