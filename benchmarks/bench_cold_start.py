"""Build one lab cold start in this process and measure it: SFT steps run, final loss, held-out accuracy, wall time,
a digest of the weights. Run it under different thread settings (or CPU kernels) and compare the digests, or pass
``--save``/``--compare`` for the largest weight difference between two builds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cold_start.py --save /tmp/a.pt
    .venv/bin/python benchmarks/bench_cold_start.py --threads 4 --compare /tmp/a.pt
    .venv/bin/python benchmarks/bench_cold_start.py --cold-start ci --eval-at 50,100

Held-out accuracy is measured here with Hugging Face ``generate`` in float32 on the lab's held-out problems
(64 for difficulty 2): greedy (one answer a problem) and sampled at temperature 1 (``--k`` answers a problem, no
top-k / top-p, scored like verl's validation avg@k). The lab's own report reads verl's validation through the
quantised rollout, so its step-0 number sits near, not at, the sampled one here. ``--threads`` sets the process's
torch thread count *before* the build (what the build must not depend on); the last line is JSON.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time

import torch

from verl_stable.lab import model as lab_model
from verl_stable.lab import task
from verl_stable.tasks import tiny_moe


def weight_digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def held_out_accuracy(model, tokenizer, *, difficulty: int, data_seed: int, k: int, seed: int) -> dict:
    """Greedy and temperature-1 accuracy on the lab's held-out problems (exact full sum)."""
    _, held_out = task.split_problems(
        seed=data_seed, difficulty=difficulty, n_train=task.N_TRAIN, n_eval=task.default_n_eval(difficulty)
    )
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": task.prompt_text(a, b, difficulty)}], add_generation_prompt=True
        )["input_ids"]
        for a, b in held_out
    ]
    ids = torch.tensor(prompts)  # every prompt of one difficulty has the same length
    answers = [task.answer_text(a, b, difficulty) for a, b in held_out]
    model.eval()

    def score(out, repeat: int) -> float:
        texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return sum(t.strip() == answers[i // repeat] for i, t in enumerate(texts)) / len(texts)

    common = dict(
        max_new_tokens=task.response_length(difficulty),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    greedy = model.generate(ids, do_sample=False, **common)
    torch.manual_seed(seed)
    sampled = model.generate(
        ids.repeat_interleave(k, 0), do_sample=True, temperature=1.0, top_k=0, top_p=1.0, **common
    )
    return {"greedy_acc": score(greedy, 1), f"sampled_acc@{k}": score(sampled, k)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cold-start", default="default", choices=sorted(lab_model.COLD_STARTS))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before the build")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's sft_steps")
    p.add_argument("--lr-decay-from", type=float, default=None, help="override the recipe's lr_decay_from")
    p.add_argument("--sft-threads", type=int, default=None, help="override the recipe's sft_threads")
    p.add_argument("--eval-at", default="", help="also measure the model after these steps, e.g. 762,1096")
    p.add_argument("--k", type=int, default=task.EVAL_K, help="samples per held-out problem")
    p.add_argument("--save", default=None, help="torch.save the state dict here")
    p.add_argument("--compare", default=None, help="a saved state dict: report the max abs weight difference")
    p.add_argument("--losses", default=None, help="write the per-step SFT losses here (JSON)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    threads_before = torch.get_num_threads()
    spec = lab_model.recipe(args.cold_start)
    if args.steps is not None:
        spec["sft_steps"] = args.steps
    if args.sft_threads is not None:
        spec["sft_threads"] = args.sft_threads
    if args.lr_decay_from is not None:
        spec["lr_decay_from"] = args.lr_decay_from
    eval_at = sorted(int(s) for s in args.eval_at.split(",") if s)

    # The lab's build (lab_model.build_model), with a hook on the batch sampler that snapshots the weights
    # after the steps named by --eval-at (a copy of the state dict; the SFT itself is not touched).
    snapshots: dict[int, dict] = {}
    tokenizer = tiny_moe.build_tokenizer()
    real_batch, calls = lab_model.sft_batch, [0]
    holder: dict = {}

    def counting_batch(*a, **kw):
        if calls[0] in eval_at:
            snapshots[calls[0]] = copy.deepcopy(holder["model"].state_dict())
        calls[0] += 1
        return real_batch(*a, **kw)

    real_init = tiny_moe.init_model

    def init_and_keep(*a, **kw):
        holder["model"] = real_init(*a, **kw)
        return holder["model"]

    lab_model.sft_batch, tiny_moe.init_model = counting_batch, init_and_keep
    try:
        start = time.perf_counter()
        model, tokenizer, losses = lab_model.build_model(spec)
        wall = time.perf_counter() - start
    finally:
        lab_model.sft_batch, tiny_moe.init_model = real_batch, real_init
    assert torch.get_num_threads() == threads_before, "the build did not restore the thread count"

    state = model.state_dict()
    result = {
        "cold_start": args.cold_start,
        "torch_threads_outside": threads_before,
        "sft_threads": spec["sft_threads"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "sft_steps_run": len(losses),
        "lr_decay_from": spec["lr_decay_from"],
        "final_loss": round(tiny_moe.recent_loss(losses), 4),
        "loss_check_passed": lab_model.loss_check(spec, losses),
        "first_step_at_or_below_0.95": next(
            (i + 1 for i in range(tiny_moe.STOP_WINDOW - 1, len(losses))
             if tiny_moe.recent_loss(losses[: i + 1]) <= 0.95), None
        ),
        "wall_s": round(wall, 1),
        "weights_sha256": weight_digest(state),
    }
    measure = dict(difficulty=spec["difficulty"], data_seed=spec["data_seed"], k=args.k, seed=0)
    result.update(held_out_accuracy(model, tokenizer, **measure))
    for step in eval_at:
        if step in snapshots:
            probe = copy.deepcopy(model)
            probe.load_state_dict(snapshots[step])
            result[f"at_{step}"] = {
                "loss": round(tiny_moe.recent_loss(losses[:step]), 4),
                **held_out_accuracy(probe, tokenizer, **measure),
            }
    if args.compare:
        other = torch.load(args.compare)
        result["max_abs_diff_vs_compare"] = max(float((state[k] - other[k]).abs().max()) for k in state)
        result["bitwise_equal_to_compare"] = all(torch.equal(state[k], other[k]) for k in state)
    if args.save:
        torch.save(state, args.save)
    if args.losses:
        with open(args.losses, "w") as f:
            json.dump(losses, f)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
