"""Render one SynthStreets image from its facts.

The scene is drawn at twice the output size and box-downsampled (cheap
anti-aliasing, so tiny far-away objects still leave a few mixed pixels).
Objects stand on a perspective ground plane: their height is proportional to
how far below the horizon they stand, so far objects are only a few pixels
tall at 96 px -- visible in an upscaled crop, barely in the whole image.
A pool's :class:`~pipeline.synth.Camera` sets how near objects stand and the
fixed look (blur, veil, saturation, cast) applied at output resolution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.synth import OBJECT_CLASSES, Camera
from pipeline.synth import effects
from pipeline.synth.objects import DRAWERS

SUPERSAMPLE = 2


@dataclass(frozen=True)
class SceneFacts:
    """What is true of one image (the labels)."""

    weather: str
    lighting: str
    glare: str  # "yes" / "no"
    objects: tuple[str, ...]  # classes present, in OBJECT_CLASSES order


@dataclass(frozen=True)
class Instance:
    """One drawn object; ``box`` is (x0, y0, x1, y1) in output pixels, clipped."""

    cls: str
    box: tuple[float, float, float, float]


def render(facts: SceneFacts, size: int, rng: np.random.Generator,
           camera: Camera = Camera()) -> tuple[Image.Image, list[Instance]]:
    """Draw the scene described by ``facts`` as ``camera`` sees it; all randomness comes from ``rng``."""
    s = size * SUPERSAMPLE
    yh = rng.uniform(0.36, 0.50) * s
    canvas = effects.sky(s, s, yh, facts.weather, facts.lighting, rng)
    base = Image.fromarray((canvas * 255).astype(np.uint8))
    glow = Image.new("RGB", (s, s), (0, 0, 0))
    draw, glow_draw = ImageDraw.Draw(base), ImageDraw.Draw(glow)
    if facts.lighting == "night" and facts.weather == "clear":
        _stars(glow_draw, s, yh, rng)
    _ground(draw, s, yh, facts.weather, rng)
    instances = _objects(draw, glow_draw, s, yh, facts.objects, rng, camera)
    img = np.asarray(base, np.float32) / 255.0
    tint = effects.lighting_tint(facts.lighting, rng)
    img = effects.apply_weather(img * tint, facts.weather, yh, rng, tint, camera.weather_strength)
    img = effects.add_glow(img, np.asarray(glow, np.float32) / 255.0, facts.lighting, facts.weather)
    if facts.glare == "yes":
        img = effects.glare(img, facts.lighting, yh, rng)
    img = _box_downsample(img, size)
    img = effects.camera_look(img, camera.blur, camera.veil, camera.veil_colour, camera.cast, camera.saturation)
    noise = rng.uniform(0.006, 0.02) * (2.0 if facts.lighting == "night" else 1.0)
    img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return out, instances


def _box_downsample(img: np.ndarray, size: int) -> np.ndarray:
    """Mean of each SUPERSAMPLE x SUPERSAMPLE block, summed in row-major order: the same
    values as ``reshape(...).mean(axis=(1, 3))``, without its slow strided reduction (6x)."""
    blocks = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3)
    total = sum(blocks[:, i, :, j] for i in range(SUPERSAMPLE) for j in range(SUPERSAMPLE))
    return total * np.float32(1.0 / SUPERSAMPLE**2)


def _colour(rng: np.random.Generator, rgb: tuple[float, float, float], jitter: float = 0.04) -> tuple[int, ...]:
    c = np.clip(np.asarray(rgb) + rng.normal(0, jitter, 3), 0, 1)
    return tuple(int(v * 255) for v in c)


def _ground(draw: ImageDraw.ImageDraw, s: int, yh: float, weather: str, rng: np.random.Generator) -> None:
    """Hills on the horizon, verge, road with perspective lane dashes."""
    hills = [(0.0, yh)] + [(x, yh - rng.uniform(0.0, 0.06) * s) for x in np.linspace(0, s, 7)] + [(s, yh)]
    draw.polygon(hills, fill=_colour(rng, (0.35, 0.42, 0.38)))
    snowy = weather == "snowy"
    verge = (0.90, 0.92, 0.95) if snowy else ((0.36, 0.55, 0.26) if rng.random() < 0.6 else (0.62, 0.58, 0.50))
    draw.rectangle([0, yh, s, s], fill=_colour(rng, verge))
    road = (0.62, 0.63, 0.66) if snowy else ((0.20, 0.20, 0.22) if weather == "rainy" else (0.32, 0.32, 0.34))
    xv, wb = rng.uniform(0.3, 0.7) * s, rng.uniform(0.35, 0.7) * s
    xb = xv + rng.uniform(-0.2, 0.2) * s
    draw.polygon([(xv - 1, yh), (xv + 1, yh), (xb + wb, s), (xb - wb, s)], fill=_colour(rng, road, 0.02))
    edge = _colour(rng, (0.70, 0.70, 0.68), 0.03)
    draw.line([(xv - 1, yh), (xb - wb, s)], fill=edge, width=max(s // 96, 1))
    draw.line([(xv + 1, yh), (xb + wb, s)], fill=edge, width=max(s // 96, 1))
    dash = _colour(rng, (0.95, 0.95, 0.92) if rng.random() < 0.7 else (0.95, 0.80, 0.20), 0.02)
    for k in range(7):
        t0, t1 = ((k + 0.2) / 7) ** 1.6, ((k + 0.6) / 7) ** 1.6  # dashes shorten with distance
        p0 = (xv + (xb - xv) * t0, yh + (s - yh) * t0)
        p1 = (xv + (xb - xv) * t1, yh + (s - yh) * t1)
        draw.line([p0, p1], fill=dash, width=max(int(t1 * s * 0.02), 1))


def _stars(glow: ImageDraw.ImageDraw, s: int, yh: float, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(10, 40))):
        x, y = rng.uniform(0, s), rng.uniform(0, yh * 0.9)
        v = int(rng.integers(120, 230))
        glow.point((x, y), fill=(v, v, v))


class _Occluding:
    """Draws on the base layer and blacks out the same shape on the glow layer.

    Without this, lit windows of a far building would shine through a tree
    standing in front of it.
    """

    def __init__(self, base: ImageDraw.ImageDraw, glow: ImageDraw.ImageDraw) -> None:
        self._base, self._glow = base, glow

    def __getattr__(self, name: str):
        base_fn, glow_fn = getattr(self._base, name), getattr(self._glow, name)

        def both(*args, **kwargs):
            base_fn(*args, **kwargs)
            dark = {k: (0, 0, 0) for k in ("fill", "outline") if kwargs.get(k) is not None}
            glow_fn(*args, **{**kwargs, **dark})

        return both


def _objects(draw: ImageDraw.ImageDraw, glow: ImageDraw.ImageDraw, s: int, yh: float,
             present: tuple[str, ...], rng: np.random.Generator, camera: Camera) -> list[Instance]:
    """Place 1-3 instances per present class, far to near so near ones occlude.

    The camera's depth range and power set how near (large) objects stand.
    """
    lo, hi = camera.depth
    placed: list[tuple[float, str, float]] = []  # (depth, cls, x)
    for cls in present:
        for _ in range(int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))):
            if cls == "building":  # buildings stand back, near the horizon
                depth = rng.uniform(lo, lo + 0.4 * (hi - lo))
                x = rng.choice([rng.uniform(0.05, 0.3), rng.uniform(0.7, 0.95)]) * s
            else:
                depth, x = lo + (hi - lo) * rng.random() ** camera.depth_power, rng.uniform(0.06, 0.94) * s
            placed.append((float(depth), cls, float(x)))
    placed.sort(key=lambda p: (p[0], OBJECT_CLASSES.index(p[1])))
    instances = []
    occluding = _Occluding(draw, glow)
    for depth, cls, x in placed:
        drawer, rel = DRAWERS[cls]
        yb = yh + depth * (s - yh)
        h = depth * rel * s * rng.uniform(0.85, 1.15)
        x0, y0, x1, y1 = drawer(occluding, glow, x, yb, h, rng)
        box = tuple(float(np.clip(v, 0, s)) / SUPERSAMPLE for v in (x0, y0, x1, y1))
        instances.append(Instance(cls, box))  # type: ignore[arg-type]
    return instances
