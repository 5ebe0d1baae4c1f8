"""Addition, exactly verifiable: one task family for the CPU demo, the CPU lab and the CPU tests.

A family member is declared by its answer rule and how a response is matched (:class:`AdditionTask`); the
number of digits per operand is chosen per data set. Rows are in verl's RL schema and :func:`compute_score` is
the rule-based reward verl calls through ``reward.custom_reward_function.path/name``: point ``path`` at this
file (``verl_stable.tasks.addition.__file__``) for any data source in :data:`SUPPORTED_DATA_SOURCES`.

* :data:`MOD10`, the demo's: ``"3+4="`` -> ``"7"`` (the sum modulo 10), reward 1 if the first non-blank character
  of the response is the right digit. After the format-only cold start (:func:`build_model_dir`) the policy
  answers with a random digit, right about 1 time in 10, so a group of 8 often carries a learning signal from
  step one -- which is what a CPU smoke test needs.
* :data:`SUM`, the lab's (:mod:`verl_stable.lab.task`): ``"37+45="`` -> ``"82"`` (the full sum, operands
  zero-padded to the same width), reward 1 only for exactly the sum.

The model is :mod:`verl_stable.tasks.tiny_moe`'s (one token per character, so every prompt of one width has the
same token length).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from verl_stable.tasks import tiny_moe
from verl_stable.tasks.tiny_moe import build_model_config, build_tokenizer  # noqa: F401  (the task's model, by name)

ANSWER_RULES = ("mod10", "sum")
MATCH_RULES = ("first_char", "exact")


class AdditionTask:
    """One member of the addition family.

    ``answer``: ``"mod10"`` (the last digit of the sum) or ``"sum"`` (the full sum). ``match``: ``"first_char"``
    (the first non-blank character of the response is the answer) or ``"exact"`` (the response, blanks
    stripped, is the answer). ``name`` seeds the held-out split and, prefixed, is the rows' ``data_source``.
    ``digits_in_extra_info`` records the operand width in each row's ``extra_info["difficulty"]``.
    """

    # A plain class rather than a dataclass: verl loads this file as the reward module outside sys.modules
    # (spec_from_file_location), where @dataclass cannot resolve the postponed annotations.
    __slots__ = ("name", "answer", "match", "digits_in_extra_info")

    def __init__(self, name: str, *, answer: str, match: str, digits_in_extra_info: bool = False):
        if answer not in ANSWER_RULES or match not in MATCH_RULES:
            raise ValueError(f"addition task {name}: answer in {ANSWER_RULES}, match in {MATCH_RULES}")
        self.name, self.answer, self.match, self.digits_in_extra_info = name, answer, match, digits_in_extra_info

    def __repr__(self) -> str:
        return f"AdditionTask({self.name!r}, answer={self.answer!r}, match={self.match!r})"

    @property
    def data_source(self) -> str:
        return f"verl_stable/{self.name}"

    def prompt_text(self, a: int, b: int, digits: int) -> str:
        return f"{a:0{digits}d}+{b:0{digits}d}="

    def answer_text(self, a: int, b: int) -> str:
        return str((a + b) % 10) if self.answer == "mod10" else str(a + b)

    def score(self, response: str, ground_truth) -> float:
        text = response.strip()
        if self.match == "first_char":
            return 1.0 if text[:1] == str(ground_truth) else 0.0
        return 1.0 if text == str(ground_truth) else 0.0

    def rows(self, problems: list[tuple[int, int]], *, digits: int, split: str) -> list[dict]:
        """``(a, b)`` problems as rows in verl's RL schema."""
        return [
            {
                "data_source": self.data_source,
                "prompt": [{"role": "user", "content": self.prompt_text(a, b, digits)}],
                "ability": "arithmetic",
                "reward_model": {"ground_truth": self.answer_text(a, b), "style": "rule"},
                "extra_info": {
                    "index": i,
                    "split": split,
                    "a": a,
                    "b": b,
                    **({"difficulty": digits} if self.digits_in_extra_info else {}),
                },
            }
            for i, (a, b) in enumerate(problems)
        ]

    def split_problems(self, *, seed: int, digits: int, n_train: int, n_eval: int) -> tuple[list, list]:
        """Disjoint ``(a, b)`` lists: eval first, train from the rest (``{a, b}`` unordered counts as one problem)."""
        space = 10**digits
        n_problems = space * (space + 1) // 2  # unordered pairs
        if n_eval < 1 or n_train < 1:
            raise ValueError(f"{self.name}: n_train={n_train} and n_eval={n_eval} must be >= 1")
        if n_eval >= n_problems:
            raise ValueError(
                f"{self.name}: n_eval={n_eval} leaves no training problem at difficulty={digits} "
                f"({n_problems} distinct problems)"
            )
        rng = random.Random(f"{self.name}/{seed}/{digits}")
        seen: set[tuple[int, int]] = set()
        eval_keys: set[tuple[int, int]] = set()

        def draw(n: int, *, unique: bool) -> list[tuple[int, int]]:
            out = []
            while len(out) < n:
                a, b = rng.randrange(space), rng.randrange(space)
                key = (min(a, b), max(a, b))
                if key in seen and (unique or key in eval_keys):
                    continue
                seen.add(key)
                out.append((a, b))
            return out

        eval_problems = draw(n_eval, unique=True)
        eval_keys = set(seen)
        # Train repeats problems only when the space is smaller than n_train (difficulty 1: 55 problems).
        unique_train = n_train <= n_problems - len(eval_keys)
        train_problems = draw(n_train, unique=unique_train)
        return train_problems, eval_problems


