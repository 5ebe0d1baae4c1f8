"""verl adapter: loaded by verl itself through the ``verl.plugins`` entry point.

verl imports every entry point of that group at ``import verl`` time, in the driver and in every Ray
worker, and swallows failures at debug level. Keep this module light and side-effect free beyond
registration; ``verl-stable doctor`` makes a failed load loud.
"""

from __future__ import annotations

from verl_stable.losses import register_all as _register_losses

_register_losses()

# The CPU backend only activates when asked for (VERL_PLATFORM=cpu); it is a no-op otherwise.
from verl_stable.cpu import activate_if_requested as _activate_cpu  # noqa: E402

_activate_cpu()
