import sys

from verl_stable.recipes import main

sys.exit(main())
