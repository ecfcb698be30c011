"""Synthetic task shared by the head tests (no test functions here).

A tiny randomly initialised open_clip CLIP (text width 32, one layer; the BPE
vocabulary ships with open_clip, so nothing is downloaded) provides the text
side; image embeddings are clustered around the class text embeddings, so the
task is easy and zero-shot-like heads are meaningful. Patch tokens
``[N, 5, 48]`` and augmented views ``[N, 3, 32]`` carry the same class signal.

``make_task(centres=SWAPPED)`` is the *hard* variant: the images of classes 0
and 1 cluster around each other's text embedding, so zero-shot scores 0.5 and
an untrained adapter (which starts close to zero-shot) is no better; only a
head that learns from the training rows can fix the swap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from pipeline.features import FeatureSet, TextContext

SWAPPED = (1, 0, 2, 3)  # class c's images cluster around text embedding SWAPPED[c]
CLASS_NAMES = ("dog", "cat", "golden retriever", "red sports car")
TEMPLATES = ("a photo of a {}.", "a blurry picture of the {}.", "itap of a {}.")
EMBED_DIM, TOKEN_WIDTH, N_TOKENS, N_VIEWS = 32, 48, 5, 3
LOGIT_SCALE = 100.0

#: The heads trained by gradient descent, with schedules that learn the hard task
#: (``make_task(centres=SWAPPED)``) in well under a second each: learning rates are
#: raised from the papers' so that 20 epochs suffice, and nothing stops early.
LEARNING: dict[str, dict] = {
    "clip_adapter": dict(optimizer="adamw", lr=0.05, weight_decay=0.0, epochs=20, device="cpu"),
    "tip_adapter_f": dict(lr=0.01, epochs=20, search_step=(50, 10), device="cpu"),
    "clip_mhadapter": dict(lr=2e-3, epochs=20, patience=0, heads=4, batch_size=8, warmup_epochs=1, device="cpu"),
    "coop": dict(n_ctx=4, csc=True, optimizer="adamw", lr=0.01, epochs=20, batch_size=8, device="cpu"),
}


def tiny_clip():
    """Random tiny open_clip CLIP and the standard CLIP tokenizer."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=EMBED_DIM,
                 vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    return model.eval(), open_clip.get_tokenizer("ViT-B-32")


def normalise(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def encode(model, tokenizer, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        return normalise(model.encode_text(tokenizer(texts)).numpy())


def make_text(model, tokenizer) -> TextContext:
    per_template = np.stack([encode(model, tokenizer, [t.format(c) for c in CLASS_NAMES])
                             for t in TEMPLATES]).astype(np.float32)
    return TextContext(class_names=CLASS_NAMES, class_emb=normalise(per_template.mean(0)),
                       template_emb=per_template, templates=TEMPLATES, logit_scale=LOGIT_SCALE,
                       model=model, tokenizer=tokenizer)


@dataclass
class Task:
    text: TextContext
    train: FeatureSet
    y_train: np.ndarray
    val: FeatureSet
    y_val: np.ndarray
    test: FeatureSet
    y_test: np.ndarray


def _split(rng: np.random.Generator, centres: np.ndarray, proj: np.ndarray, per_class: int,
           prefix: str) -> tuple[FeatureSet, np.ndarray]:
    y = np.repeat(np.arange(len(centres)), per_class)
    spread = 0.5 * np.median(np.linalg.norm(centres[:, None] - centres[None], axis=-1)[~np.eye(len(centres), dtype=bool)])
    noise = spread / np.sqrt(EMBED_DIM)
    raw = centres[y] + noise * rng.standard_normal((len(y), EMBED_DIM))
    views = raw[:, None] + 0.3 * noise * rng.standard_normal((len(y), N_VIEWS, EMBED_DIM))
    tokens = (raw @ proj)[:, None] + 0.05 * rng.standard_normal((len(y), N_TOKENS, TOKEN_WIDTH))
    fs = FeatureSet(ids=np.array([f"{prefix}{i}" for i in range(len(y))]),
                    cls=normalise(raw).astype(np.float32),
                    cls_norm=np.linalg.norm(raw, axis=1).astype(np.float32),
                    tokens={"block-2": tokens.astype(np.float32)},
                    views=normalise(views).astype(np.float32),
                    views_norm=np.linalg.norm(views, axis=-1).astype(np.float32))
    return fs, y


def make_task(seed: int = 0, centres: tuple[int, ...] | None = None) -> Task:
    """Train / val / test draws of 8 / 6 / 10 rows per class; ``centres[c]`` is the
    class whose text embedding class c's images cluster around (default: c itself)."""
    model, tokenizer = tiny_clip()
    text = make_text(model, tokenizer)
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((EMBED_DIM, TOKEN_WIDTH)) / np.sqrt(EMBED_DIM)
    order = list(range(len(CLASS_NAMES)) if centres is None else centres)
    parts = [_split(rng, text.class_emb.astype(np.float64)[order], proj, n, p)
             for n, p in ((8, "tr"), (6, "va"), (10, "te"))]
    return Task(text, *parts[0], *parts[1], *parts[2])


def make_probe_task(seed: int = 4, separation: float = 0.4):
    """((train, y), (val, y_val)) of overlapping Gaussian classes in EMBED_DIM dimensions, 6 / 20
    rows per class: a linear probe's validation accuracy moves with C (and often ties)."""
    rng = np.random.default_rng(seed)
    means = separation * rng.standard_normal((len(CLASS_NAMES), EMBED_DIM))

    def draw(per_class: int, prefix: str) -> tuple[FeatureSet, np.ndarray]:
        y = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
        x = normalise(means[y] + rng.standard_normal((len(y), EMBED_DIM))).astype(np.float32)
        return FeatureSet(ids=np.array([f"{prefix}{i}" for i in range(len(y))]), cls=x), y

    return draw(6, "tr"), draw(20, "va")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: OpenMP threads only add contention on the shared 2 cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
