"""Single-digit addition modulo 10: a verifiable task small enough for a randomly initialised model.

Everything is built locally (no hub download): a character-level tokenizer with a chat template, a tiny
Qwen3-MoE model from a config, a parquet data set in verl's RL schema, and the rule-based reward that
verl calls through ``reward.custom_reward_function.path/name``.

Prompt: ``"3+4="``; answer: ``"7"`` (the sum modulo 10). The reward is binary: 1 if the first non-blank
character of the response is the right digit. After the format-only cold start (``build_model_dir``) the
policy answers with a random digit, right about 1 time in 10, so a group of 8 often carries a learning
signal from step one — which is what a CPU smoke test needs.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

DATA_SOURCE = "verl_stable/addition_mod10"
#: What compute_score scores: verl-stable's pre-launch check refuses data whose data_source is not here.
SUPPORTED_DATA_SOURCES = (DATA_SOURCE,)

# One token per character; the chat roles are single tokens so a prompt stays ~10 tokens long.
SPECIAL_TOKENS = ["<pad>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "system", "user", "assistant"]
CHARS = list("0123456789+=\n ")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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


def build_model_config(vocab_size: int, *, num_layers: int = 2, hidden: int = 64, num_experts: int = 4, top_k: int = 2):
    """A tiny Qwen3-MoE config: every layer sparse, so routing replay has something to replay."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
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


def build_model_dir(out_dir: str | os.PathLike, *, seed: int = 0, format_sft_steps: int = 40, **config_kwargs) -> str:
    """Save tokenizer + tiny MoE (float32 checkpoint) to ``out_dir``; return it.

    ``format_sft_steps`` > 0 runs a short cold-start SFT on the answer *format* only — "<digit><|im_end|>"
    with a uniformly random digit, so the model learns where an answer goes but not which one. It turns a
    random 21-way policy (reward ~1/20 per sample, often no learning signal in a whole batch) into a
    policy that answers with some digit (reward ~1/10): the paper's RL also starts from an SFT model.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_model_config(len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if format_sft_steps > 0:
        _format_sft(model, tokenizer, steps=format_sft_steps, seed=seed)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def _format_sft(model, tokenizer, *, steps: int, seed: int, batch: int = 32, lr: float = 3e-3) -> None:
    import torch

    rng = random.Random(seed)
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    eos = tokenizer.eos_token_id
    prompts = [
        list(
            tokenizer.apply_chat_template([{"role": "user", "content": f"{a}+{b}="}], add_generation_prompt=True)[
                "input_ids"
            ]
        )
        for a in range(10)
        for b in range(10)
    ]
    n_prompt = len(prompts[0])  # every prompt has the same length: one token per character
    optim = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        seqs = [rng.choice(prompts) + [rng.choice(digit_ids), eos] for _ in range(batch)]
        ids = torch.tensor(seqs)
        labels = ids.clone()
        labels[:, :n_prompt] = -100
        loss = model(input_ids=ids, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.eval()


def make_rows(n: int, *, seed: int, split: str) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{a}+{b}="}],
                "ability": "arithmetic",
                "reward_model": {"ground_truth": str((a + b) % 10), "style": "rule"},
                "extra_info": {"index": i, "split": split, "a": a, "b": b},
            }
        )
    return rows


def build_dataset(out_dir: str | os.PathLike, *, n_train: int = 256, n_val: int = 32, seed: int = 0) -> tuple[str, str]:
    """Write ``train.parquet`` and ``val.parquet`` in verl's RL schema; return their paths."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n, s in (("train", n_train, seed), ("val", n_val, seed + 1)):
        path = out / f"{split}.parquet"
        pd.DataFrame(make_rows(n, seed=s, split=split)).to_parquet(path)
        paths.append(str(path))
    return paths[0], paths[1]


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl custom reward: 1.0 if the first non-blank character of the response is the answer digit."""
    if data_source != DATA_SOURCE:
        raise ValueError(f"compute_score got data_source={data_source!r}; it only scores {DATA_SOURCE!r}")
    text = solution_str.strip()
    return 1.0 if text[:1] == str(ground_truth) else 0.0


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build the tiny MoE + addition data set for the CPU demo.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model_dir = build_model_dir(Path(args.out_dir) / "model", seed=args.seed)
    train, val = build_dataset(Path(args.out_dir) / "data", seed=args.seed)
    print(f"model={model_dir}\ntrain={train}\nval={val}")


if __name__ == "__main__":
    main()
