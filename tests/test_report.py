"""Report stage: every table and figure in one self-contained page, best values bold, long parquet, overlap."""
from __future__ import annotations

import base64
import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.evaluate import HEADLINE, fewshot_rows, summary
from pipeline.metrics import single_label_report
from pipeline.params import ParamsError, from_dict
from pipeline.report import METRICS, ReportParams
from pipeline.report.build import build_report, write_report
from pipeline.report.inputs import load_cdul, load_heads
from pipeline.report.overlap import (histogram_overlap, normalized_histograms, pair_indices, pair_similarities,
                                     task_overlap)
from pipeline.report.tables import choose_shots

HEADS = ["alpha", "beta"]
TASKS = {"t1": ["a", "b"], "t2": ["x", "y", "z"]}
SHOTS = ["1", "4"]
SEEDS = [1, 2]
FIT_KEYS = ("trainable_params", "wall_time_s", "peak_memory_mb")
PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- fake inputs


def _error_rate(head: str, task: str, shots: str, seed: int) -> float:
    """beta wins t1, alpha wins t2; more shots help; seeds differ a little."""
    base = {("alpha", "t1"): 0.4, ("beta", "t1"): 0.2, ("alpha", "t2"): 0.1, ("beta", "t2"): 0.3}[head, task]
    return base / (1 + int(shots)) + 0.02 * seed


