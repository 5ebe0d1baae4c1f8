"""verl's synchronous replay buffer, handing the trainer each batch in an order fixed by its content.

verl 0.9.1's v1 trainer (verl's default, ``trainer.use_v1=True``) asks ``ReplayBuffer.sample`` for each step's
batch, and the sync sampler materialises it in TransferQueue's key order: the order the trajectories
*finished*. The actor then cuts that list into ``ppo_mini_batch_size`` mini-batches without shuffling
(``actor.shuffle=False``). Off-policy (N mini-batches per rollout), the first update therefore trains on whichever
responses finished first -- the short ones -- the later, staler updates on the long ones, and the prompt groups are
split across mini-batches. The paper's layout (and verl's legacy trainer's) is whole groups: a mini-batch of
1,024 responses is 64 prompts x G 16. And the composition is timing: in verl-stable's CPU lab two runs of one
command, same seed and same rollouts, differed at step 1 (``pg_loss`` -0.043 against -0.019).

:class:`GroupOrderedReplayBuffer` is verl's class with two methods replaced: prompts are selected and laid out in
the order verl submitted them (the dataloader's), and each prompt's trajectories follow it, by session and output
index. A mini-batch is then ``ppo_mini_batch_size`` whole groups. Select it through verl's own extension point (the
Qwen3-30B-A3B recipe does):

    trainer.v1.sampler.custom_sampler.path=pkg://verl_stable.integration.replay_buffer
    trainer.v1.sampler.custom_sampler.name=GroupOrderedReplayBuffer

Within a group the session id is no fixed draw where the rollout seeds requests in arrival order (the CPU
``hf_cpu`` rollout does): which session holds which response is then timing, and the update sums the group in a
different order. ``+trainer.v1.sampler.sampler_kwargs.order_within_group=response`` orders each group by its
response token ids instead, read from TransferQueue once a step: a rerun on the same machine then repeats the batch
bit for bit (the CPU lab's setting). It reads every response into the driver, so it is meant for short responses;
the default, ``session``, reads keys only.

It replaces two private methods of verl's ``ReplayBuffer``, so it refuses any verl but the pinned release.
Upstream change that would remove it: ``ReplayBuffer._materialize_batch`` laying the batch out by prompt
submission and response, not by completion.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import transfer_queue as tq
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

SAMPLER_PATH_KEY = "trainer.v1.sampler.custom_sampler.path"
WITHIN_GROUP_KEY = "trainer.v1.sampler.sampler_kwargs.order_within_group"
#: how a group's trajectories are ordered: by session and output index (keys only), or by response token ids first
WITHIN_GROUP = ("session", "response")


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


def _check_verl() -> None:
    from verl_stable.integration import UnsupportedVersion, _VERL

    installed = _VERL.installed()
    if installed is None or not _VERL.accepts(installed):
        raise UnsupportedVersion(
            f"{GroupOrderedReplayBuffer.__name__} replaces private methods of verl {_VERL.versions[0]}'s ReplayBuffer "
            f"and verl {installed} is installed: unset {SAMPLER_PATH_KEY} (verl's own sampler, completion order) or "
            f"install {_VERL}"
        )


class GroupOrderedReplayBuffer(ReplayBuffer):
    """verl's sync :class:`ReplayBuffer`; each batch laid out by :func:`submission_order`, not completion."""

    def __init__(
        self, trainer_mode: str, trainer_config, max_off_policy_threshold, max_off_policy_strategy,
        sampler_kwargs=None, **kwargs,
    ):  # fmt: skip
        within = (sampler_kwargs or {}).get("order_within_group", "session")
        if within not in WITHIN_GROUP:
            raise ValueError(f"{WITHIN_GROUP_KEY}={within!r}: expected one of {', '.join(WITHIN_GROUP)}")
        self.order_within_group = within
        if trainer_mode != "sync":
            raise ValueError(
                f"trainer.v1.trainer_mode={trainer_mode!r}: {type(self).__name__} orders verl's synchronous batches; "
                f"unset {SAMPLER_PATH_KEY} for the async modes"
            )
        _check_verl()
        super().__init__(
            trainer_mode, trainer_config, max_off_policy_threshold, max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs, **kwargs,
        )  # fmt: skip

    def _select_prompt_uids(self, partition_id, sampleable_keys, batch_size):
        # verl sorts a set by step only: ties come out in hash order, which differs from process to process.
        # prompt_global_steps is rebuilt from TransferQueue's key listing each poll: prompts in submission order.
        steps = dict(self.prompt_global_steps[partition_id])
        place = {uid: i for i, uid in enumerate(steps)}
        ordered = sorted(sampleable_keys, key=lambda uid: (steps.get(uid, 0), place.get(uid, len(place))))
        return ordered[:batch_size], dict(self.partitions[partition_id]), steps

    def _materialize_batch(self, partition_id, selected_prompt_uids, partition_snapshot):
        selected = set(selected_prompt_uids)
        submitted = [uid for uid in self.prompt_global_steps[partition_id] if uid in selected]
        listed = set(submitted)
        submitted += [uid for uid in selected_prompt_uids if uid not in listed]
        keys = [k for k in partition_snapshot if k.split("_")[0] in selected]
        responses = _responses(partition_id, keys) if self.order_within_group == "response" else None
        # verl's _materialize_batch keeps the snapshot's order and only the selected prompts' trajectories
        ordered = {k: partition_snapshot[k] for k in submission_order(keys, submitted, responses)}
        return super()._materialize_batch(partition_id, submitted, ordered)


def _responses(partition_id: str, keys: list[str]) -> dict[str, list[int]]:
    """Each trajectory's response token ids, read from TransferQueue."""
    if not keys:
        return {}
    field = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["responses"])["responses"]
    rows = field.unbind(0) if getattr(field, "is_nested", False) else list(field)
    return {k: row.tolist() for k, row in zip(keys, rows, strict=True)}


def overrides(order_within_group: str = "session") -> list[str]:
    """Hydra overrides that make a v1 sync run use :class:`GroupOrderedReplayBuffer`."""
    if order_within_group not in WITHIN_GROUP:
        raise ValueError(f"order_within_group={order_within_group!r}: expected one of {', '.join(WITHIN_GROUP)}")
    within = [f"+{WITHIN_GROUP_KEY}={order_within_group}"] if order_within_group != "session" else []
    return [
        f"{SAMPLER_PATH_KEY}=pkg://{__name__}",
        f"trainer.v1.sampler.custom_sampler.name={GroupOrderedReplayBuffer.__name__}",
        *within,
    ]
