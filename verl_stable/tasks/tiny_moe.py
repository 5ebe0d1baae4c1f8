"""The tiny Qwen3-MoE every toy task trains: tokenizer, config, supervised cold start, save, build cache.

Everything is built locally (no hub download): a character-level tokenizer with a ChatML-style template and a
small Qwen3-MoE whose every layer is sparse, so routing replay has something to replay. A task supplies what
its cold start teaches (a batch sampler) and :func:`sft` runs the supervised steps; :func:`build_cached` saves
the result once per recipe, so every run that names the same recipe starts from the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

# One token per character; the chat roles are single tokens so a prompt stays ~10 tokens long.
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "system", "user", "assistant"]
CHARS = list("0123456789+=\n ")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The file in a built model directory that records its recipe: a directory whose marker matches is reused.
MARKER = "verl_stable_build.json"
#: The SFT losses averaged for the stopping rule and the progress lines.
STOP_WINDOW = 25


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` with a ChatML-style template (no download)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    # Every character is its own word; specials are matched whole before this split runs.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token=None,
        unk_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_model_config(
    vocab_size: int, *, num_layers: int = 2, hidden: int = 64, num_experts: int = 4, top_k: int = 2, **overrides
):
    """A tiny Qwen3-MoE config: every layer sparse, so routing replay has something to replay.

    ``overrides`` are further ``Qwen3MoeConfig`` arguments, winning over these (other widths, no special tokens).
    """
    from transformers import Qwen3MoeConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        moe_intermediate_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        output_router_logits=False,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
    )
    return Qwen3MoeConfig(**{**settings, **overrides})


def init_model(tokenizer, *, seed: int, **config_kwargs):
    """Float32 random weights from the config, seeded: the same ``seed`` and config give the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = build_model_config(len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def save(model, tokenizer, out_dir: str | os.PathLike) -> str:
    """Model (float32 checkpoint, generation config that stops at the end token) and tokenizer in ``out_dir``."""
    from transformers import GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def smoothed_answer_loss(logits, labels, alphabet, smoothing: float):
    """Next-token cross-entropy on the answer positions, against a target that keeps ``1 - smoothing`` on the
    right token and spreads ``smoothing`` over the answer alphabet (digits and the end token) only: an
    under-confident teacher whose mistakes are still answers, never chat-template or padding tokens (those
    vanish when verl decodes a response, so sampling them would go unnoticed by the reward)."""
    target = labels[:, 1:]
    keep = target != -100
    logp = logits[:, :-1][keep].float().log_softmax(-1)
    nll = -logp.gather(-1, target[keep][:, None])[:, 0]
    spread = -logp[:, alphabet].mean(-1)
    return ((1 - smoothing) * nll + smoothing * spread).mean()


def recent_loss(losses: Sequence[float]) -> float:
    """Mean of the last :data:`STOP_WINDOW` SFT losses: what the stopping rule and the progress lines read."""
    window = losses[-STOP_WINDOW:]
    return sum(window) / len(window)


def sft(
    model,
    next_batch: Callable[[], tuple],
    *,
    steps: int,
    lr: float,
    answer_alphabet: Optional[Sequence[int]] = None,
    label_smoothing: float = 0.0,
    stop_at_loss: Optional[float] = None,
    log: Optional[Callable[[str], None]] = None,
    lr_at: Optional[Callable[[int], float]] = None,
) -> list[float]:
    """Supervised steps with AdamW; returns the loss per step.

    ``next_batch()`` is the task's target sampler: ``(input_ids, labels)`` for one step, ``-100`` where no loss
    is taken. Without ``answer_alphabet`` the loss is the model's own cross-entropy; with it, the target keeps
    ``1 - label_smoothing`` on the right token and spreads the rest over that alphabet
    (:func:`smoothed_answer_loss`). ``stop_at_loss`` ends the run once the mean of the last :data:`STOP_WINDOW`
    losses reaches it; ``log(line)`` gets progress every 250 steps. ``lr_at(step)`` (steps count from 1) is
    that step's learning rate, a schedule (None: ``lr`` throughout).
    """
    import torch

    if answer_alphabet is None and label_smoothing:
        raise ValueError(f"label_smoothing={label_smoothing} needs the answer alphabet to spread over")
    alphabet = None if answer_alphabet is None else torch.tensor(list(answer_alphabet))
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for step in range(1, steps + 1):
        ids, labels = next_batch()
        if alphabet is None:
            loss = model(input_ids=ids, labels=labels).loss
        else:
            loss = smoothed_answer_loss(model(input_ids=ids).logits, labels, alphabet, label_smoothing)
        optim.zero_grad()
        loss.backward()
        if lr_at is not None:
            for group in optim.param_groups:
                group["lr"] = lr_at(step)
        optim.step()
        losses.append(loss.item())
        recent = recent_loss(losses)
        if log is not None and step % 250 == 0:
            log(f"step {step}/{steps}  loss {recent:.3f}" + (f" (stops at {stop_at_loss})" if stop_at_loss else ""))
        if stop_at_loss is not None and len(losses) >= STOP_WINDOW and recent <= stop_at_loss:
            break
    model.eval()
    return losses


def recipe_hash(recipe: dict) -> str:
    """A short stable hash of a recipe (JSON with sorted keys): names a build directory by what it holds."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def build_cached(model_dir: str | os.PathLike, recipe: dict, build: Callable[[Path], Optional[dict]]) -> str:
    """``build(model_dir)`` unless ``model_dir`` already holds ``recipe``'s build; return ``model_dir``.

    The marker (:data:`MARKER`) is JSON: the recipe, its hash, and whatever ``build`` returned about the build
    (SFT steps run, losses). It is written last, so an interrupted build is redone rather than reused.
    """
    model_dir = Path(model_dir)
    marker = model_dir / MARKER
    if marker.exists() and json.loads(marker.read_text()).get("recipe") == recipe:
        return str(model_dir)
    notes = build(model_dir) or {}
    marker.write_text(json.dumps({"recipe": recipe, "recipe_hash": recipe_hash(recipe), **notes}))
    return str(model_dir)
