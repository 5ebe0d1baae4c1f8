"""Property tests: every layout transform keeps each route row on its token.

Each token gets a unique identity; its route row encodes that identity (``experts[t, l, k] = 4*id + ...``,
distinct within a row, < num_experts). The tokens go through verl's own transforms (``unpad_input``,
``rearrange_micro_batches``, ``ulysses_pad``), the routes through ours; decoding the routes must give back the
transformed token identities, row for row.
"""

from __future__ import annotations

import torch

from verl_stable.routing import Routes, RoutingReplay, codecs, concat, pack, select_sequences, unpack
from verl_stable.routing.fsdp import ulysses_pad_and_slice

from tests.utils.routing_replay.helpers import VOCAB, ExpertTap, tiny_model
from tests.utils.routing_replay.helpers.cases import random_cases

NUM_EXPERTS = 4096  # uint16 storage, room for 1,024 token identities
LAYERS, TOP_K = 3, 2


def encode(ids: torch.Tensor) -> torch.Tensor:
    """[T] token identities (>= 1) -> [T, LAYERS, TOP_K] distinct expert ids per row, layer-dependent."""
    layer = torch.arange(LAYERS).view(1, LAYERS, 1)
    k = torch.arange(TOP_K).view(1, 1, TOP_K)
    return ids.view(-1, 1, 1) * 4 + (k + layer) % 4


def decode(routes: Routes) -> torch.Tensor:
    """Token identity of each row; 0 for rows without a route."""
    ids = routes.experts[:, 0, 0].to(torch.int64) // 4
    assert torch.equal(routes.experts.to(torch.int64)[routes.valid_mask()], encode(ids)[routes.valid_mask()])
    return torch.where(routes.valid_mask(), ids, torch.zeros_like(ids))


def padded_batch(rng, max_b=5, max_s=12):
    """input_ids [B, S] with unique token identities, left-padded prompts and right-padded responses."""
    b = rng.randint(1, max_b)
    s = rng.randint(1, max_s)
    mask = torch.zeros(b, s, dtype=torch.long)
    for i in range(b):
        left = rng.randint(0, s - 1)
        right = rng.randint(0, s - 1 - left)
        mask[i, left : s - right] = 1
    ids = torch.arange(1, b * s + 1).view(b, s) * mask  # identities; 0 = padding
    return ids, mask


def padded_routes(ids, mask) -> Routes:
    """What verl's batch carries: routes for every position, zero rows at padding."""
    return Routes.from_indices(encode(ids.flatten()) * mask.flatten().view(-1, 1, 1), NUM_EXPERTS, mask.flatten().bool())


def verl_unpad(ids, mask):
    from verl.utils.attention_utils import unpad_input

    ids_rmpad, indices, cu_seqlens, *_ = unpad_input(ids.unsqueeze(-1), mask)
    return ids_rmpad.squeeze(-1), cu_seqlens


@random_cases(60)
def test_pack_follows_verl_unpad_and_unpack_inverts(rng):
    batch = padded_batch(rng)
    ids, mask = batch
    routes = padded_routes(ids, mask)
    assert torch.equal(decode(routes), ids.flatten())
    ids_rmpad, _ = verl_unpad(ids, mask)
    packed = pack(routes, mask)
    assert torch.equal(decode(packed), ids_rmpad)
    assert bool(packed.valid_mask().all())  # every packed token has its route
    back = unpack(packed, mask)
    assert back.equal(routes)
    # verl batch field round trip: [B, S, L, K] compact tensor and back
    stored = codecs.to_verl_batch(back, *mask.shape)
    assert stored.dtype == torch.uint16 and stored.shape == (*mask.shape, LAYERS, TOP_K)
    from verl_stable.routing import RouteSpec

    spec = RouteSpec(NUM_EXPERTS, TOP_K, tuple(range(LAYERS)), LAYERS)
    assert codecs.from_verl_batch(stored, mask, spec).equal(routes)


@random_cases(60)
def test_micro_batches_and_dynamic_bsz_reordering(rng):
    batch, max_token_len, balance = padded_batch(rng, max_b=6), rng.randint(12, 40), rng.random() < 0.5
    from tensordict import TensorDict
    from verl.utils.seqlen_balancing import rearrange_micro_batches

    ids, mask = batch
    max_token_len = max(max_token_len, mask.shape[1])
    routes = padded_routes(ids, mask)
    td = TensorDict(
        {"input_ids": ids, "attention_mask": mask, "routed_experts": codecs.to_verl_batch(routes, *mask.shape)},
        batch_size=[ids.shape[0]],
    )
    micro_batches, partitions = rearrange_micro_batches(td, max_token_len, use_dynamic_bsz_balance=balance)
    packed = pack(routes, mask)
    seqlens = mask.sum(-1)
    covered = []
    for mb, order in zip(micro_batches, partitions):
        mb_ids_rmpad, _ = verl_unpad(mb["input_ids"], mb["attention_mask"])
        # (a) routes that rode in the batch as a field, then packed per micro-batch
        spec_free = Routes.from_indices(
            mb["routed_experts"].flatten(0, 1), NUM_EXPERTS, mb["attention_mask"].flatten().bool()
        )
        assert torch.equal(decode(pack(spec_free, mb["attention_mask"])), mb_ids_rmpad)
        # (b) routes of the whole packed batch re-ordered with verl's partition indices
        assert torch.equal(decode(select_sequences(packed, seqlens, order)), mb_ids_rmpad)
        covered += list(order)
    assert sorted(covered) == list(range(ids.shape[0]))


