"""Stages `prepare` / `prepare_generic`: dataset -> manifest.parquet, images.parquet, splits.parquet, skipped.csv."""
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer

from pipeline.manifest import DatasetParams, build_manifest, image_index
from pipeline.params import ParamsError, from_dict, load_section, read_params
from pipeline.files import atomic_path
from stages import expected_errors, setup_logging


def main(
    out_dir: Path = typer.Option(..., help="directory for manifest.parquet, images.parquet, splits.parquet, skipped.csv"),
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    section: str = typer.Option("dataset", help="params section describing the dataset "
                                                "(generic.<name>: a generic set of the overlap correction)"),
) -> None:
    setup_logging()
    dataset = _load_dataset(section, params)
    table, skipped = build_manifest(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    # images.parquet holds only what extraction depends on (ids, paths, content hashes),
    # so a label edit never re-extracts while an edited image does.
    with atomic_path(out_dir / "images.parquet") as tmp:
        pq.write_table(image_index(table, Path(dataset.root)), tmp)
    # splits.parquet: which rows are training rows, for the views stage (again without the labels).
    with atomic_path(out_dir / "splits.parquet") as tmp:
        pq.write_table(table.select(["id", "split"]).replace_schema_metadata(None), tmp)
    with atomic_path(out_dir / "manifest.parquet") as tmp:
        pq.write_table(table, tmp)
    report = pa.table({k: pa.array([s[k] for s in skipped], pa.string()) for k in ("source", "path", "reason")})
    with atomic_path(out_dir / "skipped.csv") as tmp:
        pacsv.write_csv(report, tmp)


def _load_dataset(section: str, params: Path) -> DatasetParams:
    """``dataset``, or a ``generic.<name>`` entry, which is named by its key (no ``name:`` key of its own)."""
    if not section.startswith("generic."):
        return load_section(DatasetParams, section, params)
    key = section.removeprefix("generic.")
    entry = (read_params(params).get("generic") or {}).get(key)
    if not isinstance(entry, dict):
        raise ParamsError(f"{params}: missing section '{section}'")
    # an entry may be a YAML alias of `dataset` (the target's own pool): its name is still the key
    return from_dict(DatasetParams, {**entry, "name": key}, section)


if __name__ == "__main__":
    typer.run(expected_errors(main))