def _write_evaluation(root: Path) -> None:
    """evaluation/<head>/{metrics,details}.json + fewshot.csv, made by the real evaluate functions."""
    rng = np.random.default_rng(0)
    for h, head in enumerate(HEADS):
        reports, fit = [], []
        for task, classes in TASKS.items():
            y_true = np.arange(60) % len(classes)
            for shots in SHOTS:
                for seed in SEEDS:
                    flip = rng.random(60) < _error_rate(head, task, shots, seed)
                    y_pred = np.where(flip, (y_true + 1) % len(classes), y_true)
                    reports.append({"task": task, "shots": shots, "seed": seed,
                                    **single_label_report(y_true, y_pred, classes)})
                    fit.append({"task": task, "shots": shots, "seed": seed, "trainable_params": (h + 1) * 1000,
                                "wall_time_s": 0.5 * (h + 1) + seed / 100, "peak_memory_mb": 3.0 + seed})
        out = root / head
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(summary(reports, fit)))
        (out / "details.json").write_text(json.dumps({"head": head, "runs": reports, "fit": fit}))
        with (out / "fewshot.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["head", "task", "shots", "accuracy", "macro_f1"])
            writer.writeheader()
            writer.writerows(fewshot_rows(head, reports))


def _write_cdul(root: Path) -> None:
    (root / "pseudo").mkdir(parents=True)
    (root / "classifier").mkdir()
    (root / "pseudo" / "pseudo_quality.json").write_text(json.dumps({"task": "objs", "mAP": {
        "train": {"global": 0.31, "local": 0.29, "final": 0.33},
        "test": {"global": 0.41, "local": 0.38, "final": 0.40}}}))
    (root / "classifier" / "metrics.json").write_text(json.dumps({
        "task": "objs", "test_mAP": 0.4242, "pseudo_final_test_mAP": 0.40,
        "f1@0.5": {"micro_f1": 0.5, "macro_f1": 0.45, "threshold": 0.5},
        "f1@val_threshold": {"micro_f1": 0.55, "macro_f1": 0.5, "threshold": 0.42},
        "fit": {"wall_time_s": 1.5, "trainable_params": 903, "peak_memory_mb": 12.0}}))


def _overlap_features(n_per_class: int = 12, dim: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """t1: classes on orthogonal axes (well separated); t2: labels unrelated to the features."""
    rng = np.random.default_rng(1)
    axes = np.eye(dim)
    feats = np.concatenate([axes[c] + 0.05 * rng.standard_normal((n_per_class, dim)) for c in range(2)])
    labels = np.repeat(["a", "b"], n_per_class)
    return {"t1": (feats, labels), "t2": (feats, rng.permutation(np.resize(["x", "y", "z"], len(feats))))}


@pytest.fixture
def inputs(tmp_path):
    _write_evaluation(tmp_path / "evaluation")
    _write_cdul(tmp_path / "cdul")
    return tmp_path


def _params(**kw) -> ReportParams:
    return ReportParams(**{"headline": "accuracy", "table_metrics": ("accuracy", "macro_f1"), **kw})


def _render(tmp_path: Path, cdul=True, overlap=True, params: ReportParams | None = None):
    params = params or _params()
    heads = load_heads(tmp_path / "evaluation", HEADS)
    results = [task_overlap(t, f, y, bins=params.overlap_bins) for t, (f, y) in _overlap_features().items()]
    report = build_report(heads, params, tasks=list(TASKS), cdul=load_cdul(tmp_path / "cdul") if cdul else None,
                          overlap=results if overlap else None, run_params={"report": {"headline": "accuracy"}},
                          identity={"model": "micro", "weights": "sha256:abc", "arrays": {"cls": [[8], "float16"]}})
    out = tmp_path / "out"
    write_report(report, out)
    return report, out


class _Tables(HTMLParser):
    """{table id: [[(text, bold), ...] per body row]} of a page."""

    def __init__(self):
        super().__init__()
        self.tables, self._id, self._row, self._cell, self._bold, self._in_body = {}, None, None, None, False, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._id = attrs.get("id")
            self.tables[self._id] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell, self._bold = "", False
        elif tag == "strong" and self._cell is not None:
            self._bold = True

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append((self._cell, self._bold))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _tables(html: str) -> dict[str, list[list[tuple[str, bool]]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


# --------------------------------------------------------------------------- the page


def test_page_has_every_table_and_figure_inline(inputs):
    report, out = _render(inputs)
    html = (out / "report.html").read_text()
    for section in ("comparison", "cost", "fewshot", "radar", "confusion", "cdul", "overlap", "params"):
        assert f'<section id="{section}">' in html, section
    tables = _tables(html)
    assert set(tables) == {"table-comparison-accuracy", "table-comparison-macro_f1", "table-cost",
                           "table-cdul-pseudo", "table-cdul-classifier", "table-overlap", "table-identity"}
    figures = {"fewshot_accuracy", "radar_accuracy", "confusion_t1", "confusion_t2", "overlap"}
    imgs = dict(re.findall(r'<img id="fig-([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', html))
    assert set(imgs) == figures
    for name, data in imgs.items():
        png = base64.b64decode(data)
        assert png.startswith(PNG) and png == (out / "figures" / f"{name}.png").read_bytes()
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == sorted(figures)
    # self-contained: no external stylesheet, script or image
    assert "<link" not in html and "<script" not in html and not re.search(r'src="(?!data:)', html)
    assert "<style>" in html

    # cost, CDUL, overlap, identity, params rows
    cost = {row[0][0]: [c for c, _ in row[1:]] for row in tables["table-cost"]}
    assert cost["alpha"][:2] == ["1,000", f"{np.mean([0.51, 0.52]):.3g}"] and cost["beta"][0] == "2,000"
    assert cost["alpha"][-1] == "5"  # peak MB: max over seeds (3 + 2)
    pseudo = {row[0][0]: row[1:] for row in tables["table-cdul-pseudo"]}
    assert pseudo["train"] == [("0.3100", False), ("0.2900", False), ("0.3300", True)]
    assert pseudo["test"][0] == ("0.4100", True)
    clf = {row[0][0]: row[1][0] for row in tables["table-cdul-classifier"]}
    assert clf["test mAP (classifier)"] == "0.4242" and clf["f1@val_threshold threshold"] == "0.4200"
    overlap = {row[0][0]: float(row[1][0]) for row in tables["table-overlap"]}
    assert overlap["t1"] == pytest.approx(report.metrics["t1"]["overlap"], abs=1e-3)
    ident = {row[0][0]: row[1][0] for row in tables["table-identity"]}
    assert ident["weights"] == "sha256:abc" and ident["arrays.cls"] == "[[8], 'float16']"
    assert "headline: accuracy" in html


def test_best_value_per_column_is_bold(inputs):
    _, out = _render(inputs)
    tables = _tables((out / "report.html").read_text())
    metrics = {h: json.loads((inputs / "evaluation" / h / "metrics.json").read_text()) for h in HEADS}
    for metric in ("accuracy", "macro_f1"):
        rows = {row[0][0]: row[1:] for row in tables[f"table-comparison-{metric}"]}
        assert list(rows) == HEADS
        for col, task in enumerate(TASKS):
            entry = {h: metrics[h][task]["shots_4"] for h in HEADS}  # 4 = the largest shots
            best = max(round(entry[h][metric], 3) for h in HEADS)
            for h in HEADS:
                text, bold = rows[h][col]
                assert text == f"{entry[h][metric]:.3f} ± {entry[h][f'{metric}_std']:.3f}"
                assert bold == (round(entry[h][metric], 3) == best), (metric, task, h)
        means = {h: np.mean([metrics[h][t]["shots_4"][metric] for t in TASKS]) for h in HEADS}
        best_mean = max(round(m, 3) for m in means.values())
        for h in HEADS:
            assert rows[h][-1] == (f"{means[h]:.3f}", round(means[h], 3) == best_mean)
    # the fake data make beta best on t1 and alpha best on t2
    acc = {row[0][0]: row[1:] for row in tables["table-comparison-accuracy"]}
    assert acc["beta"][0][1] and not acc["alpha"][0][1]
    assert acc["alpha"][1][1] and not acc["beta"][1][1]
    md = (out / "report.md").read_text()
    assert re.search(r"\| beta \| \*\*[0-9.]+ ± [0-9.]+\*\* \|", md)
    for title in ("accuracy at 4 shots", "Fit cost at 4 shots", "CDUL pseudo-label mAP", "CDUL classifier",
                  "Overlap per task", "Image cache identity"):
        assert f"### {title}" in md, title
    assert "![accuracy vs shots](figures/fewshot_accuracy.png)" in md


def test_confusion_matrices_are_the_best_head_summed_over_seeds(inputs):
    report, _ = _render(inputs)
    details = {h: json.loads((inputs / "evaluation" / h / "details.json").read_text()) for h in HEADS}
    captions = {f.name: f.caption for f in report.figures() if f.name.startswith("confusion_")}
    assert captions == {"confusion_t1": "t1: beta, 4 shots, 2 seeds", "confusion_t2": "t2: alpha, 4 shots, 2 seeds"}
    from pipeline.report.tables import summed_confusion
    heads = {h.head: h for h in load_heads(inputs / "evaluation", HEADS)}
    matrix, names, n = summed_confusion(heads["beta"], "t1", "4")
    expected = sum(np.array(r["confusion_matrix"]) for r in details["beta"]["runs"]
                   if r["task"] == "t1" and r["shots"] == "4")
    assert names == TASKS["t1"] and n == 2 and (matrix == expected).all() and matrix.sum() == 120


def test_results_parquet_is_long_format(inputs):
    _, out = _render(inputs)
    table = pq.read_table(out / "tables" / "results.parquet")
    assert table.column_names == ["head", "task", "shots", "seed", "metric", "value"]
    n_metrics = len(HEADLINE) + len(FIT_KEYS)
    assert table.num_rows == len(HEADS) * len(TASKS) * len(SHOTS) * len(SEEDS) * n_metrics
    rows = table.to_pylist()
    assert {r["metric"] for r in rows} == set(HEADLINE) | set(FIT_KEYS)
    keys = [(r["head"], r["task"], r["shots"], r["seed"], r["metric"]) for r in rows]
    assert len(set(keys)) == len(keys)
    run = next(r for r in json.loads((inputs / "evaluation" / "beta" / "details.json").read_text())["runs"]
               if r["task"] == "t2" and r["shots"] == "1" and r["seed"] == 2)
    value = next(r["value"] for r in rows if r["head"] == "beta" and r["task"] == "t2" and r["shots"] == "1"
                 and r["seed"] == 2 and r["metric"] == "macro_f1")
    assert value == pytest.approx(run["macro_f1"])
    overlap = json.loads((out / "overlap.json").read_text())
    assert set(overlap) == {"t1", "t2"} and overlap["t1"]["overlap"] < 0.05 < 0.8 < overlap["t2"]["overlap"]


def test_renders_without_cdul_or_overlap(inputs):
    _, out = _render(inputs, cdul=False, overlap=False, params=_params(shots=1))
    html = (out / "report.html").read_text()
    assert '<section id="cdul">' in html and "No CDUL outputs found." in html
    assert '<section id="overlap">' in html and "overlap not computed" in html
    assert "table-cdul-pseudo" not in html and 'id="fig-overlap"' not in html
    assert "accuracy at 1 shots" in html
    assert json.loads((out / "overlap.json").read_text()) == {}


def test_no_heads_and_no_overlap_still_writes_every_declared_output(tmp_path):
    # train.heads: [] on a multi-label-only dataset: nothing to draw, but dvc.yaml declares figures/ and tables/
    report = build_report([], ReportParams(), tasks=[])
    write_report(report, tmp_path / "out", headline=tmp_path / "metrics.json")
    assert report.figures() == [] and list((tmp_path / "out" / "figures").iterdir()) == []
    assert (tmp_path / "out" / "tables" / "results.parquet").is_file()
    assert "No single-label head ran" in (tmp_path / "out" / "report.html").read_text()


def test_stage_end_to_end(inputs):
    """The typer stage on files: params sections, tiny zarr cache + manifest for the overlap figure."""
    from typer.testing import CliRunner
    import typer

    from pipeline.cache import CacheWriter, ArraySpec
    from pipeline.manifest import META_KEY
    from stages.report import main

    feats, labels = _overlap_features()["t1"]
    ids = [f"img{i:03d}" for i in range(len(labels) + 4)]
    manifest = pa.table({"id": ids, "path": ids, "split": ["test"] * len(labels) + ["train"] * 4,
                         "t1": list(labels) + ["a", "b", "a", "b"], "objs": [["o"]] * len(ids)})
    meta = {"dataset": "fake", "tasks": {"t1": {"type": "single", "classes": ["a", "b"]},
                                         "objs": {"type": "multi", "classes": ["o"]}}}
    pq.write_table(manifest.replace_schema_metadata({META_KEY: json.dumps(meta)}), inputs / "manifest.parquet")
    writer = CacheWriter(inputs / "images.zarr", ids, [ArraySpec("cls", (feats.shape[1],))], {"model": "fake"}, 8, 4)
    writer.prepare()
    all_feats = np.concatenate([feats, np.ones((4, feats.shape[1]))]).astype(np.float16)
    for shard in writer.pending():
        rows = writer.shard_rows(shard)
        writer.write_shard(shard, {"cls": all_feats[rows.start:rows.stop]})
    writer.finalize()
    params = inputs / "params.yaml"
    params.write_text(yaml.safe_dump({
        "dataset": {"name": "fake"}, "model": {"tag": "micro"},
        "train": {"heads": HEADS, "tasks": list(TASKS), "shots": [1, 4], "seeds": SEEDS},
        "report": {"headline": "macro_f1", "table_metrics": ["accuracy"], "shots": None, "heads": None,
                   "overlap_split": "test", "overlap_max_pairs": 1000, "overlap_bins": 20, "seed": 0}}))
    app = typer.Typer()
    app.command()(main)
    out = inputs / "reports"
    result = CliRunner().invoke(app, ["--evaluation", str(inputs / "evaluation"), "--cdul", str(inputs / "cdul"),
                                      "--images", str(inputs / "images.zarr"), "--manifest",
                                      str(inputs / "manifest.parquet"), "--out-dir", str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "<title>clipcache report: fake / micro</title>" in html
    assert 'id="table-comparison-macro_f1"' in html and 'id="table-comparison-accuracy"' in html
    assert 'id="fig-fewshot_macro_f1"' in html and 'id="fig-overlap"' in html
    overlap = json.loads((out / "overlap.json").read_text())
    assert list(overlap) == ["t1"] and overlap["t1"]["images"] == len(labels)  # test split only, single-label only
    assert overlap["t1"]["overlap"] < 0.05
    ident = {row[0][0]: row[1][0] for row in _tables(html)["table-identity"]}
    assert ident["model"] == "fake" and ident["arrays.cls"] == "[[8], 'float16']"


# --------------------------------------------------------------------------- params and shots


def test_report_params():
    assert METRICS == HEADLINE
    cfg = from_dict(ReportParams, {"headline": "macro_f1", "table_metrics": ["accuracy"], "shots": "all"}, "report")
    assert cfg.table_metrics == ("accuracy",) and cfg.shots == "all"
    for bad in ({"headline": "auc"}, {"shots": 0}, {"overlap_bins": 1}, {"colour": "red"}):
        with pytest.raises(ParamsError, match="report"):
            from_dict(ReportParams, bad, "report")


def test_choose_shots(inputs):
    heads = load_heads(inputs / "evaluation", HEADS)
    assert choose_shots(heads, list(TASKS)) == "4"
    assert choose_shots(heads, list(TASKS), 1) == "1"
    with pytest.raises(ValueError, match="16 was not evaluated"):
        choose_shots(heads, list(TASKS), 16)
    heads[0].summary["t1"]["shots_all"] = heads[0].summary["t1"]["shots_4"]
    assert choose_shots(heads, list(TASKS)) == "4"  # 'all' only for one head: not common
    for h in heads:
        for t in TASKS:
            h.summary[t]["shots_all"] = h.summary[t]["shots_4"]
    assert choose_shots(heads, list(TASKS)) == "all"


# --------------------------------------------------------------------------- overlap


def _overlap_by_hand(a, b, bins, lo, hi):
    """Independent: count each bin with comparisons (the last bin closed), normalise, sum the minima."""
    width = (hi - lo) / bins
    total = 0.0
    for k in range(bins):
        left, right = lo + k * width, lo + (k + 1) * width
        inside = (lambda x: (x >= left) & ((x <= hi) if k == bins - 1 else (x < right)))
        total += min(inside(a).sum() / len(a), inside(b).sum() / len(b))
    return total


def test_histogram_overlap_extremes_and_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 0.1, 500)
    assert histogram_overlap(a, a.copy(), bins=30) == pytest.approx(1.0)
    assert histogram_overlap(a, rng.permutation(a), bins=7) == pytest.approx(1.0)
    assert histogram_overlap(rng.uniform(-1, -0.1, 300), rng.uniform(0.1, 1, 200), bins=10) == 0.0
    # two uniform grids shifted by half their width share half their mass
    grid = (np.arange(100) + 0.5) / 100
    assert histogram_overlap(grid, grid + 0.5, bins=15, value_range=(0.0, 1.5)) == pytest.approx(0.5, abs=0.02)
    b = rng.normal(0.5, 0.2, 300)
    for bins in (5, 20, 50):
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        assert histogram_overlap(a, b, bins=bins) == pytest.approx(_overlap_by_hand(a, b, bins, lo, hi))
    edges, pa_, pb_ = normalized_histograms(a, b, 20)
    assert len(edges) == 21 and pa_.sum() == pytest.approx(1) and pb_.sum() == pytest.approx(1)
    assert np.isnan(histogram_overlap(a, np.array([])))


def test_pair_similarities_match_a_double_loop():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((9, 5))
    labels = np.array(list("aabbbcaac"))
    same, diff, sampled = pair_similarities(feats, labels, max_pairs=10_000)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    exp_same, exp_diff = [], []
    for i in range(9):
        for j in range(i + 1, 9):
            (exp_same if labels[i] == labels[j] else exp_diff).append(float(unit[i] @ unit[j]))
    assert not sampled
    np.testing.assert_allclose(np.sort(same), np.sort(exp_same))
    np.testing.assert_allclose(np.sort(diff), np.sort(exp_diff))


def test_pairs_are_sampled_above_the_cap_and_never_self():
    i, j, sampled = pair_indices(1000, 5000, seed=1)
    assert sampled and len(i) == 5000 and (i != j).all() and i.max() < 1000 and j.max() < 1000
    i2, j2, _ = pair_indices(1000, 5000, seed=1)
    assert (i == i2).all() and (j == j2).all()
    assert pair_indices(5, 10)[2] is False and len(pair_indices(5, 10)[0]) == 10


def test_task_overlap_separated_vs_identical():
    feats, labels = _overlap_features()["t1"]
    separated = task_overlap("t1", feats, labels, bins=20)
    assert separated.overlap == 0.0 and separated.same_mean > 0.9 > 0.1 > separated.diff_mean
    assert separated.same_pairs + separated.diff_pairs == len(labels) * (len(labels) - 1) // 2
    identical = task_overlap("t", np.ones((10, 4)), np.repeat(["a", "b"], 5), bins=20)
    assert identical.overlap == pytest.approx(1.0)
    summary_ = separated.summary()
    assert summary_["overlap"] == 0.0 and summary_["images"] == len(labels) and summary_["bins"] == 20


def test_a_head_missing_a_task_shows_a_dash_and_is_never_best(inputs):
    from pipeline.report.tables import MISSING, comparison_table

    heads = load_heads(inputs / "evaluation", HEADS)
    del heads[1].summary["t2"]
    assert choose_shots(heads, list(TASKS)) == "4"
    table = comparison_table(heads, list(TASKS), "4", "accuracy")
    beta = next(r for r in table.rows if r[0].text == "beta")
    assert beta[2].text == MISSING and not beta[2].bold and beta[3].text == MISSING
    alpha = next(r for r in table.rows if r[0].text == "alpha")
    assert alpha[2].bold and alpha[3].bold  # the only head with a t2 value and a mean


# --------------------------------------------------------------------------- overlap correction


def test_correction_section_pairs_heads_and_overlap(inputs):
    from pipeline.report.correction import CorrectionInputs, pair_heads
    from pipeline.report.tables import metric_at

    # "alpha_oc" is alpha rerun on corrected features; here it is beta's evaluation under that name.
    src = inputs / "evaluation" / "beta"
    dst = inputs / "evaluation" / "alpha_oc"
    dst.mkdir()
    for name in ("metrics.json", "details.json"):
        (dst / name).write_text((src / name).read_text())
    params = _params()
    heads = load_heads(inputs / "evaluation", HEADS)
    feats = _overlap_features()
    before = [task_overlap(t, f, y, bins=params.overlap_bins) for t, (f, y) in feats.items()]
    # "after": t2's labels now follow the feature clusters, so its overlap drops
    after = [before[0], task_overlap("t2", feats["t1"][0], feats["t1"][1], bins=params.overlap_bins)]
    pairs = pair_heads(heads, load_heads(inputs / "evaluation", ["alpha_oc"]))
    assert [(a.head, b.head) for a, b in pairs] == [("alpha", "alpha_oc")]
    report = build_report(heads, params, tasks=list(TASKS), overlap=before,
                          correction=CorrectionInputs(before, after, pairs, {"mode": "supervised"}))
    out = inputs / "out"
    write_report(report, out)
    html = (out / "report.html").read_text()
    tables = _tables(html)
    rows = {r[0][0]: r for r in tables["table-overlap-correction"]}
    assert rows["t2"][1][0] == f"{before[1].overlap:.3f}" and rows["t2"][2] == (f"{after[1].overlap:.3f}", True)
    assert 'id="fig-overlap_corrected"' in html
    beta = load_heads(inputs / "evaluation", ["beta"])[0]
    for row in tables["table-correction-accuracy"]:
        head, task, shots, without, with_, change = (c[0] for c in row)
        a, b = metric_at(heads[0], task, shots, "accuracy"), metric_at(beta, task, shots, "accuracy")
        assert head == "alpha" and without == f"{a[0]:.3f} ± {a[1]:.3f}" and with_ == f"{b[0]:.3f} ± {b[1]:.3f}"
        assert change == f"{b[0] - a[0]:+.3f}"
    assert len(tables["table-correction-accuracy"]) == len(TASKS) * len(SHOTS)
    metrics = json.loads((out / "overlap.json").read_text())
    assert metrics["t2"]["corrected"]["overlap"] == round(after[1].overlap, 4)


def test_stage_applies_the_adapter_file(inputs, tmp_path):
    """An identity adapter (0 epochs) leaves the overlap unchanged; its identity must match the model."""
    import torch
    from pipeline.cache import CacheMismatchError
    from pipeline.overlap_correction import OverlapAdapterParams, fit_adapter
    from pipeline.overlap_correction.artifact import describe, load_correction, read_meta, save_artifact

    views = np.random.default_rng(0).standard_normal((6, 2, 8)).astype(np.float32)
    ids = np.array([f"g{i}" for i in range(6)], dtype=object)
    fitted = fit_adapter(views, None, ids, OverlapAdapterParams(mode="unsupervised", epochs=0, device="cpu"))
    path = tmp_path / "adapter.pt"
    save_artifact(fitted, path, identity={"model": "m", "weights": "sha256:1"}, generic={"cache": "g", "task": None})
    assert json.loads(path.with_suffix(".json").read_text()) == describe(read_meta(path))
    x = _overlap_features()["t1"][0].astype(np.float32)
    transform = load_correction(path, expect={"weights": "sha256:1"})
    np.testing.assert_allclose(transform(x), x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(CacheMismatchError, match="'weights'"):
        load_correction(path, expect={"weights": "sha256:2"})
    assert torch.load(path, weights_only=True)["meta"]["identity"]["model"] == "m"
