"""Sample SynthStreets facts, split them, render the images and write the layout.

Layout under the output directory (paths in CSVs are relative to the pool)::

    heldout.json                      held-out (weather, lighting) pairs + counts
    bench/images/s000123.png
    bench/{weather,lighting,glare}.csv   path,<attribute>   (Global-Streetscapes style)
    bench/objects.csv                 path,objects  (';'-joined, '' when none)
    bench/splits.csv                  path,split    (train / val / test)
    bench/captions.csv                path,caption
    bench/boxes.csv                   path,class,x0,y0,x1,y1 (pixels; diagnostics only)
    pretrain/images/p000123.png
    pretrain/facts.csv                path,weather,lighting,glare,objects,split (train / val)
    pretrain/captions.csv, pretrain/boxes.csv

Every image's facts and pixels come from its own seed sequence
``(seed, pool, index)``, so the output is byte-identical for a given seed and
independent of rendering order. The whole tree is built in ``<out>.partial``
beside the target and renamed into place only when complete.
"""
from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.synth import GLARES, LIGHTINGS, OBJECT_CLASSES, WEATHERS, SynthParams
from pipeline.synth.scene import SceneFacts, render

log = logging.getLogger(__name__)

_POOL_CODE = {"pretrain": 1, "bench": 2}
_LIGHTING_PHRASE = {"day": "during the day", "dusk_dawn": "at dusk or dawn", "night": "at night"}


@dataclass(frozen=True)
class Record:
    """One planned image: its id, split and facts."""

    id: str
    index: int
    split: str
    facts: SceneFacts

    @property
    def path(self) -> str:
        return f"images/{self.id}.png"


def _rng(params: SynthParams, pool: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([params.seed, _POOL_CODE[pool], *extra]))


def sample_facts(params: SynthParams, rng: np.random.Generator,
                 exclude: frozenset[tuple[str, str]] = frozenset()) -> SceneFacts:
    """Draw one image's facts; (weather, lighting) pairs in ``exclude`` are redrawn."""
    pw = np.array([params.weather_probs[w] for w in WEATHERS])
    pl = np.array([params.lighting_probs[li] for li in LIGHTINGS])
    while True:
        weather, lighting = WEATHERS[rng.choice(len(WEATHERS), p=pw)], LIGHTINGS[rng.choice(len(LIGHTINGS), p=pl)]
        if (weather, lighting) not in exclude:
            break
    glare = GLARES[1] if rng.random() < params.glare_prob else GLARES[0]
    objects = tuple(c for c in OBJECT_CLASSES if rng.random() < params.object_probs[c])
    return SceneFacts(weather, lighting, glare, objects)


def plan_pretrain(params: SynthParams) -> list[Record]:
    """Pretrain pool: held-out pairs never occur; a random val fraction for early checks."""
    exclude = frozenset((w, li) for w, li in params.heldout)
    n = params.n_pretrain
    n_val = max(1, int(round(n * params.pretrain_val_frac)))
    val = set(_rng(params, "pretrain").permutation(n)[:n_val].tolist())
    return [Record(f"p{i:06d}", i, "val" if i in val else "train",
                   sample_facts(params, _rng(params, "pretrain", i, 0), exclude)) for i in range(n)]


def plan_bench(params: SynthParams) -> list[Record]:
    """Benchmark pool: natural distribution, held-out pairs topped up per split."""
    n = params.n_train + params.n_val + params.n_test
    order = _rng(params, "bench").permutation(n)
    split_of = np.empty(n, dtype=object)
    split_of[order[: params.n_train]] = "train"
    split_of[order[params.n_train: params.n_train + params.n_val]] = "val"
    split_of[order[params.n_train + params.n_val:]] = "test"
    records = [Record(f"s{i:06d}", i, str(split_of[i]), sample_facts(params, _rng(params, "bench", i, 0)))
               for i in range(n)]
    return _top_up_heldout(params, records)


def _top_up_heldout(params: SynthParams, records: list[Record]) -> list[Record]:
    """Relabel a few ordinary images per split to each held-out pair (before rendering)."""
    rng = _rng(params, "bench", 2**31)  # stream apart from every image index
    pairs = [tuple(p) for p in params.heldout]
    records = list(records)
    for split in ("train", "val", "test"):
        idx = [i for i, r in enumerate(records) if r.split == split]
        free = [i for i in idx if (records[i].facts.weather, records[i].facts.lighting) not in pairs]
        free = [free[j] for j in rng.permutation(len(free))]
        for weather, lighting in pairs:
            have = sum((records[i].facts.weather, records[i].facts.lighting) == (weather, lighting) for i in idx)
            for _ in range(max(0, min(params.heldout_min_per_split, len(idx)) - have)):
                if not free:
                    break
                i = free.pop()
                records[i] = replace(records[i], facts=replace(records[i].facts, weather=weather, lighting=lighting))
    return records


