"""The hf_cpu rollout's precision and weight quantisation, against the names the engine itself accepts
(:data:`verl_stable.cpu.hf_engine.DTYPES`, :data:`~verl_stable.cpu.hf_engine.SUPPORTED_QUANTIZATION`)."""

from __future__ import annotations

from typing import Iterator

from verl_stable.cpu.hf_engine import DTYPES, SUPPORTED_QUANTIZATION
from verl_stable.validation.issues import ROLLOUT, ConfigIssue, fmt, get


def check_rollout(config) -> Iterator[ConfigIssue]:
    name = get(config, f"{ROLLOUT}.name")
    if name != "hf_cpu":
        return  # vLLM / SGLang validate their own dtype and quantisation names
    dtype = get(config, f"{ROLLOUT}.dtype")
    if str(dtype).lower().replace("torch.", "") not in DTYPES:
        yield ConfigIssue(f"{ROLLOUT}.dtype", dtype, "not a precision the hf_cpu rollout runs", fmt(sorted(DTYPES)))
    quantization = get(config, f"{ROLLOUT}.quantization")
    if quantization not in SUPPORTED_QUANTIZATION:
        yield ConfigIssue(
            f"{ROLLOUT}.quantization", quantization, "not a quantisation the hf_cpu rollout implements",
            fmt(SUPPORTED_QUANTIZATION),
        )
