"""Run a callback right after a module is first imported, without importing it ourselves.

The one lazy mechanism of :func:`verl_stable.integration.install_all`: a row with ``after_import`` is installed
right after verl itself imports that module (e.g. the FSDP routing-replay engine right after
``verl.workers.engine.fsdp.transformer_impl``, the module that registers verl's FSDP engine). The plugin is
loaded at every ``import verl``; importing verl's engine package there would slow every process (not measured here), log
accelerator warnings in processes that never build an engine, and resolve verl's (cached) platform before a
platform plugin loaded after ours could register. A waiting row is one one-shot finder in ``sys.meta_path``,
removed as soon as it fires. Upstream change that removes this module: the replay in verl's
``FSDPEngineWithLMHead`` itself, or a lazily resolved engine registration (see ``verl_stable.routing.fsdp``),
and the other lazy rows' upstream changes (``verl_stable.integration.SHIMS``)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Callable


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self, module_name: str, callback: Callable[[ModuleType], None]):
        self.module_name = module_name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)  # one-shot: the real finders locate the module
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_then_callback(module: ModuleType) -> None:
            exec_module(module)
            callback(module)

        spec.loader.exec_module = exec_then_callback
        return spec


def after_import(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported (now, if it already is)."""
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    if not any(isinstance(f, _AfterImportFinder) and f.module_name == module_name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportFinder(module_name, callback))
