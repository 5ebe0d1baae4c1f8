"""Routes compactness and re-layout speed (docs/method.md §6).

Prints bytes/token for the Qwen3-30B-A3B shape (48 MoE layers, top-8, 128 experts; goal <= 384); the routes
on the wire (``--wire``): a rollout batch through verl 0.9.1's own ``AgentLoopOutput.as_dict`` (int16) and
through it with ``verl_stable.integration.agent_loop`` (uint8) -- bytes/token, the batch's host memory and pickled
(Ray / TransferQueue) size, the padding time as a ratio, plus a 7-bit packed form's pack/unpack cost as a
ratio to a plain copy; and the of the pad -> packed re-layout (``routing.pack``: verl's unpad order, then a row gather) as a
fraction of a plain memory copy of the same bytes in the same run (goal >= 25%): against a copy into new
memory (like pack's output; last line) and, stricter, into memory already touched. Medians of interleaved
repetitions.

``--replay``: the per-micro-batch replay path of verl's FSDP engine -- verl's nested ``routed_experts`` decoded
into packed Routes (the boundary check), laid out as the model input (packed + bucket pad, or padded ``[b, S]``)
and pushed to a replay context -- as a ratio to a plain copy of the micro-batch's route bytes in the same run.

    .venv/bin/python benchmarks/bench_routes.py [--batch 64 --seq 4096 --reps 9] [--wire --wire-samples 64]
    .venv/bin/python benchmarks/bench_routes.py --replay [--batch 8 --seq 4096 --reps 15]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import numpy as np
import torch

from verl_stable.routing import RouteSpec, Routes, pack


def pack7(ids: torch.Tensor) -> torch.Tensor:
    """uint8 ids < 128, ``[n, m]`` with m % 8 == 0 -> ``[n, 7m/8]`` bytes (7 bits per id, little-endian)."""
    n, m = ids.shape
    x = ids.view(n, m // 8, 8)
    out = torch.empty(n, m // 8, 7, dtype=torch.uint8)
    for k in range(7):  # byte k: id k's bits k..6, then id k+1's low k+1 bits
        out[..., k] = (x[..., k] >> k) | (x[..., k + 1] << (7 - k))
    return out.view(n, -1)


def unpack7(packed: torch.Tensor, m: int) -> torch.Tensor:
    n = packed.shape[0]
    b = packed.view(n, m // 8, 7)
    out = torch.empty(n, m // 8, 8, dtype=torch.uint8)
    out[..., 0] = b[..., 0] & 127
    for j in range(1, 7):
        out[..., j] = ((b[..., j - 1] >> (8 - j)) | (b[..., j] << j)) & 127
    out[..., 7] = b[..., 6] >> 1
    return out.view(n, m)


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def wire(samples: int, seq: int, reps: int) -> None:
    """A rollout batch of Qwen3-30B-A3B routes from the server's arrays to the trainer's batch tensor, through
    verl 0.9.1's own AgentLoopOutput.as_dict (int16, the v1 trainer's path; the legacy path widens the same
    way) and through it with verl_stable.integration.agent_loop (uint8)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    from verl_stable.integration import agent_loop as wire_mod

    wire_mod.install()
    ours = AgentLoopOutput.as_dict
    verls = getattr(ours, "__verl_stable_compact_routes__")
    layers, top_k, prompt = 48, 8, seq // 8
    rng = np.random.default_rng(0)
    outputs = []
    for _ in range(samples):
        # every token the engine ran on: prompt + response - 1 rows (vLLM's convention), as the server sends them
        routes = rng.integers(0, 128, size=(seq - 1, layers, top_k), dtype=np.uint8)
        outputs.append(AgentLoopOutput(prompt_ids=[1] * prompt, response_ids=[2] * (seq - prompt),
                                       response_mask=[1] * (seq - prompt), routed_experts=routes, metrics={}))
    tokens = samples * seq
    print(f"routes on the wire: {samples} responses x {seq} tokens (prompt {prompt}), 48 layers x top-8, "
          f"128 experts; {reps} reps")
    results = {}
    for name, fn in (("verl 0.9.1 (int16)", verls), ("verl-stable (uint8)", ours)):
        batch = None

        def run(fn=fn):
            nonlocal batch
            batch = torch.stack([fn(o)["routed_experts"] for o in outputs])  # what the trainer's batch holds

        t = _median_time(run, reps)
        wire_bytes = len(pickle.dumps(batch, protocol=5))
        results[name] = (t, batch.nbytes)
        print(f"  {name:20s} {batch.dtype}: {batch.nbytes / tokens:.0f} B/token, batch {batch.nbytes / 2**20:.0f} MiB "
              f"in host memory, {wire_bytes / 2**20:.0f} MiB pickled; as_dict + stack {t * 1e3:.0f} ms")
        del batch
    (t_old, b_old), (t_new, b_new) = results.values()
    scale = 1024 * 4096 / tokens
    print(f"  1024 responses x 4K tokens (x{scale:g}): {b_old * scale / 2**30:.2f} GiB -> {b_new * scale / 2**30:.2f} GiB")

    ids = torch.from_numpy(np.stack([o.routed_experts for o in outputs])).view(-1, layers * top_k)
    packed = pack7(ids)
    assert torch.equal(unpack7(packed, layers * top_k), ids)
    t_copy = _median_time(ids.clone, reps)
    t_pack = _median_time(lambda: pack7(ids), reps)
    t_unpack = _median_time(lambda: unpack7(packed, layers * top_k), reps)
    print(f"  7-bit packed: {packed.shape[1]} B/token; pack {t_pack * 1e3:.0f} ms, unpack {t_unpack * 1e3:.0f} ms, "
          f"plain copy of the uint8 routes {t_copy * 1e3:.0f} ms")
    print(f"  7-bit pack / copy: {t_pack / t_copy:.1f}x; unpack / copy: {t_unpack / t_copy:.1f}x")
    print(f"wire bytes/token uint8 / int16: {b_new / b_old:.3f}; padding time uint8 / int16: {t_new / t_old:.3f}")


