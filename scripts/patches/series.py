"""The upstream patch series against verl: what each patch copies, edits and adds (declaration only).

Each :class:`~patches.ops.Patch` names its operations (see ``build.py`` for what each does) and the tests
``tests/patches`` runs against the patched tree; its PR description (the commit message) is
``patches/templates/<slug>.md``, where ``{files}`` becomes the list of files the patch touches. Project
directories are copied whole: a new module in ``verl_stable/routing/`` or ``verl_stable/cpu/``, or a new test
in a copied test directory, joins the series on the next run. Plugin-only lines inside a copied file sit
between ``plugin-only: begin`` / ``plugin-only: end`` marker lines, which the copier drops.
"""

from __future__ import annotations

from .ops import (
    LICENSE_HEADER,
    Copy,
    CopyTree,
    Edit,
    NewFile,
    Patch,
    readme_sections,
    template,
)


def _minirl_docs() -> str:
    intro = """\
# MiniRL: stable policy losses for RL with LLMs

Last updated: 01/01/2026.

MiniRL is the token-level objective of *"Stabilizing Reinforcement Learning with LLMs: Formulation and
Practices"* (arXiv 2512.01374). It weights each token by the training-inference ratio pi_old/mu_old
(verl's ``algorithm.rollout_correction``, truncated at C = 5) and masks stale tokens with decoupled PPO
clipping of pi_theta/pi_old. The losses live in ``verl/trainer/ppo/minirl_losses.py`` (adapters with verl's
policy-loss signature, registered in ``POLICY_LOSS_REGISTRY``) on top of pure per-token objectives in
``verl/trainer/ppo/minirl_objectives.py``.

Quick start::

    python -m verl.trainer.main_ppo +algorithm=minirl data.train_files=... actor_rollout_ref.model.path=...

Every other option stays yours to override on the command line.

"""
    body = readme_sections(
        "README.md",
        ("### What `algorithm=minirl` sets", "### Presets and loss modes", "### Loss checks for Python users"),
    )
    return intro + body.replace("### ", "## ")


