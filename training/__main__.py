"""``python -m training`` and the ``lookaside-train`` console script."""

from __future__ import annotations

import sys

from training.cli import main as _main


def main() -> None:
    """Run the CLI and exit with its status."""
    sys.exit(_main())


if __name__ == "__main__":
    main()
