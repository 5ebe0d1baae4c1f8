"""The mismatch dial: each setting's hf_cpu rollout drifts further from the trainer's policy than the last.

Measured directly, without a trainer run: the trainer-side policy (the checkpoint in float32, as verl's
FSDP engine holds it) against the real ``HFInferenceEngine`` built with the setting's dtype and
quantisation, on one fixed batch of sampled sequences: KL(mu || pi) over the vocabulary at every response
position (the quantity verl's ``rollout_corr/kl`` estimates from sampled tokens).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_stable.cpu.hf_engine import GenerationRequest, HFInferenceEngine
from verl_stable.lab import model as lab_model
from verl_stable.lab import task


def _setting(overrides: list[str]) -> dict:
    values = dict(o.split("=", 1) for o in overrides)
    quant = values.get("actor_rollout_ref.rollout.quantization", "null")
    return {
        "dtype": values.get("actor_rollout_ref.rollout.dtype", "bfloat16"),
        "quantization": None if quant == "null" else quant,
    }


def test_each_dial_setting_raises_the_training_inference_kl(weak_lab_model_dir):
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(weak_lab_model_dir)
    trainer = AutoModelForCausalLM.from_pretrained(
        weak_lab_model_dir, dtype=torch.float32
    ).eval()
    _, held_out = task.split_problems(
        seed=0, difficulty=2, n_train=task.N_TRAIN, n_eval=task.N_EVAL
    )
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": task.prompt_text(a, b, 2)}],
                add_generation_prompt=True,
            )["input_ids"]
        )
        for a, b in held_out[:16]
    ]
    sampler = HFInferenceEngine(weak_lab_model_dir, dtype="float32", seed=0)
    replies = sampler.generate(
        [
            GenerationRequest(prompt_ids=p, max_tokens=4, ignore_eos=True)
            for p in prompts
        ]
    )
    batch = torch.tensor(
        [p + r.token_ids for p, r in zip(prompts, replies, strict=True)]
    )
    n_prompt = len(prompts[0])

    def response_logp(model) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(
                model(input_ids=batch).logits[:, n_prompt - 1 : -1].float(), -1
            )

    pi = response_logp(trainer)
    kls = {}
    for name, overrides in lab_model.MISMATCH_SETTINGS.items():
        engine = HFInferenceEngine(weak_lab_model_dir, **_setting(overrides))
        mu = response_logp(engine.model)
        kls[name] = (mu.exp() * (mu - pi)).sum(-1).mean().item()
    values = list(kls.values())
    assert all(v > 0 for v in values), kls
    assert all(a < b for a, b in zip(values, values[1:])), f"dial not monotonic: {kls}"
    assert values[-1] > 10 * values[0], (
        kls
    )  # the strongest setting is a different regime, not noise
    assert values[-1] < 0.5, kls  # a precision gap, not a different model
