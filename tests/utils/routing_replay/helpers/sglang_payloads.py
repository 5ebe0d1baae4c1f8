"""SGLang 0.5.12's routed-experts payload, built step by step as SGLang builds it (sglang does not install on
this CPU machine, and its modules need pybase64, zmq, ... at import). Sources, ``python/sglang/srt/...`` in the
0.5.12 wheel:

* ``state_capturer/base.py`` ``BaseHostCache``: the route host buffer is ``torch.zeros((num_tokens, num_layers,
  topk_size), dtype=torch.int32)``; ``BaseTopkCapturer.get_topk`` returns ``buffer[req_to_token[start_len :
  seqlen - 1]]`` -- int32 ``[seq_len - 1, num_hidden_layers, top_k]``; dense layers are never written (zeros).
* ``skip_tokenizer_init=False``: ``managers/detokenizer_manager.py`` ``_b64_encode_per_request`` (l. 330-346):
  ``pybase64.b64encode(item.numpy().tobytes()).decode("utf-8")``; the tokenizer manager passes the string on.
* ``skip_tokenizer_init=True``: the detokenizer is bypassed and ``managers/tokenizer_manager.py`` (l. 1726-1733)
  encodes the tensor the same way: ``if isinstance(val, torch.Tensor): val = pybase64.b64encode(
  val.numpy().tobytes()).decode("utf-8")``; ``meta_info["routed_experts"] = val``.
* SGLang's own reader ``state_capturer/routed_experts.py`` ``extract_routed_experts_from_meta_info``:
  ``np.frombuffer(pybase64.b64decode(s.encode("utf-8")), dtype=np.int32)``.

pybase64's ``b64encode`` / ``b64decode`` are the standard alphabet, byte for byte what ``base64`` produces.
"""

from __future__ import annotations

import base64

import numpy as np
import torch

from verl_stable.routing import RouteSpec
from tests.utils.routing_replay.helpers.routes import random_routes_idx

# DeepSeek-like: decoder layers 0 and 2 dense, MoE at 1, 3, 4.
SPEC = RouteSpec(num_experts=16, top_k=3, moe_layers=(1, 3, 4), num_hidden_layers=5)
# Above 256 experts: uint16 storage.
WIDE = RouteSpec(num_experts=300, top_k=4, moe_layers=(0, 1), num_hidden_layers=2)


def sglang_routes_tensor(seq_len: int, spec: RouteSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``get_topk`` returns for a finished request of ``seq_len`` tokens (start_len 0): int32
    ``[seq_len - 1, num_hidden_layers, top_k]`` rows of the host buffer, dense layers zero. Also the MoE ids."""
    idx = random_routes_idx(seq_len - 1, spec.num_layers, spec.num_experts, spec.top_k,
                            torch.Generator().manual_seed(seed))
    host_rows = torch.zeros((seq_len - 1, spec.num_hidden_layers, spec.top_k), dtype=torch.int32)
    host_rows[:, list(spec.moe_layers)] = idx.to(torch.int32)
    return host_rows, idx


def sglang_meta_info(routes: torch.Tensor, skip_tokenizer_init: bool) -> dict:
    """``meta_info`` as SGLang 0.5.12's tokenizer manager fills it for one request (see the module docstring)."""
    if skip_tokenizer_init:
        val = routes  # BatchTokenIDOutput.routed_experts[i]: the tensor reaches the tokenizer manager
        if isinstance(val, torch.Tensor):
            val = base64.b64encode(val.numpy().tobytes()).decode("utf-8")
    else:
        (val,) = [base64.b64encode(item.numpy().tobytes()).decode("utf-8") for item in [routes]]  # detokenizer
    return {"routed_experts": val, "finish_reason": {"type": "length"}}


def sglang_extract(meta_info: dict) -> np.ndarray:
    """SGLang's own ``extract_routed_experts_from_meta_info`` (flat int32)."""
    return np.frombuffer(base64.b64decode(meta_info["routed_experts"].encode("utf-8")), dtype=np.int32)
