"""How the lab plans its runs. The held-out evaluation before training runs once per (cold start, seed), shared by
the variants that start from that model: which runs evaluate, which skip verl's ``val_before_train``, how the
shared step-0 row enters the report (and its rewrite), and the switch that gives every run its own. ``--resume``
reuses a run that finished with the same command, and nothing else.

Why it may be shared: the step-0 evaluation is a function of the weights, the held-out set and the rollout's
sampling seed, which the variants of one (cold start, seed) have in common (the lab's runs show the same
``val-core`` mean for every variant of a seed). It costs ~11 s of a variant's ~120 s on 2 cores."""

from __future__ import annotations

import json

import pytest

from tests.lab.addition_setup import addition_setup
from verl_stable.lab import metrics, report, run, variants

TABLE = variants.grid(("default", "seed1"))
VAL = "val-core/verl_stable/lab_addition/acc/mean@8"


def _plan(tmp_path, names, *, seeds=2, shared=True):
    args = run.Args(out=tmp_path, seeds=seeds, shared_baseline_eval=shared, size=variants.GridSize(steps=2))
    chosen = [TABLE[n] for n in names]
    model_of = lambda v, s: f"/models/{v.cold_start}"  # noqa: E731
    return run.plan_runs(args, addition_setup(), chosen, model_of, out=tmp_path, train="t.parquet", val="v.parquet")


def test_the_first_variant_of_each_model_and_seed_evaluates_and_the_rest_share_it(tmp_path):
    named, jobs, baseline_of = _plan(tmp_path, ["minirl", "minirl_no_is", "minirl_r3", "cold_seed1_r2"])
    assert [(v.name, s) for v, s, _, _ in jobs][:4] == [
        ("minirl", 0), ("minirl_no_is", 0), ("minirl_r3", 0), ("cold_seed1_r2", 0),
    ]  # fmt: skip
    # cold_seed1_r2 starts from another model: it evaluates its own; the other seed is its own group again
    assert baseline_of == {
        ("minirl_no_is", 0): "minirl", ("minirl_r3", 0): "minirl",
        ("minirl_no_is", 1): "minirl", ("minirl_r3", 1): "minirl",
    }  # fmt: skip
    for key, overrides in named.items():
        shares = key.startswith(("minirl_no_is", "minirl_r3"))
        # Hydra: the last override of a key wins
        last = [o for o in overrides if o.startswith("trainer.val_before_train=")][-1]
        assert last == f"trainer.val_before_train={not shares}", key


def test_per_variant_baseline_evals_when_asked(tmp_path):
    named, _, baseline_of = _plan(tmp_path, ["minirl", "minirl_no_is"], shared=False)
    assert baseline_of == {}
    for overrides in named.values():
        assert [o for o in overrides if o.startswith("trainer.val_before_train=")][-1] == "trainer.val_before_train=True"
    assert run.parse_args(["--baseline-eval-per-variant"]).shared_baseline_eval is False
    assert run.parse_args([]).shared_baseline_eval is True


def _rows(step0: float | None, finals=(0.5, 0.6)):
    rows = [{"step": 0, "data": {VAL: step0, "val-aux/x": 1.0}}] if step0 is not None else []
    for i, r in enumerate(finals, 1):
        rows.append({"step": i, "data": {"critic/score/mean": r, **({VAL: r} if i == len(finals) else {})}})
    return rows


def test_a_run_without_its_own_step0_row_gets_the_sources_marked():
    source = _rows(0.25)
    shared = metrics.baseline_eval(source)
    assert shared == {"step": 0, "data": {VAL: 0.25, "val-aux/x": 1.0}}
    borrowed = metrics.with_baseline_eval(_rows(None), shared, "minirl")
    assert borrowed[0] == {**shared, "shared_from": "minirl"} and borrowed[1:] == _rows(None)
    assert metrics.series(borrowed, (metrics.HELD_OUT,))[0] == (0, 0.25)
    # a run with its own step-0 row keeps it; no source row: nothing is invented
    assert metrics.with_baseline_eval(_rows(0.3), shared, "minirl") == _rows(0.3)
    assert metrics.with_baseline_eval(_rows(None), None, "minirl") == _rows(None)
    assert metrics.baseline_eval(_rows(None)) is None


