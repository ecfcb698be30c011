"""Sky, weather, lighting and glare effects on float RGB canvases in [0, 1].

Each attribute gets a cue a model can see at 96 px (grey sky and clouds,
distance haze for fog, streaks for rain, flakes for snow, a warm tint or a
dark blue cast with glowing lamps for lighting, a flare with halo and ghosts
for glare), with random strengths so that neighbouring classes overlap a
little and the benchmark is not trivially separable.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Day-time sky colours (top, horizon) per weather.
_SKY = {
    "clear": ((0.22, 0.42, 0.85), (0.65, 0.80, 0.95)),
    "cloudy": ((0.55, 0.58, 0.63), (0.72, 0.74, 0.77)),
    "rainy": ((0.35, 0.37, 0.42), (0.52, 0.54, 0.58)),
    "snowy": ((0.72, 0.74, 0.78), (0.86, 0.87, 0.90)),
    "foggy": ((0.74, 0.75, 0.77), (0.82, 0.83, 0.84)),
}
# (number of clouds, cloud colour, blur as a fraction of the width) per weather
_CLOUDS = {
    "clear": ((0, 2), (0.97, 0.97, 0.98), 0.02),
    "cloudy": ((6, 12), (0.86, 0.87, 0.89), 0.03),
    "rainy": ((8, 14), (0.30, 0.31, 0.35), 0.03),
    "snowy": ((3, 6), (0.92, 0.92, 0.94), 0.05),
    "foggy": ((0, 1), (0.85, 0.85, 0.86), 0.05),
}
_DUSK_SKY = ((0.38, 0.28, 0.52), (0.98, 0.55, 0.30))
_GLARE_COLOUR = {"day": (1.0, 0.97, 0.85), "dusk_dawn": (1.0, 0.72, 0.42), "night": (0.85, 0.90, 1.0)}


def _gradient(h: int, w: int, top, bottom, y_end: float) -> np.ndarray:
    t = np.clip(np.arange(h, dtype=np.float32) / max(y_end, 1.0), 0.0, 1.0)[:, None, None]
    top, bottom = np.asarray(top, np.float32), np.asarray(bottom, np.float32)
    return np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()


def sky(h: int, w: int, yh: float, weather: str, lighting: str, rng: np.random.Generator) -> np.ndarray:
    """Sky gradient with weather-specific clouds (the ground is painted over later)."""
    top, hor = (np.asarray(c) + rng.normal(0, 0.03, 3) for c in _SKY[weather])
    img = _gradient(h, w, top, hor, yh)
    if lighting == "dusk_dawn":
        # Overcast skies show the sunset only faintly.
        weight = 0.75 if weather == "clear" else 0.35
        img = (1 - weight) * img + weight * _gradient(h, w, *_DUSK_SKY, yh)
    (lo, hi), colour, blur = _CLOUDS[weather]
    n = int(rng.integers(lo, hi + 1))
    if n:
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        for _ in range(n):
            cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(0.0, 0.9) * yh
            rx, ry = rng.uniform(0.08, 0.25) * w, rng.uniform(0.03, 0.08) * h
            for _ in range(3):  # a few overlapping puffs per cloud
                ox, oy = rng.normal(0, rx * 0.4), rng.normal(0, ry * 0.3)
                draw.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=int(rng.integers(170, 256)))
        m = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur * w)), np.float32)[..., None] / 255.0
        shade = np.asarray(colour, np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
        img = img * (1 - m) + shade * m
    return np.clip(img, 0, 1)


def _overlay_light(tint: np.ndarray) -> np.ndarray:
    """Brightness of near-camera haze, streaks and flakes under a lighting tint.

    They catch lamp light and scatter it, so at night they stay brighter than
    the scene behind them; this keeps the weather cues visible in every
    lighting (needed for zero-shot transfer to held-out weather x lighting).
    """
    return 0.45 + 0.55 * tint


def fog(img: np.ndarray, yh: float, rng: np.random.Generator, tint: np.ndarray,
        strength: float = 1.0) -> np.ndarray:
    """Distance haze: strongest at and above the horizon, thinner near the camera."""
    h = img.shape[0]
    far, near = min(rng.uniform(0.72, 0.92) * strength, 0.97), min(rng.uniform(0.25, 0.50) * strength, 0.9)
    y = np.arange(h, dtype=np.float32)
    alpha = np.where(y < yh, far, far + (near - far) * (y - yh) / max(h - yh, 1.0))[:, None, None]
    colour = (np.asarray((0.80, 0.81, 0.82), np.float32) + rng.normal(0, 0.02, 3).astype(np.float32)) * _overlay_light(tint)
    out = img * (1 - alpha) + colour * alpha
    return _blur(out, 1.0)


def rain(img: np.ndarray, rng: np.random.Generator, tint: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Slanted semi-transparent streaks over a slightly darkened, bluish scene."""
    h, w = img.shape[:2]
    img = img * (1.0 - strength * (1.0 - np.asarray((0.82, 0.84, 0.90), np.float32)))
    n = int(rng.integers(140, 340) * strength * (h * w) / 192**2)
    angle = rng.uniform(-0.35, 0.15)
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        x, y, length = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.13) * h
        draw.line([x, y, x + np.sin(angle) * length, y + np.cos(angle) * length],
                  fill=int(rng.integers(90, 170)), width=1)
    a = np.asarray(layer, np.float32)[..., None] / 255.0
    return img * (1 - a) + np.asarray((0.80, 0.82, 0.88), np.float32) * _overlay_light(tint) * a


