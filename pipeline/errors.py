"""The one base class of expected errors.

An expected error is a problem with what the user gave us (a params key, a data
file or row, a cache made with other settings, a missing input), not a bug.
Stage entry points print its message in one short line and exit non-zero
(:func:`stages.cli`); every other exception keeps its traceback.
"""


class UserError(Exception):
    """Bad input; the message names the params key, file, row or cache field."""


class ManifestError(UserError, ValueError):
    """Bad input data; the message names the params key, file and row."""
