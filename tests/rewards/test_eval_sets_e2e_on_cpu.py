"""One real verl validation on CPU (verl_stable.main, the hf_cpu rollout, the tiny MoE): the data step's three eval
sets come back as three separate val-core/<source>/acc/mean@2 metrics, every sample scored 0 or 1 by the binary
math-verify reward loaded through reward.custom_reward_function. Validation only (trainer.val_only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from verl_stable.apps.console import read_metrics
from verl_stable.apps.cpu_overrides import cpu_overrides
from verl_stable.data.math_sets import EVAL_SOURCES, build_sets, overrides

VAL_N = 2
#: cpu_overrides' keys this run sets itself
REPLACED = ("data.train_files=", "data.val_files=", "reward.custom_reward_function.", "trainer.val_before_train=",
            "trainer.test_freq=")


def _greedy_answers(model_dir, questions: list[str]) -> dict[str, int]:
    """The digit the tiny model answers first to each question, greedy, float32 (what the rollout will decode)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = {}
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            first = int(model(input_ids=ids).logits[0, -1].argmax())
        text = tok.decode([first]).strip()
        assert text.isdigit(), f"the format SFT should make the model answer a digit to {q!r}, got {text!r}"
        out[q] = int(text)
    return out


@pytest.mark.slow
def test_three_eval_sets_give_three_metrics_with_binary_rewards(tmp_path):
    from verl_stable.tasks.addition import build_model_dir

    run = tmp_path
    build_model_dir(run / "model", seed=0)
    # Questions the tiny model's character tokenizer reads. Its format SFT answers with some digit; to have right and
    # wrong answers in every eval set, half the ground truths are the digit it answers greedily, half another.
    greedy = _greedy_answers(run / "model", [f"{i}+{j}=" for i in range(10) for j in range(10)])
    src = {}
    for name, n, seed in (("train", 8, 0), *((s, 4, i + 1) for i, s in enumerate(EVAL_SOURCES))):
        rows = []
        for i in range(n):
            q = f"{(seed + 3 * i) % 10}+{(seed + i) % 10}="
            rows.append({"problem": q, "answer": greedy[q] if i % 2 == 0 else (greedy[q] + 1) % 10})
        src[name] = run / f"{name}.jsonl"
        src[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = build_sets(run / "data", src["train"], {s: src[s] for s in EVAL_SOURCES}, instruction="")
    metrics = run / "metrics.jsonl"
    base = [o for o in cpu_overrides(run, steps=1) if not o.startswith(REPLACED)]
    cmd = [sys.executable, "-m", "verl_stable.main", "algorithm=minirl", *base, *overrides(written),
           "reward.custom_reward_function.path=pkg://verl_stable.rewards.math_verifier",
           "reward.custom_reward_function.name=compute_score",
           # greedy in float32, as _greedy_answers decodes: every sample of a prompt gives the same answer
           "actor_rollout_ref.rollout.dtype=float32",
           f"actor_rollout_ref.rollout.val_kwargs.n={VAL_N}", "actor_rollout_ref.rollout.val_kwargs.do_sample=False",
           "trainer.val_before_train=True", "trainer.val_only=True", f"trainer.validation_data_dir={run / 'val'}"]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "VERL_FILE_LOGGER_PATH": str(metrics),
           "TOKENIZERS_PARALLELISM": "false"}
    log = run / "val.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
            pytest.fail(f"validation did not finish in time; log: {log}")
    assert rc == 0, log.read_text()[-4000:]
    rows = read_metrics(metrics)
    assert len(rows) == 1, rows  # validation only: one row, before any training step
    data = rows[0]["data"]
    for source in EVAL_SOURCES:
        # two of the four ground truths are the model's answer: the scorer finds exactly those
        assert data[f"val-core/{source}/acc/mean@{VAL_N}"] == 0.5, {k: v for k, v in data.items() if "val" in k}
        assert data[f"val-aux/{source}/verify_timeout/mean@{VAL_N}"] == 0.0
    assert not any(k.startswith("val-core/math/") for k in data)  # the training set is not an eval set
    assert {k.split("/")[1] for k in data if k.startswith("val-core/")} == set(EVAL_SOURCES)
    # every sample's reward, as verl dumped it: exactly 0 or 1 (verl's default math scorer would give -1)
    samples = [json.loads(line) for f in sorted((run / "val").glob("*.jsonl")) for line in f.read_text().splitlines()]
    assert len(samples) == VAL_N * 4 * len(EVAL_SOURCES)
    assert {s["score"] for s in samples} == {0.0, 1.0}
    assert {s["acc"] for s in samples} <= {0.0, 1.0}
