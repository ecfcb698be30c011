"""Stage `overlap_adapter`: train the overlap-correcting adapter on the generic set's cached views.

    python -m stages.overlap_adapter --manifest data/prepared/<generic>/manifest.parquet
        --views cache/<generic>/<model>/views.zarr --out-dir adapters/<generic>/<model>

Writes ``overlap_adapter.pt`` (weights + metadata) and ``overlap_adapter.json``
(the metadata as a DVC metric). Reads nothing of the target dataset.
"""
from pathlib import Path

import pyarrow.parquet as pq
import typer

from pipeline.cache import FeatureCache
from pipeline.encoders import ModelParams, weights_identity
from pipeline.imageio import expected_decode
from pipeline.overlap_correction.artifact import OverlapParams, generic_labels, save_artifact
from pipeline.overlap_correction.train import fit_adapter
from pipeline.params import load_section
from stages import expected_errors, setup_logging


def main(
    manifest: Path = typer.Option(..., help="the generic set's manifest.parquet (labels for supervised mode)"),
    views: Path = typer.Option(..., help="the generic set's views.zarr"),
    out_dir: Path = typer.Option(..., help="directory for overlap_adapter.pt and overlap_adapter.json"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
) -> None:
    setup_logging()
    cfg = load_section(OverlapParams, "overlap", params)
    expect = weights_identity(load_section(ModelParams, "model", params))
    cache = FeatureCache(views, expect={**expect, **expected_decode(params)})
    ids = cache.ids
    labels = None
    if cfg.adapter.mode == "supervised":
        ids, labels = generic_labels(pq.read_table(manifest), cfg.generic_task, ids)
    fitted = fit_adapter(cache.read("views", ids), labels, ids, cfg.adapter)
    save_artifact(fitted, out_dir / "overlap_adapter.pt", identity=expect,
                  generic={"cache": str(views), "task": cfg.generic_task if labels is not None else None})


if __name__ == "__main__":
    typer.run(expected_errors(main))
