import sys

from verl_stable.apps.recipes import main

sys.exit(main())
