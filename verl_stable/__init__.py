"""verl-stable: stable reinforcement learning of LLMs (MoE above all) on verl.

Importing this package is cheap: the verl adapter lives in :mod:`verl_stable.plugin`, which verl loads
through the ``verl.plugins`` entry point in every process that imports verl.
"""

__version__ = "0.1.0"

#: The verl release every adapter is written and tested against.
VERL_VERSION = "0.9.1"
