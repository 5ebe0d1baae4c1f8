"""Routes compactness and re-layout speed (SPEC §6).

Prints bytes/token for the Qwen3-30B-A3B shape (48 MoE layers, top-8, 128 experts; goal <= 384) and the
throughput of the pad -> packed re-layout (``routing.pack``: verl's unpad order, then a row gather) as a
fraction of a plain memory copy of the same bytes in the same run (goal >= 25%): against a copy into new
memory (like pack's output; last line) and, stricter, into memory already touched. Medians of interleaved
repetitions.

    .venv/bin/python benchmarks/bench_routes.py [--batch 64 --seq 4096 --reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from verl_stable.routing import RouteSpec, Routes, pack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    spec = RouteSpec(num_experts=128, top_k=8, moe_layers=tuple(range(48)), num_hidden_layers=48)
    print(f"Qwen3-30B-A3B routes: {spec.bytes_per_token()} B/token as {spec.dtype} "
          f"(int16 {48 * 8 * 2}, int32 {48 * 8 * 4}, int64 {48 * 8 * 8}); goal <= 384")

    b, s = args.batch, args.seq
    # realistic padding: left-padded prompts, right-padded responses, ~60% of positions real
    lengths = torch.randint(s // 4, s, (b,))
    starts = (torch.rand(b) * (s - lengths)).long()
    pos = torch.arange(s)
    mask = ((pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])).long()
    mask = mask.to(dev)
    # byte-level cost; ids need not be distinct
    experts = torch.randint(0, 128, (b * s, 48, 8), dtype=torch.uint8, device=dev)
    routes = Routes(experts, 128, mask.flatten().bool())
    nnz = int(mask.sum())
    moved = nnz * spec.bytes_per_token()
    src = torch.empty(moved, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)

    t_pack, t_clone, t_copy = [], [], []
    pack(routes, mask)  # warm-up
    def timed(fn, times):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
        return out

    for _ in range(args.reps):
        packed = timed(lambda: pack(routes, mask), t_pack)  # includes computing the unpad indices
        fresh = timed(src.clone, t_clone)  # a plain copy into new memory, as pack's output is new memory
        timed(lambda: dst.copy_(src), t_copy)  # into memory already touched: the stricter baseline
        del packed, fresh
    mp, ml, mc = (statistics.median(t) for t in (t_pack, t_clone, t_copy))
    gib = lambda t: moved / t / 2**30  # noqa: E731
    print(f"batch {b} x {s} positions, {nnz} tokens, {moved / 2**20:.1f} MiB of routes moved, {args.reps} reps, "
          f"on {dev}")
    print(f"pad->packed {mp * 1e3:.2f} ms ({gib(mp):.2f} GiB/s) | copy to new memory {ml * 1e3:.2f} ms "
          f"({gib(ml):.2f} GiB/s) | copy to preallocated {mc * 1e3:.2f} ms ({gib(mc):.2f} GiB/s); goal >= 0.25")
    print(f"re-layout / copy-to-preallocated throughput: {mc / mp:.3f}")
    print(f"re-layout / copy-to-new-memory throughput: {ml / mp:.3f}")

if __name__ == "__main__":
    main()
