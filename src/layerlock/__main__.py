"""``python -m layerlock`` (also what ``torchrun -m layerlock`` runs)."""

import sys

from .cli import main

sys.exit(main())
