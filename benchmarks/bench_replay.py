"""Cost of routing replay: forward + backward of a small Qwen3-MoE with ``replay(routes)`` vs the stock
model, same model, same batch, interleaved repetitions, medians. Goal: ratio <= 1.05. Last line: the ratio.

    .venv/bin/python benchmarks/bench_replay.py [--reps 15 --batch 4 --seq 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3MoeConfig

from verl_stable.routing import RoutingReplay


def build(args) -> torch.nn.Module:
    config = Qwen3MoeConfig(
        vocab_size=512, hidden_size=args.hidden, intermediate_size=2 * args.hidden, moe_intermediate_size=args.hidden // 2,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2, head_dim=args.hidden // 4,
        num_experts=args.experts, num_experts_per_tok=args.top_k, norm_topk_prob=True, max_position_embeddings=4096,
    )
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.weight"):
                p.normal_(0, 0.5)
    return model.train()


def step(model, x) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=x, use_cache=False).logits
    torch.log_softmax(logits.float(), -1).gather(-1, x[..., None]).mean().backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top_k", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build(args).to(device=args.device, dtype=getattr(torch, args.dtype))
    rr = RoutingReplay(model)
    x = torch.randint(0, 512, (args.batch, args.seq), device=args.device)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with rr.record() as rec, torch.no_grad():
        model(input_ids=x, use_cache=False)
    routes = rec.routes[0]

    def replayed():
        with rr.replay(routes):
            step(model, x)

    for _ in range(2):  # warm-up both paths
        step(model, x)
        replayed()
    base, rep = [], []
    for i in range(args.reps):
        # alternate which goes first so drift in machine load hits both equally
        order = [(base, lambda: step(model, x)), (rep, replayed)]
        for times, fn in order if i % 2 == 0 else order[::-1]:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
    mb, mr = statistics.median(base), statistics.median(rep)
    print(f"Qwen3-MoE {args.layers} layers, {args.experts} experts top-{args.top_k}, hidden {args.hidden}; "
          f"batch {args.batch} x {args.seq}; {args.dtype} on {args.device}; {args.reps} interleaved reps, "
          f"threads {torch.get_num_threads()}")
    print(f"forward+backward: stock {mb * 1e3:.1f} ms, replay {mr * 1e3:.1f} ms (goal ratio <= 1.05)")
    print(f"replay / stock time: {mr / mb:.3f}")


if __name__ == "__main__":
    main()
