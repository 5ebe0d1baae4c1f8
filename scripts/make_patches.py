#!/usr/bin/env python3
"""Build the upstream patch series ``patches/verl-<version>/`` from this project's code.

The series is generated, never edited by hand: this script downloads the pristine verl sdist (cached under
``.cache/``, sha256-checked), copies verl-stable's modules into verl's tree with their imports rewritten by
one module map, applies small anchored edits to verl files, regenerates verl's ``_generated_*.yaml`` trainer
configs when a config file changed, runs verl's ruff config over the new Python files, commits each concern
in a scratch git repository with a fixed author and date, and runs ``git format-patch``.

Everything the series contains is declared in :data:`PATCHES` below (a list of operations per patch):

* :class:`CopyTree` / :class:`Copy` -- a project file or package into verl's tree; Python imports and dotted
  names are rewritten by one module map that :func:`build_module_map` derives from the copy operations
  themselves (plus :data:`EXTRA_MODULES`), prose by :data:`TEXT_RULES`; a project import left unmapped, or
  any ``verl_stable`` left in a written file, fails the run. Copying a
  package copies whatever modules it has today, so refactors of ``verl_stable.routing`` or ``losses.py``
  flow into the series on the next run.
* :class:`Edit` -- replace an anchor text in a verl file (or a copied one); the anchor must occur exactly
  ``count`` times or generation fails, naming the file and the anchor.
* :class:`DropDefs` / :class:`DropSection` -- remove plugin-only definitions / prose from a copied module
  (they must exist).
* :class:`NewFile` -- patch-only content (test fixtures for verl's tree, a docs page assembled from the
  README's sections, package ``__init__``).

    python scripts/make_patches.py            # rewrite patches/verl-0.9.1/*.patch and patches/README.md
    python scripts/make_patches.py --check    # regenerate into a temp dir, fail with a diff if they differ
    python scripts/make_patches.py --tree DIR # also leave the patched verl tree (a git repo) in DIR

Needs: network or the cached sdist, git, and ruff (``pip install ruff==0.12.2``; verl's pre-commit pin).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

ROOT = Path(__file__).resolve().parents[1]
VERL_VERSION = "0.9.1"
SDIST_NAME = f"verl-{VERL_VERSION}.tar.gz"
SDIST_SHA256 = "3e03d8816b2546b2c5580705671b8d0bb3f79b8364e7b5c56dbfc1245536ba22"
CACHE_DIR = ROOT / ".cache" / "verl-sdist"
OUT_DIR = ROOT / "patches" / f"verl-{VERL_VERSION}"
README_OUT = ROOT / "patches" / "README.md"
RUFF_VERSION = "0.12.2"

GIT_AUTHOR = ("verl-stable", "verl-stable@users.noreply.github.com")
GIT_DATE = "2026-01-01T00:00:00+00:00"

LICENSE_HEADER = """\
# Copyright 2026 verl-stable contributors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""


class GenerationError(RuntimeError):
    pass


# ============================================================================================ operations
@dataclass(frozen=True)
class Copy:
    """One project file -> one path in verl's tree (``.py`` rewritten by the module map).

    ``drop_lines``: plugin-only lines removed before rewriting (matched after stripping; each must exist).
    """

    src: str
    dst: str
    drop_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class CopyTree:
    """Every file matching ``pattern`` in a project directory -> a verl directory.

    ``rename`` maps a source file name to a different destination (relative to ``dst``, may leave the
    directory: ``"fsdp.py": "../../workers/engine/fsdp/router_replay.py"``); ``exclude`` skips names.
    """

    src: str
    dst: str
    pattern: str = "*.py"
    exclude: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Edit:
    path: str
    anchor: str
    replacement: str
    count: int = 1


@dataclass(frozen=True)
class DropDefs:
    """Remove top-level definitions (functions, classes, assignments) by name from a copied module."""

    path: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class DropSection:
    """Remove plugin-only prose from a copied file: from ``start`` (must occur once) up to, not including,
    the first ``end`` after it."""

    path: str
    start: str
    end: str


@dataclass(frozen=True)
class NewFile:
    path: str
    content: Union[str, Callable[[], str]]


Op = Union[Copy, CopyTree, Edit, DropDefs, DropSection, NewFile]


@dataclass
class Patch:
    slug: str
    title: str
    body: str  # the commit message body = the PR description (verl's PR template sections)
    ops: list[Op] = field(default_factory=list)
    #: tests (paths in verl's tree) that tests/patches runs against the patched tree
    tests: tuple[str, ...] = ()


# ============================================================================================ helpers
def readme_sections(path: str, headings: tuple[str, ...]) -> str:
    """The README's sections under ``headings`` (exact heading lines), each up to the next heading."""
    lines = (ROOT / path).read_text().splitlines()
    out: list[str] = []
    for heading in headings:
        try:
            start = lines.index(heading)
        except ValueError as exc:
            raise GenerationError(f"{path}: section heading {heading!r} not found (update PATCHES)") from exc
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
        out += lines[start:end]
    return "\n".join(out).rstrip() + "\n"


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


TEMPLATES = ROOT / "patches" / "templates"


def template(name: str) -> Callable[[], str]:
    """Patch-only content kept as a file under patches/templates/ (gets verl's license header)."""
    return lambda: LICENSE_HEADER + (TEMPLATES / name).read_text()


