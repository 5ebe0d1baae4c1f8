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

(:func:`overrides` returns these.) verl passes custom samplers only its constructor contract: DAPO group
filtering (``algorithm.filter_groups``) and ``sync_refill_failed_groups`` stay verl's defaults (off) under this
sampler. Upstream change that would remove it: a ``trainer.v1.sampler.poll_interval`` config value passed to
``ReplayBuffer(poll_interval=...)``.

**The batch's order.** verl's sync sampler hands the trainer each step's trajectories in the order they *finished*
(TransferQueue's key order), and the actor splits that list into ``ppo_mini_batch_size`` mini-batches without
shuffling (``actor.shuffle=False``). Off-policy (N > 1), which trajectories share a mini-batch -- and so which ones
the second update sees after the first has moved the weights -- then depends on the rollout's timing: two runs of
the same command, same seed and same rollouts, differed at step 1 (``pg_loss`` -0.043 against -0.019). Nor is a
session id a fixed draw: the rollout seeds a request by its prompt and how many requests for that prompt came
before it, so which session holds which response is arrival order too. This sampler materialises each batch in an
order that is a function of its content: prompts in the order verl put them into TransferQueue (the
dataloader's), then each prompt's responses by their token ids (then session and output index, for equal ones).
Upstream change that would remove it: ``ReplayBuffer._materialize_batch`` ordering the batch by its content
instead of by completion.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import transfer_queue as tq
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

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


def submission_order(
    trajectory_keys: Iterable[str],
    prompt_uids: Sequence[str],
    responses: Mapping[str, Sequence[int]] | None = None,
) -> list[str]:
    """``trajectory_keys`` (verl's ``{uid}_{session_id}_{output_index}``) sorted by their prompt's place in
    ``prompt_uids`` (submission order), then by their response's token ids (``responses``, where given), then by
    session and output index: an order that does not depend on which trajectory finished, or arrived, first.
    A key of another format, of a prompt not in ``prompt_uids``, or without a response, is refused."""
    place = {uid: i for i, uid in enumerate(prompt_uids)}

    def rank(key: str) -> tuple:
        parts = key.split("_")
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            raise ValueError(f"trajectory key {key!r}: expected verl's '{{uid}}_{{session_id}}_{{output_index}}'")
        uid, session, index = parts
        if uid not in place:
            raise ValueError(f"trajectory key {key!r}: its prompt {uid!r} is not among the batch's prompts")
        if responses is None:
            return place[uid], (), int(session), int(index)
        if key not in responses:
            raise ValueError(f"trajectory key {key!r}: no response to order it by")
        return place[uid], tuple(responses[key]), int(session), int(index)

    return sorted(trajectory_keys, key=rank)


class PollingReplayBuffer(ReplayBuffer):
    """verl's sync :class:`ReplayBuffer`; the poll interval comes from ``sampler_kwargs.poll_interval``, and each
    batch comes in submission order (:func:`submission_order`), not completion order."""

    def __init__(self, trainer_mode: str, *args, sampler_kwargs=None, **kwargs):
        if trainer_mode != "sync":
            raise ValueError(
                f"trainer.v1.trainer_mode={trainer_mode!r}: {type(self).__name__} is verl's synchronous sampler; "
                "unset trainer.v1.sampler.custom_sampler for the async modes"
            )
        kwargs.pop("poll_interval", None)
        super().__init__(
            trainer_mode,
            *args,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval_from(sampler_kwargs),
            **kwargs,
        )

    def _select_prompt_uids(self, partition_id, sampleable_keys, batch_size):
        # verl sorts a set by step only: ties come out in hash order, which differs from process to process
        submitted = list(self.prompt_global_steps[partition_id])
        place = {uid: i for i, uid in enumerate(submitted)}
        steps = dict(self.prompt_global_steps[partition_id])
        ordered = sorted(sampleable_keys, key=lambda uid: (steps.get(uid, 0), place.get(uid, len(place))))
        return ordered[:batch_size], dict(self.partitions[partition_id]), steps

    def _materialize_batch(self, partition_id, selected_prompt_uids, partition_snapshot):
        selected = set(selected_prompt_uids)
        # prompt_global_steps is rebuilt from TransferQueue's key listing each poll: prompts in the order verl put them
        submitted = [uid for uid in self.prompt_global_steps[partition_id] if uid in selected]
        submitted += [uid for uid in selected_prompt_uids if uid not in set(submitted)]
        keys = [k for k in partition_snapshot if k.split("_")[0] in selected]
        keys = submission_order(keys, submitted, _responses(partition_id, keys))
        ordered = {k: partition_snapshot[k] for k in keys}
        ordered.update((k, tag) for k, tag in partition_snapshot.items() if k not in ordered)
        return super()._materialize_batch(partition_id, submitted, ordered)


def _responses(partition_id: str, keys: list[str]) -> dict[str, list[int]]:
    """Each trajectory's response token ids, read from TransferQueue."""
    if not keys:
        return {}
    field = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["responses"])["responses"]
    rows = field.unbind(0) if getattr(field, "is_nested", False) else list(field)
    return {k: row.tolist() for k, row in zip(keys, rows, strict=True)}


def overrides(poll_interval_s: float = DEFAULT_POLL_INTERVAL_S) -> list[str]:
    """Hydra overrides that make a v1 sync run use :class:`PollingReplayBuffer`."""
    poll_interval_from({"poll_interval": poll_interval_s})
    return [
        f"trainer.v1.sampler.custom_sampler.path=pkg://{__name__}",
        "trainer.v1.sampler.custom_sampler.name=PollingReplayBuffer",
        f"+trainer.v1.sampler.sampler_kwargs.poll_interval={poll_interval_s}",
    ]
