"""register_rollout_class: the public way for a plugin to add a rollout server adapter."""

import pytest

from verl.workers.rollout import base


@pytest.fixture
def registry():
    """The registry as the test found it, restored afterwards (other tests share the process)."""
    saved = dict(base._ROLLOUT_REGISTRY)
    yield base._ROLLOUT_REGISTRY
    base._ROLLOUT_REGISTRY.clear()
    base._ROLLOUT_REGISTRY.update(saved)


def test_registered_class_is_found_by_get_rollout_class(registry):
    base.register_rollout_class("plugin_test", "verl.workers.rollout.base.BaseRollout")
    assert registry[("plugin_test", "async")] == "verl.workers.rollout.base.BaseRollout"
    assert base.get_rollout_class("plugin_test") is base.BaseRollout


def test_same_class_twice_is_a_no_op_another_class_is_refused(registry):
    base.register_rollout_class("plugin_test", "verl.workers.rollout.base.BaseRollout")
    base.register_rollout_class("plugin_test", "verl.workers.rollout.base.BaseRollout")
    with pytest.raises(ValueError, match="already registered"):
        base.register_rollout_class("plugin_test", "some.other.Adapter")
    with pytest.raises(ValueError, match="already registered"):
        base.register_rollout_class("vllm", "some.other.Adapter")  # a built-in one too
    assert registry[("plugin_test", "async")] == "verl.workers.rollout.base.BaseRollout"
