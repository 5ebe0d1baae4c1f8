"""Launch verl's PPO trainer with verl-stable's presets.

    python -m verl_stable.main algorithm=minirl [routing_replay=R2|R3] data.train_files=... \
        actor_rollout_ref.model.path=...

Same as ``python -m verl.trainer.main_ppo --config-path=pkg://verl_stable.config
--config-name=minirl_trainer``: verl's ``ppo_trainer`` config, our presets composed on top, every verl
override still yours. ``--cfg job`` prints the composed config without starting anything;
``--config-name=minirl_megatron_trainer`` composes verl's Megatron trainer instead.

Before Ray starts (and before Hydra creates its run directory), the configs' Hydra callback
(:mod:`verl_stable.validation`) checks the composed config, its data files and its model, and refuses mistakes
with one line per key (exit status 2); a check that fails is a refusal too. ``VERL_STABLE_SKIP_VALIDATION=1``
is the only way past it.
"""

from __future__ import annotations

import hydra

# verl loads verl_stable.plugin through its entry point; importing it here too makes the losses
# available even where entry points are disabled (VERL_USE_EXTERNAL_PLUGINS=none) in the driver.
import verl_stable.plugin  # noqa: F401


@hydra.main(config_path="pkg://verl_stable.config", config_name="minirl_trainer", version_base=None)
def main(config) -> None:
    from verl.trainer.main_ppo import main as verl_main

    # verl's main is itself a @hydra.main; call the function it wraps with our composed config.
    verl_main.__wrapped__(config)


if __name__ == "__main__":
    main()
