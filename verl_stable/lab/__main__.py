"""``python -m verl_stable.lab``: the same as ``verl-stable lab``."""

import sys

from verl_stable.lab.run import main

if __name__ == "__main__":
    sys.exit(main())
