"""The paper's data: a math training set and the AIME24 / AIME25 / HMMT25 eval sets, from files you supply.

    python -m verl_stable.data.math_sets --out data/ --train math.jsonl --aime24 aime24.jsonl \
        --aime25 aime25.parquet --hmmt25 hmmt25.jsonl [--question-key problem] [--answer-key answer] [--train-size 4096]
    python -m verl_stable.data.math_sets SOURCE DEST [--data-source aime24]     # one file, one data_source

Each input is JSONL, JSON or parquet with a question and an answer per row. Each output is a parquet in verl's RL
schema (``verl.utils.dataset.rl_dataset``): ``prompt`` (chat messages), ``data_source``, ``reward_model.ground_truth``,
``ability``, ``extra_info``. The training set's data_source is ``math``; each eval set keeps its own name, so verl
reports ``val-core/aime24/acc/mean@32`` and so on per set (avg@32 is the recipe's ``rollout.val_kwargs.n: 32``),
not one pooled number. Every data_source is one that :mod:`verl_stable.rewards.math_verifier` scores (binary
{0, 1}), and every ground truth is checked to parse with math-verify here, before a run, not in the middle of one.
The command prints the ``data.train_files`` / ``data.val_files`` overrides for the files it wrote.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

from verl_stable.rewards.math_verifier import SUPPORTED_DATA_SOURCES, GroundTruthError, check_answer

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
TRAIN_SOURCE = "math"
EVAL_SOURCES = ("aime24", "aime25", "hmmt25")


def read_table(path: str | Path) -> list[dict]:
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=path.suffix == ".jsonl")
    else:
        raise ValueError(f"{path}: expected .jsonl, .json or .parquet")
    return frame.to_dict("records")


def _column(rows: list[dict], key: str, flag: str, where: str) -> str:
    """``key``, or its only case-insensitive match (public AIME copies spell it ``Problem`` / ``Answer``)."""
    keys = set().union(*(row.keys() for row in rows)) if rows else set()
    if key in keys:
        return key
    matches = [k for k in keys if str(k).lower() == key.lower()]
    if len(matches) == 1:
        print(f"{where}: column {matches[0]!r} for {flag} {key}")
        return matches[0]
    raise KeyError(f"{where}: no column '{key}' (columns: {sorted(map(str, keys))}); pass {flag}")


def _answer_text(value, where: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{where}: the answer is {value!r}; every row needs a ground truth")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a parquet / JSON reader's 204.0 is the answer 204
    text = str(value).strip()
    if not text:
        raise ValueError(f"{where}: the answer is empty; every row needs a ground truth")
    return text


def to_verl_rows(rows: list[dict], question_key: str, answer_key: str, data_source: str, split: str,
                 *, instruction: str = INSTRUCTION, where: str = "input", verify: bool = True) -> list[dict]:
    """verl RL-schema rows; refuses a missing column, an empty answer, or one the verifier cannot parse."""
    q_key = _column(rows, question_key, "--question-key", where)
    a_key = _column(rows, answer_key, "--answer-key", where)
    if data_source not in SUPPORTED_DATA_SOURCES:
        raise ValueError(f"--data-source {data_source}: the math verifier scores {', '.join(SUPPORTED_DATA_SOURCES)}")
    out = []
    for i, row in enumerate(rows):
        if q_key not in row or a_key not in row:
            raise KeyError(f"{where}: row {i} has no '{q_key}' / '{a_key}' (keys: {sorted(map(str, row))}); "
                           "pass --question-key / --answer-key")
        answer = _answer_text(row[a_key], f"{where} row {i}")
        if verify:
            try:
                ok, _ = check_answer(f"\\boxed{{{answer}}}", answer)
            except GroundTruthError as err:
                raise ValueError(f"{where} row {i}: {err}; fix the file's '{a_key}' column") from None
            if ok != 1.0:
                raise ValueError(f"{where} row {i}: the answer {answer!r} does not verify against itself")
        content = f"{row[q_key]}\n\n{instruction}" if instruction else str(row[q_key])
        out.append({
            "data_source": data_source,
            "prompt": [{"role": "user", "content": content}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": split, "index": i},
        })
    return out


def write_rows(rows: list[dict], dest: str | Path) -> Path:
    import pandas as pd

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(dest)
    return dest


def build_sets(out_dir: str | Path, train: str | Path, evals: dict[str, str | Path], *, question_key: str = "problem",
               answer_key: str = "answer", train_size: int | None = None, seed: int = 0,
               instruction: str = INSTRUCTION) -> dict[str, Path]:
    """Write ``train.parquet`` and one ``<source>.parquet`` per eval set into ``out_dir``; return them by source."""
    unknown = sorted(set(evals) - set(EVAL_SOURCES))
    if unknown:
        raise ValueError(f"eval sets {unknown}: the paper's are {', '.join(EVAL_SOURCES)}")
    out_dir = Path(out_dir)
    rows = read_table(train)
    if train_size is not None:
        if not 0 < train_size <= len(rows):
            raise ValueError(f"--train-size {train_size}: {train} has {len(rows)} rows")
        rows = random.Random(seed).sample(rows, train_size)
    written = {TRAIN_SOURCE: write_rows(
        to_verl_rows(rows, question_key, answer_key, TRAIN_SOURCE, "train", instruction=instruction, where=str(train)),
        out_dir / "train.parquet")}
    for source in EVAL_SOURCES:
        if source in evals:
            path = evals[source]
            eval_rows = to_verl_rows(read_table(path), question_key, answer_key, source, "test",
                                     instruction=instruction, where=str(path))
            written[source] = write_rows(eval_rows, out_dir / f"{source}.parquet")
    return written


def overrides(written: dict[str, Path]) -> list[str]:
    """The Hydra overrides that point a recipe at :func:`build_sets`' files."""
    vals = [str(p.resolve()) for s, p in written.items() if s != TRAIN_SOURCE]
    return [f"data.train_files={written[TRAIN_SOURCE].resolve()}", *([f"data.val_files=[{','.join(vals)}]"] if vals else [])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", nargs="?", help="one input file (with DEST): a single set")
    p.add_argument("dest", nargs="?", help="its output parquet")
    p.add_argument("--data-source", default=TRAIN_SOURCE, choices=SUPPORTED_DATA_SOURCES,
                   help="the single set's data_source (default: %(default)s)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", help="output folder for --train / --aime24 / --aime25 / --hmmt25")
    p.add_argument("--train", help="the training set (data_source math)")
    for source in EVAL_SOURCES:
        p.add_argument(f"--{source}", help=f"the {source.upper()} eval set (data_source {source})")
    p.add_argument("--question-key", default="problem")
    p.add_argument("--answer-key", default="answer")
    p.add_argument("--train-size", type=int, default=None, help="sample this many training rows (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instruction", default=INSTRUCTION, help="appended to every question ('' for none)")
    a = p.parse_args(argv)
    evals = {s: getattr(a, s) for s in EVAL_SOURCES if getattr(a, s)}
    if a.source or a.dest:
        if not (a.source and a.dest) or a.out or a.train or evals:
            p.error("give either SOURCE DEST (one set) or --out with --train and the eval sets, not both")
        rows = to_verl_rows(read_table(a.source), a.question_key, a.answer_key, a.data_source, a.split,
                            instruction=a.instruction, where=a.source)
        print(f"{len(rows)} rows ({a.data_source}) -> {write_rows(rows, a.dest)}")
        return 0
    if not (a.out and a.train):
        p.error("--out and --train are needed (or SOURCE DEST for one set)")
    missing = [f"--{s}" for s in EVAL_SOURCES if s not in evals]
    if missing:
        print(f"note: no {', '.join(missing)}: the paper evaluates on all three")
    written = build_sets(a.out, a.train, evals, question_key=a.question_key, answer_key=a.answer_key,
                         train_size=a.train_size, seed=a.seed, instruction=a.instruction)
    import pandas as pd

    for source, path in written.items():
        print(f"{source}: {len(pd.read_parquet(path))} rows -> {path}")
    print(" ".join(overrides(written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
