"""Pure metric functions: numpy arrays in, plain floats / lists / dicts out.

Nothing here reads files or knows about heads; stages call these on arrays
they already hold, and the returned dicts are JSON-serialisable as they are
(DVC metrics files), with NaN where a value is undefined.

Single-label
    :func:`single_label_report` returns accuracy, macro/weighted F1, balanced
    accuracy, chance-adjusted balanced accuracy, per-class
    precision/recall/F1/support and the confusion matrix in a fixed class order.

Multi-label
    :func:`average_precision_per_class`, :func:`mean_average_precision`,
    :func:`map_report` (which classes were skipped), :func:`multilabel_f1`,
    :func:`select_threshold` (on validation) and :func:`apply_threshold` (on
    test), bundled by :func:`multilabel_report`.

Seeds
    :func:`aggregate_over_seeds` turns a list of metric dicts into mean / std.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Single-label metrics are computed here from the confusion matrix, with scikit-learn's
# conventions (tests/test_metrics.py checks them against sklearn): importing sklearn.metrics
# takes 1.5 s, which each of the fifteen evaluate@ stages paid for a few divisions.
# The multi-label functions import it where they run.

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


# --------------------------------------------------------------------------- single-label


def _label_order(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Labels in the fixed class order: indices 0..C-1, or the names themselves.

    Labels may be given as integer indices into ``class_names`` or as the
    names; either way every class gets a row in the confusion matrix and the
    per-class table, including classes absent from both arrays.
    """
    values = np.concatenate([np.ravel(y_true), np.ravel(y_pred)])
    if values.size and values.dtype.kind in "iub":
        labels = np.arange(len(class_names))
    else:
        labels = np.asarray(class_names, dtype=object)
    unknown = set(values.tolist()) - set(labels.tolist())
    if unknown:
        raise ValueError(f"labels {sorted(map(str, unknown))} are not in class_names")
    return labels


def confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """[C, C] confusion matrix (rows true, columns predicted) in ``class_names`` order."""
    y_true, y_pred = np.ravel(y_true), np.ravel(y_pred)
    labels = _label_order(y_true, y_pred, class_names)
    index = {label: i for i, label in enumerate(labels.tolist())}
    out = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(out, ([index[v] for v in y_true.tolist()], [index[v] for v in y_pred.tolist()]), 1)
    return out


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (sklearn's ``zero_division=0``)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def single_label_report(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """All single-label metrics for one prediction.

    Returns ``accuracy``, ``macro_f1``, ``weighted_f1``, ``balanced_accuracy``,
    ``balanced_accuracy_adjusted`` (sklearn ``adjusted=True``: 0 for chance or
    ZeroR, 1 for perfect), ``per_class`` (name -> precision, recall, f1,
    support), ``confusion_matrix`` (rows = true, columns = predicted, both in
    ``class_names`` order) and ``class_names``.

    Averaging conventions (sklearn defaults, stated because they matter for
    splits that miss a class): macro/weighted F1 average over the classes
    present in ``y_true`` or ``y_pred``; balanced accuracy averages recall over
    the classes present in ``y_true``. Classes absent from both still appear in
    ``per_class`` (support 0, scores 0) and the confusion matrix.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-d shapes")
    cm = confusion(y_true, y_pred, class_names)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    prec, rec = _divide(tp, predicted), _divide(tp, support)
    f1 = _divide(2.0 * tp, support + predicted)  # sklearn's form: 2tp / (2tp + fp + fn)
    seen = (support + predicted) > 0   # macro / weighted F1: classes in y_true or y_pred
    in_true = support > 0              # balanced accuracy: classes in y_true
    bal = float(np.mean(rec[in_true])) if in_true.any() else math.nan
    chance = 1.0 / max(int(in_true.sum()), 1)  # adjusted: undefined (NaN) with one class in y_true
    weighted = float(np.average(f1[seen], weights=support[seen])) if support[seen].sum() else 0.0
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else math.nan,
        "macro_f1": float(np.mean(f1[seen])) if seen.any() else 0.0,
        "weighted_f1": weighted,
        "balanced_accuracy": bal,
        "balanced_accuracy_adjusted": (bal - chance) / (1.0 - chance) if chance < 1.0 else math.nan,
        "per_class": {
            str(name): {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion(y_true, y_pred, class_names).tolist(),
        "class_names": [str(c) for c in class_names],
    }


# --------------------------------------------------------------------------- multi-label


def _check_multilabel(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must be equal [N, C] shapes")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must be a 0/1 multi-hot matrix")
    return y_true.astype(np.int64), scores


def positive_classes(y_true: np.ndarray) -> np.ndarray:
    """Boolean [C] mask of classes with at least one positive in ``y_true``."""
    return np.asarray(y_true).sum(axis=0) > 0


def average_precision_per_class(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[C] average precision per class (sklearn); NaN where a class has no positive.

    AP is undefined without positives (sklearn would warn and return a
    meaningless value), so those classes are NaN and left out of the mAP.
    """
    from sklearn.metrics import average_precision_score

    y_true, scores = _check_multilabel(y_true, scores)
    ap = np.full(y_true.shape[1], np.nan)
    for c in np.flatnonzero(positive_classes(y_true)):
        ap[c] = average_precision_score(y_true[:, c], scores[:, c])
    return ap


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro AP over the classes with at least one positive (NaN if there are none)."""
    ap = average_precision_per_class(y_true, scores)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan


def map_report(
    y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """``mAP``, ``per_class_ap`` (name -> AP or NaN) and ``skipped`` (names without positives)."""
    ap = average_precision_per_class(y_true, scores)
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(len(ap))]
    if len(names) != len(ap):
        raise ValueError(f"{len(names)} class names for {len(ap)} score columns")
    skipped = [n for n, v in zip(names, ap) if not np.isfinite(v)]
    if skipped:
        log.info("mAP skips %d class(es) without positives: %s", len(skipped), ", ".join(skipped))
    return {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan,
        "per_class_ap": {n: float(v) for n, v in zip(names, ap)},
        "skipped": skipped,
    }


def multilabel_f1(
    y_true: np.ndarray, scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """Micro and macro F1 of ``scores >= threshold``.

    Macro F1 averages over the same classes as the mAP (at least one
    positive), so a class that never occurs in this split neither scores 0
    nor counts; its false positives still lower micro F1.
    """
    from sklearn.metrics import f1_score

    y_true, scores = _check_multilabel(y_true, scores)
    y_pred = (scores >= threshold).astype(np.int64)
    present = np.flatnonzero(positive_classes(y_true))
    macro = (
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        if present.size else math.nan
    )
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(macro),
        "threshold": float(threshold),
    }


def _candidate_thresholds(scores: np.ndarray, max_candidates: int) -> np.ndarray:
    """Distinct score values (thinned to quantiles when there are many), plus 0.5."""
    values = np.unique(scores)
    if values.size > max_candidates:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, max_candidates)))
    return np.unique(np.append(values, DEFAULT_THRESHOLD))


