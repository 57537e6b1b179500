"""`python -m reclaif ...` is the `reclaif` command."""
import sys

from reclaif.cli import main

sys.exit(main())
