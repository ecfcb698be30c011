"""What every dataset reader shares: the rows it returns, its error type, small file helpers.

A reader is a function ``read(params, root) -> Rows``. It only reads the labels and
names each row's image path (relative to the dataset root) and, where the format
says so, its split. Checking the image files, assigning the missing splits and
building the class lists happen once, for every layout, in :mod:`pipeline.manifest`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.errors import ManifestError  # noqa: F401  (re-exported: the datasets raise it)

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class Rows:
    """Column-wise rows while a manifest is being assembled."""

    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    labels: dict[str, list] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # "file:row" for error messages
    # Per-row stratum for a seeded split; None: the first single-label task's label.
    strata: list[str] | None = None
    # A layout's own class order per task (e.g. by label index); default: sorted.
    class_order: dict[str, list[str]] = field(default_factory=dict)
    # Recorded in the manifest metadata under "layout" (how labels were read or normalised).
    meta: dict[str, Any] = field(default_factory=dict)

    def append(self, rid: str, path: str, split: str | None, labels: dict, source: str,
               stratum: str = "") -> None:
        self.ids.append(rid)
        self.paths.append(path)
        self.splits.append(split)
        self.sources.append(source)
        for task, value in labels.items():
            self.labels[task].append(value)
        if self.strata is not None:
            self.strata.append(stratum)

    def keep(self, indices: list[int]) -> "Rows":
        """The rows at ``indices``, in that order (class order and metadata kept)."""
        return Rows(
            ids=[self.ids[i] for i in indices], paths=[self.paths[i] for i in indices],
            splits=[self.splits[i] for i in indices], sources=[self.sources[i] for i in indices],
            labels={t: [v[i] for i in indices] for t, v in self.labels.items()},
            strata=None if self.strata is None else [self.strata[i] for i in indices],
            class_order=self.class_order, meta=self.meta,
        )


Reader = Callable[["DatasetParams", Path], Rows]


@dataclass(frozen=True)
class Layout:
    """One ``dataset.layout``: its reader and the layout-specific params keys it reads."""

    read: Reader
    keys: frozenset[str] = frozenset()


def only_task(params: "DatasetParams", type_: str) -> str:
    """The name of the layout's one task, which must be of ``type_`` (single or multi)."""
    tasks = list(params.tasks.items())
    if len(tasks) != 1 or tasks[0][1].type != type_:
        label = "single-label" if type_ == "single" else "multi-label"
        raise ManifestError(f"dataset.tasks: the {params.layout} layout has exactly one {label} task, "
                            f"got {[(t, s.type) for t, s in tasks]}")
    return tasks[0][0]


def existing_file(root: Path, rel: str, key: str) -> Path:
    """``root / rel``, which must be a file (the error names the params key)."""
    path = root / rel
    if not path.is_file():
        raise ManifestError(f"{key}: {path} does not exist")
    return path


def subdir(root: Path, rel: str | None, key: str) -> str:
    """A folder given in params as a POSIX prefix relative to the root ('' for the root)."""
    if not rel:
        return ""
    path = Path(rel)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise ManifestError(f"{key}: {rel} is not inside dataset.root ({root})") from None
    if not (root / path).is_dir():
        raise ManifestError(f"{key}: directory {root / path} does not exist")
    prefix = path.as_posix().strip("/")
    return "" if prefix == "." else prefix + "/"


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}: not valid JSON (column {exc.colno}): {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text: {exc}") from None

