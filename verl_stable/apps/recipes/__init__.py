"""The recipes in ``recipes/``: the paper's grid as named cells, their launch lines, and what each one implies.

    python -m verl_stable.apps.recipes list                       # every recipe / cell with its launch line
    python -m verl_stable.apps.recipes overrides minirl_r3_n4 --backend megatron   # the Hydra arguments, one per line
    python -m verl_stable.apps.recipes dry-run minirl_r3_n4 --backend fsdp [overrides...]   # compose + validate + memory

A recipe is a primary Hydra config under ``recipes/`` (composed on verl-stable's ``base/trainer``); a grid cell is
a set of group choices on it, declared once in :mod:`verl_stable.grid` (``recipes/qwen3_30b_a3b/grid.yaml`` is that
table rendered). Launch any of them with
``python -m verl_stable.main --config-path=<abs recipe dir> --config-name=<recipe> <choices> <overrides>``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from verl_stable import grid
from verl_stable.apps.recipes.plan import Plan, memory_plan
from verl_stable.validation.compose import compose_trainer_config
from verl_stable.validation.model import check_model_context, check_model_routes, check_sequence_parallel, recipe_issues
from verl_stable.validation.model_shape import HUB_MODELS, MODELS_DIR, ModelShape, model_shape

#: The public names (tests and the first-node check import them from here).
__all__ = ["RECIPES_DIR", "GRID_RECIPE", "BACKENDS", "Recipe", "grid_cells", "all_recipes", "find", "compose",
           "MemoryEstimate", "memory_estimate", "memory_plan", "Plan", "ModelShape", "model_shape", "HUB_MODELS",
           "MODELS_DIR", "check_model_context", "check_model_routes", "check_sequence_parallel", "recipe_issues",
           "set_keys", "unknown_keys", "world_size", "readme_table", "dry_run", "main"]

RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes"
GRID_RECIPE = "qwen3_30b_a3b"
BACKENDS = ("fsdp", "megatron")


@dataclass(frozen=True)
class Recipe:
    """One launchable recipe: a primary config (``config_dir/config_name.yaml``) plus group choices."""

    name: str
    config_dir: Path
    config_name: str
    choices: tuple[str, ...] = ()
    hardware: str = ""

    def launch_line(self, extra: str = "") -> str:
        rel = self.config_dir.relative_to(RECIPES_DIR.parent)
        args = " ".join(self.choices)
        return (f"python -m verl_stable.main --config-path=$PWD/{rel} --config-name={self.config_name} {args} "
                f"{extra}").strip()

    def sbatch_line(self) -> str:
        rel = self.config_dir.relative_to(RECIPES_DIR.parent)
        return f"sbatch -N {self.nodes} scripts/slurm/verl_stable.sbatch {rel}/{self.config_name} {' '.join(self.choices)}".strip()

    @property
    def nodes(self) -> int:
        return int(self.hardware.split("x", 1)[0]) if "x" in self.hardware else 1


def grid_cells(recipes_dir: Path = RECIPES_DIR) -> dict[str, dict]:
    """``{cell: {algorithm, routing_replay, offpolicy, regime}}`` from :data:`verl_stable.grid.CELLS` (the cells do not
    depend on ``recipes_dir``; ``grid.yaml`` under it is their rendering, checked by tests/recipes)."""
    return {c.name: {"algorithm": c.loss, "routing_replay": c.replay, "offpolicy": c.offpolicy, "regime": c.regime}
            for c in grid.CELLS}


def all_recipes(recipes_dir: Path = RECIPES_DIR) -> list[Recipe]:
    """Every recipe: each grid cell on both backends, the single-node smokes and the CPU recipe."""
    grid_dir = recipes_dir / GRID_RECIPE
    out = []
    for backend in BACKENDS:
        for cell, c in grid_cells(recipes_dir).items():
            replay = c["routing_replay"]
            choices = (f"backend={backend}", f"algorithm={c['algorithm']}", f"offpolicy={c['offpolicy']}",
                       *([f"routing_replay={replay}"] if replay else []), f"trainer.experiment_name={cell}_{backend}")
            out.append(Recipe(f"{cell}@{backend}", grid_dir, GRID_RECIPE, choices, "8x8 GPU 80GB"))
    for backend in BACKENDS:
        out.append(Recipe(f"smoke@{backend}", recipes_dir / "smoke", "smoke", (f"backend={backend}",), "1x8 GPU 80GB"))
    out.append(Recipe("cold_start@fsdp", recipes_dir / "cold_start", "cold_start", (), "4x8 GPU 80GB"))
    out.append(Recipe("cpu_tiny_moe", recipes_dir / "cpu", "tiny_moe", (), "1x CPU"))
    return out


def find(name: str, recipes_dir: Path = RECIPES_DIR) -> Recipe:
    for recipe in all_recipes(recipes_dir):
        if recipe.name == name:
            return recipe
    known = ", ".join(r.name for r in all_recipes(recipes_dir))
    raise KeyError(f"no recipe {name!r} (known: {known})")


def compose(recipe: Recipe, overrides: list[str] = ()) -> DictConfig:
    """Compose a recipe exactly as ``python -m verl_stable.main --config-path=... --config-name=...`` does."""
    return compose_trainer_config([*recipe.choices, *overrides], recipe.config_name, config_dir=recipe.config_dir)


# ------------------------------------------------------------------------------------------ memory estimate
@dataclass(frozen=True)
class MemoryEstimate:
    """What one step of a recipe holds, from its config and the model's shape (read from its config.json)."""

    responses_per_step: int
    max_tokens_per_step: int
    route_bytes_per_token: int
    routes_in_batch_gb: float
    kv_bytes_per_token: int
    kv_per_sequence_gb: float
    rollout_kv_budget_gb: float
    concurrent_full_sequences_per_engine: int

    def lines(self) -> list[str]:
        return [
            f"responses per step: {self.responses_per_step:,}; worst-case tokens per step (prompt + response): "
            f"{self.max_tokens_per_step:,}",
            f"routes in the batch: {self.route_bytes_per_token} B/token -> {self.routes_in_batch_gb:.1f} GB at the "
            "worst case (routing replay only: R3 carries the rollout's routes, R2 records the trainer's at π_old)",
            f"rollout KV cache: {self.kv_bytes_per_token:,} B/token -> {self.kv_per_sequence_gb:.2f} GB per full-length "
            f"sequence; budget per engine {self.rollout_kv_budget_gb:.0f} GB -> {self.concurrent_full_sequences_per_engine} "
            "full-length sequences at once",
        ]


