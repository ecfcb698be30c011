"""`dvc repro` to the report on the user's own data, one layout each, with the micro model.

Each test copies the repo (as a fresh clone, `tests.test_dvc_pipeline._copy_repo`), points
params.yaml's `dataset` at a tree built from real photos in a pytest temp dir (the builders
of the layout tests, reused) and `model` at the micro checkpoint, and runs `dvc repro`
(all of dvc.yaml, as `make repro` does; the report is its last stage):

1. folders (day_night photos, CoOp-style classnames file), `cdul.task: null`: every non-CDUL
   stage runs, CDUL writes "not applicable" and the report's CDUL section says why;
2. Global Streetscapes (official train/test folders, val carved from train, a test image
   also listed in a train CSV, "dawn/dusk" lighting), with the overlap correction's generic
   set = the dataset's own unlabelled train pool: no official test id reaches the manifest's
   train/val, the few-shot draws, the views caches or the adapter, and "dawn/dusk" survives
   to the evaluation files and the report;
3. a CoOp split file: few-shot train draws from its train split, val draws from its val
   split, test predictions on its test split, CoOp's class names throughout;
4. PASCAL VOC (multi-label only): `train.heads: []`, `views: {}`: CDUL runs and reports,
   no train@/evaluate@ stage exists.

Every case: the demo (demo/dvc.yaml) never ran, and `dvc status` is clean afterwards.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.test_datasets_coop_split import CLASSES as COOP_CLASSES
from tests.test_datasets_coop_split import FILE as COOP_FILE
from tests.test_datasets_coop_split import caltech  # noqa: F401  (fixture: a CoOp split-file tree)
from tests.test_datasets_folders import wnid_tree  # noqa: F401  (fixture: day_night folders + classnames.txt)
from tests.test_datasets_global_streetscapes import LIGHTING, WEATHER_CASE, build_gss
from tests.test_datasets_voc import voc  # noqa: F401  (fixture: a VOC tree over CamVid photos)
from tests.test_dvc_pipeline import DVC, UNUSED, _copy_repo, _edit, _sh

pytestmark = pytest.mark.realdata

HEADS = ["zero_shot", "linear_probe"]
DATA_STAGES = {  # prepare, few-shot draws, the encoder caches, the prompts
    "prepare", "fewshot", "extract", "extract_tiles", "extract_views@tip", "encode_text"}
CDUL = {"cdul_pseudo", "cdul_train"}


def _stages(*heads: str) -> set[str]:
    return {f"{s}@{h}" for s in ("train", "evaluate") for h in heads}


def _repo(tmp_path: Path, micro_model: dict, dataset: dict, change=None) -> Path:
    """A fresh-clone-like copy whose params point at ``dataset`` and the micro model; cheap settings."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)

    def own(p):
        p["dataset"] = dataset
        p["model"] = {**micro_model, "weights_dep": micro_model["pretrained"]}
        p["runtime"] = {"device": "cpu", "precision": "fp32", "batch_size": 16, "num_workers": 0}
        p["extract"].update(rows_per_shard=32, rows_per_chunk=16)
        p["tiles"].update(grid=2, rows_per_shard=32, rows_per_chunk=16)
        p["views"] = {"tip": {**p["views"]["tip"], "n": 2, "rows_per_shard": 32, "rows_per_chunk": 16}}
        p["fewshot"] = {"shots": [1, 2], "seeds": [1], "val_shots": 2}
        p["train"] = {"heads": HEADS, "tasks": [], "shots": [1, 2], "seeds": [1]}
        p["text"] = {"templates": {"default": ["a photo of a {}."]}, "class_names": {}}
        p["generic"] = {}
        p["cdul"]["task"] = None
        p["cdul"]["classifier"].update(epochs=4, update_every=2)
        if change:
            change(p)
    _edit(repo, own)
    _sh(["git", "init", "-q"], repo)
    return repo


def _repro(repo: Path) -> set[str]:
    """`dvc repro` (dvc.yaml, as `make repro` runs it); the stages that ran."""
    out = _sh([*DVC, "repro"], repo)
    return set(re.findall(r"Running stage '([^']+)'", out))


def _check_demo_never_ran_and_up_to_date(repo: Path) -> None:
    assert not (repo / "data" / "synthstreets").exists()
    assert not (repo / "models" / "synthclip-tiny.pt").exists()
    assert json.loads(_sh([*DVC, "status", "dvc.yaml", "--json"], repo)) == {}
    # the whole project: only the demo's stages may be listed (never run, nothing needs them)
    assert set(json.loads(_sh([*DVC, "status", "--json"], repo))) <= UNUSED


