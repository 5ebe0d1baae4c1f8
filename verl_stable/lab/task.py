"""The lab's task: multi-digit addition with the full sum as the answer, exactly verifiable.

Prompt ``"37+45="``, answer ``"82"``. ``difficulty`` is the number of digits per operand (1–3): the answer
is up to ``difficulty + 1`` characters, so a response needs ``difficulty + 2`` tokens with the end token.
The tokenizer and chat template are :mod:`verl_stable.tasks.addition`'s (one token per character), so
every prompt of one difficulty has the same token length (operands are zero-padded: ``"07+45="``).

Splits: the held-out eval set is drawn first, the train set only from the remaining problems, so no eval
prompt is ever trained on (with commuted operands counted as the same problem). Rows are in verl's RL
schema; :data:`REWARD_FN` is what ``reward.custom_reward_function.{path,name}`` takes and :data:`EVAL_K`
the number of samples per eval prompt (verl's ``val_kwargs.n``; the metric is verl's
``val-core/<data_source>/acc/mean@EVAL_K``, the paper's avg@k).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

DATA_SOURCE = "verl_stable/lab_addition"
#: What compute_score scores: the pre-launch check refuses data whose data_source is not here.
SUPPORTED_DATA_SOURCES = (DATA_SOURCE,)
DIFFICULTIES = (1, 2, 3)
DEFAULT_DIFFICULTY = 2
EVAL_K = 8
N_TRAIN = 1024
N_EVAL = 64
REWARD_FN = (str(Path(__file__).resolve()), "compute_score")


def check_difficulty(difficulty: int) -> int:
    if (
        isinstance(difficulty, bool)
        or not isinstance(difficulty, int)
        or difficulty not in DIFFICULTIES
    ):
        raise ValueError(
            f"lab task difficulty={difficulty!r}: digits per operand, one of {DIFFICULTIES}"
        )
    return difficulty


def operand_digits(difficulty: int) -> int:
    return check_difficulty(difficulty)


def prompt_text(a: int, b: int, difficulty: int) -> str:
    return f"{a:0{difficulty}d}+{b:0{difficulty}d}="


def answer_text(a: int, b: int, difficulty: int | None = None) -> str:
    """The full sum (its length does not depend on ``difficulty``)."""
    return str(a + b)


def response_length(difficulty: int) -> int:
    """Tokens a correct response needs: the longest sum plus the end token."""
    return check_difficulty(difficulty) + 2


def prompt_length(difficulty: int) -> int:
    """Prompt tokens under the chat template: 8 for roles and separators, then the problem."""
    return 8 + 2 * check_difficulty(difficulty) + 2


def default_n_eval(difficulty: int) -> int:
    """:data:`N_EVAL` held-out problems, or a fifth of all distinct problems where that is fewer (difficulty 1)."""
    space = 10 ** operand_digits(difficulty)
    return min(N_EVAL, space * (space + 1) // 2 // 5)


def split_problems(
    *, seed: int, difficulty: int, n_train: int, n_eval: int
) -> tuple[list, list]:
    """Disjoint ``(a, b)`` lists: eval first, train from the rest (``{a, b}`` unordered counts as one problem)."""
    check_difficulty(difficulty)
    space = 10**difficulty
    n_problems = space * (space + 1) // 2  # unordered pairs
    if n_eval < 1 or n_train < 1:
        raise ValueError(
            f"lab task: n_train={n_train} and n_eval={n_eval} must be >= 1"
        )
    if n_eval >= n_problems:
        raise ValueError(
            f"lab task: n_eval={n_eval} leaves no training problem at difficulty={difficulty} "
            f"({n_problems} distinct problems)"
        )
    rng = random.Random(f"lab_addition/{seed}/{difficulty}")
    seen: set[tuple[int, int]] = set()

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

    eval_keys: set[tuple[int, int]] = set()
    eval_problems = draw(n_eval, unique=True)
    eval_keys = set(seen)
    # Train repeats problems only when the space is smaller than n_train (difficulty 1: 55 problems).
    unique_train = n_train <= n_problems - len(eval_keys)
    train_problems = draw(n_train, unique=unique_train)
    return train_problems, eval_problems


def make_rows(
    problems: list[tuple[int, int]], *, difficulty: int, split: str
) -> list[dict]:
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": prompt_text(a, b, difficulty)}],
            "ability": "arithmetic",
            "reward_model": {"ground_truth": answer_text(a, b), "style": "rule"},
            "extra_info": {
                "index": i,
                "split": split,
                "a": a,
                "b": b,
                "difficulty": difficulty,
            },
        }
        for i, (a, b) in enumerate(problems)
    ]


def build_datasets(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    difficulty: int = DEFAULT_DIFFICULTY,
    n_train: int = N_TRAIN,
    n_eval: int | None = None,
) -> tuple[str, str]:
    """Write ``train.parquet`` and ``eval.parquet`` in verl's RL schema under ``out_dir``; return their paths.

    ``n_eval`` defaults to :func:`default_n_eval`; the cold start (:mod:`verl_stable.lab.model`) excludes that
    many held-out problems, so a larger ``n_eval`` may include problems the cold start trained on.
    """
    import pandas as pd

    if n_eval is None:
        n_eval = default_n_eval(difficulty)
    train, held_out = split_problems(
        seed=seed, difficulty=difficulty, n_train=n_train, n_eval=n_eval
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, problems in (("train", train), ("eval", held_out)):
        path = out / f"{split}.parquet"
        pd.DataFrame(
            make_rows(problems, difficulty=difficulty, split=split)
        ).to_parquet(path)
        paths.append(str(path))
    return paths[0], paths[1]


def compute_score(
    data_source, solution_str, ground_truth, extra_info=None, **kwargs
) -> float:
    """verl custom reward: 1.0 if the response (blanks stripped) is exactly the sum, else 0.0."""
    if data_source != DATA_SOURCE:
        raise ValueError(
            f"compute_score got data_source={data_source!r}; it only scores {DATA_SOURCE!r}"
        )
    return 1.0 if solution_str.strip() == str(ground_truth) else 0.0


def describe(difficulty: int = DEFAULT_DIFFICULTY) -> str:
    """One line for the report's header."""
    d = check_difficulty(difficulty)
    return (
        f"{d}-digit + {d}-digit addition, the full sum as the answer; {N_TRAIN} training problems, "
        f"{default_n_eval(d)} held-out ones never trained on"
    )
