"""R3 on the lab's model under the lab's mismatch dial: the update uses exactly the rollout's experts (route
agreement 1.0) while the π_old pass still measures how often the trainer's own routers disagree with them.

The pieces are the ones the lab's R3 variants run, without Ray: the real ``HFInferenceEngine`` with the
dial's default setting (bf16 weights fake-quantised) recording its routes, the trainer-side model in float32
(as verl's FSDP engine holds it), and verl-stable's ``RoutingReplay`` bound to it. The routes go through
``codecs.from_engine``, the converter R3 applies to what an engine returns.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_stable.cpu.hf_engine import GenerationRequest, HFInferenceEngine
from verl_stable.routing.agreement import count_agreement
from verl_stable.lab import model as lab_model
from verl_stable.lab import task
from verl_stable.routing import RoutingReplay, codecs
from verl_stable.routing.hf import route_spec
from verl_stable.routing.routes import Routes

N_PROMPTS, RESPONSE = 32, 4


def _dial(setting: str) -> dict:
    values = dict(o.split("=", 1) for o in lab_model.MISMATCH_SETTINGS[setting])
    quant = values["actor_rollout_ref.rollout.quantization"]
    return {"dtype": values["actor_rollout_ref.rollout.dtype"], "quantization": None if quant == "null" else quant}


def test_r3_update_uses_the_rollout_routes_while_the_old_pass_measures_the_mismatch(weak_lab_model_dir):
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(weak_lab_model_dir)
    _, held_out = task.split_problems(seed=0, difficulty=2, n_train=task.N_TRAIN, n_eval=task.N_EVAL)
    prompts = [
        list(tokenizer.apply_chat_template([{"role": "user", "content": task.prompt_text(a, b, 2)}],
                                           add_generation_prompt=True)["input_ids"])
        for a, b in held_out[:N_PROMPTS]
    ]
    rollout = HFInferenceEngine(weak_lab_model_dir, record_routes=True, seed=0, **_dial(lab_model.DEFAULT_MISMATCH))
    replies = rollout.generate([GenerationRequest(prompt_ids=p, max_tokens=RESPONSE, ignore_eos=True) for p in prompts])

    trainer = AutoModelForCausalLM.from_pretrained(weak_lab_model_dir, dtype=torch.float32)
    spec = route_spec(trainer)
    # Every token the rollout ran its model on has a route: the sequence without its final sampled token.
    seqs = torch.tensor([p + r.token_ids[:-1] for p, r in zip(prompts, replies, strict=True)])
    rollout_routes = [codecs.from_engine(r.routed_experts, spec, num_tokens=seqs.shape[1]) for r in replies]
    assert all(bool(r.valid_mask().all()) for r in rollout_routes)
    rollout_experts = torch.cat([r.experts for r in rollout_routes])  # row b*S + s = token [b, s]
    rollout_routes = Routes(rollout_experts, spec.num_experts)
    rr = RoutingReplay(trainer)

    # π_old pass (θ_old, no replay): the trainer's routers pick their own experts.
    with torch.no_grad(), rr.record() as old_pass:
        trainer(input_ids=seqs)
    old = count_agreement(old_pass.routes[0].experts.long(), rollout_experts.long())
    mismatch = float(old.tokens_mismatch_any_layer)
    assert 0.0 < mismatch < 0.5, f"the dial's route mismatch is not measurable: {mismatch}"

    # Update (R3): forward and backward under replay of the rollout's routes, recording the experts used.
    with rr.replay(rollout_routes, track_agreement=True) as state, rr.record() as used:
        logits = trainer(input_ids=seqs).logits
        logits[:, -RESPONSE:].float().log_softmax(-1).mean().backward()
    update = count_agreement(used.routes[0].experts.long(), rollout_experts.long())
    assert update.agreement.tolist() == [1.0] * spec.num_layers  # every token, every layer: the rollout's experts
    assert float(update.tokens_mismatch_any_layer) == 0.0
    # ... while the routers' own choices under replay still disagree: R3 overrides a real mismatch, and the
    # first MoE layer (same input as the π_old pass) disagrees exactly as much as it did there.
    native = state.agreement()
    assert float(native.agreement[0]) == float(old.agreement[0])
    assert float(native.tokens_mismatch_any_layer) > 0.0