def _section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', html, re.S)
    assert match, f"no <section id={sid!r}> in the report"
    return match.group(1)


def _manifest(repo: Path, name: str) -> list[dict]:
    return pq.read_table(repo / "data" / "prepared" / name / "manifest.parquet").to_pylist()


def _classes(repo: Path, name: str) -> dict[str, list[str]]:
    from pipeline.manifest import manifest_meta

    meta = manifest_meta(pq.read_schema(repo / "data" / "prepared" / name / "manifest.parquet"))
    return {t: info["classes"] for t, info in meta["tasks"].items()}


def _draws(repo: Path, name: str) -> list[dict]:
    return pq.read_table(repo / "data" / "prepared" / name / "fewshot.parquet").to_pylist()


def _headline(repo: Path) -> dict:
    return json.loads((repo / "reports" / "metrics.json").read_text())


def _check_heads_in_headline(headline: dict, heads: list[str], tasks: list[str]) -> None:
    assert headline["shots"] == 2
    for head in heads:
        assert set(headline[head]) == set(tasks), head
        for task in tasks:
            assert set(headline[head][task]) == {"accuracy", "macro_f1"}
            assert 0.0 <= headline[head][task]["accuracy"] <= 1.0


@pytest.fixture
def gss(shared_data: Path, tmp_path: Path) -> dict:
    """36 katkam photos in a manual_labels tree, 4 per (weather, lighting): 27 in train/, 9 in test/.

    Every lighting class ("dawn/dusk" included) has train and test images, so the heads fit
    on it; one test image is also listed in train/weather.csv (``build_gss``).
    """
    with (shared_data / "katkam_weather" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    pick = [r for w in WEATHER_CASE for light in LIGHTING
            for r in [r for r in rows if (r["weather"], r["lighting"]) == (w, light)][:4]]
    assert len(pick) == 36
    return build_gss(shared_data, tmp_path / "manual_labels", pick)


def test_folders_without_multilabel_task(tmp_path, micro_model, wnid_tree):  # noqa: F811
    dataset = {"name": "daynight", "root": str(wnid_tree), "layout": "folders",
               "classnames_file": "classnames.txt", "tasks": {"scene": {"type": "single"}}}
    repo = _repo(tmp_path, micro_model, dataset, lambda p: p["train"].update(tasks=["scene"]))
    ran = _repro(repo)
    # every stage of dvc.yaml but the overlap correction's (generic: {}); CDUL's write "not applicable"
    assert ran == DATA_STAGES | _stages(*HEADS) | CDUL | {"report"}
    _check_demo_never_ran_and_up_to_date(repo)

    assert _classes(repo, "daynight") == {"scene": ["sunlit street scene", "street at night"]}
    assert {r["split"] for r in _manifest(repo, "daynight")} == {"train", "val", "test"}  # val carved
    cdul = repo / "cdul" / "daynight" / "micro"
    for path in (cdul / "pseudo" / "pseudo_quality.json", cdul / "classifier" / "metrics.json"):
        assert "no multi-label task" in json.loads(path.read_text())["not_applicable"]
    html = (repo / "reports" / "daynight" / "micro" / "report.html").read_text()
    section = _section(html, "cdul")
    assert "Not applicable" in section and "cdul.task is null" in section and "no multi-label task" in section
    assert "<table" not in section
    assert "Not applicable: cdul.task is null" in (repo / "reports" / "daynight" / "micro" / "report.md").read_text()
    headline = _headline(repo)
    assert set(headline) == {"shots", *HEADS}  # no cdul entry: there is no multi-label task
    _check_heads_in_headline(headline, HEADS, ["scene"])
    for head in HEADS:
        per_shot = json.loads((repo / "evaluation" / head / "metrics.json").read_text())["scene"]["shots_2"]
        assert headline[head]["scene"] == {m: per_shot[m] for m in ("accuracy", "macro_f1")}


@pytest.mark.slow  # the most stages (heads, tip_adapter's views, the generic set's adapter): ~1.5-2.5 min
def test_global_streetscapes_keeps_official_test_out_of_everything_fitted(tmp_path, micro_model, gss):
    from pipeline.cache import FeatureCache
    from pipeline.overlap_correction.artifact import read_meta
    from pipeline.report.inputs import load_head
    from pipeline.report.tables import summed_confusion

    tasks = {"weather": {"type": "single"}, "lighting": {"type": "single", "column": "lighting_condition"}}
    dataset = {"name": "gss", "root": str(gss["root"]), "layout": "global_streetscapes", "val_fraction": 0.2,
               "tasks": tasks}
    pool = "gss_pool"  # the overlap correction's generic set: this dataset's own unlabelled train pool
    heads = [*HEADS, "tip_adapter"]

    def change(p):
        p["train"].update(heads=heads, tasks=["weather", "lighting"])
        p["generic"] = {pool: {k: v for k, v in dataset.items() if k != "name"}}
        p["overlap"]["heads"] = ["zero_shot"]
        p["overlap"]["generic_views"].update(split="train", n=2, rows_per_shard=32, rows_per_chunk=16)
        p["overlap"]["adapter"].update(mode="unsupervised", epochs=2, batch_size=16)
        p["heads"]["tip_adapter"].update(search_step=[20, 5])
    repo = _repo(tmp_path, micro_model, dataset, change)
    ran = _repro(repo)
    generic_stages = {f"{s}@{pool}" for s in ("prepare_generic", "extract_generic_views", "overlap_adapter")}
    oc_stages = {"train_oc@zero_shot-gss_pool", "evaluate_oc@zero_shot-gss_pool"}
    assert ran == DATA_STAGES | _stages(*heads) | generic_stages | oc_stages | CDUL | {"report"}
    _check_demo_never_ran_and_up_to_date(repo)

    official_test = {rel for rel, _, split, _, _ in gss["records"] if split == "test"}
    assert gss["leak"] in official_test  # the fixture lists this test image in train/weather.csv too
    rows = _manifest(repo, "gss")
    split = {r["id"]: r["split"] for r in rows}
    assert {i for i, s in split.items() if s == "test"} == official_test
    train = {i for i, s in split.items() if s == "train"}
    val = {i for i, s in split.items() if s == "val"}
    assert train and val and not (train | val) & official_test

    # what the heads fitted on: the few-shot draws and the views cache
    draws = _draws(repo, "gss")
    assert {d["task"] for d in draws} == {"weather", "lighting"}
    assert not {d["id"] for d in draws} & official_test
    assert all(split[d["id"]] == d["subset"] for d in draws), "a draw took a row from another split"
    views = set(FeatureCache(repo / "cache/gss/micro/views/tip.zarr").ids)
    assert views == train
    for head in [*heads, "zero_shot_oc"]:
        preds = pq.read_table(repo / "runs/gss/micro" / head / "predictions.parquet").to_pylist()
        assert {p["id"] for p in preds if p["subset"] == "test"} == official_test, head
        assert {p["id"] for p in preds if p["subset"] == "val"} <= val, head

    # the overlap adapter: the dataset's own train pool, never a val or test image
    generic = _manifest(repo, pool)
    assert {r["id"]: r["split"] for r in generic} == split  # the same splits (same seed, same official test)
    meta = read_meta(repo / f"adapters/{pool}/micro/overlap_adapter.pt")
    assert meta["params"]["mode"] == "unsupervised"
    assert set(meta["trained_on"]) == train
    assert set(FeatureCache(repo / f"cache/{pool}/micro/views.zarr").ids) == train

    # "dawn/dusk" (a '/' in a class name) survives to the evaluation files, the metrics and the report
    assert "dawn/dusk" in _classes(repo, "gss")["lighting"]
    for head in heads:
        with (repo / "evaluation" / head / "confusion.csv").open(newline="") as fh:
            lighting = [r for r in csv.DictReader(fh) if r["task"] == "lighting"]
        assert "dawn/dusk" in {r["actual"] for r in lighting}, head
    _check_heads_in_headline(_headline(repo), heads, ["weather", "lighting"])
    assert set(_headline(repo)) == {"shots", *heads, "zero_shot_oc"}
    # the report names classes only as the confusion matrices' tick labels (PNG): the names it drew them with
    for head in heads:
        _, names, _ = summed_confusion(load_head(repo / "evaluation", head), "lighting", "2")
        assert names == ["dawn/dusk", "day", "night"], head
    html = (repo / "reports/gss/micro/report.html").read_text()
    assert "Confusion matrix: lighting" in _section(html, "confusion")
    assert (repo / "reports/gss/micro/figures/confusion_lighting.png").stat().st_size > 0


def test_coop_split_file_gives_the_draws_and_class_names(tmp_path, micro_model, caltech):  # noqa: F811
    from pipeline.report.inputs import load_head
    from pipeline.report.tables import summed_confusion
    from pipeline.text import read_text

    dataset = {"name": "caltech", "root": str(caltech), "layout": "coop_split",
               "split_file": COOP_FILE, "image_dir": "101_ObjectCategories", "tasks": {"label": {"type": "single"}}}
    repo = _repo(tmp_path, micro_model, dataset, lambda p: p["train"].update(tasks=["label"]))
    ran = _repro(repo)
    assert ran == DATA_STAGES | _stages(*HEADS) | CDUL | {"report"}
    _check_demo_never_ran_and_up_to_date(repo)

    entries = json.loads((caltech / COOP_FILE).read_text())
    by_split = {s: {f"101_ObjectCategories/{path}" for path, _, _ in entries[s]} for s in ("train", "val", "test")}
    label_of = {f"101_ObjectCategories/{path}": name for s in entries for path, _, name in entries[s]}
    rows = _manifest(repo, "caltech")
    assert {r["id"]: r["split"] for r in rows} == {i: s for s, ids in by_split.items() for i in ids}
    assert all(r["label"] == label_of[r["id"]] for r in rows)

    draws = _draws(repo, "caltech")
    for subset in ("train", "val"):
        got = [d for d in draws if d["subset"] == subset]
        assert {d["shots"] for d in got} == {"1", "2"}
        assert {d["id"] for d in got} <= by_split[subset], subset
    two_shot = [d["id"] for d in draws if (d["subset"], d["shots"]) == ("train", "2")]
    assert len(two_shot) == 2 * len(COOP_CLASSES)  # 2 per class, from the file's train split
    for head in HEADS:
        preds = pq.read_table(repo / "runs/caltech/micro" / head / "predictions.parquet").to_pylist()
        assert {p["id"] for p in preds if p["subset"] == "test"} == by_split["test"], head

    # CoOp's names ("face", not the folder "Faces"), in label-index order, in the prompts and the outputs
    names = [name for _, name in sorted(COOP_CLASSES.values())]
    assert _classes(repo, "caltech") == {"label": names}
    assert list(read_text(repo / "cache/caltech/micro/text.zarr", "label").class_names) == names
    for head in HEADS:
        with (repo / "evaluation" / head / "confusion.csv").open(newline="") as fh:
            assert {r["actual"] for r in csv.DictReader(fh)} == set(names), head
        _, drawn, _ = summed_confusion(load_head(repo / "evaluation", head), "label", "2")
        assert drawn == names, head  # the report's confusion matrix labels
    _check_heads_in_headline(_headline(repo), HEADS, ["label"])


def test_voc_multilabel_only_runs_cdul_without_heads(tmp_path, micro_model, voc):  # noqa: F811
    dataset = {"name": "voc", "root": str(voc["root"]), "layout": "voc", "tasks": {"objects": {"type": "multi"}}}

    def change(p):
        p["train"].update(heads=[], tasks=[])
        p["views"] = {}
        p["cdul"]["task"] = "objects"
    repo = _repo(tmp_path, micro_model, dataset, change)
    ran = _repro(repo)
    assert ran == DATA_STAGES - {"extract_views@tip"} | CDUL | {"report"}
    stages = _sh([*DVC, "stage", "list", "--all", "--name-only"], repo).split()
    assert "report" in stages and not [s for s in stages if s.startswith(("train", "evaluate"))]
    _check_demo_never_ran_and_up_to_date(repo)

    assert sorted(p.name for p in (repo / "evaluation").iterdir()) == ["README.md"]
    assert not (repo / "runs").exists()
    assert not (repo / "cache/voc/micro/views").exists()  # views: {}, no view set
    cdul = json.loads((repo / "cdul/voc/micro/classifier/metrics.json").read_text())
    assert cdul["task"] == "objects" and 0.0 <= cdul["test_mAP"] <= 1.0
    quality = json.loads((repo / "cdul/voc/micro/pseudo/pseudo_quality.json").read_text())
    assert quality["task"] == "objects" and "not_applicable" not in quality
    assert _headline(repo) == {"cdul": {"objects": {"test_mAP": cdul["test_mAP"]}}}

    html = (repo / "reports/voc/micro/report.html").read_text()
    section = _section(html, "cdul")
    assert "<table" in section and "Not applicable" not in section
    assert "No single-label head ran" in _section(html, "comparison")
