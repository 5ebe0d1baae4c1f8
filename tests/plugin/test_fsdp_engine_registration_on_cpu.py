"""How the replay-capable FSDP engine reaches verl: registered through verl's own ``EngineRegistry.register``
(no wrapper around verl's lookup, verl's own entries untouched), only once verl imports its FSDP engine, and
only on the verl release it was written for. Fresh interpreters: registries are process-global."""

from __future__ import annotations

import pytest

from tests.plugin.processes import run_python as _run


@pytest.mark.parametrize("platform", [None, "cpu"], ids=["default-platform", "cpu-backend"])
def test_engine_registry_hands_out_the_replay_engine_through_verls_own_lookup(platform):
    proc = _run(
        """
        import sys
        import verl
        from verl.workers.engine.base import EngineRegistry
        lookup = EngineRegistry.__dict__["get_engine_cls"].__func__
        assert not hasattr(lookup, "__wrapped__") and lookup.__module__ == "verl.workers.engine.base"
        import verl.workers.engine  # what verl's TrainingWorker does before EngineRegistry.new
        from verl.utils.device import get_device_name, get_vendor
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead
        from verl_stable.routing.fsdp import RoutingReplayEngineMixin
        device, vendor = get_device_name(), get_vendor()
        for backend in ("fsdp", "fsdp2"):
            cls = EngineRegistry.get_engine_cls("language_model", backend)
            assert issubclass(cls, RoutingReplayEngineMixin) and issubclass(cls, FSDPEngineWithLMHead), cls
            entries = EngineRegistry._engines["language_model"][backend]
            assert entries[(device, vendor)] is cls  # a key of its own ...
            assert entries[device] is FSDPEngineWithLMHead  # ... verl's (or the CPU backend's) entry untouched
            assert EngineRegistry.get_engine_cls("value_model", backend) is FSDPEngineWithValueHead
        print("OK", device, vendor)
        """,
        platform,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def test_import_verl_alone_does_not_import_the_engine_package():
    """Without the CPU backend (which needs the engine), the plugin registers lazily: `import verl` stays light
    and does not fix verl's platform before other platform plugins register theirs."""
    proc = _run(
        """
        import sys
        import verl
        assert "verl.workers.engine" not in sys.modules, "the plugin imported verl's engine package"
        print("OK")
        """,
        None,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def test_another_verl_release_registers_nothing_and_says_why(monkeypatch):
    from verl_stable.integration import UnsupportedVersion, check_version
    from verl_stable.integration import fsdp_engine as fsdp

    with pytest.raises(UnsupportedVersion, match=r"verl==0\.9\.1.*found verl==0\.8\.0"):
        check_version("fsdp-routing-replay", "0.8.0")
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.8.0")
    with pytest.warns(UserWarning, match=r"found verl==0\.8\.0: not registered"):
        assert fsdp.register_replay_engines() == {}


def test_an_engine_that_replays_natively_is_never_wrapped_again():
    """On a verl carrying the patch series, FSDPEngineWithLMHead already has the mixin (verl's own copy)."""
    from verl_stable.integration.fsdp_engine import replays_natively

    verls_mixin = type("RoutingReplayEngineMixin", (), {"__module__": "verl.workers.engine.fsdp.router_replay"})
    patched_engine = type("FSDPEngineWithLMHead", (verls_mixin,), {"__module__": "verl.workers.engine.fsdp"})
    stock_engine = type("FSDPEngineWithLMHead", (), {"__module__": "verl.workers.engine.fsdp"})
    assert replays_natively(patched_engine)
    assert not replays_natively(stock_engine)
