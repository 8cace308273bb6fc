"""``lookaside-train reproduce TABLE``: train and evaluate every row of a paper's table on a GPU
host with the datasets present, printing our number beside the paper's."""

from __future__ import annotations

import argparse

from lookaside.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``reproduce``."""
    p.add_argument("table", help="the paper table to reproduce")


def cmd_reproduce(ns: argparse.Namespace) -> int:
    """Not built yet (issue 19 is building it)."""
    raise ConfigError("reproduce is not built yet")