# ============================================================================================ the series
PATCHES: list[Patch] = [
    Patch(
        slug="algo-minirl-policy-losses",
        title="[algo] feat: MiniRL policy losses",
        body="""\
### What does this PR do?

Adds MiniRL, the token-level objective of "Stabilizing Reinforcement Learning with LLMs: Formulation and
Practices" (arXiv 2512.01374), its ablations (no training-inference IS, length normalisation, no clipping)
and the sequence-level objective J_seq as policy losses in verl's `POLICY_LOSS_REGISTRY`
(`loss_mode: minirl | minirl_no_is | minirl_length_norm | minirl_no_clip | seq_is`), plus one Hydra preset
per variant that sets the paper's recipe on top of `ppo_trainer`.

### Test

CPU unit tests (`tests/trainer/ppo/test_minirl_objectives_on_cpu.py`,
`tests/trainer/ppo/test_minirl_losses_on_cpu.py`): values against hand-computed closed forms, the gradient
against verl's `vanilla` loss times the TIS weight (they coincide in that limit), aggregation across data
parallel ranks through `agg_loss`, clip-fraction metrics, and the error raised for each misuse. The same
tests run in the verl-stable plugin, which registers these losses into an unmodified verl 0.9.1.
`tests/trainer/ppo/test_minirl_presets_on_cpu.py` composes every `+algorithm=<preset>` on `ppo_trainer` and
checks it names a registered loss and builds verl's actor config.

### API and Usage Example

```bash
python -m verl.trainer.main_ppo +algorithm=minirl data.train_files=... actor_rollout_ref.model.path=...
# or only the loss: actor_rollout_ref.actor.policy_loss.loss_mode=minirl
```

### High-Level Design

The math is pure torch in `verl/trainer/ppo/minirl_objectives.py` (per-token losses; the caller
aggregates). `verl/trainer/ppo/minirl_losses.py` holds thin adapters with verl's policy-loss signature that
read the actor config, validate inputs (naming the config key to fix), call the objective and aggregate with
verl's `agg_loss`. `core_algos.py` registers them at import; registration refuses to overwrite a foreign
loss of the same name. The training-inference weight is verl's own `rollout_correction` (TIS), not a copy.

### Specific Changes

{files}

### Checklist Before Submitting

- [x] Read the Contribute Guide; title follows `[{modules}] {type}: {description}`.
- [x] ruff (verl's config, ruff 0.12.2) clean; Apache license headers.
- [x] Documentation: `docs/algo/minirl.md`.
- [x] CPU unit tests added (`*_on_cpu.py`).
""",
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
            NewFile("tests/trainer/ppo/conftest.py", template("conftest_minirl.py")),
            NewFile("tests/trainer/ppo/test_minirl_presets_on_cpu.py", template("test_minirl_presets_on_cpu.py")),
            Copy("tests/test_objectives_on_cpu.py", "tests/trainer/ppo/test_minirl_objectives_on_cpu.py"),
            Copy("tests/test_losses_on_cpu.py", "tests/trainer/ppo/test_minirl_losses_on_cpu.py"),
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
        body="""\
### What does this PR do?

verl replays MoE routes on its Megatron and VeOmni engines only. This PR adds routing replay to the FSDP /
FSDP2 engine for transformers MoE models, selected by the switch every engine config already carries:
`actor_rollout_ref.actor.fsdp_config.router_replay.mode = disabled | R2 | R3`.

- R2: the pi_old pass records the experts the training engine picks; every update mini-batch replays them.
- R3: the rollout engine's routes (`rollout.enable_rollout_routing_replay=True`) are replayed in the pi_old
  pass and in every update.

Only expert indices are replayed; gate weights are recomputed from the current router logits with each
family's rule, so the router still receives gradient. The reference model is never replayed.

### Test

CPU tests in `tests/utils/routing_replay/`: the Routes container (compact dtypes, conversions, validation),
every router adapter against the stock transformers model (Qwen3-MoE, Qwen2-MoE, Mixtral, DeepSeek-V3,
OLMoE, gpt-oss), record/replay bit-identity, and that routes stay on their tokens through verl's layouts
(left/right padding, remove-padding, dynamic batch re-ordering, Ulysses pad-and-slice, gradient-checkpoint
recompute); the `+routing_replay=R2|R3` presets set the switch and leave the reference model and critic
`disabled`. Engine-level tests (FSDP2 on gloo) run with the CPU platform of the next patch.

### API and Usage Example

```bash
python -m verl.trainer.main_ppo ... actor_rollout_ref.actor.strategy=fsdp2 +routing_replay=R3
# or: actor_rollout_ref.actor.fsdp_config.router_replay.mode=R2
```

### High-Level Design

`verl/utils/routing_replay/` holds the engine-independent parts: the `Routes` container and its layout
transforms, one small adapter per transformers router type, and `RoutingReplay`, a record/replay context
bound to one model (no process-global state). `verl/workers/engine/fsdp/router_replay.py` is a mixin of
`FSDPEngineWithLMHead` that lays a micro-batch's routes out like its model input, opens the replay context
from the forward through the backward (so checkpoint recompute replays the same experts) and reports
per-layer route agreement under `actor/routing/`. With mode `disabled` every override is a pass-through.
`ActorRolloutRefWorker` now reads `fsdp_config.router_replay.mode` for FSDP like it does for Megatron and
VeOmni, so the per-call `enable_routing_replay` flag is set (off for the reference pass).

### Specific Changes

{files}

### Checklist Before Submitting

- [x] Read the Contribute Guide; title follows `[{modules}] {type}: {description}`.
- [x] ruff (verl's config, ruff 0.12.2) clean; Apache license headers.
- [x] `_generated_*.yaml` regenerated (`router_replay` block in `engine/fsdp.yaml`).
- [x] CPU unit tests added (`*_on_cpu.py`).
""",
        ops=[
            CopyTree(
                "verl_stable/routing",
                "verl/utils/routing_replay",
                # fsdp_plugin.py is how the plugin registers the mixin; in verl's tree the patch itself does.
                # wire.py wraps verl's agent loop to keep routes compact; upstream that is a two-line change
                # in agent_loop.py (named in wire.py), not a module. vllm_capture.py is a vLLM plugin (route
                # capture for monolithic MoE kernels): its upstream home is vLLM's MoERunner, not verl
                exclude=("fsdp_plugin.py", "wire.py", "vllm_capture.py"),
                rename=(("fsdp.py", "../../workers/engine/fsdp/router_replay.py"),),
            ),
            Copy("verl_stable/routing/agreement.py", "verl/utils/routing_replay/diagnostics.py"),
            # the pointer to the plugin-only registration module
            DropSection(
                "verl/workers/engine/fsdp/router_replay.py",
                "\nRegistration in verl (a plugin-only concern",
                '\n"""\n',
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
            # the shared test helpers (tiny models, random routes, log-probs, expert taps); the FSDP engine
            # harness (helpers/engine.py) joins them in the CPU patch, where its tests can run
            CopyTree("tests/helpers", "tests/utils/routing_replay/helpers", exclude=("engine.py", "processes.py")),
            NewFile("tests/utils/__init__.py", LICENSE_HEADER),
            NewFile("tests/utils/routing_replay/__init__.py", LICENSE_HEADER),
            NewFile(
                "tests/utils/routing_replay/test_router_replay_presets_on_cpu.py",
                template("test_router_replay_presets_on_cpu.py"),
            ),
            CopyTree(
                "tests/routing",
                "tests/utils/routing_replay",
                pattern="test_*_on_cpu.py",
                exclude=("test_wire_on_cpu.py",),  # tests the plugin's agent-loop wrappers (wire.py)
            ),
        ],
        tests=("tests/utils/routing_replay", "tests/checkpoint_engine/test_global_steps_on_cpu.py"),
    ),
]


_CONFTEST_PLUGIN_LINES = (
    "import verl  # noqa: F401  (loads verl_stable.plugin: the CPU platform)",
    "from verl_stable.integration.cpu import activate_if_requested",
    "from verl_stable.integration.fsdp_engine import register_replay_engines",
    "activate_if_requested()",
    "register_replay_engines()  # idempotent: the plugin did it when the CPU backend imported verl's FSDP engine",
)

PATCHES.append(
    Patch(
        slug="hardware-cpu-platform",
        title="[hardware, rollout] feat: CPU platform, FSDP2 engine on gloo and an hf_cpu rollout",
        body="""\
### What does this PR do?

Runs verl's trainer end to end on CPU: a `cpu` platform (`VERL_PLATFORM=cpu`, never auto-detected), the
FSDP/FSDP2 engine registered for device `cpu` (gloo process groups), and `hf_cpu`, a transformers rollout
server (KV-cached sampling, per-token log-probs with vLLM's `logprobs_mode` semantics, routed experts in
vLLM's layout for R3, bf16/fp16/fp32 weights and an fp8 weight round-trip, weight sync through verl's naive
checkpoint engine). Useful for CI without GPUs, for teaching, and for debugging algorithms on a laptop.

verl's maintainers point new hardware to the external plugin route (`PlatformRegistry.register` from a
package loaded through the `verl.plugins` entry point), and this backend exists in that form in the
verl-stable plugin (`verl_stable/cpu/`). If the platform, engine registration and rollout are better kept
out of tree, the first two changes below are what a plugin cannot do without patching verl; they are small
and useful on their own (and could be split into a `[misc] fix` PR):

- `verl/utils/distributed.py::initialize_global_process_group_ray` builds `cpu:gloo,{device}:{backend}`,
  which is `cpu:gloo,cpu:gloo` on CPU, and torch rejects it; it now uses `cpu:gloo` alone when the device
  is `cpu`. (Without it a plugin has to rewrite the function's `backend` default.)
- `verl/workers/rollout/base.py`: `register_rollout_class(name, fqdn, mode="async")`, the registration
  function the `_ROLLOUT_REGISTRY` dict lacks (without it a plugin writes the private dict); it refuses to
  replace another class registered under the same name.

### Test

`tests/plugin/test_platform_cpu_on_cpu.py` (platform selection, engine and rollout lookup, gloo process
group, registration refusal), `tests/workers/rollout/test_hf_cpu_engine_on_cpu.py` (sampling, log-probs,
stop tokens, fp8 round-trip, routed-expert layout), and the FSDP engine tests of the router-replay patch,
which need a device and run on this one (`tests/workers/engine/fsdp/test_router_replay_*_on_cpu.py`: R2/R3
against the transformers model, dynamic batching, gradient checkpointing, LoRA reference pass). verl's own
`tests/plugin/test_platform_abstraction.py` passes with the CPU platform registered.

### API and Usage Example

```bash
VERL_PLATFORM=cpu python -m verl.trainer.main_ppo \\
    actor_rollout_ref.actor.strategy=fsdp2 actor_rollout_ref.rollout.name=hf_cpu \\
    actor_rollout_ref.rollout.checkpoint_engine.backend=naive \\
    +ray_kwargs.ray_init.num_gpus=1 trainer.n_gpus_per_node=1 ...   # logical GPU slots for Ray scheduling
```

### High-Level Design

`PlatformCPU` answers verl's `torch.cuda`-shaped calls with no-ops or CPU equivalents and keeps Ray's `GPU`
resource name, so verl schedules one trainer process per logical slot as on a GPU node. The `hf_cpu` rollout
follows the vLLM/SGLang split: `HFCPUReplica` launches a Ray actor per replica, `HFCPUServerAdapter` lives in
the trainer worker and receives weights from the naive checkpoint engine.

### Specific Changes

{files}

### Checklist Before Submitting

- [x] Read the Contribute Guide; title follows `[{modules}] {type}: {description}`.
- [x] ruff (verl's config, ruff 0.12.2) clean; Apache license headers.
- [x] CPU unit tests added (`*_on_cpu.py`).
""",
        ops=[
            Copy("verl_stable/cpu/platform.py", "verl/plugin/platform/platform_cpu.py"),
            Edit(
                "verl/plugin/platform/platform_cpu.py",
                "from verl.plugin.platform import PlatformBase\n",
                "from .platform_base import PlatformBase\nfrom .platform_manager import PlatformRegistry\n",
            ),
            Edit(
                "verl/plugin/platform/platform_cpu.py",
                "\nclass PlatformCPU(PlatformBase):\n",
                '\n@PlatformRegistry.register(platform="cpu")\nclass PlatformCPU(PlatformBase):\n',
            ),
            Edit(
                "verl/plugin/platform/platform_manager.py",
                "from .platform_rocm import PlatformROCm  # noqa: E402, F401\n",
                "from .platform_rocm import PlatformROCm  # noqa: E402, F401\n"
                "from .platform_cpu import PlatformCPU  # noqa: E402, F401, I001\n",
            ),
            Edit(
                "verl/utils/distributed.py",
                '    backend = backend or f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"\n',
                "    if backend is None:\n"
                "        device = get_device_name()\n"
                '        # torch rejects a device listed twice ("cpu:gloo,cpu:gloo"): CPU-only worlds use gloo alone\n'
                '        backend = "cpu:gloo" if device == "cpu" else f"cpu:gloo,{device}:{get_nccl_backend()}"\n',
            ),
            Edit(
                "verl/workers/engine/fsdp/transformer_impl.py",
                'backend=["fsdp", "fsdp2"], device=["cuda", "npu"])\n',
                'backend=["fsdp", "fsdp2"], device=["cuda", "npu", "cpu"])\n',
                count=2,
            ),
            Edit(
                "verl/workers/rollout/base.py",
                '    ("trtllm", "async"): "verl.workers.rollout.trtllm_rollout.trtllm_rollout.ServerAdapter",\n}\n',
                '    ("trtllm", "async"): "verl.workers.rollout.trtllm_rollout.trtllm_rollout.ServerAdapter",\n'
                '    ("hf_cpu", "async"): "verl.workers.rollout.hf_cpu_rollout.hf_cpu_rollout.HFCPUServerAdapter",\n'
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
            Edit(
                "verl/workers/rollout/replica.py",
                "# Register built-in types\n",
                "def _load_hf_cpu():\n"
                "    from verl.workers.rollout.hf_cpu_rollout.hf_cpu_rollout import HFCPUReplica\n\n"
                "    return HFCPUReplica\n\n\n"
                "# Register built-in types\n",
            ),
            Edit(
                "verl/workers/rollout/replica.py",
                'RolloutReplicaRegistry.register("trtllm", _load_trtllm)\n',
                'RolloutReplicaRegistry.register("trtllm", _load_trtllm)\n'
                'RolloutReplicaRegistry.register("hf_cpu", _load_hf_cpu)\n',
            ),
            NewFile("verl/workers/rollout/hf_cpu_rollout/__init__.py", LICENSE_HEADER),
            Copy("verl_stable/cpu/rollout.py", "verl/workers/rollout/hf_cpu_rollout/hf_cpu_rollout.py"),
            Copy("verl_stable/cpu/hf_engine.py", "verl/workers/rollout/hf_cpu_rollout/hf_engine.py"),
            NewFile("tests/plugin/test_platform_cpu_on_cpu.py", template("test_platform_cpu_on_cpu.py")),
            NewFile("tests/workers/__init__.py", LICENSE_HEADER),
            NewFile("tests/workers/rollout/__init__.py", LICENSE_HEADER),
            Copy("verl_stable/tasks/addition.py", "tests/workers/rollout/hf_cpu_addition_task.py"),
            Copy("tests/cpu/conftest.py", "tests/workers/rollout/conftest.py"),
            Copy("tests/cpu/test_hf_engine_on_cpu.py", "tests/workers/rollout/test_hf_cpu_engine_on_cpu.py"),
            NewFile("tests/workers/engine/__init__.py", LICENSE_HEADER),
            NewFile("tests/workers/engine/fsdp/__init__.py", LICENSE_HEADER),
            Copy("tests/helpers/engine.py", "tests/utils/routing_replay/helpers/engine.py"),
            Copy(
                "tests/routing_fsdp/conftest.py",
                "tests/workers/engine/fsdp/conftest.py",
                drop_lines=_CONFTEST_PLUGIN_LINES,
            ),
            Copy(
                "tests/routing_fsdp/test_fsdp_replay_on_cpu.py",
                "tests/workers/engine/fsdp/test_router_replay_engine_on_cpu.py",
            ),
            Copy(
                "tests/routing_fsdp/test_layout_properties_on_cpu.py",
                "tests/workers/engine/fsdp/test_router_replay_layout_on_cpu.py",
            ),
        ],
        tests=(
            "tests/plugin/test_platform_cpu_on_cpu.py",
            "tests/plugin/test_platform_abstraction.py",
            "tests/workers/rollout/test_hf_cpu_engine_on_cpu.py",
            "tests/workers/engine/fsdp",
        ),
    )
)

PATCHES.append(
    Patch(
        slug="rollout-sglang-routed-experts",
        title="[rollout, sglang] fix: decode SGLang >= 0.5.11 routed experts; compact R3 routes",
        body="""\
### What does this PR do?

SGLang >= 0.5.11 (verl pins 0.5.12) returns `meta_info["routed_experts"]` as a base64 string of the raw
int32 `[seq_len - 1, num_hidden_layers, top_k]` tensor in BOTH `skip_tokenizer_init` settings: the
detokenizer encodes it (`DetokenizerManager._b64_encode_per_request`), or, when `skip_tokenizer_init`
bypasses the detokenizer, the tokenizer manager does. `SGLangHttpServer.generate` then fails for R3
(`rollout.enable_rollout_routing_replay=True`): with `skip_tokenizer_init=True` (the default) it calls
`.numpy()` on the string (AttributeError); otherwise it imports
`sglang.srt.layers.moe.routed_experts_capturer`, which SGLang 0.5.12 moved to
`sglang.srt.state_capturer.routed_experts` (ImportError).

This PR decodes the payload in one pure function (`decode_sglang_routed_experts` in
`verl/utils/routing_replay/routes.py`) for both settings, validating the byte and id counts against the
served model (`num_hidden_layers * num_experts_per_tok`) and the id range. Both servers (SGLang and vLLM, whose
`CompletionOutput.routed_experts` is numpy int32) now hand the agent loop the routes in the compact dtype of
the routing-replay container -- uint8 up to 256 experts, uint16 above -- a quarter of the int32 bytes
through Ray for a 128-expert model; the shape stays `[n, num_hidden_layers, top_k]`.

### Test

`tests/utils/routing_replay/test_engine_routes_on_cpu.py`: payloads built step by step as SGLang 0.5.12 builds
them (each step citing its source file), decoded for both `skip_tokenizer_init` settings and compared with
SGLang's own reader; uint8 / uint16; an empty payload; wrong widths, non-int32 byte counts, non-base64 and
out-of-range ids raise `ValueError` naming the model config keys; vLLM's read-only int32 arrays compacted.

### API and Usage Example

```bash
python -m verl.trainer.main_ppo ... actor_rollout_ref.rollout.name=sglang +routing_replay=R3
```

### Specific Changes

{files}

### Checklist Before Submitting

- [x] Read the Contribute Guide; title follows `[{modules}] {type}: {description}`.
- [x] ruff (verl's config, ruff 0.12.2) clean.
- [x] CPU unit tests (`*_on_cpu.py`).
""",
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
                from verl.utils.routing_replay.hf import spec_from_config
                from verl.utils.routing_replay.routes import decode_sglang_routed_experts

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
                from verl.utils.routing_replay.hf import spec_from_config
                from verl.utils.routing_replay.routes import compact_engine_routes

                routed_experts = compact_engine_routes(
                    routed_experts, spec_from_config(self.model_config.hf_config), "vLLM routed_experts"
                )
""",
            ),
        ],
        tests=("tests/utils/routing_replay/test_engine_routes_on_cpu.py",),
    )
)


# ============================================================================================ rewriting
#: module names the copy operations do not imply (test helpers imported by their bare name today)
EXTRA_MODULES: dict[str, str] = {}

#: prose / YAML / Markdown rules applied to every copied or generated text file
TEXT_RULES: list[tuple[str, str]] = [
    (r"python -m verl_stable\.main", "python -m verl.trainer.main_ppo"),
    # not inside string literals that start with the override (regexes in tests match it anyway)
    (r"(?<![\w+.`\"'])algorithm=(?=[a-z])", "+algorithm="),
    (r"`algorithm=", "`+algorithm="),
    (r"(?<![\w+.`\"'])routing_replay=(?=[R<])", "+routing_replay="),
    (r"verl-stable's ", ""),
    (r" \(docs/method\.md §[\d.\-–]+\)", ""),  # the project's method notes, not verl's
    (r"verl_stable/addition_mod10", "addition_mod10"),
    (r"verl_stable_cpu_device", "verl_cpu_device"),
    # the plugin's subclass adds max_unrouted_fraction; the series adds it to verl's class itself
    # (matched before and after the module map has rewritten the package)
    (
        r"(?:verl_stable\.routing|verl\.utils\.routing_replay)\.fsdp_plugin\.RouterReplayConfig",
        "verl.workers.config.EngineRouterReplayConfig",
    ),
]


def module_of(path: str) -> Optional[str]:
    if not path.endswith(".py"):
        return None
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def expand(ops: list[Op]) -> list[Op]:
    out: list[Op] = []
    for op in ops:
        if isinstance(op, CopyTree):
            src = ROOT / op.src
            if not src.is_dir():
                raise GenerationError(f"CopyTree: {op.src} is not a directory")
            rename = dict(op.rename)
            for f in sorted(src.glob(op.pattern)):
                if f.name in op.exclude or not f.is_file():
                    continue
                dst = os.path.normpath(os.path.join(op.dst, rename.get(f.name, f.name)))
                out.append(Copy(f"{op.src}/{f.name}", dst))
            missing = set(rename) - {f.name for f in src.glob(op.pattern)}
            if missing:
                raise GenerationError(f"CopyTree {op.src}: renamed files not found: {sorted(missing)}")
        else:
            out.append(op)
    return out


def build_module_map() -> dict[str, str]:
    mapping = dict(EXTRA_MODULES)
    for patch in PATCHES:
        for op in expand(patch.ops):
            if isinstance(op, Copy) and op.src.endswith(".py"):
                src_mod, dst_mod = module_of(op.src), module_of(op.dst)
                mapping[src_mod] = dst_mod
                if op.src.startswith("tests/"):
                    # helpers are imported by their bare name next to the tests today (``from tiny_moe import``)
                    mapping.setdefault(Path(op.src).stem, dst_mod)
    return mapping


def _map_module(name: str, mapping: dict[str, str]) -> Optional[str]:
    if name in mapping:
        return mapping[name]
    for key in sorted(mapping, key=len, reverse=True):
        if name.startswith(key + "."):
            return mapping[key] + name[len(key) :]
    return None


def rewrite_python(text: str, path: str, mapping: dict[str, str]) -> str:
    """Rewrite imports of project modules by ``mapping``; fail on any project import left unmapped."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []  # (line0, col0, line1, col1, new)
    project_roots = {k.split(".")[0] for k in mapping}

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root not in project_roots:
                continue
            new_mod = _map_module(node.module, mapping)
            names = []
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                sub = mapping.get(full)
                if sub is not None:  # ``from verl_stable import objectives`` -> from verl.x import minirl_objectives as objectives
                    parent, leaf = sub.rsplit(".", 1)
                    names.append((parent, leaf, alias.asname or alias.name))
                elif new_mod is not None:
                    names.append((new_mod, alias.name, alias.asname))
                else:
                    raise GenerationError(f"{path}:{node.lineno}: no module map entry for {full}")
            parents = {p for p, _, _ in names}
            indent = " " * node.col_offset
            stmts = []
            for parent in sorted(parents):
                parts = [f"{leaf} as {asn}" if asn and asn != leaf else leaf for p, leaf, asn in names if p == parent]
                stmts.append(f"from {parent} import {', '.join(parts)}")
            new = ("\n" + indent).join(stmts)
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, new))
        elif isinstance(node, ast.Import):
            if not any(a.name.split(".")[0] in project_roots for a in node.names):
                continue
            parts = []
            for alias in node.names:
                new_mod = _map_module(alias.name, mapping) if alias.name.split(".")[0] in project_roots else alias.name
                if new_mod is None:
                    raise GenerationError(f"{path}:{node.lineno}: no module map entry for {alias.name}")
                if alias.asname:
                    parts.append(f"{new_mod} as {alias.asname}")
                elif new_mod != alias.name:
                    if "." in alias.name:
                        raise GenerationError(f"{path}:{node.lineno}: `import {alias.name}` needs an alias to be moved")
                    parts.append(f"{new_mod} as {alias.name}")
                else:
                    parts.append(new_mod)
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, f"import {', '.join(parts)}"))

    for l0, c0, l1, c1, new in sorted(edits, reverse=True):
        head = lines[l0 - 1][:c0]
        tail = lines[l1 - 1][c1:]
        lines[l0 - 1 : l1] = [head + new + tail]
    return wrap_long_prose(rewrite_prose("".join(lines), mapping), path)


