"""``python -m lamcontrol`` is the ``lam`` command."""

import sys

from .cli import main

sys.exit(main())
