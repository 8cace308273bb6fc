"""``python -m training`` and the ``lookaside-train`` console script."""

from __future__ import annotations

import os
import sys

from training.cli import main as _main


def main() -> None:
    """Run the CLI and exit with its status: Ctrl-C is one line and 130, a closed pipe
    (``lookaside-train methods | head``) ends quietly."""
    try:
        status = _main()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write("lookaside-train: interrupted (Ctrl-C)\n")
        status = 130
    except BrokenPipeError:  # the reader left: nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)


if __name__ == "__main__":
    main()
