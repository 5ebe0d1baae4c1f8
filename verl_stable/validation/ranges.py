"""Every number verl reads that has a valid range (:data:`RANGES`, one row per key), and NaN / inf anywhere."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from omegaconf import OmegaConf

from verl_stable.validation.issues import ACTOR, MISSING, ROLLOUT, ConfigIssue, Reading, select


@dataclass(frozen=True)
class Range:
    """One value verl reads and its valid range: ``Range("trainer.nnodes", "int >= 1")``.

    ``spec`` is ``"<int|float>"`` alone (any finite value), ``"<kind> <op> <bound>"`` (``>``, ``>=``, ``<=``) or
    ``"<kind> in [a, b]"`` (brackets say which ends are included). ``nullable``: null is allowed (verl derives
    the value); ``also``: sentinels allowed outside the range (top_k=-1: off). A key the composed config does
    not have (another engine's block) is skipped.
    """

    key: str
    spec: str
    why: str = ""
    nullable: bool = False
    also: tuple = ()

    def _parse(self):
        match = re.fullmatch(r"(int|float)(?: (>=|>|<=) (\S+)| in ([\[(])(\S+), (\S+)([\])]))?", self.spec)
        if match is None:
            raise ValueError(f"bad range spec {self.spec!r} for {self.key}")
        kind, op, bound, left, low, high, right = match.groups()
        if op == ">=":
            return kind, float(bound), None, True, True
        if op == ">":
            return kind, float(bound), None, False, True
        if op == "<=":
            return kind, None, float(bound), True, True
        if left:
            return kind, float(low), float(high), left == "[", right == "]"
        return kind, None, None, True, True

    def allowed(self) -> str:
        kind, _, _, _, _ = self._parse()
        noun = "an integer" if kind == "int" else "a finite number"
        rest = self.spec[len(kind):].strip()
        extra = [*(["null"] if self.nullable else []), *(str(v) for v in self.also)]
        return f"{noun} {rest}".strip() + (f", or {', '.join(extra)}" if extra else "")

    def problem(self, value) -> Optional[str]:
        if value is None:
            return None if self.nullable else "must be set"
        if value in self.also and not isinstance(value, bool):
            return None
        kind, low, high, low_in, high_in = self._parse()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "not a finite number"
        if kind == "int" and not isinstance(value, int):
            return "must be an integer"
        if low is not None and (value < low or (value == low and not low_in)):
            return "out of range" + (f": {self.why}" if self.why else "")
        if high is not None and (value > high or (value == high and not high_in)):
            return "out of range" + (f": {self.why}" if self.why else "")
        return None


def _optim(prefix: str) -> list[Range]:
    return [
        Range(f"{prefix}.lr", "float > 0", "a learning rate of 0 (or below) trains nothing"),
        Range(f"{prefix}.weight_decay", "float >= 0"),
        Range(f"{prefix}.clip_grad", "float > 0", "0 scales every gradient to 0", nullable=True),
        Range(f"{prefix}.lr_warmup_steps_ratio", "float in [0, 1]", "a fraction of the training steps"),
        Range(f"{prefix}.lr_warmup_steps", "int >= -1", "-1 uses lr_warmup_steps_ratio", nullable=True),
        Range(f"{prefix}.min_lr_ratio", "float in [0, 1]", nullable=True),
        Range(f"{prefix}.num_cycles", "float >= 0"),
    ]


def _sampling(prefix: str) -> list[Range]:
    return [
        Range(f"{prefix}.temperature", "float >= 0", "0 is greedy decoding"),
        Range(f"{prefix}.top_p", "float in (0, 1]"),
        Range(f"{prefix}.top_k", "int >= -1", "-1 (or 0) turns top-k off"),
        Range(f"{prefix}.n", "int >= 1", "responses per prompt"),
    ]


def _megatron(prefix: str) -> list[Range]:
    sizes = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
             "expert_model_parallel_size")
    return [
        *(Range(f"{prefix}.megatron.{size}", "int >= 1") for size in sizes),
        Range(f"{prefix}.megatron.expert_tensor_parallel_size", "int >= 1", nullable=True),
        Range(f"{prefix}.megatron.virtual_pipeline_model_parallel_size", "int >= 1", nullable=True),
    ]


_STEP_KEYS = ("trainer.total_training_steps", "trainer.total_epochs", f"{ACTOR}.ppo_epochs", f"{ROLLOUT}.n",
              "data.train_batch_size")

#: Every value verl reads that has a valid range, one row per key (a new one is one line).
RANGES: tuple[Range, ...] = (
    # steps and batches
    Range("trainer.total_training_steps", "int >= 1", nullable=True),  # null: verl derives it from the epochs
    Range("trainer.total_epochs", "int >= 1"),
    Range("trainer.critic_warmup", "int >= 0"),
    Range("trainer.save_freq", "int"),
    Range("trainer.test_freq", "int"),
    Range("data.train_batch_size", "int >= 1", "prompts per step"),
    Range("data.val_batch_size", "int >= 1", nullable=True),
    Range("data.max_prompt_length", "int >= 1"),
    Range("data.max_response_length", "int >= 1", "a response of 0 tokens has nothing to train on"),
    Range(f"{ACTOR}.ppo_epochs", "int >= 1", "0 epochs never update the policy"),
    Range(f"{ACTOR}.ppo_mini_batch_size", "int >= 1"),
    Range(f"{ACTOR}.ppo_micro_batch_size_per_gpu", "int >= 1", nullable=True),
    Range(f"{ACTOR}.ppo_max_token_len_per_gpu", "int >= 1"),
    Range(f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", "int >= 1", nullable=True),
    Range("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", "int >= 1", nullable=True),
    Range(f"{ROLLOUT}.prompt_length", "int >= 1"),
    Range(f"{ROLLOUT}.response_length", "int >= 1"),
    # optimisation
    *_optim(f"{ACTOR}.optim"),
    *_optim("critic.optim"),
    Range(f"{ACTOR}.grad_clip", "float > 0", "0 scales every gradient to 0", nullable=True),
    Range("critic.grad_clip", "float > 0", "0 scales every gradient to 0", nullable=True),
    Range(f"{ACTOR}.clip_ratio_c", "float > 1", "verl's dual-clip bound must exceed 1"),
    Range(f"{ACTOR}.entropy_coeff", "float"),
    Range(f"{ACTOR}.kl_loss_coef", "float >= 0"),
    Range("critic.cliprange_value", "float >= 0"),
    Range("algorithm.gamma", "float in [0, 1]"),
    Range("algorithm.lam", "float in [0, 1]"),
    Range("algorithm.kl_ctrl.kl_coef", "float >= 0"),
    # sampling (training rollouts and validation)
    *_sampling(ROLLOUT),
    *_sampling(f"{ROLLOUT}.val_kwargs"),
    Range(f"{ROLLOUT}.gpu_memory_utilization", "float in (0, 1]"),
    # parallel sizes and devices
    Range("trainer.nnodes", "int >= 1"),
    Range("trainer.n_gpus_per_node", "int >= 1", "devices per node (the CPU backend counts one)"),
    Range(f"{ACTOR}.ulysses_sequence_parallel_size", "int >= 1"),
    Range(f"{ACTOR}.fsdp_config.ulysses_sequence_parallel_size", "int >= 1"),
    Range("actor_rollout_ref.ref.ulysses_sequence_parallel_size", "int >= 1"),
    Range("critic.ulysses_sequence_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.tensor_model_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.data_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.expert_parallel_size", "int >= 1"),
    Range(f"{ROLLOUT}.pipeline_model_parallel_size", "int >= 1"),
    *_megatron(ACTOR),
    *_megatron("actor_rollout_ref.ref"),
    *_megatron("critic"),
)


def _interpolated(config, key: str) -> bool:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(config, parent, default=None) if parent else config
    return OmegaConf.is_dict(node) and leaf in node and OmegaConf.is_interpolation(node, leaf)


def _check_rows(config, rows: Iterable[Range]) -> Iterator[ConfigIssue]:
    for row in rows:
        value = select(config, row.key)
        if value is MISSING or _interpolated(config, row.key):
            continue  # another engine's block; or a copy of a key checked where it is set
        problem = row.problem(value)
        if problem is not None:
            yield ConfigIssue(row.key, value, problem, row.allowed())


def check_ranges(config) -> Iterator[ConfigIssue]:
    yield from _check_rows(config, RANGES)


def check_steps(config) -> Iterator[ConfigIssue]:
    """The step and batch counts alone (a subset of :func:`check_ranges`)."""
    yield from _check_rows(config, (row for row in RANGES if row.key in _STEP_KEYS))


def _leaves(node, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if OmegaConf.is_dict(node):
        for key in node.keys():
            yield from _leaves(node._get_node(key), f"{prefix}.{key}" if prefix else str(key))
    elif OmegaConf.is_list(node):
        for index in range(len(node)):
            yield from _leaves(node._get_node(index), f"{prefix}[{index}]")
    else:
        yield prefix, node


def check_finite(config) -> Iterator[ConfigIssue]:
    """NaN / inf anywhere in the config: nothing verl reads as a float means either."""
    for key, node in _leaves(config):
        Reading.key = key
        if node._is_interpolation():
            continue  # a copy: the key it copies is reported
        value = node._value()
        if isinstance(value, float) and not math.isfinite(value):
            yield ConfigIssue(key, value, "not a finite number (it would reach the loss or the optimizer as "
                              "NaN)", "a finite number")
