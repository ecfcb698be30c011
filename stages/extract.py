"""Stages `extract` (CLS embeddings + patch tokens), `extract_tiles` (CDUL crops), `extract_views` (augmentations).

    python -m stages.extract images --index images.parquet --root DATA --out images.zarr
    torchrun --nproc_per_node=2 -m stages.extract images ...   # same arrays, shards split over ranks
"""
from pathlib import Path

import pyarrow.parquet as pq
import typer

from pipeline import distributed
from pipeline.encoders import ModelParams, RuntimeParams, load_model, resolve_device
from pipeline.augment import ViewsParams
from pipeline.extract import ExtractParams, TilesParams, extract
from pipeline.imageio import DecodeParams
from pipeline.params import load_section, read_params
from stages import expected_errors, setup_logging

app = typer.Typer(add_completion=False, help=__doc__)

INDEX = typer.Option(..., help="images.parquet (id, path) from the prepare stage")
ROOT = typer.Option(..., help="dataset root the manifest paths are relative to")
OUT = typer.Option(..., help="zarr group to write")
PARAMS = typer.Option(Path("params.yaml"), help="params file")


def _run(kind: str, section: str, cfg_cls: type, index: Path, root: Path, out: Path, params: Path,
         splits: Path | None = None) -> None:
    setup_logging()
    runtime = load_section(RuntimeParams, "runtime", params)
    cfg = load_section(cfg_cls, section, params)
    if (reason := _not_applicable(kind, section, cfg, params)) is not None:
        from pipeline.cache import write_not_applicable

        return write_not_applicable(out, reason)
    device = distributed.rank_device(resolve_device(runtime.device))
    loaded = load_model(load_section(ModelParams, "model", params), device)
    table = pq.read_table(index)
    ids, paths = table.column("id").to_pylist(), table.column("path").to_pylist()
    if splits is not None and getattr(cfg, "split", None) is not None:
        from pipeline.manifest_meta import split_ids  # only the views stages depend on it
        keep = split_ids(pq.read_table(splits), cfg.split, f"{section}.split")
        paths = [p for i, p in zip(ids, paths) if i in keep]
        ids = [i for i in ids if i in keep]
    extract(kind, loaded, cfg, runtime, ids, paths, root, out, load_section(DecodeParams, "decode", params))
    distributed.shutdown()


def _not_applicable(kind: str, section: str, cfg: object, params: Path) -> str | None:
    """Why this cache has no work on this dataset, or None (DVC runs the stage either way)."""
    if kind == "views" and getattr(cfg, "n", 1) == 0:
        return f"{section}.n is 0"
    if kind == "tiles" and (read_params(params).get("cdul") or {}).get("task") is None:
        return "cdul.task is null: the dataset has no multi-label task for CDUL"
    return None


@app.command()
@expected_errors
def images(index: Path = INDEX, root: Path = ROOT, out: Path = OUT, params: Path = PARAMS) -> None:
    """Projected, normalised image embeddings and patch tokens of the configured blocks."""
    _run("images", "extract", ExtractParams, index, root, out, params)


@app.command()
@expected_errors
def tiles(index: Path = INDEX, root: Path = ROOT, out: Path = OUT, params: Path = PARAMS) -> None:
    """Embeddings of the whole image and its grid x grid crops: [N, 1 + grid^2, D]."""
    _run("tiles", "tiles", TilesParams, index, root, out, params)


@app.command()
@expected_errors
def views(index: Path = INDEX, root: Path = ROOT, out: Path = OUT, params: Path = PARAMS,
          splits: Path = typer.Option(..., help="splits.parquet (id, split) from the prepare stage"),
          section: str = typer.Option(..., help="params section: views.<set> (a named view set), or "
                                               "overlap.generic_views for the generic set"),
          ) -> None:
    """Embeddings of n seeded augmented views of each image in the section's split: [N, n, D]."""
    _run("views", section, ViewsParams, index, root, out, params, splits)


if __name__ == "__main__":
    app()