def rewrite_prose(text: str, mapping: dict[str, str]) -> str:
    """Dotted project names in strings, comments and docstrings (``verl_stable.routing.Routes``)."""
    roots = sorted({k.split(".")[0] for k in mapping if "." in k})
    pattern = re.compile(r"(?<![\w.])(?:%s)(?:\.\w+)+" % "|".join(map(re.escape, roots)))

    def sub(m: re.Match) -> str:
        name = m.group(0)
        parts = name.split(".")
        for n in range(len(parts), 0, -1):  # the longest prefix that is a module
            mod = _map_module(".".join(parts[:n]), mapping)
            if mod is not None:
                return ".".join([mod, *parts[n:]])
        return name

    return rewrite_text(pattern.sub(sub, text))


def rewrite_text(text: str) -> str:
    for pat, repl in TEXT_RULES:
        text = re.sub(pat, repl, text)
    return text


def wrap_long_prose(text: str, path: str, limit: int = 120) -> str:
    """Re-wrap comment and docstring lines that renaming pushed past verl's line length (code lines fail ruff)."""
    import io
    import tokenize

    prose: dict[int, str] = {}  # line number -> "comment" | "string"
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            prose[tok.start[0]] = "comment"
        elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0] and not tok.line[: tok.start[1]].strip():
            # a statement-level string (docstring), not a multi-line argument such as code for a subprocess
            for n in range(tok.start[0] + 1, tok.end[0]):
                prose[n] = "string"
    src = text.splitlines()
    out: list[str] = []
    carry = ""  # the tail of a wrapped line, prepended to the next line of the same paragraph
    carry_prefix = ""
    for n, line in enumerate(src, 1):
        kind = prose.get(n)
        indent = len(line) - len(line.lstrip())
        if carry:
            body = line.strip()
            if kind == "comment":
                body = body[1:].lstrip() if body.startswith("#") else None
            if kind and body and not re.match(r"([*|=-]|\d+\.)\s", body):
                line = line[:indent] + ("# " if kind == "comment" else "") + carry + " " + body
            else:
                out.append(carry_prefix + carry)
            carry = ""
        while kind and len(line) > limit and not line.lstrip().startswith(("|", "=")):
            if kind == "comment" and not line.lstrip().startswith("#"):
                break
            cut = line.rfind(" ", 0, limit)
            indent = len(line) - len(line.lstrip())
            if cut <= indent:
                break
            carry_prefix = line[:indent] + ("# " if kind == "comment" else "")
            line, carry = line[:cut].rstrip(), line[cut + 1 :]
        out.append(line)
    if carry:
        out.append(carry_prefix + carry)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def drop_defs(text: str, path: str, names: tuple[str, ...]) -> str:
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    spans = []
    found = set()
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        hit = [t for t in targets if t in names]
        if hit:
            found.update(hit)
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            spans.append((start, node.end_lineno))
    missing = set(names) - found
    if missing:
        raise GenerationError(f"DropDefs {path}: no top-level definition named {sorted(missing)} (update PATCHES)")
    for start, end in spans:  # comment lines directly above a dropped definition go with it
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1
        for i in range(start - 1, end):
            lines[i] = None
    for node in tree.body:  # and the names leave ``__all__``
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            for i in range(node.lineno - 1, node.end_lineno):
                if lines[i] is None:
                    continue
                for name in names:
                    lines[i] = re.sub(r"""\s*(["'])%s\1,?""" % re.escape(name), "", lines[i])
                if not lines[i].strip():
                    lines[i] = None
    lines = [line for line in lines if line is not None]
    return re.sub(r"\n{3,}(?=\S)", "\n\n\n", "".join(lines)).rstrip() + "\n"


