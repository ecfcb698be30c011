"""CDUL initialisation: global-local image-text similarity aggregation.

Abdelfattah et al., "CDUL: CLIP-Driven Unsupervised Learning for Multi-Label
Image Classification", ICCV 2023, Sec. 3.1. Works on cached tile embeddings
(``FeatureSet.tiles``: [N, 1 + g*g, D], index 0 the whole image, 1.. the
g x g crops), so CLIP never runs here.

* Global similarity vector (Sec. 3.1.1): softmax over classes of the
  whole-image cosine similarities times CLIP's logit scale.
* Local similarity vectors (Sec. 3.1.2): the same softmax for every crop.
* Aggregation per class over crops (Sec. 3.1.3, Eqs. 5-6):
  ``alpha = max``, ``beta = min``, ``gamma = [alpha >= threshold]``,
  ``local_agg = gamma * alpha + (1 - gamma) * beta`` -- a class some crop is
  confident about keeps its best crop score, any other class is pushed down
  to its least-supported crop.
* Initial pseudo-label: ``final = (global + local_agg) / 2`` (the paper's
  plain average); ``global_weight`` generalises it to
  ``w * global + (1 - w) * local_agg`` (a weighting the paper's supplementary
  also explores); the default 0.5 is the paper.

Temperature. The softmax uses the model's real scale ``exp(logit_scale)``
(about 100 for OpenAI CLIP, ``TextContext.logit_scale``), i.e. logits =
cos * 100. A known reproduction bug (Shah & Bhalgat, "Reproducibility Study of
CDUL", 2024, whose code divides by the raw ``model.logit_scale`` ~ 4.6)
makes the logits cos / 4.6: cosines differ by a few hundredths, so every
softmax is nearly uniform (~1/C), no crop ever reaches the 0.5 threshold and
the aggregation degenerates to the per-class minimum. The optional
``temperature`` override means logits = cos / temperature (0.01 == scale 100).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipeline.features import TextContext
from pipeline.metrics import mean_average_precision

log = logging.getLogger(__name__)

# exp(logit_scale) is ~100 for released CLIP models; a scale this small is
# almost certainly the raw log-parameter (ln 100 ~ 4.6), i.e. the bug above.
_SUSPICIOUS_SCALE = 10.0


@dataclass(frozen=True)
class CdulSimilarityParams:
    """``cdul.similarity`` in params.yaml.

    threshold:     zeta of Eq. 5, the crop confidence above which a class keeps
                   its max crop score (paper: 0.5).
    temperature:   None -> logits = cos * exp(logit_scale) of the model (paper);
                   a number -> logits = cos / temperature (override, e.g. 0.01).
    global_weight: w in final = w * global + (1 - w) * local_agg; 0.5 is the
                   paper's plain average.
    template:      None -> the task's template ensemble (this project's default);
                   an index -> that one template of ``text.templates.<task>``. The
                   reproduction (cs-mshah/CDUL) uses the single prompt "a photo of a {}":
                   list ``'a photo of a {}.'`` first there and set ``template: 0``.
    """

    threshold: float = 0.5
    temperature: float | None = None
    global_weight: float = 0.5
    template: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.global_weight <= 1.0:
            raise ValueError(f"global_weight must be in [0, 1], got {self.global_weight}")


@dataclass(frozen=True)
class CdulScores:
    """Similarity vectors of N images over C classes (float32, rows of ``global_`` sum to 1).

    global_:   [N, C] whole-image softmax (``global`` is a Python keyword).
    local_agg: [N, C] aggregated crop softmaxes (Eq. 6).
    final:     [N, C] initial pseudo-labels.
    """

    global_: np.ndarray
    local_agg: np.ndarray
    final: np.ndarray


def effective_scale(logit_scale: float, temperature: float | None = None) -> float:
    """Multiplier applied to cosines: ``1 / temperature`` if given, else ``logit_scale``.

    ``logit_scale`` must already be exponentiated (``TextContext.logit_scale``).
    """
    if temperature is not None:
        return 1.0 / float(temperature)
    if logit_scale < _SUSPICIOUS_SCALE:
        log.warning(
            "logit scale %.3f looks like the raw log-parameter, not exp(logit_scale) "
            "(~100): CDUL softmaxes will be nearly uniform", logit_scale,
        )
    return float(logit_scale)


def class_softmax(emb: np.ndarray, class_emb: np.ndarray, scale: float) -> np.ndarray:
    """Softmax over classes of ``scale * cos(emb, class_emb)``; emb [..., D] -> [..., C].

    Both sides are assumed L2-normalised (as cached), so the dot product is
    the cosine. Computed in float64 with max-subtraction for stability.
    """
    logits = scale * (np.asarray(emb, np.float64) @ np.asarray(class_emb, np.float64).T)
    logits -= logits.max(axis=-1, keepdims=True)
    expd = np.exp(logits)
    return expd / expd.sum(axis=-1, keepdims=True)


def aggregate_local(local: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Eqs. 5-6 over the crop axis: local [N, T, C] crop softmaxes -> [N, C].

    alpha = max over crops, beta = min over crops, gamma = [alpha >= threshold],
    result = gamma * alpha + (1 - gamma) * beta.
    """
    local = np.asarray(local)
    if local.ndim != 3 or local.shape[1] == 0:
        raise ValueError(f"local must be [N, T>=1, C], got {local.shape}")
    alpha = local.max(axis=1)
    beta = local.min(axis=1)
    gamma = (alpha >= threshold).astype(local.dtype)
    return gamma * alpha + (1.0 - gamma) * beta