def memory_estimate(config: DictConfig, shape: ModelShape | None = None, gpu_gb: float = 80.0) -> MemoryEstimate:
    """The step's totals (tokens, routes, KV) from the recipe and its model file; the per-GPU plan is
    :func:`memory_plan`."""
    shape = shape or model_shape(config)
    plan = memory_plan(config, shape, gpu_gb)
    host, rollout = plan.host, plan.rollout
    seq = int(config.data.max_prompt_length) + int(config.data.max_response_length)
    kv_engine = rollout["kv_tokens_per_engine"] * rollout["kv_bytes_per_token_per_gpu"] * rollout["tp"] / 1e9
    return MemoryEstimate(
        responses_per_step=host["responses_per_step"], max_tokens_per_step=host["max_tokens_per_step"],
        route_bytes_per_token=host["route_bytes_per_token"], routes_in_batch_gb=host["routes_in_batch_gb"],
        kv_bytes_per_token=shape.kv_bytes_per_token, kv_per_sequence_gb=seq * shape.kv_bytes_per_token / 1e9,
        rollout_kv_budget_gb=kv_engine, concurrent_full_sequences_per_engine=rollout["full_sequences_per_engine"],
    )


#: Free-form dicts in verl's schema: keys below them are the user's (model config overrides, environment).
FREE_FORM = ("override_config", "runtime_env", "env_vars", "engine_kwargs", "reward_kwargs", "override_transformer_config")


def set_keys(yaml_file: Path) -> list[str]:
    """Every leaf key a recipe file sets (dotted, from the file's package), without ``hydra`` and ``defaults``."""
    raw = OmegaConf.load(yaml_file)
    keys: list[str] = []

    def walk(node, prefix):
        for key, value in node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items():
            path = f"{prefix}{key}"
            if isinstance(value, DictConfig) and len(value) and key not in FREE_FORM:
                walk(value, path + ".")
            else:
                keys.append(path)

    walk(OmegaConf.masked_copy(raw, [k for k in raw if k not in ("hydra", "defaults")]), "")
    return keys


def unknown_keys(yaml_file: Path, schema: DictConfig) -> list[str]:
    """Keys ``yaml_file`` sets that verl's composed config tree (``schema``) does not have: a typo would otherwise
    become a silently ignored key or a failure on the cluster."""
    missing = []
    for key in set_keys(yaml_file):
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(schema, parent) if parent else schema
        if not isinstance(node, DictConfig) or leaf not in node.keys():  # keys(): a '???' value is "not in" node
            missing.append(key)
    return missing


def world_size(config: DictConfig) -> int:
    return int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)


#: What a recipe needs besides itself, and what to look at on its first step (recipes/README.md's table).
FIRST_STEP = {
    "qwen3_30b_a3b": "rollout/response_length ≤ 30,720; no 'coverage' warning (R3); peak GPU memory vs the plan",
    "smoke": "routes arrive (R3 coverage guard quiet); a checkpoint and an eval at step 5",
    "cold_start": "π_old route mismatch logged (R2); response lengths approach 65,536; peak vs the plan",
}
DATA = {
    "qwen3_30b_a3b": "math prompts (verl RL parquet) + AIME24 / AIME25 / HMMT25 eval files",
    "smoke": "any verl RL parquet (a few hundred prompts)",
    "cold_start": "math prompts + eval files; the SFT start built from recipes/models/qwen3_next_cold_start",
}
#: The model a recipe's dry run reads when its model.path is the user's own checkpoint.
TABLE_OVERRIDES = {"cold_start": [f"actor_rollout_ref.model.path={MODELS_DIR / 'qwen3_next_cold_start'}"]}


