"""Observing what the experts received, independently of the replay machinery."""

from __future__ import annotations


class ExpertTap:
    """Records, for every call of every MoE layer's experts module, the ids it received (an observation
    independent of the replay machinery: the ids the stock experts kernel actually used)."""

    def __init__(self, model, rr):
        self.calls = [[] for _ in rr.sites]
        self._handles = []
        for i, site in enumerate(rr.sites):
            block = site.module if site.adapter.kind == "route_method" else model.get_submodule(site.name.rsplit(".", 1)[0])
            self._handles.append(block.experts.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i):
        def hook(module, args):
            self.calls[i].append(args[1].detach().clone())

        return hook

    def close(self):
        for h in self._handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
