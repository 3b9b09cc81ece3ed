"""`python -m reidfast ...` (also what `torchrun -m reidfast ...` runs): the `reidfast` command."""
import sys

from .cli import main

sys.exit(main())
