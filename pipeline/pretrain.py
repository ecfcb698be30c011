"""Train the demo CLIP (``synthclip-tiny``) on the SynthStreets pretrain pool.

Recipe (from trials outside the project): 8.3M-parameter open_clip ViT,
96 px, patch 16, MLP ratio 2, batch 256, a SIGMOID loss with MULTI-POSITIVE
targets over one-fact captions (:mod:`pipeline.pretrain_loss`), about four
minutes on 2 CPU cores. Deviations from that recipe:

* images are decoded and passed through open_clip's own *eval* preprocessing
  once, then cached as tensors; augmentation happens on the cached tensors
  (horizontal flips, and "zoom" crops upsampled back to full size), instead
  of open_clip's train transform (RandomResizedCrop 0.9-1.0);
* zoom crops get box-aware targets: an object counts as present when at
  least half of one of its boxes lies inside the crop, is masked out of the
  loss when only a smaller part does, and glare is masked (the flare may lie
  outside). They teach the model the upscaled look of small objects, which
  tiled views (CDUL) rely on;
* captions are a fixed vocabulary (every fact x every template), so each step
  encodes all of them (34 short texts, cut after the longest one's 13 tokens)
  rather than sampling one per image;
* the step itself runs a faster route with the same math up to float rounding
  (:class:`pipeline.pretrain_route.TrainingRoute`, tested against the plain open_clip loop): attention
  without nn.MultiheadAttention's layout copies, AdamW over only the token
  embedding rows the captions use (the other 49k rows get the same decoupled
  weight decay, bitwise), zoom crops of a batch upsampled as one batched matmul;
* the LR schedule (linear warm-up, cosine decay) runs over exactly
  ``max_steps``: no wall-clock budget, so the checkpoint is a function of the
  data and params alone (bitwise, on the same machine and thread count);
* the temperature is fixed at CLIP's final value, exp(logit_scale) =
  ``logit_scale`` (100), instead of being learned from 10: every head scales
  its cosine logits by the model's exp(logit_scale), and with a learned
  temperature the demo model stopped at about 10.8, so the heads' gradients at
  the papers' learning rates were about 10x smaller than on a real CLIP.
  SigLIP's bias initialisation (-10) keeps the sigmoid loss stable at that
  temperature (``logit_bias``).

Tried here at 300 steps on the default data and not kept: lr 2e-3 with half
the batch zoomed and crops centred on objects (object mAP 0.38 vs 0.44),
average-pooled ViT tokens (no gain), batch 128 (fewer images/s on 2 cores).
Kept since the per-pool cameras (far, small bench objects): 350 steps with
40% of each batch zoomed, up from 260 steps and 25%: pretrain-val object mAP
0.47 -> 0.51, bench object mAP from the max over 3 x 3 tiles 0.39 -> 0.44,
which CDUL's tiles need.

Step profile (batch 256, 2 threads; a busy machine, so only the ratios hold):
the image tower's forward and backward are 85-90% of a step and already run
their matmuls near the CPU's fp32 peak; bf16 autocast was slower (no AMX) and
torch.compile slower still after a 44 s compile. The fast route saved about
10% per step under that load (2.82 vs 3.12 s; 1.03 s/step idle before it).
MLP ratio 2 instead of CLIP's 4 (``pipeline/model_configs/synthclip-tiny.json``,
for the 10-minute default): 0.72 instead of 0.94 s per step, and on the same
data and 350 steps no worse: final loss 8.19 vs 8.28, bench weather 0.77 vs
0.70, lighting 0.82 vs 0.83, glare 0.93 vs 0.90, object mAP 0.34 vs 0.36.
Tried with it and not kept: MLP ratio 1 (0.55 s per step, but loss 10.4 and
bench glare 0.85, under its 0.86 majority); 270 steps (loss 10.2, weather
0.61); half the pretrain pool, 3,000 images (weather 0.64, glare 0.81).
Not kept: 240 steps at lr 1.5e-3 (bench weather 0.43, lighting 0.78: below
the 350-step model's 0.70 and 0.82; the loss was still at 13.4 vs 8.3).
FLIP's patch dropout (open_clip's PatchDropout, half the patch tokens) on the
first 80% of the steps, then unmasked: 1.9 instead of 1.2 steps/s while
masked, the stage 240 s instead of 319 s, but bench weather 0.60 (vs 0.70),
glare 0.88 (majority 0.86), pretrain-val weather 0.77 (vs 0.92), final loss
10.3 (vs 8.3): at this budget the dropped tokens are information it needs.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from pipeline.model_configs import register_model_configs
from pipeline.pretrain_route import TrainingRoute
from pipeline.pretrain_loss import DEFAULT_TEMPLATES, TASKS, FactVocab, evaluate_pool, fact_targets, multi_positive_sigmoid_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainParams:
    """``pretrain_demo:`` section of params.yaml.

    templates: task -> prompt templates with ``{}`` for the class name; used
        for the training captions *and* the zero-shot evaluation.
    zoom_frac: fraction of each batch replaced by zoomed crops.
    zoom_scale: [min, max] crop side as a fraction of the image side.
    logit_scale: fixed temperature exp(logit_scale) (CLIP ends at 100); null =
        learned from the model config's initial value.
    logit_bias: initial sigmoid-loss bias (SigLIP: -10).
    threads: torch CPU threads (fixed, since thread count can change float sums).
    """

    model: str
    seed: int
    max_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_frac: float
    zoom_frac: float
    zoom_scale: tuple[float, ...]
    logit_scale: float | None
    logit_bias: float
    threads: int
    eval_tiles: int
    templates: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if self.logit_scale is not None and not 1.0 <= self.logit_scale <= 100.0:
            raise ValueError(f"logit_scale must be in [1, 100] or null, got {self.logit_scale}")
        if self.max_steps < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("max_steps, batch_size and threads must be >= 1")
        if not 0.0 <= self.zoom_frac <= 1.0 or not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError("zoom_frac must be in [0, 1] and warmup_frac in [0, 1)")
        if len(self.zoom_scale) != 2 or not 0.0 < self.zoom_scale[0] <= self.zoom_scale[1] <= 1.0:
            raise ValueError("zoom_scale must be [min, max] with 0 < min <= max <= 1")
        if set(self.templates) != set(TASKS) or any(not t or any("{}" not in s for s in t)
                                                    for t in self.templates.values()):
            raise ValueError(f"templates needs non-empty lists with '{{}}' for exactly {sorted(TASKS)}")


def default_pretrain_params(**overrides: Any) -> PretrainParams:
    """The recommended defaults (the ``pretrain_demo:`` block proposed for params.yaml)."""
    values: dict[str, Any] = dict(
        model="synthclip-tiny", seed=0, max_steps=350, batch_size=256,
        lr=1e-3, weight_decay=0.1, warmup_frac=0.05, zoom_frac=0.4, zoom_scale=(0.33, 0.7),
        logit_scale=100.0, logit_bias=-10.0,
        threads=2, eval_tiles=3, templates=DEFAULT_TEMPLATES,
    )
    values.update(overrides)
    values["templates"] = MappingProxyType({k: tuple(v) for k, v in values["templates"].items()})
    values["zoom_scale"] = tuple(values["zoom_scale"])
    return PretrainParams(**values)


@dataclass
class Pool:
    """Preprocessed images of one pool part with their facts and boxes."""

    images: torch.Tensor  # [N, 3, S, S] after open_clip's eval preprocessing
    rows: list[dict[str, str]]  # path, weather, lighting, glare, objects
    boxes: list[np.ndarray]  # per image [M, 5]: class index, x0, y0, x1, y1 in tensor pixels


def build_model(name: str) -> tuple[torch.nn.Module, Any, Any]:
    """Randomly initialised model, its eval preprocessing and tokenizer."""
    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model, preprocess, open_clip.get_tokenizer(name)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def load_pool(pool_dir: Path, rows: list[dict[str, str]], preprocess: Any, desc: str) -> Pool:
    """Decode and preprocess ``rows`` (paths relative to ``pool_dir``) once."""
    images: torch.Tensor | None = None
    scale = 1.0
    for i, row in enumerate(tqdm(rows, desc=f"load {desc}", unit="img", mininterval=2.0)):
        with Image.open(pool_dir / row["path"]) as im:
            x = preprocess(im.convert("RGB"))
            scale = x.shape[-1] / im.width
        if images is None:  # preallocate: a list + torch.stack would briefly hold two copies
            images = torch.empty((len(rows), *x.shape), dtype=x.dtype)
        images[i] = x
    if images is None:
        raise ValueError(f"{pool_dir}: no images to load for {desc}")
    boxes = _read_boxes(pool_dir / "boxes.csv", scale) if (pool_dir / "boxes.csv").exists() else {}
    empty = np.zeros((0, 5), np.float32)
    return Pool(images, rows, [boxes.get(r["path"], empty) for r in rows])


def _read_boxes(path: Path, scale: float) -> dict[str, np.ndarray]:
    out: dict[str, list[list[float]]] = {}
    for r in read_csv(path):
        box = [float(r[k]) * scale for k in ("x0", "y0", "x1", "y1")]
        out.setdefault(r["path"], []).append([TASKS["objects"].index(r["class"]), *box])
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def zoom_crop(image: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator,
              zoom_scale: tuple[float, ...]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Random square crop upsampled to full size, with object targets and mask.

    Returns (image, objects_present [C], objects_known [C]). (Placing half the
    crops around an object, with zoom_frac 0.5 and lr 2e-3, scored lower in a
    trial -- 0.38 vs 0.44 object mAP -- so crops stay uniformly placed.)
    :func:`make_batch` draws the same windows and resamples them all at once.
    """
    size = image.shape[-1]
    side, x0, y0 = _zoom_window(size, rng, zoom_scale)
    crop = image[:, y0:y0 + side, x0:x0 + side].unsqueeze(0)
    out = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False)[0]
    return (out, *_zoom_targets(boxes, x0, y0, side))