@random_cases(60)
def test_ulysses_pad_and_slice_matches_verl(rng):
    batch, sp_size = padded_batch(rng), rng.randint(1, 8)
    from verl.utils.ulysses import ulysses_pad

    ids, mask = batch
    ids_rmpad, _ = verl_unpad(ids, mask)
    packed = pack(padded_routes(ids, mask), mask)
    # verl pads input_ids_rmpad [1, nnz] to a multiple of sp_size; slice_input_tensor gives rank r chunk r
    padded_ids, _, pad_size = ulysses_pad(ids_rmpad.unsqueeze(0), None, sp_size)
    chunk = padded_ids.shape[1] // sp_size
    shards = []
    for rank in range(sp_size):
        mine, pad = ulysses_pad_and_slice(packed, sp_size, rank)
        assert pad == pad_size and mine.num_tokens == chunk
        assert torch.equal(decode(mine), padded_ids[0, rank * chunk : (rank + 1) * chunk])
        shards.append(mine)
    # the pad rows carry no route (routed natively), and the shards reassemble the padded sequence
    whole = concat(shards)
    assert int((~whole.valid_mask()).sum()) == pad_size
    assert torch.equal(decode(whole.narrow(0, packed.num_tokens)), ids_rmpad)


@random_cases(60)
def test_split_and_permutation_keep_rows(rng):
    batch, perm = padded_batch(rng), rng.sample(range(5), 5)
    ids, mask = batch
    packed = pack(padded_routes(ids, mask), mask)
    seqlens = mask.sum(-1)
    order = [i for i in perm if i < ids.shape[0]]
    ids_rmpad, _ = verl_unpad(ids, mask)
    per_seq = ids_rmpad.split(seqlens.tolist())
    assert torch.equal(decode(select_sequences(packed, seqlens, order)), torch.cat([per_seq[i] for i in order]))
    parts = packed.split(seqlens.tolist())
    assert [torch.equal(decode(p), s) for p, s in zip(parts, per_seq)] == [True] * len(parts)
    assert concat(parts).equal(packed)


@random_cases(6)
def test_checkpoint_recompute_on_packed_batch_keeps_routes(rng):
    batch = padded_batch(rng, max_b=3, max_s=8)
    """Record on the padded batch, pack, replay on the packed input with gradient checkpointing: forward and
    recompute both route every token to the experts recorded for that token."""
    _, mask = batch
    model = tiny_model("qwen3_moe").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rr = RoutingReplay(model)
    ids = torch.randint(0, VOCAB, mask.shape, generator=torch.Generator().manual_seed(int(mask.sum())))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with rr.record() as rec, torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    packed = pack(rec.routes[0], mask)
    keep = mask.flatten().bool()
    with ExpertTap(model, rr) as tap, rr.replay(packed):
        out = model(input_ids=ids.flatten()[keep][None], position_ids=pos.flatten()[keep][None], use_cache=False)
        out.logits.float().logsumexp(-1).sum().backward()
    for layer, calls in enumerate(tap.calls):
        assert len(calls) == 2
        assert all(torch.equal(c, packed.layer(layer)) for c in calls)


@random_cases(15)
def test_verl_no_padding_path_agrees_with_pack(rng):
    batch = padded_batch(rng, max_b=4, max_s=10)
    """verl's own engine input path (``left_right_2_no_padding``) turns batch['routed_experts'] into a nested
    tensor; its values are the packed routes, row for row the tokens of input_ids (values())."""
    from tensordict import TensorDict
    from verl.workers.utils.padding import left_right_2_no_padding

    ids, mask = batch
    routes = padded_routes(ids, mask)
    b, s = ids.shape
    td = TensorDict(
        {
            "input_ids": ids,
            "attention_mask": mask,
            "response_mask": mask[:, -1:].clone(),
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            # verl carries int16; ids here need 13 bits
            "routed_experts": routes.experts.to(torch.int64).to(torch.int16).view(b, s, LAYERS, TOP_K),
        },
        batch_size=[b],
    )
    out = left_right_2_no_padding(td)
    from_verl = Routes.from_indices(out["routed_experts"].values(), NUM_EXPERTS)
    assert from_verl.equal(pack(routes, mask))
    assert torch.equal(decode(from_verl), out["input_ids"].values())