def test_the_report_and_its_rewrite_start_the_sharing_variant_from_the_shared_row(tmp_path):
    runs = {"minirl": {0: _rows(0.25), 1: _rows(0.3)}, "minirl_no_is": {0: _rows(None), 1: _rows(None, (0.4, 0.45))}}
    for name, by_seed in runs.items():
        for seed, rows in by_seed.items():
            d = metrics.run_dir(tmp_path, name, seed, [0, 1])
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    baseline_of = {("minirl_no_is", 0): "minirl", ("minirl_no_is", 1): "minirl"}
    meta = {
        "args": {"seed": 0, "size": {"steps": 2}},
        "seeds": [0, 1],
        "runs": {n: {"seeds": {"0": {"returncode": 0}, "1": {"returncode": 0}}} for n in runs},
        "baseline_eval": [{"variant": n, "seed": s, "from": src} for (n, s), src in baseline_of.items()],
        "wall_s": 1.0,
    }
    run.share_baseline_evals(runs, baseline_of)
    chosen = [TABLE["minirl"], TABLE["minirl_no_is"]]
    text = report.write(tmp_path, chosen, runs, meta).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["per_seed"]["minirl_no_is"]["0"]["heldout_first"] == pytest.approx(0.25)
    assert summary["per_seed"]["minirl_no_is"]["1"]["heldout_first"] == pytest.approx(0.3)
    assert summary["per_seed"]["minirl_no_is"]["1"]["heldout_last"] == pytest.approx(0.45)
    (tmp_path / "report.md").unlink()
    assert report.rewrite(tmp_path).read_text() == text


# ------------------------------------------------------------------------------------------------ --resume
def test_a_finished_run_with_the_same_command_is_reused_and_any_other_is_not(tmp_path):
    named, jobs, _ = _plan(tmp_path, ["minirl", "minirl_no_is"])
    (v, seed, key, run_dir) = jobs[0]
    overrides = named[key]
    assert run.finished_run(run_dir, overrides, steps=2) is None  # never ran
    run_dir.mkdir(parents=True)
    (run_dir / "command.txt").write_text(run.command_text(overrides))
    rows = _rows(0.25)  # steps 0, 1, 2
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert run.finished_run(run_dir, overrides, steps=2) is None  # stopped after step 1
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run.finished_run(run_dir, overrides, steps=2) == rows
    assert run.finished_run(run_dir, [*overrides, "actor_rollout_ref.actor.optim.lr=1e-4"], steps=2) is None
    assert run.finished_run(run_dir, overrides, steps=3) is None  # asked for a longer run
    # another thread count is another command: its runs are other numbers
    assert run.finished_run(run_dir, overrides, steps=2, env=run.Args(threads=2).env) is None
    assert run.parse_args(["--resume"]).resume is True and run.parse_args([]).resume is False
    reused = run.VariantRun(v, run_dir, rows, 0, 0.0, None, overrides, seed, reused=True)
    assert reused.info()["reused"] is True and "reused" not in run.VariantRun(v, run_dir, rows, 0, 1.0, 1.0, overrides).info()


# ------------------------------------------------------------------------------------------------ --threads
def test_every_run_gets_the_labs_thread_count_whatever_the_shell_exports(monkeypatch, tmp_path):
    from verl_stable.apps import console

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    args = run.parse_args([])
    assert args.threads == 1 and args.env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQ_NUM_THREADS": "1"}
    env = {**console.trainer_env("/tmp/m.jsonl"), **args.env}  # what console.run_trainer starts verl with
    assert env["OMP_NUM_THREADS"] == "1" and env["VERL_FILE_LOGGER_PATH"] == "/tmp/m.jsonl"
    assert run.parse_args(["--threads", "2"]).env["OMP_NUM_THREADS"] == "2"
    # the command a run writes says so, and can be pasted into a shell
    assert run.command_text(["a=1"], args.env).startswith(
        "MKL_NUM_THREADS=1 OMP_NUM_THREADS=1 TQ_NUM_THREADS=1 python -m verl_stable.main"
    )
    with pytest.raises(SystemExit):
        run.parse_args(["--threads", "0"])
    with pytest.raises(ValueError, match="--threads"):
        run.Args(threads=0).env
    with pytest.raises(SystemExit):
        run.parse_args(["--jobs", "0"])
    with pytest.raises(ValueError, match="--jobs"):
        run.run_lab(run.Args(jobs=0, out=tmp_path))


def test_a_size_that_is_not_whole_rollouts_is_refused_before_anything_is_built(tmp_path):
    """``--steps 6`` for an N=4 variant names ``--steps`` before the data set and the cold start are built (minutes)."""
    import dataclasses

    def must_not_build(*_a, **_k):
        raise AssertionError("built before the size was checked")

    setup = dataclasses.replace(addition_setup(), data_builder=must_not_build, model_builder=must_not_build)
    args = run.Args(out=tmp_path, variants=["minirl", "n4_r3"], size=variants.GridSize(steps=6))
    with pytest.raises(ValueError, match=r"n4_r3: 6 gradient steps \(lab --steps\) are not whole rollouts of 4"):
        run.run_lab(args, setup)
    assert run.main(["--variants", "n4_r3", "--steps", "6", "--out", str(tmp_path / "cli")]) == 2
