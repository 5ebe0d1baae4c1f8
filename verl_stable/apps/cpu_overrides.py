"""The Hydra overrides that run verl's PPO trainer on CPU, in one place.

Only what CPU needs (device, engine, rollout, Ray resources, a size that fits two cores) and where the run
writes: nothing an algorithm preset sets (loss, advantage estimator, rollout correction, KL, entropy), so
``algorithm=<preset>`` and the user's own overrides always win. Used by ``python -m verl_stable.apps.demo``
and the CPU tests; ``python -m verl_stable.apps.cpu_overrides --run-dir D`` prints them one per line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from verl_stable.cpu import CPU_RAY_ENV, ROLLOUT_NAME


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
    model_dir = Path(model_dir or run_dir / "model").resolve()
    data_dir = Path(data_dir or run_dir / "data").resolve()
    reward_file = Path(__file__).resolve().parents[1] / "tasks" / "addition.py"
    batch = prompts_per_step * group_size
    # verl's file logger reads its path from the environment of the process that trains (a Ray actor);
    # without it, verl writes <project>/<experiment>.jsonl into the working directory.
    ray_env = {**CPU_RAY_ENV, "VERL_FILE_LOGGER_PATH": run_dir / "metrics.jsonl"}
    env_vars = [f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}={v}" for k, v in ray_env.items()]
    return [
        # --- data + task
        f"data.train_files={data_dir / 'train.parquet'}",
        f"data.val_files={data_dir / 'val.parquet'}",
        f"data.train_batch_size={prompts_per_step}",
        "data.max_prompt_length=16",
        f"data.max_response_length={response_length}",
        "data.dataloader_num_workers=0",
        f"reward.custom_reward_function.path={reward_file}",
        "reward.custom_reward_function.name=compute_score",
        "reward.num_workers=1",
        # --- model + FSDP2 engine on CPU (FSDP1 refuses CPU parameters; flash-attn does not exist here)
        f"actor_rollout_ref.model.path={model_dir}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.use_torch_compile=False",
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts_per_step}",
        # one group per micro-batch: divides every mini-batch of whole prompts (stale updates:
        # actor_rollout_ref.actor.ppo_mini_batch_size=<prompts per update>)
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={group_size}",
        "actor_rollout_ref.actor.ppo_epochs=1",
        # --- rollout: hf_cpu engine in its own Ray actor, log-probs returned (mu_old)
        f"actor_rollout_ref.rollout.name={ROLLOUT_NAME}",
        f"actor_rollout_ref.rollout.dtype={rollout_dtype}",
        f"actor_rollout_ref.rollout.quantization={quantization if quantization else 'null'}",
        f"actor_rollout_ref.rollout.n={group_size}",
        # routes only when asked (routing_replay=R3 preset, or routing_replay=True here)
        *(["actor_rollout_ref.rollout.enable_rollout_routing_replay=True"] if routing_replay else []),
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={batch}",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "actor_rollout_ref.rollout.checkpoint_engine.backend=naive",
        # --- trainer: one logical "GPU" slot, console + file loggers, no validation/checkpoints
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.logger=[console,file]",
        "trainer.project_name=verl_stable_cpu",
        "trainer.experiment_name=addition_moe",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        # Hydra's run directory inside the run, not outputs/ in the working directory
        f"hydra.run.dir={run_dir / 'hydra'}",
        # --- Ray: logical resources only (verl's placement groups want GPU + CPU slots); small object store
        "ray_kwargs.ray_init.num_cpus=8",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "+ray_kwargs.ray_init.num_gpus=1",
        "+ray_kwargs.ray_init.object_store_memory=268435456",
        "+ray_kwargs.ray_init.include_dashboard=False",
        *env_vars,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="print the CPU overrides for verl's trainer, one per line")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    args = parser.parse_args(argv)
    for item in cpu_overrides(
        args.run_dir, steps=args.steps, quantization=args.quantization, lr=args.lr, prompts_per_step=args.prompts_per_step
    ):
        print(item)


if __name__ == "__main__":
    main()