# ============================================================================================ the series
PATCHES: list[Patch] = [
    Patch(
        slug="algo-minirl-policy-losses",
        title="[algo] feat: MiniRL policy losses",
        review=(
            "The objective is pure torch in `minirl_objectives.py`; `minirl_losses.py` declares the variants as data "
            "and adapts them to verl's policy-loss signature (`agg_loss`, `rollout_is_weights` from "
            "`rollout_correction`). The decision to weigh: a loss versus a preset over `vanilla` + token TIS "
            "(C = 5) + no dual clip, which the gradient-identity test proves equal in update; the description "
            "gives what the loss adds (checks, metrics, J_seq) and how to fold it into `vanilla` instead."
        ),
        ops=[
            Copy("verl_stable/objectives.py", "verl/trainer/ppo/minirl_objectives.py"),
            Copy("verl_stable/losses.py", "verl/trainer/ppo/minirl_losses.py"),
            Edit(
                "verl/trainer/ppo/core_algos.py",
                "    # Merge rollout correction metrics\n    pg_metrics.update(rollout_metrics)\n\n"
                "    return pg_loss, pg_metrics\n",
                "    # Merge rollout correction metrics\n    pg_metrics.update(rollout_metrics)\n\n"
                "    return pg_loss, pg_metrics\n\n\n"
                "# MiniRL policy losses (arXiv 2512.01374) live in their own module and register here.\n"
                "from verl.trainer.ppo.minirl_losses import register_all as _register_minirl_losses  # noqa: E402\n"
                "\n_register_minirl_losses()\n",
            ),
            CopyTree("verl_stable/config/algorithm", "verl/trainer/config/algorithm", pattern="*.yaml"),
            NewFile("docs/algo/minirl.md", _minirl_docs),
            # verl's doc build fails on a page in no toctree: beside the rollout-correction pages it builds on
            Edit("docs/index.rst", "   algo/rollout_corr_math.md\n", "   algo/rollout_corr_math.md\n   algo/minirl.md\n"),
            # verl's license check accepts a fixed list of copyright lines; contributors add theirs to it
            Edit(
                "tests/special_sanity/check_license.py",
                'license_head_baai = "Copyright (c) 2026 BAAI. All rights reserved."\n',
                'license_head_baai = "Copyright (c) 2026 BAAI. All rights reserved."\n'
                f'license_head_verlstable = "{LICENSE_HEADER.splitlines()[0][2:]}"\n',
            ),
            Edit(
                "tests/special_sanity/check_license.py",
                "    license_head_baai,\n]\n",
                "    license_head_baai,\n    license_head_verlstable,\n]\n",
            ),
            NewFile("tests/trainer/ppo/conftest.py", template("conftest_minirl.py")),
            NewFile("tests/trainer/ppo/test_minirl_presets_on_cpu.py", template("test_minirl_presets_on_cpu.py")),
            CopyTree("tests/trainer/ppo", "tests/trainer/ppo", pattern="test_*_on_cpu.py"),
        ],
        tests=(
            "tests/trainer/ppo/test_minirl_presets_on_cpu.py",
            "tests/trainer/ppo/test_minirl_objectives_on_cpu.py",
            "tests/trainer/ppo/test_minirl_losses_on_cpu.py",
            "tests/trainer/ppo/test_core_algos_on_cpu.py",
            "tests/trainer/ppo/test_dynamic_policy_losses_on_cpu.py",
            "tests/trainer/ppo/test_loss_aggregation_on_cpu.py",
        ),
    ),
    Patch(
        slug="fsdp-moe-router-replay",
        title="[fsdp] feat: MoE router replay (R2/R3) for the FSDP engine",
        review=(
            "Start at `verl/workers/engine/fsdp/router_replay.py` (the mixin: how a micro-batch's routes are laid "
            "out like its model input, and the replay context held from forward through backward) and the two "
            "edits to `transformer_impl.py` / `engine_workers.py`. `verl/utils/routing_replay/` is engine-"
            "independent (routes container, layouts, router adapters, coverage guard). About 56% of the added lines "
            "are tests; the engine tests need a device (a CPU platform plugin here)."
        ),
        ops=[
            # routing/ is upstreamable as a whole; the engine mixin joins verl's FSDP engine package
            CopyTree(
                "verl_stable/routing",
                "verl/utils/routing_replay",
                rename=(("fsdp.py", "../../workers/engine/fsdp/router_replay.py"),),
            ),
            Edit(
                "verl/workers/engine/fsdp/transformer_impl.py",
                "from .utils import create_device_mesh, get_sharding_strategy, unfuse_moe_params\n",
                "from .router_replay import RoutingReplayEngineMixin\n"
                "from .utils import create_device_mesh, get_sharding_strategy, unfuse_moe_params\n",
            ),
            # the replay mixin must come before the LM engine's own prepare_model_inputs / forward_step in the
            # MRO: the stock class becomes the base, the registered FSDPEngineWithLMHead adds the mixin in front
            Edit(
                "verl/workers/engine/fsdp/transformer_impl.py",
                '@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"])\n'
                "class FSDPEngineWithLMHead(FSDPEngine):\n",
                "class _FSDPEngineWithLMHeadBase(FSDPEngine):\n"
                '    """The FSDP language-model engine without MoE router replay (see :class:`FSDPEngineWithLMHead`)."""\n\n',
            ),
            Edit(
                "verl/workers/engine/fsdp/transformer_impl.py",
                '@EngineRegistry.register(model_type="value_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"])\n',
                '@EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"])\n'
                "class FSDPEngineWithLMHead(RoutingReplayEngineMixin, _FSDPEngineWithLMHeadBase):\n"
                '    """FSDP engine for language models, with MoE router replay selected by\n'
                "    ``engine_config.router_replay.mode`` (disabled | R2 | R3); see ``router_replay.py``.\n"
                '    """\n\n\n'
                '@EngineRegistry.register(model_type="value_model", backend=["fsdp", "fsdp2"], device=["cuda", "npu"])\n',
            ),
            Edit(
                "verl/workers/engine_workers.py",
                "        # Router replay is supported on the megatron engine and on the veomni\n"
                "        # engine. Both expose `router_replay` on their per-strategy engine\n"
                "        # config (the field lives on the shared `EngineConfig` base).\n",
                "        # Router replay is supported on the megatron, veomni and fsdp engines.\n"
                "        # Each exposes `router_replay` on its per-strategy engine config\n"
                "        # (the field lives on the shared `EngineConfig` base).\n",
            ),
            Edit(
                "verl/workers/engine_workers.py",
                '        elif actor_strategy == "veomni":\n'
                "            rr_mode = self.config.actor.veomni.router_replay.mode\n",
                '        elif actor_strategy == "veomni":\n'
                "            rr_mode = self.config.actor.veomni.router_replay.mode\n"
                '        elif actor_strategy in ("fsdp", "fsdp2"):\n'
                "            rr_mode = self.config.actor.fsdp_config.router_replay.mode\n",
            ),
            Edit(
                "verl/trainer/config/engine/fsdp.yaml",
                "# Whether to use forward only in fsdp.\nforward_only: false\n",
                "# Whether to use forward only in fsdp.\nforward_only: false\n\n"
                "# MoE routing replay (transformers MoE models): disabled, R2 (record the experts in the\n"
                "# pi_old pass, replay them in updates) or R3 (replay the rollout engine's experts; needs\n"
                "# rollout.enable_rollout_routing_replay=True). Only expert indices are replayed.\n"
                "router_replay:\n\n"
                "  # Target class for this configuration\n"
                "  _target_: verl.workers.config.EngineRouterReplayConfig\n\n"
                "  # disabled, R2 or R3\n"
                "  mode: disabled\n\n"
                "  # Unused by the FSDP engine (kept for the shared config class)\n"
                "  record_file: null\n\n"
                "  # Unused by the FSDP engine (kept for the shared config class)\n"
                "  replay_file: null\n\n"
                "  # R3: fraction of real tokens allowed to lack a rollout route beyond one final token per\n"
                "  # sequence and the tool/environment tokens (all-zero engine routes stop R3 otherwise)\n"
                "  max_unrouted_fraction: 0.0\n",
            ),
            Edit(
                "verl/workers/config/engine.py",
                "    mode: str = \"disabled\"\n"
                "    record_file: Optional[str] = None\n"
                "    replay_file: Optional[str] = None\n\n"
                "    def __post_init__(self):\n"
                "        \"\"\"Validate router replay configuration.\"\"\"\n"
                "        valid_modes = [\"disabled\", \"R2\", \"R3\"]\n"
                "        if self.mode not in valid_modes:\n"
                "            raise ValueError(f\"Invalid router_replay mode: {self.mode}. Must be one of {valid_modes}\")\n",
                "    mode: str = \"disabled\"\n"
                "    record_file: Optional[str] = None\n"
                "    replay_file: Optional[str] = None\n"
                "    # R3 on the FSDP engine: fraction of real tokens allowed to lack a rollout route beyond the expected\n"
                "    # ones (one final sampled token per sequence, tool/environment tokens) before replay stops.\n"
                "    max_unrouted_fraction: float = 0.0\n\n"
                "    def __post_init__(self):\n"
                "        \"\"\"Validate router replay configuration.\"\"\"\n"
                "        valid_modes = [\"disabled\", \"R2\", \"R3\"]\n"
                "        if self.mode not in valid_modes:\n"
                "            raise ValueError(f\"Invalid router_replay mode: {self.mode}. Must be one of {valid_modes}\")\n"
                "        if not 0.0 <= self.max_unrouted_fraction <= 1.0:\n"
                "            raise ValueError(f\"router_replay.max_unrouted_fraction={self.max_unrouted_fraction} must be in [0, 1]\")\n",
            ),
            CopyTree("verl_stable/config/routing_replay", "verl/trainer/config/routing_replay", pattern="*.yaml"),
            # routing_replay=R2|R3 swaps in replay_engine/<model_engine>_<mode>.yaml: the default entry lives in
            # ppo_trainer's defaults list (Hydra overrides only what the tree already has)
            CopyTree("verl_stable/config/replay_engine", "verl/trainer/config/replay_engine", pattern="*.yaml"),
            Edit(
                "verl/trainer/config/ppo_trainer.yaml",
                "  # TransferQueue configuration.\n  - transfer_queue@transfer_queue: transfer_queue\n",
                "  # TransferQueue configuration.\n  - transfer_queue@transfer_queue: transfer_queue\n\n"
                "  # MoE routing replay switch per engine (disabled; routing_replay=R2|R3 swaps in <engine>_R2|R3)\n"
                "  - replay_engine@_global_: ${model_engine}_disabled\n",
            ),
            # the shared test helpers (tiny models, random routes, log-probs, expert taps, SGLang payloads)
            CopyTree("tests/utils/routing_replay/helpers", "tests/utils/routing_replay/helpers"),
            # the tiny task and model the helpers build on (verl_stable/tasks: the demo's, the lab's and the tests' one
            # stack)
            Copy("verl_stable/tasks/tiny_moe.py", "tests/utils/routing_replay/helpers/tiny_moe.py"),
            Copy("verl_stable/tasks/addition.py", "tests/utils/routing_replay/helpers/addition_task.py"),
            NewFile("tests/utils/__init__.py", LICENSE_HEADER),
            NewFile("tests/utils/routing_replay/__init__.py", LICENSE_HEADER),
            NewFile(
                "tests/utils/routing_replay/test_router_replay_presets_on_cpu.py",
                template("test_router_replay_presets_on_cpu.py"),
            ),
            CopyTree("tests/utils/routing_replay", "tests/utils/routing_replay", pattern="test_*_on_cpu.py"),
            # verl's FSDP2 engine with the replay mixin, end to end. They need a device: on CPU that is a CPU platform
            # plugin (verl-stable's), without which they skip; file by file, as the coverage and Ulysses tests beside
            # them use plugin code
            NewFile("tests/workers/__init__.py", LICENSE_HEADER),
            NewFile("tests/workers/engine/__init__.py", LICENSE_HEADER),
            NewFile("tests/workers/engine/fsdp/__init__.py", LICENSE_HEADER),
            Copy("tests/workers/engine/fsdp/harness.py", "tests/workers/engine/fsdp/harness.py"),
            Copy("tests/workers/engine/fsdp/conftest.py", "tests/workers/engine/fsdp/conftest.py"),
            Copy(
                "tests/workers/engine/fsdp/test_router_replay_engine_on_cpu.py",
                "tests/workers/engine/fsdp/test_router_replay_engine_on_cpu.py",
            ),
            Copy(
                "tests/workers/engine/fsdp/test_router_replay_layout_on_cpu.py",
                "tests/workers/engine/fsdp/test_router_replay_layout_on_cpu.py",
            ),
        ],
        tests=("tests/utils/routing_replay", "tests/checkpoint_engine/test_global_steps_on_cpu.py"),
        cpu_platform_tests=("tests/workers/engine/fsdp",),
    ),
    Patch(
        slug="misc-cpu-process-group-and-rollout-registration",
        title="[misc] fix: gloo-only process group on a cpu device; register_rollout_class for rollout plugins",
        # What a CPU platform plugin (verl's external-plugin route for new hardware) cannot do without patching
        # verl. The CPU platform, its engine registration and the hf_cpu rollout stay in verl-stable's plugin.
        review=(
            "Two small, independent changes; each is what a hardware plugin would otherwise patch at run time. "
            "Behaviour on cuda/npu is unchanged (the backend string is the same)."
        ),
        ops=[
            Edit(
                "verl/utils/distributed.py",
                '    backend = backend or f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"\n',
                "    if backend is None:\n"
                "        device = get_device_name()\n"
                '        # torch rejects a device listed twice ("cpu:gloo,cpu:gloo"): CPU-only worlds use gloo alone\n'
                '        backend = "cpu:gloo" if device == "cpu" else f"cpu:gloo,{device}:{get_nccl_backend()}"\n',
            ),
            Edit(
                "verl/workers/rollout/base.py",
                '    ("trtllm", "async"): "verl.workers.rollout.trtllm_rollout.trtllm_rollout.ServerAdapter",\n}\n',
                '    ("trtllm", "async"): "verl.workers.rollout.trtllm_rollout.trtllm_rollout.ServerAdapter",\n'
                "}\n\n\n"
                'def register_rollout_class(rollout_name: str, fqdn: str, mode: str = "async") -> None:\n'
                '    """Register a rollout (server adapter) class by its fully qualified name, e.g. from a plugin.\n\n'
                "    Args:\n"
                "        rollout_name: The name of the rollout (``actor_rollout_ref.rollout.name``).\n"
                '        fqdn: ``"package.module.ClassName"``, imported on first use by :func:`get_rollout_class`.\n'
                "        mode: The mode of the rollout, async: server mode.\n\n"
                "    Raises:\n"
                "        ValueError: if another class is already registered under ``(rollout_name, mode)``.\n"
                '    """\n'
                "    existing = _ROLLOUT_REGISTRY.get((rollout_name, mode))\n"
                "    if existing is not None and existing != fqdn:\n"
                '        raise ValueError(f"Rollout {rollout_name} with mode {mode} is already registered as {existing}")\n'
                "    _ROLLOUT_REGISTRY[(rollout_name, mode)] = fqdn\n",
            ),
            NewFile("tests/utils/test_process_group_backend_on_cpu.py", template("test_process_group_backend_on_cpu.py")),
            NewFile("tests/workers/rollout/__init__.py", LICENSE_HEADER),
            NewFile(
                "tests/workers/rollout/test_register_rollout_class_on_cpu.py",
                template("test_register_rollout_class_on_cpu.py"),
            ),
        ],
        tests=(
            "tests/utils/test_process_group_backend_on_cpu.py",
            "tests/workers/rollout/test_register_rollout_class_on_cpu.py",
        ),
    ),
    Patch(
        slug="rollout-sglang-routed-experts",
        title="[rollout, sglang] fix: decode SGLang >= 0.5.11 routed experts; compact R3 routes",
        review=(
            "The SGLang server's route handling becomes one call to `decode_sglang_routed_experts` (in the "
            "`codecs.py` of the [fsdp] PR, which this one needs); both servers hand the agent loop compact routes. "
            "The tests replay SGLang's payload formats for both `skip_tokenizer_init` settings."
        ),
        needs=("fsdp-moe-router-replay",),
        ops=[
            Edit(
                "verl/workers/rollout/sglang_rollout/async_sglang_server.py",
                """        routed_experts = None
        if self.config.enable_rollout_routing_replay:
            if self.config.skip_tokenizer_init:
                # convert to numpy
                captured = output.get("meta_info", {}).get("routed_experts", None)
                routed_experts = captured.numpy() if captured is not None else None
            else:
                from sglang.srt.layers.moe.routed_experts_capturer import extract_routed_experts_from_meta_info

                hf_config = self.model_config.hf_config
                if not hasattr(hf_config, "num_hidden_layers") or not hasattr(hf_config, "num_experts_per_tok"):
                    raise AttributeError(
                        "enable_rollout_routing_replay is set, but hf_config is missing "
                        "'num_hidden_layers' or 'num_experts_per_tok'. This feature requires an MoE model "
                        "configuration that defines these attributes."
                    )
                routed_experts = extract_routed_experts_from_meta_info(output).reshape(
                    -1, hf_config.num_hidden_layers, hf_config.num_experts_per_tok
                )
""",
                """        routed_experts = None
        if self.config.enable_rollout_routing_replay:
            # SGLang >= 0.5.11: base64 of int32 [seq_len - 1, num_hidden_layers, top_k] whatever
            # skip_tokenizer_init; decoded into the routes' compact dtype (uint8 <= 256 experts, uint16 above).
            captured = meta_info.get("routed_experts", None)
            if captured is not None:
                from verl.utils.routing_replay.codecs import decode_sglang_routed_experts
                from verl.utils.routing_replay.hf import spec_from_config

                routed_experts = decode_sglang_routed_experts(captured, spec_from_config(self.model_config.hf_config))
""",
            ),
            Edit(
                "verl/workers/rollout/vllm_rollout/vllm_async_server.py",
                """        routed_experts = None
        if self.config.enable_rollout_routing_replay:
            routed_experts = final_res.outputs[0].routed_experts
""",
                """        routed_experts = None
        if self.config.enable_rollout_routing_replay:
            routed_experts = final_res.outputs[0].routed_experts
            if routed_experts is not None:
                # numpy int32 [n, num_hidden_layers, top_k] -> the routes' compact dtype, same shape
                from verl.utils.routing_replay.codecs import compact_engine_routes
                from verl.utils.routing_replay.hf import spec_from_config

                routed_experts = compact_engine_routes(
                    routed_experts, spec_from_config(self.model_config.hf_config), "vLLM routed_experts"
                )
""",
            ),
        ],
        tests=("tests/utils/routing_replay/test_engine_routes_on_cpu.py",),
    ),
    Patch(
        slug="rollout-compact-routed-experts-dtype",
        title="[rollout, perf] fix: keep uint8 routed experts uint8 through the agent loop",
        review=(
            "One storage rule (`_routed_experts_storage`) used at both places the agent loop builds the routes "
            "tensor; int16 stays the storage for every other dtype."
        ),
        ops=[
            # one storage rule for both places the agent loop builds the routes tensor
            Edit(
                "verl/experimental/agent_loop/agent_loop.py",
                "DEFAULT_ROUTING_CACHE_SIZE = 10000\n",
                "DEFAULT_ROUTING_CACHE_SIZE = 10000\n\n\n"
                "def _routed_experts_storage(routed_experts: torch.Tensor) -> torch.Tensor:\n"
                '    """Routed expert ids in the dtype the agent loop stores them in.\n\n'
                "    uint8 (what a rollout server sends for models with at most 256 experts) is kept: half of int16's\n"
                "    bytes through Ray, TransferQueue and DataProto. Any other dtype is stored as int16, as before.\n"
                '    """\n'
                "    if routed_experts.dtype == torch.uint8:\n"
                "        return routed_experts\n"
                "    return routed_experts.to(torch.int16)\n",
            ),
            # AgentLoopOutput.as_dict: the v1 trainer's path (TransferQueue)
            Edit(
                "verl/experimental/agent_loop/agent_loop.py",
                "            routed_experts = torch.tensor(routed_experts, dtype=torch.int16)\n",
                "            if not isinstance(routed_experts, torch.Tensor):\n"
                "                routed_experts = torch.tensor(routed_experts)  # a numpy array keeps its dtype\n"
                "            routed_experts = _routed_experts_storage(routed_experts)\n",
            ),
            # AgentLoopWorker._agent_loop_postprocess: the legacy trainer's path (DataProto)
            Edit(
                "verl/experimental/agent_loop/agent_loop.py",
                "            experts_tensor = experts_tensor.to(torch.int16)\n",
                "            experts_tensor = _routed_experts_storage(experts_tensor)\n",
            ),
            NewFile(
                "tests/experimental/agent_loop/test_routed_experts_dtype_on_cpu.py",
                template("test_routed_experts_dtype_on_cpu.py"),
            ),
        ],
        # (verl's own tests of agent_loop.py beside it are async tests that need pytest-asyncio)
        tests=("tests/experimental/agent_loop/test_routed_experts_dtype_on_cpu.py",),
    ),
]
