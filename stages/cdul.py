"""Stages `cdul_pseudo` (tiled similarity vectors) and `cdul_train` (classifier with gradient alignment).

    python -m stages.cdul pseudo --manifest M --tiles tiles.zarr --text text.zarr --out-dir cdul/
    python -m stages.cdul train  --manifest M --images images.zarr --out-dir cdul/

With ``cdul.task: null`` (a dataset without a multi-label task) both write only
their declared outputs, marked not applicable, so the report still runs.
"""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from pipeline.cache import FeatureCache
from pipeline.cdul import CdulParams
from pipeline.cdul.protocol import multi_hot, pseudo_labels, quality_by_split, scores_table, train_and_test
from pipeline.encoders import ModelParams, weights_identity
from pipeline.errors import UserError
from pipeline.imageio import expected_decode
from pipeline.files import atomic_path
from pipeline.params import load_section
from pipeline.modelfile import encoder_identity, save_head
from pipeline.text import read_text
from stages import expected_errors, setup_logging

app = typer.Typer(add_completion=False, help=__doc__)
PARAMS = typer.Option(Path("params.yaml"), help="params file")
NOT_APPLICABLE = "cdul.task is null: the dataset has no multi-label task"


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))


@app.command()
@expected_errors
def pseudo(manifest: Path = typer.Option(...), tiles: Path = typer.Option(...), text: Path = typer.Option(...),
           out_dir: Path = typer.Option(...), params: Path = PARAMS) -> None:
    """Global, aggregated-local and final pseudo-label vectors (by id) and their mAP per split."""
    setup_logging()
    cfg = load_section(CdulParams, "cdul", params)
    if cfg.task is None:
        with atomic_path(out_dir / "pseudo_labels.parquet") as tmp:
            pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp)
        return _write_json(out_dir / "pseudo_quality.json", {"task": None, "not_applicable": NOT_APPLICABLE})
    expect = weights_identity(load_section(ModelParams, "model", params))
    ids, classes, split, y = multi_hot(pq.read_table(manifest), cfg.task)
    scores = pseudo_labels(FeatureCache(tiles, expect={**expect, **expected_decode(params)}).read("tiles", ids),
                           read_text(text, cfg.task, expect=expect), cfg.similarity)
    with atomic_path(out_dir / "pseudo_labels.parquet") as tmp:
        pq.write_table(scores_table(ids, split, scores), tmp)
    _write_json(out_dir / "pseudo_quality.json", {"task": cfg.task, "mAP": quality_by_split(scores, split, y)})


@app.command()
@expected_errors
def train(manifest: Path = typer.Option(...), images: Path = typer.Option(...), pseudo_dir: Path = typer.Option(...),
          out_dir: Path = typer.Option(...), params: Path = PARAMS) -> None:
    """Classifier on cached image embeddings against the train split's final pseudo-labels."""
    setup_logging()
    cfg = load_section(CdulParams, "cdul", params)
    if cfg.task is None:
        _write_json(out_dir / "fit" / "details.json", {"not_applicable": NOT_APPLICABLE})
        return _write_json(out_dir / "metrics.json", {"task": None, "not_applicable": NOT_APPLICABLE})
    expect = weights_identity(load_section(ModelParams, "model", params))
    ids, classes, split, y = multi_hot(pq.read_table(manifest), cfg.task)
    table = pq.read_table(pseudo_dir / "pseudo_labels.parquet")
    if table.column("id").to_pylist() != list(ids):
        raise UserError(f"{pseudo_dir}: pseudo-label ids differ from the manifest's rows; rerun cdul_pseudo")
    final = np.array(table.column("final").to_pylist(), dtype=np.float32)
    cache = FeatureCache(images, expect={**expect, **expected_decode(params)})
    clf, report, _ = train_and_test(cache.read("cls", ids), ids, split, y, final, classes, cfg.classifier)
    save_head(clf, out_dir / "fit" / "classifier", name="cdul_classifier", task=cfg.task, classes=list(classes),
              encoder=encoder_identity(cache.identity))
    _write_json(out_dir / "metrics.json", {"task": cfg.task, "test_mAP": round(report["mAP"], 4),
                                           "pseudo_final_test_mAP": round(report["pseudo_final_test"], 4),
                                           "f1@0.5": report["f1@0.5"], "f1@val_threshold": report.get("f1@val_threshold"),
                                           # wall time and memory vary by machine: details.json only
                                           "fit": {"trainable_params": report["fit"]["trainable_params"]}})
    _write_json(out_dir / "fit" / "details.json", report)


if __name__ == "__main__":
    app()
