"""Pre-launch checks of a recipe against its model's config.json, as ``check_<name>(config) -> ConfigIssue``s."""

from __future__ import annotations

from typing import Iterator

from omegaconf import OmegaConf

from verl_stable.apps.recipes.models import MODEL_PATH_KEY, OVERRIDE_KEY, config_file_for, model_shape
from verl_stable.validation import ConfigIssue, replay_mode

ROLLOUT = "actor_rollout_ref.rollout"
#: rope_scaling types that stretch the position range by ``factor`` (transformers' ROPE_INIT_FUNCTIONS names).
STRETCHING_ROPE = ("yarn", "dynamic", "linear", "longrope")


def _sel(config, key, default=None):
    value = OmegaConf.select(config, key, default=default, throw_on_missing=False)
    return default if value is None else value


def _shape_or_issue(config):
    """The model's shape; ``(None, None)`` where no config.json can be read here (a hub id without a shipped copy:
    the validation pass names it, and the memory plan refuses it), ``(None, issue)`` where the file is bad."""
    path = _sel(config, MODEL_PATH_KEY)
    if path is None or config_file_for(str(path)) is None:
        return None, None
    try:
        return model_shape(config), None
    except ValueError as error:
        return None, ConfigIssue(MODEL_PATH_KEY, _sel(config, MODEL_PATH_KEY), str(error).split(": ", 1)[-1])


def check_model_context(config) -> Iterator[ConfigIssue]:
    """Prompt + response and the rollout's ``max_model_len`` against the model's positions (× a rope_scaling
    factor given through ``model.override_config``)."""
    shape, issue = _shape_or_issue(config)
    if issue or shape is None:
        yield from ([issue] if issue else [])
        return
    positions = shape.max_positions
    scaling = _sel(config, f"{OVERRIDE_KEY}.rope_scaling")
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind in STRETCHING_ROPE:
            positions = int(float(scaling.get("original_max_position_embeddings", positions)) * float(scaling.get("factor", 1.0)))
        if _sel(config, f"{ROLLOUT}.name") in ("vllm", "sglang"):
            # verl 0.9.1 hands vLLM hf_overrides={quantization_config} only and SGLang json_model_override_args
            # likewise: the trainer would run the scaled model, the rollout the unscaled one
            yield ConfigIssue(
                f"{OVERRIDE_KEY}.rope_scaling", dict(scaling), "verl 0.9.1 applies model.override_config to the "
                "training model only; the vLLM / SGLang rollout would run without it (a different model). Shorten "
                f"data.max_response_length / {ROLLOUT}.max_model_len to the model's {shape.max_positions:,} positions")
    prompt, response = int(config.data.max_prompt_length), int(config.data.max_response_length)
    if prompt + response > positions:
        yield ConfigIssue("data.max_response_length", response, f"data.max_prompt_length {prompt:,} + "
                          f"data.max_response_length {response:,} = {prompt + response:,} tokens exceed the "
                          f"{positions:,} positions of the model ({shape.source})", f"prompt + response <= {positions:,}")
    max_len = _sel(config, f"{ROLLOUT}.max_model_len")
    if max_len is not None and int(max_len) > positions:
        yield ConfigIssue(f"{ROLLOUT}.max_model_len", max_len, f"above the model's {positions:,} positions "
                          f"({shape.source}): vLLM and SGLang refuse it at start-up", f"<= {positions:,}")
    if max_len is not None and int(max_len) < prompt + response:
        yield ConfigIssue(f"{ROLLOUT}.max_model_len", max_len, f"shorter than prompt + response "
                          f"({prompt + response:,}): long responses would be cut by the engine", f">= {prompt + response:,}")


def check_model_routes(config) -> Iterator[ConfigIssue]:
    """Routing replay vs the model file: routed experts exist, the route shape (layers × top-k) fits the compact
    index dtype, and the Megatron engine can build the model family."""
    mode = replay_mode(config)
    shape, issue = _shape_or_issue(config)
    if issue or shape is None:
        return  # reported by check_model_context
    strategy = _sel(config, "actor_rollout_ref.actor.strategy")
    if strategy == "megatron" and shape.model_type == "qwen3_next":
        yield ConfigIssue("actor_rollout_ref.actor.strategy", strategy, f"{shape.source} is qwen3_next "
                          "(Qwen3NextForCausalLM), which verl 0.9.1's Megatron model registry "
                          "(verl.models.mcore.registry.SupportedModel) does not build; use backend=fsdp, where "
                          "verl-stable's replay adapter covers Qwen3NextTopKRouter", "fsdp2")
    if mode == "disabled":
        return
    if not shape.experts or not shape.top_k:
        yield ConfigIssue("routing_replay", mode, f"{shape.source} has no routed experts to replay")
        return
    if shape.top_k > shape.experts:
        yield ConfigIssue("routing_replay", mode, f"{shape.source}: num_experts_per_tok {shape.top_k} > num_experts "
                          f"{shape.experts}")
    if shape.experts > 65536:
        yield ConfigIssue("routing_replay", mode, f"{shape.experts} experts do not fit the uint16 route index")


#: Model types whose linear-attention (Gated DeltaNet) layers verl 0.9.1 does not patch for Ulysses: verl slices
#: each sequence over the SP ranks before the model and re-gathers it only inside attention (and inside Qwen3.5's
#: GatedDeltaNet, ``verl.models.transformers.qwen3_5``), so these recurrences would restart on every shard.
ULYSSES_UNSAFE = {"qwen3_next": "Qwen3NextGatedDeltaNet"}
SP_KEYS = ("actor_rollout_ref.actor.ulysses_sequence_parallel_size",
           "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
           "actor_rollout_ref.ref.ulysses_sequence_parallel_size")


def check_sequence_parallel(config) -> Iterator[ConfigIssue]:
    """Ulysses SP > 1 only for models whose every sequence-mixing layer verl re-gathers."""
    shape, issue = _shape_or_issue(config)
    if issue or shape is None or shape.model_type not in ULYSSES_UNSAFE:
        return
    for key in SP_KEYS:
        sp = _sel(config, key)
        if sp is not None and int(sp) > 1:
            yield ConfigIssue(key, sp, f"{shape.source} ({shape.model_type}) has {ULYSSES_UNSAFE[shape.model_type]} "
                              "layers that verl 0.9.1 does not patch for Ulysses: each rank would run the recurrence "
                              "over its 1/SP slice of the sequence only; fit the sequence per rank instead "
                              "(actor_rollout_ref.model.use_fused_kernels=true keeps the logits chunked)", "1")


CHECKS = (check_model_context, check_model_routes, check_sequence_parallel)


def recipe_issues(config) -> list[ConfigIssue]:
    return [issue for check in CHECKS for issue in check(config)]
