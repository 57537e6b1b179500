"""`python -m reclaif.cli ...` is the `reclaif` command (the launch templates start it so)."""
import sys

from reclaif.cli import main

sys.exit(main())