def cdul_scores_from_embeddings(
    tiles: np.ndarray,
    class_emb: np.ndarray,
    logit_scale: float,
    params: CdulSimilarityParams = CdulSimilarityParams(),
) -> CdulScores:
    """Global, aggregated-local and final vectors from tiles [N, 1 + g*g, D]."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 3 or tiles.shape[1] < 2:
        raise ValueError(f"tiles must be [N, 1 + g*g >= 2, D], got {tiles.shape}")
    if tiles.shape[2] != np.asarray(class_emb).shape[1]:
        raise ValueError(f"tiles dim {tiles.shape[2]} != class_emb dim {np.asarray(class_emb).shape[1]}")
    scale = effective_scale(logit_scale, params.temperature)
    probs = class_softmax(tiles, class_emb, scale)  # [N, T, C]
    global_ = probs[:, 0]
    local_agg = aggregate_local(probs[:, 1:], params.threshold)
    w = params.global_weight
    final = w * global_ + (1.0 - w) * local_agg
    log.debug("CDUL scores for %d images, %d crops, scale %.2f", len(tiles), tiles.shape[1] - 1, scale)
    return CdulScores(
        global_=global_.astype(np.float32),
        local_agg=local_agg.astype(np.float32),
        final=final.astype(np.float32),
    )


def cdul_scores(
    tiles: np.ndarray, text: TextContext, params: CdulSimilarityParams = CdulSimilarityParams()
) -> CdulScores:
    """:func:`cdul_scores_from_embeddings` with the text side of a task (ensemble or one template)."""
    if params.template is None:
        class_emb = text.class_emb
    else:
        if not 0 <= params.template < len(text.template_emb):
            raise ValueError(f"cdul.similarity.template: {params.template} is not an index of the task's "
                             f"{len(text.template_emb)} templates")
        class_emb = text.template_emb[params.template]
    return cdul_scores_from_embeddings(tiles, class_emb, text.logit_scale, params)


def pseudo_label_quality(scores: CdulScores, y_true: np.ndarray) -> dict[str, float]:
    """mAP (macro AP over classes with >= 1 positive) of each vector against multi-hot truth.

    Evaluation only: the ground truth never feeds back into the pseudo-labels.
    """
    return {
        "global": mean_average_precision(y_true, scores.global_),
        "local": mean_average_precision(y_true, scores.local_agg),
        "final": mean_average_precision(y_true, scores.final),
    }


__all__ = [
    "CdulSimilarityParams",
    "CdulScores",
    "effective_scale",
    "class_softmax",
    "aggregate_local",
    "cdul_scores_from_embeddings",
    "cdul_scores",
    "pseudo_label_quality",
]
