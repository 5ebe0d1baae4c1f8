"""verl adapter: loaded by verl itself through the ``verl.plugins`` entry point.

verl imports every entry point of that group at ``import verl`` time, in the driver and in every Ray
worker, and swallows failures at debug level. Keep this module light and side-effect free beyond
registration; ``verl-stable doctor`` makes a failed load loud. What it changes in the process is one declared
table, :data:`verl_stable.integration.SHIMS` (``verl-stable doctor`` prints it with each row's state).
"""

from __future__ import annotations

from verl_stable.integration import install_all

install_all()
