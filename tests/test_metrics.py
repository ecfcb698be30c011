"""pipeline.metrics against scikit-learn and against values computed by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from pipeline import metrics as M

NAMES = ["cat", "dog", "fox", "owl"]
# 'fox' never predicted, 'owl' absent from both arrays.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 0])
Y_PRED = np.array([0, 0, 1, 1, 0, 0, 1, 0])


def test_single_label_by_hand():
    r = M.single_label_report(Y_TRUE, Y_PRED, NAMES)
    # 4 of 8 correct (positions 0, 1, 3, 7).
    assert r["accuracy"] == pytest.approx(4 / 8)
    # cat: tp 3, predicted 5, true 4 -> P 3/5, R 3/4, F1 2/3.
    assert r["per_class"]["cat"] == pytest.approx(
        {"precision": 0.6, "recall": 0.75, "f1": 2 / 3, "support": 4})
    # dog: tp 1, predicted 3, true 2 -> P 1/3, R 1/2, F1 0.4.
    assert r["per_class"]["dog"]["f1"] == pytest.approx(0.4)
    assert r["per_class"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert r["per_class"]["owl"]["support"] == 0
    # Recalls over the classes in y_true: (3/4 + 1/2 + 0) / 3.
    assert r["balanced_accuracy"] == pytest.approx(5 / 12)
    # Adjusted: (5/12 - 1/3) / (1 - 1/3) = 1/8.
    assert r["balanced_accuracy_adjusted"] == pytest.approx(1 / 8)
    # Macro F1 over classes in y_true or y_pred (cat, dog, fox): (2/3 + 0.4 + 0) / 3.
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.4) / 3)
    assert r["confusion_matrix"] == [[3, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_single_label_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 60), rng.integers(0, 3, 60)  # class 3 never predicted
    r = M.single_label_report(y_true, y_pred, NAMES)
    assert r["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert r["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert r["balanced_accuracy_adjusted"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred, adjusted=True))
    p, rec, f, s = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], zero_division=0)
    for i, name in enumerate(NAMES):
        assert r["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": rec[i], "f1": f[i], "support": s[i]})


def test_string_labels_keep_fixed_order():
    to_names = np.array(NAMES, dtype=object)
    r = M.single_label_report(to_names[Y_TRUE], to_names[Y_PRED], NAMES)
    assert r["confusion_matrix"] == M.single_label_report(Y_TRUE, Y_PRED, NAMES)["confusion_matrix"]
    with pytest.raises(ValueError, match="not in class_names"):
        M.confusion(np.array(["cat"]), np.array(["emu"]), NAMES)


def test_zero_r_has_zero_adjusted_balanced_accuracy():
    y_true = np.array([0] * 6 + [1] * 3 + [2] * 1)
    r = M.single_label_report(y_true, np.zeros_like(y_true), ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["balanced_accuracy"] == pytest.approx(1 / 3)
    assert r["balanced_accuracy_adjusted"] == pytest.approx(0.0)
    perfect = M.single_label_report(y_true, y_true, ["a", "b", "c"])
    assert perfect["balanced_accuracy_adjusted"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- multi-label

Y_ML = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
S_ML = np.array([[0.9, 0.2, 0.1], [0.6, 0.8, 0.7], [0.4, 0.3, 0.2], [0.1, 0.6, 0.3]])


def test_map_by_hand_skips_class_without_positives():
    r = M.map_report(Y_ML, S_ML, ["a", "b", "c"])
    # a: ranking 0.9(+) 0.6(-) 0.4(+) 0.1(-) -> AP = (1/1 + 2/3) / 2 = 5/6.
    # b: ranking 0.8(+) 0.6(-) 0.3(+) 0.2(-) -> AP = 5/6 too.
    assert r["per_class_ap"]["a"] == pytest.approx(5 / 6)
    assert r["per_class_ap"]["b"] == pytest.approx(5 / 6)
    assert math.isnan(r["per_class_ap"]["c"])
    assert r["skipped"] == ["c"]
    assert r["mAP"] == pytest.approx(5 / 6)
    assert M.mean_average_precision(Y_ML, S_ML) == pytest.approx(5 / 6)


def test_map_matches_sklearn():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 5)) < 0.3).astype(int)
    y[:, 4] = 0
    s = rng.random((50, 5))
    ap = M.average_precision_per_class(y, s)
    expected = [average_precision_score(y[:, c], s[:, c]) for c in range(4)]
    np.testing.assert_allclose(ap[:4], expected)
    assert np.isnan(ap[4])
    assert M.mean_average_precision(y, s) == pytest.approx(np.mean(expected))


def test_multilabel_f1_by_hand_and_sklearn():
    r = M.multilabel_f1(Y_ML, S_ML, 0.5)
    # Predictions >= 0.5: [1,0,0], [1,1,1], [0,0,0], [0,1,0] -> tp 2, fp 3, fn 2.
    assert r["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 2))
    # a: tp1 fp1 fn1 -> 0.5; b: tp1 fp1 fn1 -> 0.5; c has no positives -> excluded.
    assert r["macro_f1"] == pytest.approx(0.5)
    pred = (S_ML >= 0.5).astype(int)
    assert r["micro_f1"] == pytest.approx(f1_score(Y_ML, pred, average="micro"))
    assert r["macro_f1"] == pytest.approx(f1_score(Y_ML, pred, labels=[0, 1], average="macro"))


def test_threshold_selected_on_val_then_applied():
    # Scores in a narrow band, so 0.5 predicts nothing but a val threshold separates.
    y_val = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s_val = np.array([[0.32, 0.10], [0.12, 0.33], [0.31, 0.34], [0.11, 0.13]])
    t = M.select_threshold(y_val, s_val)
    assert 0.13 < t <= 0.31
    assert M.multilabel_f1(y_val, s_val, 0.5)["micro_f1"] == 0.0
    test = M.apply_threshold(y_val, s_val, t)
    assert test["micro_f1"] == pytest.approx(1.0) and test["threshold"] == t
    report = M.multilabel_report(y_val, s_val, ["x", "y"], y_val=y_val, scores_val=s_val)
    assert report["f1@val_threshold"]["micro_f1"] == pytest.approx(1.0)
    assert report["f1@0.5"]["micro_f1"] == 0.0


def test_aggregate_over_seeds():
    runs = [
        {"accuracy": 0.5, "per_class": {"a": {"f1": 0.2}}, "cm": [[1]], "ap": math.nan},
        {"accuracy": 0.7, "per_class": {"a": {"f1": 0.4}}, "cm": [[2]], "ap": 0.3},
    ]
    agg = M.aggregate_over_seeds(runs)
    assert agg["accuracy"] == pytest.approx({"mean": 0.6, "std": math.sqrt(0.02), "n": 2})
    assert agg["per_class"]["a"]["f1"]["mean"] == pytest.approx(0.3)
    assert agg["ap"] == {"mean": 0.3, "std": 0.0, "n": 1}
    assert "cm" not in agg


@pytest.mark.parametrize("seed", range(6))
def test_single_label_matches_sklearn_on_random_draws(seed):
    """Every single-label number against sklearn, including classes missing from y_true,
    from y_pred, or from both, and string labels."""
    from sklearn.metrics import accuracy_score, confusion_matrix

    rng = np.random.default_rng(seed)
    n_cls = int(rng.integers(2, 6))
    y_true = rng.integers(0, n_cls - (seed % 2), int(rng.integers(5, 80)))
    y_pred = rng.integers(seed % 3 > 0, n_cls, y_true.size)
    names = [f"c{i}" for i in range(n_cls)]
    r = M.single_label_report(y_true, y_pred, names)
    assert r["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert r["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert r["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    with warnings.catch_warnings():  # sklearn warns on classes predicted but not in y_true
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(y_true, y_pred)
        bal_adj = balanced_accuracy_score(y_true, y_pred, adjusted=True)
    assert r["balanced_accuracy"] == pytest.approx(bal)
    assert r["balanced_accuracy_adjusted"] == pytest.approx(bal_adj)
    labels = list(range(n_cls))
    assert r["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    p, rec, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, name in enumerate(names):
        assert r["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": rec[i], "f1": f[i], "support": s[i]})
    as_names = np.array(names, dtype=object)
    assert M.single_label_report(as_names[y_true], as_names[y_pred], names) == r


def test_metrics_module_does_not_import_sklearn():
    """The evaluate@ stages import pipeline.metrics; sklearn.metrics costs 1.5 s per stage."""
    import subprocess
    import sys

    code = "import sys, pipeline.evaluate; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
