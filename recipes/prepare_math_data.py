"""Turn a math set (JSONL or parquet with a question and an answer per row) into verl's RL dataset schema.

    python recipes/prepare_math_data.py train.jsonl data/train.parquet [--question-key problem] [--answer-key answer]
        [--data-source math_dapo]

verl's schema (verl.utils.dataset.rl_dataset): ``prompt`` (chat messages), ``data_source`` (picks verl's default
reward: ``math_dapo`` = boxed-answer verifier), ``reward_model.ground_truth``, ``ability``, ``extra_info``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def to_verl_rows(rows: list[dict], question_key: str, answer_key: str, data_source: str, split: str) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        if question_key not in row or answer_key not in row:
            raise KeyError(f"row {i} has no '{question_key}' / '{answer_key}' (keys: {sorted(row)}); "
                           "pass --question-key / --answer-key")
        out.append({
            "data_source": data_source,
            "prompt": [{"role": "user", "content": f"{row[question_key]}\n\n{INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(row[answer_key])},
            "extra_info": {"split": split, "index": i},
        })
    return out


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--question-key", default="problem")
    p.add_argument("--answer-key", default="answer")
    p.add_argument("--data-source", default="math_dapo")
    p.add_argument("--split", default="train")
    a = p.parse_args(argv)
    src = Path(a.source)
    frame = pd.read_parquet(src) if src.suffix == ".parquet" else pd.read_json(src, lines=True)
    rows = to_verl_rows(frame.to_dict("records"), a.question_key, a.answer_key, a.data_source, a.split)
    Path(a.dest).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(a.dest)
    print(f"{len(rows)} rows -> {a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
