"""MiniRL loss vs verl's vanilla PPO loss: forward + backward on 64 × 8192 response tokens.

    .venv/bin/python benchmarks/bench_loss.py [--batch 64] [--length 8192] [--repeats 30]

Both losses run in the same process on the same tensors, interleaved, so machine noise hits both; the
last line is the ratio of medians (minirl / vanilla). Goal: <= 1.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch


def make_batch(batch: int, length: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(batch, length, generator=g, dtype=dtype) * 3
    log_prob = old + 0.3 * torch.randn(batch, length, generator=g, dtype=dtype)
    adv = torch.randn(batch, 1, generator=g, dtype=dtype).expand(batch, length).contiguous()
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    weights = torch.exp(0.5 * torch.randn(batch, length, generator=g, dtype=dtype)).clamp(max=5.0) * mask
    return old, log_prob, adv, mask, weights


def actor_configs():
    from hydra import compose, initialize_config_module

    import verl_stable.plugin  # noqa: F401
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_module(config_module="verl_stable.config", version_base=None):
        cfg = compose("minirl_trainer", overrides=["algorithm=minirl", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2"])
    minirl = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    # Same clip range and aggregation; vanilla with dual clip as verl ships it (clip_ratio_c = 3).
    return minirl, dataclasses.replace(minirl, policy_loss=dataclasses.replace(minirl.policy_loss, loss_mode="vanilla"))


def time_once(loss_fn, config, old, log_prob, adv, mask, weights) -> float:
    lp = log_prob.detach().clone().requires_grad_(True)
    start = time.perf_counter()
    loss, _ = loss_fn(
        old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask, loss_agg_mode=config.loss_agg_mode,
        config=config, rollout_is_weights=weights,
    )
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    minirl_cfg, vanilla_cfg = actor_configs()
    tensors = make_batch(args.batch, args.length)
    runs = {"minirl": (get_policy_loss_fn("minirl"), minirl_cfg), "vanilla": (get_policy_loss_fn("vanilla"), vanilla_cfg)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, (fn, cfg) in runs.items():  # warm-up
        time_once(fn, cfg, *tensors)
    for i in range(args.repeats):
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for name in order:
            fn, cfg = runs[name]
            times[name].append(time_once(fn, cfg, *tensors))
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batch} x {args.length} tokens, "
          f"{args.repeats} interleaved repeats, fp32 forward+backward")
    for name, ms in med.items():
        print(f"  {name:<8} median {ms:8.2f} ms")
    print(f"minirl/vanilla ratio: {med['minirl'] / med['vanilla']:.3f}")


if __name__ == "__main__":
    main()
