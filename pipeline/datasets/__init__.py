"""Dataset formats users already have, one module per ``dataset.layout``.

``LAYOUTS`` maps each layout name to its reader and the layout-specific params keys
it reads (as torchvision.datasets or Dassl's DATASET_REGISTRY collect their datasets).
Adding a format takes one module with a ``read(params, root) -> Rows`` function, one
entry here, its keys in :class:`pipeline.manifest.DatasetParams` and its name in
that class's ``layout`` type.

=====================  ===================================================================
layout                 what it reads
=====================  ===================================================================
folders                ``root/[<split>/]<class>/*.jpg``; ``classnames_file`` names the folders
csv                    attribute / multi-label CSVs joined on an image column
global_streetscapes    the Global Streetscapes ``manual_labels`` tree (train/ and test/ CSVs)
coop_split             a CoOp / Dassl ``split_zhou_<Dataset>.json``
voc                    PASCAL VOC Annotations/, ImageSets/Main/, JPEGImages/
coco                   COCO instances JSON files, one per split
=====================  ===================================================================
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pipeline.datasets import coco, coop_split, csv_table, folders, global_streetscapes, voc
from pipeline.datasets.base import IMAGE_SUFFIXES, Layout, ManifestError, Reader, Rows

if TYPE_CHECKING:
    from pipeline.manifest import DatasetParams

LAYOUTS: dict[str, Layout] = {
    "folders": folders.LAYOUT,
    "csv": csv_table.LAYOUT,
    "global_streetscapes": global_streetscapes.LAYOUT,
    "coop_split": coop_split.LAYOUT,
    "voc": voc.LAYOUT,
    "coco": coco.LAYOUT,
}

# Keys read by some layouts only; every other key applies to all of them.
LAYOUT_KEYS = frozenset().union(*(layout.keys for layout in LAYOUTS.values()))


def layout_of(params: "DatasetParams") -> Layout:
    """The params' layout; a key set that this layout does not read is an error, not ignored."""
    if params.layout not in LAYOUTS:
        raise ManifestError(f"dataset.layout: unknown layout '{params.layout}' (known: {', '.join(LAYOUTS)})")
    layout = LAYOUTS[params.layout]
    for f in dataclasses.fields(params):
        if f.name in LAYOUT_KEYS - layout.keys and getattr(params, f.name) != _default(f):
            users = [name for name, other in LAYOUTS.items() if f.name in other.keys]
            raise ManifestError(f"dataset.{f.name}: not read by layout '{params.layout}' "
                                f"(only by {', '.join(users)}); remove it")
    return layout


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


__all__ = ["LAYOUTS", "LAYOUT_KEYS", "IMAGE_SUFFIXES", "Layout", "ManifestError", "Reader", "Rows", "layout_of"]