def _zoom_window(size: int, rng: np.random.Generator, zoom_scale: tuple[float, ...]) -> tuple[int, int, int]:
    """(side, x0, y0) of a random square crop; three draws from ``rng``."""
    side = max(int(rng.uniform(*zoom_scale) * size), 8)
    x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
    return side, x0, y0


def _zoom_targets(boxes: np.ndarray, x0: int, y0: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(objects_present, objects_known) [C] for a crop: present when >= half a box is inside."""
    n_cls = len(TASKS["objects"])
    present, partial = np.zeros(n_cls, bool), np.zeros(n_cls, bool)
    for cls, bx0, by0, bx1, by1 in boxes:
        area = max(bx1 - bx0, 1e-3) * max(by1 - by0, 1e-3)
        inter = max(0.0, min(bx1, x0 + side) - max(bx0, x0)) * max(0.0, min(by1, y0 + side) - max(by0, y0))
        frac = inter / area
        present[int(cls)] |= frac >= 0.5
        partial[int(cls)] |= 0.0 < frac < 0.5
    return present.astype(np.float32), (present | ~partial).astype(np.float32)


def bicubic_matrix(size: int, start: int, side: int) -> np.ndarray:
    """[size, size] matrix M with M @ v = ``F.interpolate(v[start:start+side], size, "bicubic")``.

    Same taps as torch's bicubic upsampling (align_corners=False, A = -0.75,
    indices clamped to the crop's edge), written as one linear map per axis so
    that a batch of crops of different sizes resamples as one batched matmul:
    crop_up = My @ image @ Mx.T. Equal to F.interpolate up to float rounding.
    """
    a = -0.75
    src = (np.arange(size) + 0.5) * (side / size) - 0.5
    i0 = np.floor(src)
    t = src - i0
    near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731  |d| <= 1
    far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731  1 < |d| < 2
    out = np.zeros((size, size))
    for k, w in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
        np.add.at(out, (np.arange(size), start + np.clip(i0 - 1 + k, 0, side - 1).astype(int)), w)
    return out


def make_batch(pool: Pool, targets: np.ndarray, idx: np.ndarray, vocab: FactVocab,
               params: PretrainParams, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images [B, 3, S, S], fact targets [B, F] and loss weights [B, F] for one step.

    The random draws (which images are zoomed, each crop window, the flips) come
    from ``rng`` in the same order as one :func:`zoom_crop` per zoomed image; the
    crops are then upsampled together (:func:`bicubic_matrix`).
    """
    x = pool.images[idx]  # advanced indexing: already a copy
    t = targets[idx].copy()
    w = np.ones_like(t)
    obj_cols = np.asarray([i for i, (task, _) in enumerate(vocab.facts) if task == "objects"])
    glare_cols = np.asarray([i for i, (task, _) in enumerate(vocab.facts) if task == "glare"])
    zoomed = np.flatnonzero(rng.random(len(idx)) < params.zoom_frac)
    if len(zoomed):
        size = x.shape[-1]
        rows, cols = np.empty((len(zoomed), size, size), np.float32), np.empty((len(zoomed), size, size), np.float32)
        for n, j in enumerate(zoomed):
            side, x0, y0 = _zoom_window(size, rng, params.zoom_scale)
            t[j, obj_cols], w[j, obj_cols] = _zoom_targets(pool.boxes[idx[j]], x0, y0, side)
            rows[n], cols[n] = bicubic_matrix(size, y0, side), bicubic_matrix(size, x0, side)
        sel, (n, c) = torch.from_numpy(zoomed), (len(zoomed), x.shape[1])
        across = torch.bmm(x[sel].reshape(n, c * size, size), torch.from_numpy(cols).transpose(1, 2))
        x[sel] = torch.bmm(torch.from_numpy(rows).repeat_interleave(c, 0),
                           across.reshape(n * c, size, size)).reshape(n, c, size, size)
        w[np.ix_(zoomed, glare_cols)] = 0.0
    flips = torch.from_numpy(rng.random(len(idx)) < 0.5)  # after cropping: boxes are unflipped
    x[flips] = x[flips].flip(-1)
    return x, torch.from_numpy(t), torch.from_numpy(w)


def _lr_at(step: int, total: int, params: PretrainParams) -> float:
    warm = max(int(params.warmup_frac * total), 1)
    if step < warm:
        return params.lr * (step + 1) / warm
    return 0.5 * params.lr * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


def _optimizer(model: torch.nn.Module, params: PretrainParams) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings' scalars and logit scale/bias."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "logit" not in n]
    no_decay = [p for n, p in named if p.ndim < 2 or "logit" in n]
    return torch.optim.AdamW([{"params": decay, "weight_decay": params.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=params.lr, betas=(0.9, 0.98))


def fit(model: torch.nn.Module, tokenizer: Any, pool: Pool, params: PretrainParams) -> dict[str, Any]:
    """Train in place for exactly ``max_steps``; returns training statistics.

    The step runs on a faster route than open_clip's own forward, with the same
    math up to float rounding (:class:`~pipeline.pretrain_route.TrainingRoute`): attention without
    nn.MultiheadAttention's layout copies, the caption batch cut after its last
    end-of-text token, and AdamW over the token-embedding rows the captions use.
    """
    vocab = FactVocab.build(params.templates)
    targets, tokens = fact_targets(pool.rows, vocab), tokenizer(list(vocab.texts))
    rng = np.random.default_rng(params.seed)
    _init_temperature(model, params)
    start, losses = time.perf_counter(), []
    with TrainingRoute(model, tokens) as route:
        opt, model = _optimizer(model, params), model.train()
        order = rng.permutation(len(pool.rows))
        for step in tqdm(range(params.max_steps), desc="pretrain", unit="step", mininterval=5.0):
            if len(order) < params.batch_size:
                order = np.concatenate([order, rng.permutation(len(pool.rows))])
            idx, order = order[: params.batch_size], order[params.batch_size:]
            lr = _lr_at(step, params.max_steps, params)
            for group in opt.param_groups:
                group["lr"] = lr
            x, t, w = make_batch(pool, targets, idx, vocab, params, rng)
            loss = multi_positive_sigmoid_loss(model.encode_image(x, normalize=True), route.encode_text(), t[:, vocab.fact_of], w[:, vocab.fact_of],
                                               model.logit_scale.exp(), model.logit_bias)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            route.decay_unused_rows(lr * params.weight_decay)
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
    # Wall time is logged, not returned: the metrics file is a function of deps and params.
    log.info("pretrained %d steps in %.1f s", params.max_steps, time.perf_counter() - start)
    return {"steps": params.max_steps, "images_seen": params.max_steps * params.batch_size,
            "final_loss": round(float(np.mean(losses[-20:])), 4), "n_train": len(pool.rows),
            "logit_scale_exp": round(float(model.logit_scale.detach().exp()), 3)}


def _init_temperature(model: torch.nn.Module, params: PretrainParams) -> None:
    """Fix exp(logit_scale) at ``params.logit_scale`` (frozen) and set the initial bias."""
    with torch.no_grad():
        model.logit_bias.fill_(params.logit_bias)
        if params.logit_scale is not None:
            model.logit_scale.fill_(math.log(params.logit_scale))
    model.logit_scale.requires_grad_(params.logit_scale is None)


def save_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Plain tensor state_dict (``torch.load(weights_only=True)``), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def bench_rows(bench_dir: Path, split: str) -> list[dict[str, str]]:
    """Join the per-attribute bench CSVs by path, keeping one split."""
    splits = {r["path"]: r["split"] for r in read_csv(bench_dir / "splits.csv")}
    rows = {p: {"path": p} for p, s in splits.items() if s == split}
    for name in ("weather", "lighting", "glare", "objects"):
        for r in read_csv(bench_dir / f"{name}.csv"):
            if r["path"] in rows:
                rows[r["path"]][name] = r[name]
    return list(rows.values())


def run(params: PretrainParams, data_dir: Path, checkpoint: Path, metrics_path: Path) -> dict[str, Any]:
    """Whole stage: load, train, save, evaluate zero-shot, write metrics JSON."""
    torch.manual_seed(params.seed)
    torch.set_num_threads(params.threads)
    model, preprocess, tokenizer = build_model(params.model)
    facts = read_csv(data_dir / "pretrain" / "facts.csv")
    train = load_pool(data_dir / "pretrain", [r for r in facts if r["split"] == "train"], preprocess, "pretrain/train")
    metrics: dict[str, Any] = {"model": params.model,
                               "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    metrics["train"] = fit(model, tokenizer, train, params)
    log.info("trained: %s", metrics["train"])
    save_checkpoint(model, checkpoint)
    model.eval()
    val = load_pool(data_dir / "pretrain", [r for r in facts if r["split"] == "val"], preprocess, "pretrain/val")
    metrics["pretrain_val"] = evaluate_pool(model, tokenizer, val, train.rows, params.templates, tiles=0)
    bench_dir = data_dir / "bench"
    if bench_dir.exists():
        bench = load_pool(bench_dir, bench_rows(bench_dir, "val"), preprocess, "bench/val")
        heldout = json.loads((data_dir / "heldout.json").read_text())["weather_lighting"]
        metrics["bench_val"] = evaluate_pool(model, tokenizer, bench, train.rows, params.templates,
                                             tiles=params.eval_tiles, heldout=heldout)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    return metrics