def with_license(text: str) -> str:
    if "Licensed under the Apache License" in text.split('"""', 1)[0]:
        return text
    return LICENSE_HEADER + text


# ============================================================================================ sdist / git
def fetch_sdist() -> Path:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / SDIST_NAME
    if not target.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"verl=={VERL_VERSION}", "-d", tmp, "--quiet"]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / SDIST_NAME
            if res.returncode != 0 or not got.exists():
                raise GenerationError(f"could not download the verl {VERL_VERSION} sdist:\n{res.stdout}{res.stderr}")
            shutil.copy(got, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise GenerationError(f"{target}: sha256 {digest} != expected {SDIST_SHA256}; delete it and retry")
    return target


def extract_sdist(dest: Path) -> None:
    with tarfile.open(fetch_sdist()) as tar:
        prefix = f"verl-{VERL_VERSION}/"
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix) or m.name.startswith(prefix + "verl.egg-info") or m.name == prefix + "PKG-INFO":
                continue
            m.name = m.name[len(prefix) :]
            if m.name:
                members.append(m)
        tar.extractall(dest, members=members, filter="data")


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME=GIT_AUTHOR[0], GIT_AUTHOR_EMAIL=GIT_AUTHOR[1], GIT_AUTHOR_DATE=GIT_DATE,
        GIT_COMMITTER_NAME=GIT_AUTHOR[0], GIT_COMMITTER_EMAIL=GIT_AUTHOR[1], GIT_COMMITTER_DATE=GIT_DATE,
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, TZ="UTC", LC_ALL="C",
    )  # fmt: skip
    return env


