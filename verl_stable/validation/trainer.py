"""Settings that run but train nothing, the batch-size divisibility verl's workers assert mid-run, and verl's own
``validate_config`` with its assertions turned into messages."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterator

from verl_stable.routing.config import FSDP_STRATEGIES
from verl_stable.validation.issues import ACTOR, ROLLOUT, ConfigIssue, divisors, get


#: verl's estimators whose baseline is the other responses of the same prompt (verl falls back to a baseline of 0
#: for a one-response group, so ``rollout.n=1`` is no longer the algorithm asked for).
GROUP_ESTIMATORS = ("grpo", "grpo_vectorized", "grpo_passk", "rloo", "rloo_vectorized", "opo", "gpg", "gdpo",
                    "reinforce_plus_plus_baseline", "optimal_token_baseline", "tir_optimal_token_baseline")


#: Rollout settings that decode greedily (the same response n times).
_GREEDY = ((f"{ROLLOUT}.temperature", 0), (f"{ROLLOUT}.top_k", 1), (f"{ROLLOUT}.do_sample", False))


def _same(value, target) -> bool:
    return value is not None and isinstance(value, bool) == isinstance(target, bool) and value == target


def check_meaningless(config) -> Iterator[ConfigIssue]:
    """Settings that run but train nothing, or not what was asked for."""
    estimator = str(get(config, "algorithm.adv_estimator", ""))
    n = get(config, f"{ROLLOUT}.n")
    if estimator in GROUP_ESTIMATORS and n == 1:
        yield ConfigIssue(
            f"{ROLLOUT}.n", 1, f"algorithm.adv_estimator={estimator} compares each response with the other "
            "responses to the same prompt; with one response per prompt there is no group (verl then uses a "
            "baseline of 0 and the raw reward as advantage)", "rollout.n >= 2 (the paper's recipes use 8 or 16)",
        )
    greedy = next(((key, value) for key, value in _GREEDY if _same(get(config, key), value)), None)
    if estimator in GROUP_ESTIMATORS and isinstance(n, int) and n > 1 and greedy is not None:
        yield ConfigIssue(
            greedy[0], greedy[1], f"greedy rollouts give the {n} responses to a prompt the same text, so every "
            f"group-relative advantage ({estimator}) is 0 and nothing is learned",
            "sampling: temperature > 0, top_k != 1, do_sample=true",
        )
    warmup, steps = get(config, "trainer.critic_warmup", 0), get(config, "trainer.total_training_steps")
    if isinstance(warmup, int) and isinstance(steps, int) and not isinstance(warmup, bool) and warmup > steps:
        yield ConfigIssue(
            "trainer.critic_warmup", warmup, f"verl updates the actor only from step critic_warmup on; with "
            f"trainer.total_training_steps={steps} the actor is never updated", f"<= {steps}",
        )
    if get(config, f"{ACTOR}.use_kl_loss", False) and get(config, f"{ACTOR}.kl_loss_coef") == 0:
        yield ConfigIssue(f"{ACTOR}.kl_loss_coef", 0, "use_kl_loss=true with a coefficient of 0 computes the "
                          "reference policy's log-probs for nothing", "> 0, or use_kl_loss=false", warning=True)


#: verl-stable's samplers that order verl's synchronous batches (verl_stable.integration.replay_buffer, the lab's)
ORDERED_SAMPLERS = (
    "pkg://verl_stable.integration.replay_buffer:GroupOrderedReplayBuffer",
    "pkg://verl_stable.lab.sampler:PollingReplayBuffer",
)


def check_sampler(config) -> Iterator[ConfigIssue]:
    """verl-stable's ordered samplers subclass verl's synchronous replay buffer: refused with an async trainer
    mode before Ray starts (the sampler itself would raise in the trainer process)."""
    path = get(config, "trainer.v1.sampler.custom_sampler.path")
    name = get(config, "trainer.v1.sampler.custom_sampler.name")
    mode = get(config, "trainer.v1.trainer_mode", "sync")
    if not (get(config, "trainer.use_v1", True) and f"{path}:{name}" in ORDERED_SAMPLERS):
        return
    if mode != "sync":
        yield ConfigIssue(
            "trainer.v1.trainer_mode", mode, f"trainer.v1.sampler.custom_sampler {name} orders verl's synchronous "
            "batches (whole prompt groups per mini-batch) and does not run in an async mode",
            "sync, or unset trainer.v1.sampler.custom_sampler (verl's own sampler)",
        )
    from verl_stable.integration.replay_buffer import WITHIN_GROUP, WITHIN_GROUP_KEY

    within = get(config, WITHIN_GROUP_KEY, "session")
    if within not in WITHIN_GROUP:
        yield ConfigIssue(WITHIN_GROUP_KEY, within, f"{name} orders a group by one of {', '.join(WITHIN_GROUP)}",
                          " or ".join(WITHIN_GROUP))


def check_batch_sizes(config) -> Iterator[ConfigIssue]:
    """The divisibility verl's workers assert mid-run (engine micro-batching), checked up front."""
    if get(config, f"{ACTOR}.use_dynamic_bsz", False):
        return
    sizes = [get(config, k, 1) for k in ("trainer.n_gpus_per_node", "trainer.nnodes",
                                           f"{ACTOR}.ulysses_sequence_parallel_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
        return  # reported by check_ranges
    if get(config, f"{ACTOR}.strategy") not in FSDP_STRATEGIES:
        return  # Megatron's data-parallel size depends on TP/PP/CP: verl's validate_config covers it
    dp = max(1, sizes[0] * sizes[1] // sizes[2])
    n = get(config, f"{ROLLOUT}.n", 1)
    prompts = get(config, "data.train_batch_size", 1)
    mini = get(config, f"{ACTOR}.ppo_mini_batch_size")
    micro = get(config, f"{ACTOR}.ppo_micro_batch_size_per_gpu")
    if not all(isinstance(v, int) and v >= 1 for v in (n, prompts)):
        return  # reported by check_ranges
    if isinstance(mini, int) and mini >= 1:
        if prompts % mini:
            yield ConfigIssue(
                f"{ACTOR}.ppo_mini_batch_size", mini, f"must divide data.train_batch_size={prompts} (prompts per "
                "step; the step makes train_batch_size / ppo_mini_batch_size updates)",
                divisors(prompts),
            )
        elif isinstance(micro, int) and micro >= 1 and (mini * n) % (dp * micro):
            per_rank = mini * n // dp
            yield ConfigIssue(
                f"{ACTOR}.ppo_micro_batch_size_per_gpu", micro, f"must divide the {per_rank} responses each rank "
                f"gets per mini-batch (ppo_mini_batch_size={mini} × rollout.n={n} / {dp} ranks)",
                divisors(per_rank),
            )
    log_micro = get(config, f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu")
    per_rank = prompts * n // dp
    if isinstance(log_micro, int) and log_micro >= 1 and per_rank and per_rank % log_micro:
        yield ConfigIssue(
            f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", log_micro, f"must divide the {per_rank} responses each "
            f"rank scores per step (data.train_batch_size={prompts} × rollout.n={n} / {dp} ranks)",
            divisors(per_rank),
        )


def check_verl(config) -> Iterator[ConfigIssue]:
    """verl's own ``validate_config`` (the one its main runs), its assertions turned into one line each."""
    from hydra.errors import InstantiationException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        # it prints a success banner and notices, and warns about the critic it disables
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    except InstantiationException as exc:  # a key verl's dataclass does not have (a typo), or a wrong type
        cause = exc.__cause__ or exc
        where = str(exc).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(exc) else "?"
        yield ConfigIssue("verl validate_config", type(cause).__name__, f"{where}: {cause}".replace("\n", " "))
    except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
        yield ConfigIssue("verl validate_config", type(exc).__name__, str(exc) or repr(exc))
