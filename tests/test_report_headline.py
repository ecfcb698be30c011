"""The run's headline metrics file, and a report for datasets the DAG switches parts off for.

The headline is what `dvc metrics show` / `dvc exp show` list, so it is checked
against the per-shot metrics.json files read directly (not through the code that
wrote it); the report must render without heads (a multi-label-only dataset),
with CDUL marked not applicable (a single-label-only one), and without an
overlap adapter (``generic: {}``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.report.build import build_report, write_report
from pipeline.report.inputs import load_cdul, load_heads
from stages.report import _adapter_path
from tests.test_report import HEADS, TASKS, _params, inputs  # noqa: F401  (fixture)


def test_headline_is_accuracy_and_macro_f1_at_the_largest_shots_and_cdul_map(inputs, tmp_path):
    heads = load_heads(inputs / "evaluation", HEADS)
    report = build_report(heads, _params(), tasks=list(TASKS), cdul=load_cdul(inputs / "cdul"))
    path = tmp_path / "reports" / "metrics.json"
    write_report(report, tmp_path / "out", headline=path)
    got = json.loads(path.read_text())
    want = {"shots": 4, "cdul": {"objs": {"test_mAP": 0.4242}}}
    for head in HEADS:
        per_shot = json.loads((inputs / "evaluation" / head / "metrics.json").read_text())
        want[head] = {t: {m: round(per_shot[t]["shots_4"][m], 4) for m in ("accuracy", "macro_f1")} for t in TASKS}
    assert got == want
    # report.shots picks the shots the headline reports, as the tables do
    report = build_report(heads, _params(shots=1), tasks=list(TASKS), cdul=None)
    assert report.headline["shots"] == 1 and "cdul" not in report.headline
    assert report.headline["alpha"]["t1"]["accuracy"] == round(
        json.loads((inputs / "evaluation/alpha/metrics.json").read_text())["t1"]["shots_1"]["accuracy"], 4)


def test_report_without_heads_is_the_cdul_report(inputs, tmp_path):
    report = build_report([], _params(), tasks=[], cdul=load_cdul(inputs / "cdul"))
    paths = write_report(report, tmp_path / "out", headline=tmp_path / "metrics.json")
    html = paths["html"].read_text()
    assert "train.heads is empty" in html and 'id="table-cdul-classifier"' in html
    assert 'id="table-comparison-accuracy"' not in html
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"cdul": {"objs": {"test_mAP": 0.4242}}}


def test_cdul_not_applicable_says_why(inputs, tmp_path):
    cdul = tmp_path / "cdul"
    reason = "cdul.task is null: the dataset has no multi-label task"
    for rel in ("pseudo/pseudo_quality.json", "classifier/metrics.json"):
        (cdul / rel).parent.mkdir(parents=True, exist_ok=True)
        (cdul / rel).write_text(json.dumps({"task": None, "not_applicable": reason}))
    report = build_report(load_heads(inputs / "evaluation", HEADS), _params(), tasks=list(TASKS),
                          cdul=load_cdul(cdul))
    html = write_report(report, tmp_path / "out")["html"].read_text()
    assert f"Not applicable: {reason}." in html and 'id="table-cdul-pseudo"' not in html
    assert "cdul" not in report.headline


def test_adapter_of_the_one_generic_set(tmp_path):
    params = {"model": {"tag": "m"}, "generic": {}}
    assert _adapter_path(tmp_path, params) is None  # correction off
    params["generic"] = {"pool": {"root": "x"}}
    with pytest.raises(UserError, match="no overlap adapter for generic set 'pool'"):
        _adapter_path(tmp_path, params)
    path = tmp_path / "pool" / "m" / "overlap_adapter.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert _adapter_path(tmp_path, params) == path
    params["generic"]["other"] = {"root": "y"}
    with pytest.raises(UserError, match="generic: the report compares one generic set"):
        _adapter_path(tmp_path, params)


def test_heads_that_need_no_validation_are_marked(inputs, tmp_path):
    """The train stage records selects_on_validation per fit; the comparison table marks the heads without it."""
    from tests.test_report import _tables

    details = inputs / "evaluation" / "alpha" / "details.json"
    data = json.loads(details.read_text())
    data["fit"] = [{**f, "selects_on_validation": False} for f in data["fit"]]
    details.write_text(json.dumps(data))
    report = build_report(load_heads(inputs / "evaluation", HEADS), _params(), tasks=list(TASKS))
    html = write_report(report, tmp_path / "out")["html"].read_text()
    names = [row[0][0] for row in _tables(html)["table-comparison-accuracy"]]
    assert names == ["alpha †", "beta"]
    assert "†: the head chooses nothing on the validation draw" in html
