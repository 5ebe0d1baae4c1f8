"""verl_stable.data.math_sets (and recipes/prepare_math_data.py): the training set and the three eval sets, each its
own data_source in verl's schema, read back by verl's own RLHFDataset; bad input refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from verl_stable.data.math_sets import EVAL_SOURCES, build_sets, main, overrides, to_verl_rows
from verl_stable.rewards.math_verifier import SUPPORTED_DATA_SOURCES, compute_score

ROOT = Path(__file__).resolve().parents[2]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sample(tmp_path):
    """A small sample in the shapes public copies come in: JSONL with problem/answer, parquet with Problem/Answer."""
    train = _jsonl(tmp_path / "math.jsonl", [{"problem": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(10)])
    aime24 = _jsonl(tmp_path / "aime24.jsonl", [{"problem": "Find 2^{10}.", "answer": 1024},
                                               {"problem": "Find 100 + 4.", "answer": "104"}])
    aime25 = tmp_path / "aime25.parquet"
    pd.DataFrame([{"Problem": "Find 3 * 7.", "Answer": 21.0}]).to_parquet(aime25)
    hmmt25 = _jsonl(tmp_path / "hmmt25.jsonl", [{"problem": "Halve 1.", "answer": "\\frac{1}{2}"},
                                               {"problem": "Root of 12?", "answer": "2\\sqrt{3}"}])
    return {"train": train, "aime24": aime24, "aime25": aime25, "hmmt25": hmmt25, "out": tmp_path / "data"}


def test_builds_the_training_set_and_three_separate_eval_sets(sample):
    written = build_sets(sample["out"], sample["train"], {s: sample[s] for s in EVAL_SOURCES}, train_size=8)
    assert sorted(written) == sorted(["math", *EVAL_SOURCES])
    frames = {s: pd.read_parquet(p) for s, p in written.items()}
    assert len(frames["math"]) == 8 and set(frames["math"]["data_source"]) == {"math"}
    assert [len(frames[s]) for s in EVAL_SOURCES] == [2, 1, 2]
    for source in EVAL_SOURCES:
        assert set(frames[source]["data_source"]) == {source}
        assert set(frames[source]["extra_info"].map(lambda e: e["split"])) == {"test"}
    # parquet / JSON numbers come back as the answer a verifier compares: 21.0 -> "21", 1024 -> "1024"
    assert frames["aime25"]["reward_model"][0]["ground_truth"] == "21"
    assert list(frames["aime24"]["reward_model"].map(lambda r: r["ground_truth"])) == ["1024", "104"]
    prompt = frames["hmmt25"]["prompt"][0]
    assert prompt[0]["role"] == "user" and prompt[0]["content"].endswith("within \\boxed{}.")
    assert set(pd.concat(frames.values())["data_source"]) <= set(SUPPORTED_DATA_SOURCES)
    # the reward scores every written row: its own answer 1, another 0
    for frame in frames.values():
        for source, rm in zip(frame["data_source"], frame["reward_model"]):
            truth = rm["ground_truth"]
            assert compute_score(source, f"so \\boxed{{{truth}}}", truth)["score"] == 1.0
            assert compute_score(source, "so \\boxed{999999}", truth)["score"] == 0.0
    train, val = overrides(written)
    assert train == f"data.train_files={written['math'].resolve()}"
    assert val == "data.val_files=[" + ",".join(str(written[s].resolve()) for s in EVAL_SOURCES) + "]"


def test_verls_dataset_reads_the_files_and_keeps_each_data_source(sample):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from verl_stable.tasks.addition import build_tokenizer

    written = build_sets(sample["out"], sample["train"], {s: sample[s] for s in EVAL_SOURCES})
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 512, "filter_overlong_prompts": False,
                               "return_raw_chat": True, "truncation": "right"})
    ds = RLHFDataset([str(written[s]) for s in EVAL_SOURCES], build_tokenizer(), config)
    assert len(ds) == 5
    assert [ds[i]["data_source"] for i in range(len(ds))] == ["aime24", "aime24", "aime25", "hmmt25", "hmmt25"]


def test_the_cli_prints_the_overrides_and_the_recipe_script_is_the_same_command(sample, capsys):
    args = ["--out", str(sample["out"]), "--train", str(sample["train"]), "--aime24", str(sample["aime24"])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "note: no --aime25, --hmmt25" in out and "data.val_files=[" in out
    p = subprocess.run([sys.executable, str(ROOT / "recipes" / "prepare_math_data.py"), *args[:4],
                        "--aime25", str(sample["aime25"]), "--hmmt25", str(sample["hmmt25"])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "column 'Problem' for --question-key problem" in p.stdout
    assert sorted(f.name for f in sample["out"].iterdir()) == ["aime24.parquet", "aime25.parquet", "hmmt25.parquet",
                                                                "train.parquet"]


def test_bad_input_is_refused_by_name(sample, tmp_path):
    with pytest.raises(KeyError, match="no column 'question'.*--question-key"):
        to_verl_rows([{"problem": "x", "answer": "1"}], "question", "answer", "math", "train")
    with pytest.raises(ValueError, match="--data-source openai/gsm8k"):
        to_verl_rows([{"problem": "x", "answer": "1"}], "problem", "answer", "openai/gsm8k", "train")
    with pytest.raises(ValueError, match=r"row 1: the answer is None"):
        to_verl_rows([{"problem": "x", "answer": "1"}, {"problem": "y", "answer": None}], "problem", "answer",
                     "aime24", "test")
    with pytest.raises(ValueError, match=r"row 0: math-verify cannot parse the ground truth '\\\\frac\{'.*'answer'"):
        to_verl_rows([{"problem": "x", "answer": "\\frac{"}], "problem", "answer", "hmmt25", "test")
    with pytest.raises(ValueError, match="--train-size 99"):
        build_sets(tmp_path / "o", sample["train"], {}, train_size=99)
    with pytest.raises(ValueError, match=r"eval sets \['math500'\]"):
        build_sets(tmp_path / "o", sample["train"], {"math500": sample["aime24"]})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        build_sets(tmp_path / "o", tmp_path / "nope.jsonl", {})
    with pytest.raises(SystemExit):
        main([str(sample["train"]), str(tmp_path / "x.parquet"), "--train", str(sample["train"])])
