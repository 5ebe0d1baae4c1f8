"""The lab's task: multi-digit addition with the full sum as the answer, exactly verifiable.

Prompt ``"37+45="``, answer ``"82"``: :data:`verl_stable.tasks.addition.SUM`, the addition family's full-sum
member. ``difficulty`` is the number of digits per operand (1–3): the answer is up to ``difficulty + 1``
characters, so a response needs ``difficulty + 2`` tokens with the end token. The tokenizer and chat template
are :mod:`verl_stable.tasks.tiny_moe`'s (one token per character), so every prompt of one difficulty has the
same token length (operands are zero-padded: ``"07+45="``).

Splits: the held-out eval set is drawn first, the train set only from the remaining problems, so no eval
prompt is ever trained on (with commuted operands counted as the same problem). Rows are in verl's RL
schema; :data:`REWARD_FN` is what ``reward.custom_reward_function.{path,name}`` takes and :data:`EVAL_K`
the number of samples per eval prompt (verl's ``val_kwargs.n``; the metric is verl's
``val-core/<data_source>/acc/mean@EVAL_K``, the paper's avg@k).
"""

from __future__ import annotations

import os
from pathlib import Path

from verl_stable.tasks import addition

TASK = addition.SUM
DATA_SOURCE = TASK.data_source
#: What compute_score scores: the pre-launch check refuses data whose data_source is not here.
SUPPORTED_DATA_SOURCES = (DATA_SOURCE,)
DIFFICULTIES = (1, 2, 3)
DEFAULT_DIFFICULTY = 2
EVAL_K = 8
N_TRAIN = 1024
N_EVAL = 64
#: The addition family's reward file: it scores this task's rows by their data_source.
REWARD_FN = (str(Path(addition.__file__).resolve()), "compute_score")
compute_score = addition.compute_score


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
    return TASK.prompt_text(a, b, difficulty)


def answer_text(a: int, b: int, difficulty: int | None = None) -> str:
    """The full sum (its length does not depend on ``difficulty``)."""
    return TASK.answer_text(a, b)


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
    return TASK.split_problems(
        seed=seed, digits=check_difficulty(difficulty), n_train=n_train, n_eval=n_eval
    )


def make_rows(
    problems: list[tuple[int, int]], *, difficulty: int, split: str
) -> list[dict]:
    return TASK.rows(problems, digits=difficulty, split=split)


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


def describe(difficulty: int = DEFAULT_DIFFICULTY) -> str:
    """One line for the report's header."""
    d = check_difficulty(difficulty)
    return (
        f"{d}-digit + {d}-digit addition, the full sum as the answer; {N_TRAIN} training problems, "
        f"{default_n_eval(d)} held-out ones never trained on"
    )