def caption(facts: SceneFacts) -> str:
    """One natural sentence from the facts (full-sentence captions for other uses)."""
    weather = {"clear": "clear", "cloudy": "cloudy", "foggy": "foggy", "rainy": "rainy", "snowy": "snowy"}[facts.weather]
    text = f"A {weather} street scene {_LIGHTING_PHRASE[facts.lighting]}"
    if facts.glare == "yes":
        text += " with strong glare"
    names = [("an " if c[0] in "aeiou" else "a ") + c.replace("_", " ") for c in facts.objects]
    if not names:
        return text + ", with no notable objects."
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text + (", showing " if facts.glare == "no" else ", and showing ") + listed + "."


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


_JOB: tuple[SynthParams, str, Path] | None = None  # set in each rendering worker (fork: not pickled)


def _set_job(params: SynthParams, pool: str, pool_dir: Path) -> None:
    global _JOB
    _JOB = (params, pool, pool_dir)


def _render_to_file(r: Record) -> list[list[object]]:
    """Render one record to its PNG; return its box rows."""
    assert _JOB is not None
    params, pool, pool_dir = _JOB
    image, instances = render(r.facts, params.image_size, _rng(params, pool, r.index, 1), params.camera[pool])
    image.save(pool_dir / r.path, format="PNG")
    return [[r.path, inst.cls, *(round(v, 1) for v in inst.box)] for inst in instances]


def _render_workers() -> int:
    # Every image has its own seed, so the bytes do not depend on how many processes render.
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def write_pool(params: SynthParams, pool: str, records: list[Record], pool_dir: Path) -> None:
    """Render every record to ``pool_dir/images`` and write the pool's CSV files."""
    (pool_dir / "images").mkdir(parents=True)
    boxes: list[list[object]] = []
    with ProcessPoolExecutor(_render_workers(), mp_context=multiprocessing.get_context("fork"),
                             initializer=_set_job, initargs=(params, pool, pool_dir)) as workers:
        for rows in tqdm(workers.map(_render_to_file, records, chunksize=32), total=len(records),
                         desc=f"render {pool}", unit="img", mininterval=2.0):
            boxes += rows
    _write_csv(pool_dir / "captions.csv", ["path", "caption"], [[r.path, caption(r.facts)] for r in records])
    _write_csv(pool_dir / "boxes.csv", ["path", "class", "x0", "y0", "x1", "y1"], boxes)
    objects = {r.id: ";".join(r.facts.objects) for r in records}
    if pool == "pretrain":
        _write_csv(pool_dir / "facts.csv", ["path", "weather", "lighting", "glare", "objects", "split"],
                   [[r.path, r.facts.weather, r.facts.lighting, r.facts.glare, objects[r.id], r.split]
                    for r in records])
        return
    for attr in ("weather", "lighting", "glare"):
        _write_csv(pool_dir / f"{attr}.csv", ["path", attr], [[r.path, getattr(r.facts, attr)] for r in records])
    _write_csv(pool_dir / "objects.csv", ["path", "objects"], [[r.path, objects[r.id]] for r in records])
    _write_csv(pool_dir / "splits.csv", ["path", "split"], [[r.path, r.split] for r in records])


def _heldout_summary(params: SynthParams, pretrain: list[Record], bench: list[Record]) -> dict:
    def count(records: list[Record], pair: tuple[str, ...], split: str | None = None) -> int:
        return sum((r.facts.weather, r.facts.lighting) == tuple(pair) and split in (None, r.split) for r in records)

    return {
        "weather_lighting": [list(p) for p in params.heldout],
        "pretrain_counts": {"+".join(p): count(pretrain, p) for p in params.heldout},
        "bench_counts": {"+".join(p): {s: count(bench, p, s) for s in ("train", "val", "test")}
                         for p in params.heldout},
    }


def generate(params: SynthParams, out_dir: Path | str) -> Path:
    """Build the whole dataset atomically at ``out_dir`` (replacing any old one)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():  # leftovers of a killed run
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    pretrain, bench = plan_pretrain(params), plan_bench(params)
    log.info("rendering %d pretrain + %d bench images at %d px", len(pretrain), len(bench), params.image_size)
    write_pool(params, "pretrain", pretrain, tmp / "pretrain")
    write_pool(params, "bench", bench, tmp / "bench")
    summary = _heldout_summary(params, pretrain, bench)
    (tmp / "heldout.json").write_text(json.dumps(summary, indent=2) + "\n")
    _swap_into_place(tmp, out_dir)
    log.info("wrote %s (held-out pairs: %s)", out_dir, summary["bench_counts"])
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished tree over ``out_dir``; the old tree is removed only afterwards."""
    old = out_dir.with_name(out_dir.name + f".old-{os.getpid()}.partial")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)