def replay_path(batch: int, seq: int, reps: int) -> None:
    """One micro-batch of Qwen3-30B-A3B routes through BatchReplay.push's work: decode verl's nested field,
    lay the rows out as the model input, push them to the replay context."""
    from verl_stable.routing.codecs import from_nested as decode_nested
    from verl_stable.routing.fsdp import model_input_rows, padded_mask
    from verl_stable.routing.replay import ReplayState

    spec = RouteSpec(num_experts=128, top_k=8, moe_layers=tuple(range(48)), num_hidden_layers=48)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(seq // 8, seq, (batch,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    nnz = int(offsets[-1])
    # distinct experts per row (a real route), uint8 as verl-stable's agent loop keeps them on the wire
    ids = torch.rand(nnz, 48, 128, generator=gen).argsort(-1)[..., :8].to(torch.uint8)
    ids[offsets[1:] - 1] = 0  # the final sampled token of each sequence: never routed by the engine
    routed = torch.nested.nested_tensor_from_jagged(ids, offsets=offsets)
    input_ids = torch.nested.nested_tensor_from_jagged(torch.ones(nnz, dtype=torch.int64), offsets=offsets)
    mask = padded_mask(input_ids)
    static_pad = (-nnz) % 128

    def decode():
        return decode_nested(routed, input_ids, spec)

    packed = decode()

    def run(mask=None):
        state = ReplayState(None, spec, track_agreement=False)
        state.push(model_input_rows(decode(), mask=mask, static_pad=static_pad))

    def push_only():
        ReplayState(None, spec, track_agreement=False).push(packed)

    cases = {
        "copy": lambda: routed.values().clone(),
        "decode": decode,
        "push": push_only,
        "packed": run,
        "padded": lambda: run(mask),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(reps):  # interleaved, so drifts of the shared machine hit every case alike
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"replay path: micro-batch of {batch} sequences, {nnz} tokens, {ids.nbytes / 2**20:.1f} MiB of uint8 "
          f"routes (48 layers x top-8, 128 experts), padded [b, S] = {tuple(mask.shape)}; {reps} reps, medians")
    print(f"  plain copy of the route bytes {med['copy'] * 1e3:.2f} ms")
    for name, what in (("decode", "decode nested -> checked packed Routes"),
                       ("push", "push of decoded Routes"),
                       ("packed", "decode -> model input rows (packed + bucket pad) -> push"),
                       ("padded", "decode -> model input rows (padded [b, S]) -> push")):
        print(f"  {what:60s} {med[name] * 1e3:8.2f} ms  {med[name] / med['copy']:6.2f}x copy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--wire", action="store_true", help="only the routes-on-the-wire measurement")
    ap.add_argument("--wire-samples", type=int, default=64)
    ap.add_argument("--replay", action="store_true", help="only the per-micro-batch replay path")
    args = ap.parse_args()
    if args.replay:
        replay_path(args.batch, args.seq, args.reps)
        return
    if args.wire:
        wire(args.wire_samples, args.seq, max(3, args.reps // 3))
        return
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
