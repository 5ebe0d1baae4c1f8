"""Seeded random cases for the property tests, without a property-testing library (verl's CPU test job does not
install one): ``@random_cases(n)`` runs a test body once per seed 0..n-1 with a ``random.Random(seed)`` as ``rng``;
a failure names its seed, so it replays exactly."""

from __future__ import annotations

import functools
import inspect
import random


def random_cases(n: int):
    def decorate(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            for seed in range(n):
                try:
                    test(*args, rng=random.Random(seed), **kwargs)
                except Exception as exc:
                    exc.add_note(f"random case: seed {seed} of {n} ({test.__name__})")
                    raise

        signature = inspect.signature(test)
        # pytest must not look for an ``rng`` fixture
        run.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "rng"])
        del run.__wrapped__
        return run

    return decorate
