"""The actor's model: its directory and config.json (a local directory is read; a hub id is named and left to the
workers), and the run against the model's shape (context vs positions, the routes' shape, sequence parallelism
the family supports), read through :mod:`verl_stable.validation.model_shape`, the copy shipped for a known hub id
included."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from verl_stable.routing.config import replay_mode
from verl_stable.validation.issues import ROLLOUT, ConfigIssue, get
from verl_stable.validation.model_shape import MODEL_PATH_KEY, OVERRIDE_KEY, config_file_for, model_shape

#: A hub id: ``org/name``, nothing more (a local path that does not exist has more parts, or starts with / . ~).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "moe_topk", "moe_top_k", "top_k")


def check_model(config) -> Iterator[ConfigIssue]:
    """The actor's model: a local directory is read (its config, the router's top-k within its experts); a hub id
    is named as such and left to the workers (no hub traffic before Ray)."""
    key = "actor_rollout_ref.model.path"
    path = get(config, key)
    if path is None:
        yield ConfigIssue(key, None, "no model given", "a model directory or a hub id org/name")
        return
    local = Path(str(path)).expanduser()
    if not local.exists():
        if _HUB_ID.fullmatch(str(path)):
            yield ConfigIssue(key, path, "not a directory here: taken as a hub id, not read before start-up (the "
                              "workers download it)", warning=True)
        else:
            yield ConfigIssue(key, path, "directory not found", "a model directory (config.json) or a hub id org/name")
        return
    if not local.is_dir() or not (local / "config.json").is_file():
        yield ConfigIssue(key, path, "not a model directory: no config.json in it")
        return
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(
            str(local), local_files_only=True,
            trust_remote_code=bool(get(config, "actor_rollout_ref.model.trust_remote_code", False)),
        )
    except Exception as exc:
        yield ConfigIssue(key, path, f"its config.json does not load ({type(exc).__name__}: {exc})".replace("\n", " "))
        return
    text = getattr(hf_config, "text_config", None) or hf_config
    experts = next((getattr(text, a) for a in _EXPERT_COUNTS if isinstance(getattr(text, a, None), int)), None)
    top_k = next((getattr(text, a) for a in _TOP_K if isinstance(getattr(text, a, None), int)), None)
    if experts is not None and top_k is not None and not 1 <= top_k <= max(experts, 1) and experts > 0:
        yield ConfigIssue(
            key, path, f"its config routes each token to {top_k} experts (num_experts_per_tok) of {experts}",
            f"1 <= num_experts_per_tok <= {experts}",
        )


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
    mode = replay_mode(config, get)
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


#: The run against its model's config.json; the recipes app's dry run runs them too (:func:`recipe_issues`).
MODEL_FILE_CHECKS = (check_model_context, check_model_routes, check_sequence_parallel)


def check_model_shape(config) -> Iterator[ConfigIssue]:
    """The run against its model's config.json (a local directory, or the copy shipped for a known hub id):
    context vs positions, the routes' shape, sequence parallelism the family supports."""
    for check in MODEL_FILE_CHECKS:
        yield from check(config)


def recipe_issues(config) -> list[ConfigIssue]:
    return [issue for check in MODEL_FILE_CHECKS for issue in check(config)]
