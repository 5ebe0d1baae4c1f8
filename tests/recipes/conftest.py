import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Stand-in math data built by the recipes' own data step (``verl_stable.data.math_sets``): a training set of
    a full step for the largest cell (512 prompts) and the three eval sets, each a data_source the recipes' reward
    scores -- the pre-launch check opens the files and refuses anything short of that."""
    import json

    from verl_stable.data import math_sets

    root = tmp_path_factory.mktemp("recipe_data")
    sources = {}
    for name, n in (("train", 1024), ("aime24", 4), ("aime25", 4), ("hmmt25", 4)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"problem": f"{i} + 1 = ?", "answer": str(i + 1)}) + "\n" for i in range(n)))
        sources[name] = path
    written = math_sets.build_sets(root / "sets", sources.pop("train"), sources)
    return math_sets.overrides(written)