def git(tree: Path, *args: str, **kw) -> str:
    res = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, env=git_env(), **kw)
    if res.returncode != 0:
        raise GenerationError(f"git {' '.join(args)} failed:\n{res.stdout}{res.stderr}")
    return res.stdout


def find_ruff() -> list[str]:
    override = os.environ.get("RUFF")
    if override:
        return [override]
    candidates = [Path(sys.executable).parent / "ruff", shutil.which("ruff")]
    for c in candidates:
        if c and Path(c).exists():
            return [str(c)]
    try:
        import ruff  # noqa: F401

        return [sys.executable, "-m", "ruff"]
    except ImportError as exc:
        raise GenerationError(f"ruff not found: pip install ruff=={RUFF_VERSION} (or set RUFF=/path/to/ruff)") from exc


def ruff(tree: Path, files: list[str]) -> None:
    if not files:
        return
    exe = find_ruff()
    version = subprocess.run([*exe, "--version"], capture_output=True, text=True).stdout.split()[-1]
    if version != RUFF_VERSION:
        raise GenerationError(f"ruff {version} found, the series is formatted with ruff {RUFF_VERSION} (verl's pin)")
    env = {**os.environ, "RUFF_NO_CACHE": "true"}
    subprocess.run([*exe, "check", "--fix", "--quiet", *files], cwd=tree, env=env, capture_output=True)
    res = subprocess.run([*exe, "format", "--quiet", *files], cwd=tree, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise GenerationError(f"ruff format failed on the generated files:\n{res.stdout}{res.stderr}")
    res = subprocess.run([*exe, "check", "--output-format=concise", *files], cwd=tree, env=env,
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        raise GenerationError(f"ruff (verl's config) reports problems in the generated files:\n{res.stdout}")


_GENERATED_HEADER = re.compile(
    r"invokes 'python3 scripts/print_cfg.py --cfg job ?(?P<args>[^']*)' to flatten the "
    r"'verl/trainer/config/(?P<config>\w+)\.yaml'"
)


def trainer_config_specs(tree: Path) -> list[tuple[Path, list[str]]]:
    """verl's ``_generated_*.yaml`` files and the print_cfg.py arguments their own headers name."""
    specs = []
    for f in sorted((tree / "verl/trainer/config").glob("_generated_*.yaml")):
        m = _GENERATED_HEADER.search(f.read_text().split("\n", 3)[1])
        if m is None:
            raise GenerationError(f"{f.name}: unrecognised header, cannot regenerate it")
        args = m["args"].split()
        if m["config"] != "ppo_trainer":
            args.append(f"--config-name={m['config']}")
        specs.append((f, args))
    return specs


def regenerate_trainer_configs(tree: Path) -> None:
    """What verl's scripts/generate_trainer_config.sh does, on the patched tree with this interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree), "VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_LOGGING_LEVEL": "ERROR"}
    env.pop("VERL_PLATFORM", None)
    for target, args in trainer_config_specs(tree):
        res = subprocess.run([sys.executable, "scripts/print_cfg.py", "--cfg", "job", *args], cwd=tree, env=env,
                             capture_output=True, text=True)  # fmt: skip
        if res.returncode != 0:
            raise GenerationError(f"print_cfg.py {args} failed:\n{res.stderr[-3000:]}")
        out_lines = res.stdout.splitlines(keepends=True)
        start = next(i for i, line in enumerate(out_lines) if line.startswith("actor_rollout_ref"))
        header = "".join(target.read_text().splitlines(keepends=True)[:5])
        target.write_text(header + "".join(out_lines[start:]))


def check_config_generation(tree: Path) -> None:
    """Regenerating the pristine tree must reproduce the sdist's files, or the diffs would carry noise."""
    before = {f: f.read_bytes() for f, _ in trainer_config_specs(tree)}
    regenerate_trainer_configs(tree)
    changed = [f.name for f, data in before.items() if f.read_bytes() != data]
    if changed:
        raise GenerationError(
            f"regenerating the pristine {changed} with this environment changes them (different hydra/omegaconf "
            "or an installed plugin?); use the environment of the project's .venv"
        )


# ============================================================================================ build
def apply_patch_ops(tree: Path, patch: Patch, mapping: dict[str, str]) -> list[str]:
    """Apply one patch's operations to ``tree``; return the touched paths."""
    touched: list[str] = []
    for op in expand(patch.ops):
        if isinstance(op, Copy):
            src = ROOT / op.src
            if not src.is_file():
                raise GenerationError(f"Copy {op.src}: no such file in this repository (update PATCHES)")
            text = src.read_text()
            if op.drop_lines:
                kept = [line for line in text.splitlines(keepends=True) if line.strip() not in op.drop_lines]
                found = {line.strip() for line in text.splitlines()}
                missing = [d for d in op.drop_lines if d not in found]
                if missing:
                    raise GenerationError(f"Copy {op.src}: lines to drop not found: {missing} (update PATCHES)")
                text = "".join(kept)
            dst = tree / op.dst
            if dst.exists():
                raise GenerationError(f"Copy {op.src} -> {op.dst}: destination already exists in verl's tree")
            if op.src.endswith(".py"):
                text = with_license(rewrite_python(text, op.src, mapping))
            else:
                text = rewrite_prose(text, mapping)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
            touched.append(op.dst)
        elif isinstance(op, NewFile):
            content = rewrite_prose(op.content() if callable(op.content) else op.content, mapping)
            dst = tree / op.path
            if dst.exists():
                raise GenerationError(f"NewFile {op.path}: already exists in verl's tree")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(content)
            touched.append(op.path)
        elif isinstance(op, Edit):
            dst = tree / op.path
            if not dst.exists():
                raise GenerationError(f"Edit {op.path}: file not found in verl's tree")
            text = dst.read_text()
            n = text.count(op.anchor)
            if n != op.count:
                raise GenerationError(
                    f"Edit {op.path}: anchor found {n} times, expected {op.count}:\n{op.anchor}"
                )
            dst.write_text(text.replace(op.anchor, op.replacement))
            touched.append(op.path)
        elif isinstance(op, DropDefs):
            dst = tree / op.path
            dst.write_text(drop_defs(dst.read_text(), op.path, op.names))
            touched.append(op.path)
        elif isinstance(op, DropSection):
            dst = tree / op.path
            text = dst.read_text()
            if text.count(op.start) != 1:
                raise GenerationError(f"DropSection {op.path}: start found {text.count(op.start)} times:\n{op.start}")
            a = text.index(op.start)
            b = text.find(op.end, a + len(op.start))
            if b < 0:
                raise GenerationError(f"DropSection {op.path}: end {op.end!r} not found after the start")
            dst.write_text(text[:a] + text[b:])
            touched.append(op.path)
    leftovers = []
    for rel in dict.fromkeys(touched):
        if rel.endswith((".py", ".yaml", ".md")):
            for i, line in enumerate((tree / rel).read_text().splitlines(), 1):
                if "verl_stable" in line:
                    leftovers.append(f"  {rel}:{i}: {line.strip()}")
    if leftovers:
        raise GenerationError(
            "project names left after rewriting (extend MODULE_MAP / TEXT_RULES / PATCHES):\n" + "\n".join(leftovers)
        )
    return list(dict.fromkeys(touched))


def build(work: Path, out_dir: Path) -> list[tuple[Patch, list[str]]]:
    """Build the series into ``out_dir``; the scratch repo (the patched tree) is ``work``."""
    mapping = build_module_map()
    extract_sdist(work)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"verl {VERL_VERSION} (PyPI sdist)")
    git(work, "tag", "pristine")
    check_config_generation(work)
    result = []
    for patch in PATCHES:
        touched = apply_patch_ops(work, patch, mapping)
        ruff(work, [t for t in touched if t.endswith(".py") and _is_new(work, t)])
        if any(t.startswith("verl/trainer/config/") and t.endswith(".yaml") for t in touched):
            regenerate_trainer_configs(work)
        git(work, "add", "-A")
        files = git(work, "diff", "--cached", "--name-status").rstrip().splitlines()
        kinds = {"A": "new", "M": "modified", "D": "deleted"}
        listing = "\n".join(f"- `{f.split(chr(9))[1]}` ({kinds.get(f[0], f[0])})" for f in files)
        body = patch.body.replace("{files}", listing)
        git(work, "commit", "-q", "-F", "-", input=f"{patch.title}\n\n{body}")
        result.append((patch, touched))
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("*.patch"):
        f.unlink()
    git(work, "-c", "diff.algorithm=myers", "format-patch", "-q", "--zero-commit", "--no-signature", "--full-index",
        "--no-renames", "--stat=200", "-o", str(out_dir), "pristine")  # fmt: skip
    for i, (patch, _) in enumerate(result, 1):
        # the file names follow the titles; keep them short and stable
        produced = sorted(out_dir.glob(f"{i:04d}-*.patch"))
        produced[0].rename(out_dir / f"{i:04d}-{patch.slug}.patch")
    return result


def _is_new(tree: Path, rel: str) -> bool:
    res = subprocess.run(["git", "-C", str(tree), "cat-file", "-e", f"HEAD:{rel}"], capture_output=True, env=git_env())
    return res.returncode != 0


def readme(result: list[tuple[Patch, list[str]]], out_dir: Path) -> str:
    parts = [
        f"# Upstream patch series against verl {VERL_VERSION}\n",
        "Generated by `python scripts/make_patches.py` from this repository's code -- do not edit by hand.",
        "`tests/patches/test_patch_series_on_cpu.py` regenerates the series and fails if it differs from",
        "what is committed here, applies it to the pristine PyPI sdist, and runs the copied tests against",
        "the patched verl with verl-stable's plugin switched off (`VERL_USE_EXTERNAL_PLUGINS=none`).\n",
        "Apply to a verl 0.9.1 git checkout with `git am patches/verl-0.9.1/*.patch`, or to an unpacked sdist",
        "one patch at a time, in order (later patches touch lines earlier ones changed):\n",
        "    for p in patches/verl-0.9.1/*.patch; do git apply --check \"$p\" && git apply \"$p\" || break; done\n",
        "How it is checked (`pytest tests/patches`, about 2.5 minutes on 2 CPU cores): regenerate and compare;",
        "apply each committed patch in order to the unpacked sdist with `git apply --check` / `git apply`;",
        "import the patched tree with `verl_stable` made unimportable; run, in one pytest process against the",
        "patched tree, the tests each patch lists in `PATCHES` (`python scripts/make_patches.py --list-tests`):",
        "the copied MiniRL, routing-replay, FSDP-engine and CPU tests, and verl's own CPU tests of the files the",
        "series modifies that ship in the sdist (`tests/trainer/ppo/test_core_algos_on_cpu.py`,",
        "`test_dynamic_policy_losses_on_cpu.py`, `test_loss_aggregation_on_cpu.py`,",
        "`tests/checkpoint_engine/test_global_steps_on_cpu.py`, `tests/plugin/test_platform_abstraction.py`).",
        "The sdist ships no `docs/`, `.github/` or `tests/special_sanity/`; verl's `check_license.py` accepts a",
        "fixed list of copyright lines, so the new files' `Copyright 2026 verl-stable contributors` line has to",
        "be added to it (its \"Add custom license headers below\" list) when the PRs are opened.\n",
    ]
    for i, (patch, touched) in enumerate(result, 1):
        parts.append(f"## {i:04d} `{patch.title}`\n")
        parts.append(f"File: `{OUT_DIR.relative_to(ROOT)}/{i:04d}-{patch.slug}.patch`\n")
        parts.append("(The PR description is the commit message; reproduced here.)\n")
        body = (out_dir / f"{i:04d}-{patch.slug}.patch").read_text()
        msg = body.split("\n\n", 1)[1].split("\n---\n", 1)[0]
        parts.append(msg.rstrip() + "\n")
    return "\n".join(parts)


def generate(out_dir: Path, readme_path: Path, tree_dir: Optional[Path]) -> None:
    with tempfile.TemporaryDirectory(prefix="verl-patches-") as tmp:
        work = Path(tmp) / "verl"
        work.mkdir()
        try:
            result = build(work, out_dir)
            readme_path.write_text(readme(result, out_dir))
        finally:  # the scratch tree is also what to look at when generation fails
            if tree_dir is not None:
                if tree_dir.exists():
                    shutil.rmtree(tree_dir)
                shutil.copytree(work, tree_dir, symlinks=True)


def check(tree_dir: Optional[Path] = None) -> int:
    with tempfile.TemporaryDirectory(prefix="verl-patches-check-") as tmp:
        out = Path(tmp) / OUT_DIR.relative_to(ROOT)
        readme_tmp = Path(tmp) / "README.md"
        generate(out, readme_tmp, tree_dir)
        problems = []
        want = {p.name: p for p in out.glob("*.patch")} | {"README.md": readme_tmp}
        have = {p.name: p for p in OUT_DIR.glob("*.patch")} | ({"README.md": README_OUT} if README_OUT.exists() else {})
        for name in sorted(set(want) | set(have)):
            if name not in have:
                problems.append(f"missing (not committed): {name}")
            elif name not in want:
                problems.append(f"stale (no longer generated): {name}")
            elif want[name].read_bytes() != have[name].read_bytes():
                diff = list(difflib.unified_diff(have[name].read_text().splitlines(), want[name].read_text().splitlines(),
                                                 f"committed/{name}", f"generated/{name}", lineterm="", n=1))  # fmt: skip
                problems.append(f"differs: {name} ({len(diff)} diff lines)\n" + "\n".join(diff[:40]))
        if problems:
            print("patch series is out of date; run `python scripts/make_patches.py` and commit:\n", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            return 1
        print(f"patch series is current ({len(want) - 1} patches)")
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed series differs")
    parser.add_argument("--tree", type=Path, help="also leave the patched verl tree (a git repo) here")
    parser.add_argument("--list-tests", action="store_true", help="print the tests (paths in verl's tree) to run")
    args = parser.parse_args(argv)
    if args.list_tests:
        print("\n".join(t for patch in PATCHES for t in patch.tests))
        return 0
    try:
        if args.check:
            return check(args.tree)
        generate(OUT_DIR, README_OUT, args.tree)
        print(f"wrote {len(list(OUT_DIR.glob('*.patch')))} patches to {OUT_DIR.relative_to(ROOT)}")
        return 0
    except GenerationError as exc:
        print(f"make_patches: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
