"""Evaluation of stored predictions: summaries over seeds, few-shot rows, confusion rows."""
import numpy as np
import pyarrow as pa
from sklearn.metrics import accuracy_score, f1_score

from pipeline.evaluate import confusion_rows, fewshot_rows, run_reports, summary

CLASSES = {"weather": ["clear", "rainy", "snowy"]}


def _predictions() -> pa.Table:
    rng = np.random.default_rng(0)
    rows = {k: [] for k in ("task", "shots", "seed", "subset", "id", "y_true", "y_pred", "proba")}
    for shots in ("2", "16"):  # "2" > "16" as strings: shots must be ordered as numbers
        for seed in (1, 2):
            for subset in ("val", "test"):
                y = rng.integers(0, 3, 30)
                p = np.where(rng.random(30) < (0.5 if shots == "2" else 0.9), y, (y + 1) % 3)
                for i in range(30):
                    for k, v in zip(rows, ("weather", shots, seed, subset, f"s{i}", y[i], p[i], [0.0] * 3)):
                        rows[k].append(v)
    return pa.table(rows)


def test_reports_match_sklearn_and_summary_averages_seeds():
    table = _predictions()
    reports = run_reports(table, CLASSES)
    assert [(r["shots"], r["seed"]) for r in reports] == [("2", 1), ("2", 2), ("16", 1), ("16", 2)]
    df = {k: np.array(v) for k, v in table.to_pydict().items() if k != "proba"}
    for r in reports:
        part = (df["subset"] == "test") & (df["shots"] == r["shots"]) & (df["seed"] == r["seed"])
        assert np.isclose(r["accuracy"], accuracy_score(df["y_true"][part], df["y_pred"][part]))
        assert np.isclose(r["macro_f1"], f1_score(df["y_true"][part], df["y_pred"][part], average="macro"))
    fit = [{"task": "weather", "trainable_params": 10, "wall_time_s": 1.0, "peak_memory_mb": 5.0}]
    out = summary(reports, fit)["weather"]
    accs = [r["accuracy"] for r in reports if r["shots"] == "16"]
    assert np.isclose(out["shots_16"]["accuracy"], round(np.mean(accs), 4))
    assert np.isclose(out["shots_16"]["accuracy_std"], round(np.std(accs, ddof=1), 4))
    assert out["fit"] == {"trainable_params": 10}  # times and memory vary by machine: not a DVC metric
    curve = fewshot_rows("h", reports)
    assert [(r["head"], r["task"], r["shots"]) for r in curve] == [("h", "weather", "2"), ("h", "weather", "16")]
    for r in curve:
        runs = [x for x in reports if x["shots"] == r["shots"]]
        assert r["accuracy"] == round(np.mean([x["accuracy"] for x in runs]), 4)
        assert r["macro_f1"] == round(np.mean([x["macro_f1"] for x in runs]), 4)
    assert curve[1]["accuracy"] > curve[0]["accuracy"] + 0.2  # the two shot counts are told apart


def test_confusion_rows_use_largest_shots_and_class_names():
    table = _predictions()
    rows = confusion_rows(table, CLASSES)
    assert len(rows) == 2 * 30  # 16 shots, two seeds, test only
    df = {k: np.array(v) for k, v in table.to_pydict().items() if k != "proba"}
    want = (df["subset"] == "test") & (df["shots"] == "16")
    assert [r["actual"] for r in rows] == [CLASSES["weather"][i] for i in df["y_true"][want]]
    assert [r["predicted"] for r in rows] == [CLASSES["weather"][i] for i in df["y_pred"][want]]
