"""Thin DVC stage entry points: `python -m stages.<name> --help`."""
import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from pipeline.errors import UserError

F = TypeVar("F", bound=Callable)


def setup_logging() -> None:
    """Our loggers at LOGLEVEL (INFO by default); third-party root chatter at WARNING."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    level = os.environ.get("LOGLEVEL", "INFO")
    for name in ("pipeline", "stages"):
        logging.getLogger(name).setLevel(level)


def expected_errors(command: F) -> F:
    """Wrap a stage command: an expected error (bad params, data, cache or a missing input
    file) prints one short line naming the key, file or row and exits with status 2;
    any other exception keeps its full traceback (it is a bug)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (UserError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from None
    return wrapper  # type: ignore[return-value]
