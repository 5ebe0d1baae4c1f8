"""log π(token) from logits: the one gather the tests compare engines against."""

from __future__ import annotations

import torch


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., tokens]`` in fp32: logits ``[..., vocab]``, tokens ``[...]`` -> ``[...]``."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """log pi(x_t | x_<t) for every next token, [B, S-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return gather_logprobs(logits[:, :-1], input_ids[:, 1:])


def response_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log pi(response_t | prompt, response_<t) of one sequence from a plain forward, [len(response)]."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return gather_logprobs(logits, torch.tensor(response))
