"""CDUL (Abdelfattah et al., ICCV 2023) on cached CLIP features.

* :mod:`pipeline.cdul.similarity` -- initial pseudo-labels from global and
  crop (tile) embeddings (Sec. 3.1) and their quality (mAP) against truth.
* :mod:`pipeline.cdul.classifier` -- head trained on the pseudo-labels with
  gradient-alignment label refinement (Sec. 3.2).

``CdulParams`` is the ``cdul:`` section of params.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.cdul.classifier import CdulClassifier, CdulClassifierParams
from pipeline.cdul.similarity import (
    CdulScores,
    CdulSimilarityParams,
    aggregate_local,
    cdul_scores,
    cdul_scores_from_embeddings,
    pseudo_label_quality,
)


@dataclass(frozen=True)
class CdulParams:
    """``cdul:`` in params.yaml: the multi-label ``task``, ``similarity`` (Sec. 3.1), ``classifier`` (Sec. 3.2).

    ``task: null`` says the dataset has no multi-label task: the tiles and CDUL
    stages still run (DVC has no conditional stages) but only write outputs
    marked not applicable, and the report says why its CDUL section is empty.
    """

    task: str | None = "objects"
    similarity: CdulSimilarityParams = field(default_factory=CdulSimilarityParams)
    classifier: CdulClassifierParams = field(default_factory=CdulClassifierParams)


__all__ = [
    "CdulParams",
    "CdulSimilarityParams",
    "CdulClassifierParams",
    "CdulScores",
    "CdulClassifier",
    "aggregate_local",
    "cdul_scores",
    "cdul_scores_from_embeddings",
    "pseudo_label_quality",
]
