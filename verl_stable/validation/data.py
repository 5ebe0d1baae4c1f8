"""The train / val files, opened: schema, rows, the columns the dataset and the reward read, and a scorer for
every ``data_source`` in them."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any, Iterator, Optional

from verl_stable.validation.issues import ConfigIssue, Reading, get


#: verl's registered reward managers all read ``reward_model.ground_truth`` and the data-source column.
_GROUND_TRUTH = ("reward_model", "ground_truth")


def _data_files(config, key: str) -> list[str]:
    files = get(config, key)
    if files is None:
        return []
    return [str(item) for item in ([files] if isinstance(files, str) else list(files))]


def verl_default_sources() -> tuple[frozenset, tuple]:
    """The ``data_source`` values verl's ``default_compute_score`` scores, read from its code: the names it
    compares with (``==`` / ``in [...]``) and the prefixes it accepts (``startswith``)."""
    from verl.utils import reward_score

    tree = ast.parse(inspect.getsource(reward_score.default_compute_score))
    names, prefixes = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "data_source":
            for comparator in node.comparators:
                names.update(c.value for c in ast.walk(comparator) if isinstance(c, ast.Constant)
                             and isinstance(c.value, str))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "data_source"):
            prefixes.extend(a.value for a in node.args if isinstance(a, ast.Constant))
    return frozenset(names), tuple(prefixes)


def _reward_function_key(config) -> Optional[str]:
    for key in ("reward.custom_reward_function", "custom_reward_function"):  # verl 0.9.1, then the legacy spot
        if get(config, f"{key}.path"):
            return key
    return None


def _scorer(config) -> tuple[str, Any]:
    """(who scores, the data sources it takes): (key, tuple | None = any | "unknown"), or verl's default."""
    key = _reward_function_key(config)
    if key is None:
        return "verl's default_compute_score", verl_default_sources()
    from verl.utils.import_utils import load_module

    path, name = str(get(config, f"{key}.path")), get(config, f"{key}.name", "compute_score")
    if "://" not in path and not Path(path).expanduser().is_file():
        raise _RewardFunctionError(ConfigIssue(f"{key}.path", path, "file not found"))
    Reading.key = f"{key}.path"
    module = load_module(path)
    if not callable(getattr(module, str(name), None)):
        raise _RewardFunctionError(ConfigIssue(f"{key}.name", name, f"{path} defines no function {name}"))
    return f"{key}.path={path}", getattr(module, "SUPPORTED_DATA_SOURCES", "unknown")


class _RewardFunctionError(Exception):
    def __init__(self, issue: ConfigIssue):
        super().__init__(str(issue))
        self.issue = issue


def _unscored(sources: set, supported) -> list:
    if supported is None:
        return []
    if isinstance(supported, tuple) and len(supported) == 2 and isinstance(supported[0], frozenset):
        names, prefixes = supported
        return sorted(s for s in sources if s not in names and not str(s).startswith(prefixes))
    return sorted(s for s in sources if s not in tuple(supported))


def _check_parquet(config, key: str, item: str, scorer) -> Iterator[ConfigIssue]:
    import pyarrow.parquet as pq

    path = Path(item).expanduser()
    if path.is_dir():
        yield ConfigIssue(key, item, "a directory; verl reads one parquet / json file per entry")
        return
    if path.stat().st_size == 0:
        yield ConfigIssue(key, item, "empty file (0 bytes)", "a parquet file with at least one row")
        return
    if path.suffix in (".json", ".jsonl"):
        yield ConfigIssue(key, item, "a json file: its columns are not checked before start-up", warning=True)
        return
    if path.suffix != ".parquet":
        yield ConfigIssue(key, item, "verl reads only .parquet / .json / .jsonl files (by the name's ending)")
        return
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        yield ConfigIssue(key, item, f"not a readable parquet file ({type(exc).__name__}: {exc})".replace("\n", " "))
        return
    rows, columns = parquet.metadata.num_rows, parquet.schema_arrow
    if rows == 0:
        yield ConfigIssue(key, item, "no rows", "a parquet file with at least one row")
        return
    if key == "data.train_files":
        batch = get(config, "data.train_batch_size")
        if isinstance(batch, int) and 0 < batch and rows < batch and len(_data_files(config, key)) == 1:
            yield ConfigIssue(
                key, item, f"{rows} rows, fewer than data.train_batch_size={batch}: verl drops the incomplete "
                "batch, so the run would have no training step", f"data.train_batch_size <= {rows}",
            )
    prompt_key = get(config, "data.prompt_key", "prompt")
    if prompt_key not in columns.names:
        yield ConfigIssue(
            key, item, f"no column {prompt_key!r} (data.prompt_key={prompt_key}); the file has "
            f"{', '.join(columns.names)}", "data.prompt_key=<one of the columns>, or a file with that column",
        )
    if get(config, "reward.reward_manager.source", "register") != "register":
        return  # a custom reward manager reads what it likes
    source_key = get(config, "data.reward_fn_key", "data_source")
    reward_type = columns.field(_GROUND_TRUTH[0]).type if _GROUND_TRUTH[0] in columns.names else None
    if reward_type is None or not hasattr(reward_type, "names") or _GROUND_TRUTH[1] not in reward_type.names:
        yield ConfigIssue(
            key, item, "no reward_model.ground_truth column (a struct column reward_model with a field ground_truth)"
            ": verl's reward managers pass it to the scorer", "rows like {'reward_model': {'ground_truth': ...}}",
        )
    if source_key not in columns.names:
        yield ConfigIssue(key, item, f"no column {source_key!r} (data.reward_fn_key): the reward needs each row's "
                          "data source")
        return
    who, supported = scorer
    if supported == "unknown":
        yield ConfigIssue(key, item, f"{who} declares no SUPPORTED_DATA_SOURCES: whether it scores this file's "
                          "data sources could not be checked", warning=True)
        return
    sources = set(parquet.read(columns=[source_key]).column(0).to_pylist())
    missing = _unscored(sources, supported)
    if missing:
        known = sorted(supported[0]) if isinstance(supported[0], frozenset) else list(supported)
        yield ConfigIssue(
            key, item, f"{source_key} {', '.join(map(repr, missing[:5]))} has no scorer in {who}",
            f"{', '.join(map(str, known[:12]))}{', ...' if len(known) > 12 else ''}; or set "
            "reward.custom_reward_function.path / .name to a scorer for it",
        )


def check_data(config) -> Iterator[ConfigIssue]:
    """Every train / val file opened: schema, rows, the columns the dataset and the reward need."""
    scorer = None
    for key in ("data.train_files", "data.val_files"):
        files = _data_files(config, key)
        if not files and key == "data.train_files":
            yield ConfigIssue(key, None, "no training data given", "a parquet file or a list of them")
        for item in files:
            if "://" in item:
                continue  # hdfs:// and friends: verl copies them to local disk itself
            if not Path(item).expanduser().exists():
                yield ConfigIssue(key, item, "file not found")
                continue
            if scorer is None:
                try:
                    scorer = _scorer(config)
                except _RewardFunctionError as exc:
                    yield exc.issue
                    scorer = ("", None)  # reported once; the files are still checked
            yield from _check_parquet(config, key, item, scorer)
