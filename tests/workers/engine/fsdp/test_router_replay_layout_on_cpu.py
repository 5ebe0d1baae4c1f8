"""Property tests: routes stay on their tokens through everything verl's FSDP engine does to a batch before
the model sees it, and recorded routes come back to their tokens (no model: the engine's per-micro-batch
layout, ``MicroBatchLayout``, with verl's own micro-batching, dynamic-batch re-ordering and output restoring).

Every token's route encodes the token's identity (its value in ``input_ids``), so a route on the wrong token
is detected wherever it ends up.
"""

from __future__ import annotations

import torch

from tests.utils.routing_replay.helpers.cases import random_cases

E, K, L = 64, 2, 2  # 64 experts: (id % 64, id // 64) identifies up to 4,096 tokens


def encode(token_ids: torch.Tensor) -> torch.Tensor:
    """[..] token ids -> [.., L, K] routes with distinct experts per row that identify the token."""
    lo, hi = token_ids % E, (token_ids // E) % E
    layer0 = torch.stack([lo, (lo + 1) % E], dim=-1)
    layer1 = torch.stack([hi, (hi + 1) % E], dim=-1)
    return torch.stack([layer0, layer1], dim=-2)


def decode(routes: torch.Tensor) -> torch.Tensor:
    return routes[..., 0, 0].long() + E * routes[..., 1, 0].long()


class _Layout:
    """The engine state ``MicroBatchLayout.of`` reads, with verl's own pad-size / unpad methods."""

    def __new__(cls, pad_to_length: bool):
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

        class Layout:
            ulysses_sequence_parallel_size = 1
            use_ulysses_sp = False
            pad_to_length_bucket = 8
            _get_packed_pad_size = FSDPEngine._get_packed_pad_size
            _gather_and_unpad_packed = FSDPEngine._gather_and_unpad_packed

        eng = Layout()
        eng.pad_to_length = pad_to_length
        return eng


@random_cases(40)
def test_routes_follow_tokens_through_micro_batching_and_back(rng):
    lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 9))]
    use_remove_padding, use_dynamic_bsz, pad_to_length = (rng.random() < 0.5 for _ in range(3))
    max_token_len = rng.randint(40, 120)
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import postprocess_batch_func, prepare_micro_batches

    from verl_stable.routing import Routes, RouteSpec
    from verl_stable.routing.fsdp import ROUTES_KEY, MicroBatchLayout

    spec = RouteSpec(num_experts=E, top_k=K, moe_layers=(0, 1), num_hidden_layers=L)
    nnz = sum(lengths)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    token_ids = torch.randperm(nnz, generator=generator) + 1  # token identities, in no particular order
    td = TensorDict(
        {
            "input_ids": torch.nested.nested_tensor_from_jagged(token_ids, offsets=offsets),
            ROUTES_KEY: torch.nested.nested_tensor_from_jagged(encode(token_ids).to(torch.int16), offsets=offsets),
        },
        batch_size=[len(lengths)],
    )
    micro = 1 if len(lengths) == 1 else next(m for m in (3, 2, 1) if len(lengths) % m == 0)
    tu.assign_non_tensor(td, use_dynamic_bsz=use_dynamic_bsz, max_token_len_per_gpu=max_token_len,
                         micro_batch_size_per_gpu=micro, use_remove_padding=use_remove_padding)
    eng = _Layout(pad_to_length)

    micro_batches, indices = prepare_micro_batches(td)
    outputs = []
    for mb in micro_batches:
        ids = mb["input_ids"]
        if use_remove_padding:
            # What prepare_model_inputs feeds the model: packed ids + the static bucket pad.
            pad_size = eng._get_packed_pad_size(ids.values().numel())
            model_ids = torch.nn.functional.pad(ids.values(), (0, pad_size))
            model_inputs, output_args = {"input_ids": model_ids.unsqueeze(0)}, {"pad_size": pad_size}
        else:
            padded_ids = torch.nested.to_padded_tensor(ids, padding=0)
            model_ids = padded_ids.flatten()
            model_inputs, output_args = {"input_ids": padded_ids}, {}
        layout = MicroBatchLayout.of(eng, mb, model_inputs, output_args)
        assert layout.rows == model_ids.numel()

        rows, _ = layout.routes_for_model(mb[ROUTES_KEY], spec)
        assert rows.num_tokens == model_ids.numel()
        real = model_ids > 0  # pad positions (static pad / padded batch) hold id 0
        assert torch.equal(rows.valid_mask(), real)
        assert torch.equal(decode(rows.experts[real]), model_ids[real])

        # A recording in model-input order (pad rows: whatever the router picked) maps back to the tokens.
        recorded = Routes(encode(model_ids).to(spec.dtype), E)
        outputs.append({"model_output": {ROUTES_KEY: layout.recorded_to_nested(recorded)}})

    # verl undoes its dynamic-batch re-ordering on outputs: every route is back on its token.
    restored = postprocess_batch_func(outputs, indices, td)["model_output"][ROUTES_KEY]
    assert torch.equal(restored.offsets(), offsets)
    assert torch.equal(decode(restored.values()), token_ids)
