"""Build verl's RL datasets for the recipes: the training set and the AIME24 / AIME25 / HMMT25 eval sets.

    python recipes/prepare_math_data.py --out data/ --train math.jsonl --aime24 aime24.jsonl --aime25 aime25.jsonl \
        --hmmt25 hmmt25.jsonl
    python recipes/prepare_math_data.py train.jsonl data/train.parquet [--question-key problem] [--answer-key answer]

The same command as ``python -m verl_stable.data.math_sets`` (its help lists every flag); the rows are scored by
verl_stable.rewards.math_verifier, the reward the recipes set.
"""

from __future__ import annotations

import sys

from verl_stable.data.math_sets import INSTRUCTION, build_sets, main, to_verl_rows  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
