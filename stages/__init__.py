"""Thin DVC stage entry points: `python -m stages.<name> --help`."""
import functools
import logging
import os
import sys

# Before any stage loads torch's OpenMP: idle worker threads sleep instead of spinning. On 2
# cores the spinning threads of the encoder took CPU from the DataLoader workers decoding
# beside it (extract_tiles 13% slower), and when two processes shared the cores each
# pretraining step was ~10x slower (measured). Set OMP_WAIT_POLICY explicitly to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
