"""verl's synchronous replay buffer with a configurable poll interval: the lab's fast trainer path.

verl 0.9.1's v1 trainer asks its ``ReplayBuffer`` for each step's batch; the sync sampler checks whether the
rollouts are finished and, if not, sleeps ``poll_interval`` seconds — hard-coded to 2.0 in
``verl/trainer/ppo/v1/trainer_base.py::_build_replay_buffer``. On a tiny model whose generation takes a
fraction of a second, that sleep is most of every step. verl's own extension point for samplers
(``trainer.v1.sampler.custom_sampler.{path,name}``) lets one run pick this subclass, which reads the interval
from ``trainer.v1.sampler.sampler_kwargs.poll_interval`` and is otherwise verl's class unchanged: nothing in
verl is patched, and other runs in the same process keep verl's default.

    trainer.v1.sampler.custom_sampler.path=pkg://verl_stable.lab.sampler
    trainer.v1.sampler.custom_sampler.name=PollingReplayBuffer
    +trainer.v1.sampler.sampler_kwargs.poll_interval=0.02
    +trainer.v1.sampler.sampler_kwargs.order_within_group=response

(:func:`overrides` returns these.) verl passes custom samplers only its constructor contract: DAPO group
filtering (``algorithm.filter_groups``) and ``sync_refill_failed_groups`` stay verl's defaults (off) under this
sampler. Upstream change that would remove it: a ``trainer.v1.sampler.poll_interval`` config value passed to
``ReplayBuffer(poll_interval=...)``.

Each batch comes laid out by its content, not by completion order: it subclasses
:class:`verl_stable.integration.replay_buffer.GroupOrderedReplayBuffer` (whole prompt groups per mini-batch), and
orders each group by its responses' token ids (the lab's 4-token answers are cheap to read): a rerun repeats the
batch bit for bit.
"""

from __future__ import annotations

import math

from verl_stable.integration.replay_buffer import GroupOrderedReplayBuffer

DEFAULT_POLL_INTERVAL_S = 0.02
_KEY = "trainer.v1.sampler.sampler_kwargs.poll_interval"


def poll_interval_from(sampler_kwargs) -> float:
    """The interval in ``sampler_kwargs`` (verl's ``trainer.v1.sampler.sampler_kwargs``), checked."""
    raw = (sampler_kwargs or {}).get("poll_interval", DEFAULT_POLL_INTERVAL_S)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{_KEY}={raw!r}: expected a number of seconds > 0") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{_KEY}={raw!r}: expected a number of seconds > 0")
    return value


class PollingReplayBuffer(GroupOrderedReplayBuffer):
    """:class:`GroupOrderedReplayBuffer` (verl's sync sampler, batches laid out by content); the poll interval
    comes from ``sampler_kwargs.poll_interval``."""

    def __init__(
        self, trainer_mode: str, trainer_config, max_off_policy_threshold, max_off_policy_strategy,
        sampler_kwargs=None, **kwargs,
    ):  # fmt: skip
        sampler_kwargs = {"order_within_group": "response", **(sampler_kwargs or {})}
        kwargs.pop("poll_interval", None)
        super().__init__(
            trainer_mode,
            trainer_config,
            max_off_policy_threshold,
            max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval_from(sampler_kwargs),
            **kwargs,
        )


def overrides(poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> list[str]:
    """Hydra overrides that make a v1 sync run use :class:`PollingReplayBuffer`."""
    poll_interval_from({"poll_interval": poll_interval_s})
    return [
        f"trainer.v1.sampler.custom_sampler.path=pkg://{__name__}",
        "trainer.v1.sampler.custom_sampler.name=PollingReplayBuffer",
        f"+trainer.v1.sampler.sampler_kwargs.poll_interval={poll_interval_s}",
        "+trainer.v1.sampler.sampler_kwargs.order_within_group=response",
    ]