def snow(img: np.ndarray, rng: np.random.Generator, tint: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """White flakes of mixed sizes plus a light whitening haze."""
    h, w = img.shape[:2]
    white = np.float32(0.95) * _overlay_light(tint)
    haze = np.float32(min(0.15 * strength, 0.5))
    img = img * (1 - haze) + haze * white
    n = int(rng.integers(150, 400) * strength * (h * w) / 192**2)
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.6, 2.2) * h / 192
        draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(170, 256)))
    a = np.asarray(layer, np.float32)[..., None] / 255.0
    return img * (1 - a) + white * a


def apply_weather(img: np.ndarray, weather: str, yh: float, rng: np.random.Generator,
                  tint: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Weather overlays on the already lit scene (``tint`` from :func:`lighting_tint`).

    ``strength`` (a camera's ``weather_strength``) scales fog density, the
    number of streaks / flakes and the cloudy flattening.
    """
    if weather == "foggy":
        return fog(img, yh, rng, tint, strength)
    if weather == "rainy":
        return rain(img, rng, tint, strength)
    if weather == "snowy":
        return snow(img, rng, tint, strength)
    if weather == "cloudy":  # flat light: a little less contrast
        flat = np.float32(min(0.1 * strength, 0.5))
        return img * (1 - flat) + 0.5 * flat * _overlay_light(tint)
    return img


def lighting_tint(lighting: str, rng: np.random.Generator) -> np.ndarray:
    """Per-channel multiplier: brightness jitter by day, warm at dusk/dawn, dark blue at night."""
    if lighting == "day":
        return np.full(3, rng.uniform(0.95, 1.08), np.float32)
    if lighting == "dusk_dawn":
        return np.asarray((1.0, 0.78, 0.60), np.float32) * np.float32(rng.uniform(0.62, 0.82))
    return np.asarray((0.28, 0.31, 0.46), np.float32) * np.float32(rng.uniform(0.75, 1.15))


def add_glow(img: np.ndarray, glow: np.ndarray, lighting: str, weather: str) -> np.ndarray:
    """Lamps and lit windows with bloom (wider, softer halos in fog); none by day."""
    if lighting == "day":
        return img
    strength = 0.45 if lighting == "dusk_dawn" else 1.0
    if weather == "foggy":
        bloom = 0.5 * glow + 1.2 * _blur(glow, 5.0)
    else:
        bloom = glow + 0.8 * _blur(glow, 2.5)
    return img + strength * bloom


def glare(img: np.ndarray, lighting: str, yh: float, rng: np.random.Generator) -> np.ndarray:
    """Sun (or lamp) flare: hot core, wide halo, horizontal streak and ghost discs."""
    h, w = img.shape[:2]
    sx, sy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.05 * h, yh + 0.05 * h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = (xx - sx) ** 2 + (yy - sy) ** 2
    core_s, halo_s = rng.uniform(0.04, 0.07) * w, rng.uniform(0.25, 0.40) * w
    light = 1.3 * np.exp(-r2 / (2 * core_s**2)) + 0.5 * np.exp(-r2 / (2 * halo_s**2))
    light += 0.5 * np.exp(-((yy - sy) ** 2) / (2 * (0.012 * h) ** 2)) * np.exp(-np.abs(xx - sx) / (0.5 * w))
    cx, cy = w / 2, h / 2
    for t in rng.uniform(0.5, 1.8, size=int(rng.integers(2, 5))):
        gx, gy = sx + (cx - sx) * t * 2, sy + (cy - sy) * t * 2
        gr = rng.uniform(0.03, 0.08) * w
        light += rng.uniform(0.12, 0.25) * (((xx - gx) ** 2 + (yy - gy) ** 2) < gr**2)
    colour = np.asarray(_GLARE_COLOUR[lighting], np.float32)
    veil = 0.12  # veiling glare washes out contrast everywhere
    return img * (1 - veil) + veil * colour + light[..., None] * colour


def camera_look(img: np.ndarray, blur: float, veil: float, veil_colour: tuple[float, ...],
                cast: tuple[float, ...], saturation: float) -> np.ndarray:
    """A camera's fixed rendition of the scene (output resolution, before sensor noise).

    Softening, then a grey veil (lower contrast), desaturation and a
    white-balance cast: the look of a cheap, dirty street webcam when applied
    with the bench camera's settings, a no-op with the neutral ones.
    """
    if blur > 0:
        img = _blur(img, blur)
    if veil > 0:
        img = img * (1 - veil) + veil * np.asarray(veil_colour, np.float32)
    if saturation != 1.0:
        lum = img @ np.asarray((0.299, 0.587, 0.114), np.float32)
        img = lum[..., None] + np.float32(saturation) * (img - lum[..., None])
    return (img * np.asarray(cast, np.float32)).astype(np.float32)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an [H, W, C] float image (edges replicated).

    Done in numpy because PIL's GaussianBlur rejects float ('F') images and
    8-bit round trips would clip the >1 values of glowing lamps.
    """
    radius = max(int(3 * sigma), 1)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        window = [slice(None)] * img.ndim  # a view per tap: np.take would copy each one
        img = sum(w * padded[tuple(window[:axis] + [slice(i, i + n)] + window[axis + 1:])]
                  for i, w in enumerate(k))
    return img.astype(np.float32)