def select_threshold(
    y_val: np.ndarray,
    scores_val: np.ndarray,
    criterion: str = "micro_f1",
    max_candidates: int = 512,
) -> float:
    """One global threshold maximising ``criterion`` (micro_f1 | macro_f1) on validation.

    Candidates are the distinct validation scores (rule: ``score >= t``), so
    the choice does not depend on the scores being probabilities. Ties go to
    the lowest threshold. Use only validation data here, then
    :func:`apply_threshold` on test.
    """
    if criterion not in ("micro_f1", "macro_f1"):
        raise ValueError(f"criterion must be micro_f1 or macro_f1, got {criterion!r}")
    y_val, scores_val = _check_multilabel(y_val, scores_val)
    best_t, best = DEFAULT_THRESHOLD, -math.inf
    for t in _candidate_thresholds(scores_val, max_candidates):
        value = multilabel_f1(y_val, scores_val, t)[criterion]
        if value > best:
            best_t, best = float(t), value
    return best_t


def apply_threshold(y_test: np.ndarray, scores_test: np.ndarray, threshold: float) -> dict[str, float]:
    """Micro / macro F1 on test at a threshold chosen elsewhere (see :func:`select_threshold`)."""
    return multilabel_f1(y_test, scores_test, threshold)


def multilabel_report(
    y_true: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    y_val: np.ndarray | None = None,
    scores_val: np.ndarray | None = None,
    criterion: str = "micro_f1",
) -> dict[str, Any]:
    """mAP report plus F1 at 0.5 and, when validation is given, at the val-chosen threshold."""
    report = map_report(y_true, scores, class_names)
    report["f1@0.5"] = multilabel_f1(y_true, scores, DEFAULT_THRESHOLD)
    if (y_val is None) != (scores_val is None):
        raise ValueError("give both y_val and scores_val, or neither")
    if y_val is not None:
        t = select_threshold(y_val, scores_val, criterion)
        report["f1@val_threshold"] = apply_threshold(y_true, scores, t)
    return report


# --------------------------------------------------------------------------- seeds


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def aggregate_over_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of every numeric leaf over a list of metric dicts.

    Nested dicts keep their structure; each numeric leaf becomes
    ``{"mean", "std", "n"}`` where ``std`` is the sample standard deviation
    (ddof=1; 0.0 for a single run) and NaN values (e.g. an undefined AP) are
    ignored, ``n`` counting the finite ones. Non-numeric leaves (lists such
    as confusion matrices, strings) are dropped; keys missing from some runs
    are aggregated over the runs that have them.
    """
    if not runs:
        raise ValueError("aggregate_over_seeds needs at least one run")
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for run in runs for k in run))
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if all(isinstance(v, Mapping) for v in values):
            out[key] = aggregate_over_seeds(values)
        elif all(_is_number(v) for v in values):
            out[key] = _mean_std([float(v) for v in values])
    return out


def _mean_std(values: list[float]) -> dict[str, float | int]:
    finite = np.asarray([v for v in values if math.isfinite(v)])
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": int(finite.size)}


__all__ = [
    "confusion",
    "single_label_report",
    "positive_classes",
    "average_precision_per_class",
    "mean_average_precision",
    "map_report",
    "multilabel_f1",
    "select_threshold",
    "apply_threshold",
    "multilabel_report",
    "aggregate_over_seeds",
]