MOD10 = AdditionTask("addition_mod10", answer="mod10", match="first_char")
SUM = AdditionTask("lab_addition", answer="sum", match="exact", digits_in_extra_info=True)
TASKS = {task.data_source: task for task in (MOD10, SUM)}

#: The demo's data source (what :func:`make_rows` and :func:`build_dataset` write).
DATA_SOURCE = MOD10.data_source
#: What compute_score scores: verl-stable's pre-launch check refuses data whose data_source is not here.
SUPPORTED_DATA_SOURCES = tuple(TASKS)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl custom reward: the rule of the row's family member (:data:`TASKS`), 1.0 or 0.0."""
    task = TASKS.get(data_source)
    if task is None:
        raise ValueError(
            f"compute_score got data_source={data_source!r}; it only scores {', '.join(map(repr, TASKS))}"
        )
    return task.score(solution_str, ground_truth)


# --------------------------------------------------------------------------------------- the demo's data and model
def make_rows(n: int, *, seed: int, split: str) -> list[dict]:
    """``n`` single-digit :data:`MOD10` rows drawn with replacement."""
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        problems.append((a, b))
    return MOD10.rows(problems, digits=1, split=split)


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


def format_sampler(tokenizer, *, seed: int, batch: int = 32):
    """The format-only cold start's targets: a single-digit prompt, then a uniformly random digit and the end
    token, loss on those two only -- the model learns where an answer goes but not which one."""
    import torch

    rng = random.Random(seed)
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    eos = tokenizer.eos_token_id
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": MOD10.prompt_text(a, b, 1)}], add_generation_prompt=True
            )["input_ids"]
        )
        for a in range(10)
        for b in range(10)
    ]
    n_prompt = len(prompts[0])  # every prompt has the same length: one token per character

    def next_batch():
        ids = torch.tensor([rng.choice(prompts) + [rng.choice(digit_ids), eos] for _ in range(batch)])
        labels = ids.clone()
        labels[:, :n_prompt] = -100
        return ids, labels

    return next_batch


def build_model_dir(out_dir: str | os.PathLike, *, seed: int = 0, format_sft_steps: int = 40, **config_kwargs) -> str:
    """Save tokenizer + tiny MoE (float32 checkpoint) to ``out_dir``; return it.

    ``format_sft_steps`` > 0 runs a short cold-start SFT on the answer *format* only (:func:`format_sampler`).
    It turns a random 21-way policy (reward ~1/20 per sample, often no learning signal in a whole batch) into a
    policy that answers with some digit (reward ~1/10): the paper's RL also starts from an SFT model.
    """
    tokenizer = build_tokenizer()
    model = tiny_moe.init_model(tokenizer, seed=seed, **config_kwargs)
    if format_sft_steps > 0:
        tiny_moe.sft(model, format_sampler(tokenizer, seed=seed), steps=format_sft_steps, lr=3e-3)
    return tiny_moe.save(model, tokenizer, out_dir)


def cached_model_dir(out_dir: str | os.PathLike, *, seed: int = 0, format_sft_steps: int = 40) -> str:
    """:func:`build_model_dir`, built once per recipe
    (:func:`verl_stable.tasks.tiny_moe.build_cached`)."""
    recipe = {
        "builder": "verl_stable.tasks.addition.build_model_dir",
        "seed": seed,
        "format_sft_steps": format_sft_steps,
    }

    def build(path: Path) -> None:
        build_model_dir(path, seed=seed, format_sft_steps=format_sft_steps)

    return tiny_moe.build_cached(out_dir, recipe, build)


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