def readme_table(recipes_dir: Path = RECIPES_DIR) -> str:
    """The per-recipe table of recipes/README.md, computed: hardware, the memory plan's peak, checkpoint disk."""
    rows = ["| recipe | nodes × GPUs | peak GB/GPU (phase) | checkpoint GB × kept = disk GB | data | first step: check |",
            "|---|---|---|---|---|---|"]
    groups: dict[str, list[str]] = {}  # identical rows (every cell of the grid on one backend) are listed once
    for recipe in all_recipes(recipes_dir):
        if recipe.name == "cpu_tiny_moe":
            continue
        config = compose(recipe, TABLE_OVERRIDES.get(recipe.config_name, []))
        plan = memory_plan(config, model_shape(config), 80.0, recipe.name)
        c = plan.checkpoint
        row = (f"{config.trainer.nnodes} × {config.trainer.n_gpus_per_node} | "
               f"{plan.per_gpu_peak_gb:.1f} ({plan.peak_phase.name}) | {c['gb_per_checkpoint']:.0f} × {c['kept']} = "
               f"{c['gb_per_run']:.0f} | {DATA[recipe.config_name]} | {FIRST_STEP[recipe.config_name]} |")
        groups.setdefault(f"{recipe.config_name}@{plan.backend}|{row}", []).append(recipe.name)
    for key, names in groups.items():
        label = f"`{names[0]}`" if len(names) == 1 else f"`{key.split('|')[0]}`: all {len(names)} grid cells"
        rows.append(f"| {label} | {key.split('|', 1)[1]}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl_stable.apps.recipes", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every recipe with its launch line")
    sub.add_parser("table", help="the per-recipe memory / disk table of recipes/README.md")
    for name in ("overrides", "dry-run"):
        p = sub.add_parser(name)
        p.add_argument("recipe", help="a grid cell (e.g. minirl_r3_n4), smoke, cold_start, or cpu_tiny_moe")
        p.add_argument("--backend", choices=BACKENDS, default="fsdp")
        if name == "dry-run":
            p.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory to plan for (default 80)")
            p.add_argument("--json", action="store_true", help="print the memory plan as one JSON object")
    args, extra = parser.parse_known_args(argv)
    if args.command == "list":
        for recipe in all_recipes():
            print(f"{recipe.name:<32} {recipe.hardware:<14} {recipe.launch_line()}")
        return 0
    if args.command == "table":
        print(readme_table())
        return 0
    name = args.recipe if args.recipe == "cpu_tiny_moe" or "@" in args.recipe else f"{args.recipe}@{args.backend}"
    recipe = find(name)
    if args.command == "overrides":
        print("\n".join([f"--config-path={recipe.config_dir}", f"--config-name={recipe.config_name}", *recipe.choices]))
        return 0
    return dry_run(recipe, extra, args.gpu_gb, args.json)


def dry_run(recipe: Recipe, extra: list[str], gpu_gb: float = 80.0, as_json: bool = False) -> int:
    """Compose, check against the model file, plan the memory, validate; non-zero when anything is refused."""
    import json

    from verl_stable import validation

    config = compose(recipe, extra)
    say = (lambda line: print(line, file=sys.stderr)) if as_json else (lambda line: print(f"[dry-run] {line}"))
    say(f"{recipe.name}: {recipe.launch_line(' '.join(extra))}")
    say(f"world size {world_size(config)} ({config.trainer.nnodes} nodes x {config.trainer.n_gpus_per_node})")
    issues = recipe_issues(config)
    plan = None
    if not any(i.key == "actor_rollout_ref.model.path" for i in issues):
        plan = memory_plan(config, model_shape(config), gpu_gb, recipe.name)
        if as_json:
            print(json.dumps(plan.as_dict()))
        else:
            for line in memory_estimate(config, plan.shape, gpu_gb).lines():
                say(line)
            for line in plan.lines():
                say(line)
    try:
        validation.validate_trainer_config(config)
    except validation.ConfigError as error:
        issues.extend(error.issues)
    if issues:
        validation.report(validation.ConfigError(issues))
        return validation.EXIT_CONFIG_ERROR
    if plan is not None and not plan.fits:
        say(f"refused: does not fit a {gpu_gb:g} GB GPU by the memory plan (--gpu-gb to plan for another size)")
        return 3
    say("config valid (the model-file checks, verl-stable's checks + verl's validate_config)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
