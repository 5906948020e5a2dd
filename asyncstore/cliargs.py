"""Argument types and options shared by the ``asyncstore`` subcommands: a bad value is
argparse's usage error (exit 2) naming the option, never a traceback."""

from __future__ import annotations

import argparse
import math

URI_HELP = "database URI (default: $ASYNCSTORE_DATABASE_URI, else sqlite:///asyncstore.db)"
"""What every subcommand that opens a store says of its URI."""


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--uri`` and ``--upgrade``, for the long-running commands that open one store (serve, worker)."""
    parser.add_argument("--uri", default=None, help=URI_HELP)
    parser.add_argument("--upgrade", action="store_true", help="migrate the database to the latest revision first")


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """A finite number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_number(text: str) -> float:
    """A finite number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port number, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return value
