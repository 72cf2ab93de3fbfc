"""`python -m hfprune` (and `accelerate launch -m hfprune ...`) runs the command line."""

import sys

from .cli import main

sys.exit(main())
