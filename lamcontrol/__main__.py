"""``python -m lamcontrol`` and the ``lam`` command."""

import signal
import sys


def run() -> int:
    """``lam``: a Ctrl-C while it loads ends it quietly, with no traceback; then the command runs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from lamcontrol.cli.main import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
