"""SynthStreets: a procedurally rendered street-scene dataset for the offline default.

Pretrained CLIP weights cannot be downloaded in the offline setting, so the
default pipeline runs on these images and on a small CLIP trained on a
disjoint pool of them (:mod:`pipeline.pretrain`). ``scene`` draws one image
from its facts, ``dataset`` samples facts, splits and writes the CSV layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

WEATHERS: tuple[str, ...] = ("clear", "cloudy", "foggy", "rainy", "snowy")
LIGHTINGS: tuple[str, ...] = ("day", "dusk_dawn", "night")
GLARES: tuple[str, ...] = ("no", "yes")
OBJECT_CLASSES: tuple[str, ...] = (
    "car", "person", "tree", "traffic_light", "bicycle", "building", "sign",
)
#: The single-label attributes, each written to ``bench/<name>.csv``.
ATTRIBUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"weather": WEATHERS, "lighting": LIGHTINGS, "glare": GLARES}
)


#: The two pools, each photographed by its own :class:`Camera`.
POOLS: tuple[str, ...] = ("pretrain", "bench")


@dataclass(frozen=True)
class Camera:
    """How one pool is photographed (``synth.camera.<pool>`` in params.yaml).

    The pools mirror the situation CLIP adaptation addresses: the pretraining
    data (web photos: objects near and large, a clean look) differs from the
    target benchmark (a fixed, wide street webcam: many objects far away and
    small, a washed-out, colour-cast, soft look). Zero-shot prompts calibrated
    on the pretrain look then misjudge bench attributes while the image
    features still separate them (so few-shot heads recover), and a whole
    96 px view misses far objects that an upsampled 3 x 3 tile shows (so
    tiled CDUL pseudo-labels help). Defaults are the neutral camera.

    depth: [min, max] object depth, the fraction of the way from the horizon
        to the bottom edge at which an object stands; its height is
        proportional to it (perspective), so depth sets the object size.
    depth_power: depth = min + (max - min) * u ** depth_power, u uniform;
        > 1 favours far (small) objects. Buildings stand back: uniform in the
        nearest 40% of the range's far end, [min, min + 0.4 (max - min)].
    blur: Gaussian sigma in output pixels (optics / compression softening).
    veil: 0..1 blend of every pixel towards ``veil_colour`` (lower contrast,
        a dirty lens or haze on the housing).
    cast: per-channel gain (white-balance colour cast).
    saturation: 1 unchanged, < 1 towards grey.
    weather_strength: multiplies the weather effects' strength (fog density,
        rain / snow amount, cloudy flattening); < 1 makes weather subtler.
    """

    depth: tuple[float, ...] = (0.05, 1.0)
    depth_power: float = 1.25
    blur: float = 0.0
    veil: float = 0.0
    veil_colour: tuple[float, ...] = (0.6, 0.6, 0.6)
    cast: tuple[float, ...] = (1.0, 1.0, 1.0)
    saturation: float = 1.0
    weather_strength: float = 1.0

    def __post_init__(self) -> None:
        if len(self.depth) != 2 or not 0.0 < self.depth[0] <= self.depth[1] <= 1.0:
            raise ValueError(f"camera depth must be [min, max] with 0 < min <= max <= 1, got {list(self.depth)}")
        if self.depth_power <= 0:
            raise ValueError("camera depth_power must be > 0")
        if not 0.0 <= self.blur <= 5.0:
            raise ValueError("camera blur must be in [0, 5] output pixels")
        if not 0.0 <= self.veil < 1.0:
            raise ValueError("camera veil must be in [0, 1)")
        for name in ("veil_colour", "cast"):
            value = getattr(self, name)
            if len(value) != 3 or not all(0.0 <= v <= 2.0 for v in value):
                raise ValueError(f"camera {name} must be 3 values in [0, 2], got {list(value)}")
        if not 0.0 <= self.saturation <= 2.0:
            raise ValueError("camera saturation must be in [0, 2]")
        if not 0.0 <= self.weather_strength <= 2.0:
            raise ValueError("camera weather_strength must be in [0, 2]")


@dataclass(frozen=True)
class SynthParams:
    """``synth:`` section of params.yaml.

    weather_probs / lighting_probs: class -> probability (each must cover all
        classes and sum to 1); the imbalance is deliberate.
    glare_prob: probability of a sun/light flare (rare by design).
    object_probs: class -> independent probability that at least one instance
        is present.
    heldout: (weather, lighting) pairs that never occur in the pretrain pool.
    heldout_min_per_split: each held-out pair is forced to occur at least this
        often in every bench split (so zero-shot tests on them have samples).
    camera: pool ("pretrain", "bench") -> :class:`Camera`; the domain shift
        between pretraining data and benchmark.
    """

    seed: int
    image_size: int
    n_pretrain: int
    pretrain_val_frac: float
    n_train: int
    n_val: int
    n_test: int
    weather_probs: dict[str, float]
    lighting_probs: dict[str, float]
    glare_prob: float
    object_probs: dict[str, float]
    heldout: tuple[tuple[str, ...], ...]
    heldout_min_per_split: int
    camera: dict[str, Camera]

    def __post_init__(self) -> None:
        if not 64 <= self.image_size <= 256:
            raise ValueError(f"image_size must be in [64, 256], got {self.image_size}")
        for name in ("n_pretrain", "n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 < self.pretrain_val_frac < 1.0:
            raise ValueError("pretrain_val_frac must be in (0, 1)")
        _check_probs("weather_probs", self.weather_probs, WEATHERS)
        _check_probs("lighting_probs", self.lighting_probs, LIGHTINGS)
        if set(self.object_probs) != set(OBJECT_CLASSES):
            raise ValueError(f"object_probs must have exactly the keys {list(OBJECT_CLASSES)}")
        for p in (self.glare_prob, *self.object_probs.values()):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probabilities must be in [0, 1], got {p}")
        for pair in self.heldout:
            if len(pair) != 2 or pair[0] not in WEATHERS or pair[1] not in LIGHTINGS:
                raise ValueError(f"heldout entries must be [weather, lighting], got {list(pair)}")
        if self.heldout_min_per_split < 0:
            raise ValueError("heldout_min_per_split must be >= 0")
        if set(self.camera) != set(POOLS) or not all(isinstance(c, Camera) for c in self.camera.values()):
            raise ValueError(f"camera must map exactly {list(POOLS)} to camera settings")


def _check_probs(name: str, probs: Mapping[str, float], classes: tuple[str, ...]) -> None:
    if set(probs) != set(classes):
        raise ValueError(f"{name} must have exactly the keys {list(classes)}")
    if any(p < 0 for p in probs.values()) or not math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must be non-negative and sum to 1")


#: Web-photo pretraining vs. a wide, washed-out street webcam (see :class:`Camera`).
#: Pretrain: objects nearer and larger (easier to learn; a 3 x 3 tile of a
#: bench image upsamples far objects to about this size). Bench: depth capped
#: at 0.6 and biased far, so many objects are a few pixels tall in the whole
#: 96 px view; a grey veil, desaturation, a green-cyan cast and slight blur
#: shift the zero-shot prompts (weather / lighting) while the features keep
#: the classes apart. (A warm cast was tried and dropped: it mimics sun
#: glare, sending glare zero-shot below the majority baseline.)
DEFAULT_CAMERAS: Mapping[str, Camera] = MappingProxyType({
    "pretrain": Camera(depth=(0.15, 1.0), depth_power=0.8),
    "bench": Camera(depth=(0.05, 0.6), depth_power=1.5, blur=0.4, veil=0.3, veil_colour=(0.6, 0.6, 0.6),
                    cast=(0.85, 1.0, 0.93), saturation=0.7, weather_strength=1.0),
})


def default_params(**overrides: object) -> SynthParams:
    """The recommended defaults (the ``synth:`` block proposed for params.yaml)."""
    values: dict[str, object] = dict(
        seed=20240611,
        image_size=96,
        n_pretrain=6000,
        pretrain_val_frac=0.1,
        n_train=800,
        n_val=300,
        n_test=600,
        weather_probs={"clear": 0.40, "cloudy": 0.25, "rainy": 0.18, "snowy": 0.10, "foggy": 0.07},
        lighting_probs={"day": 0.60, "dusk_dawn": 0.15, "night": 0.25},
        glare_prob=0.12,
        object_probs={"car": 0.45, "person": 0.35, "tree": 0.40, "traffic_light": 0.20,
                      "bicycle": 0.15, "building": 0.35, "sign": 0.20},
        heldout=(("snowy", "night"), ("foggy", "dusk_dawn")),
        heldout_min_per_split=8,
        camera=DEFAULT_CAMERAS,
    )
    values.update(overrides)
    camera = values["camera"]
    values["camera"] = {pool: c if isinstance(c, Camera) else Camera(**{k: tuple(v) if isinstance(v, list) else v
                                                                         for k, v in c.items()})
                        for pool, c in dict(camera).items()}  # type: ignore[union-attr]
    values = {k: MappingProxyType(dict(v)) if isinstance(v, dict) else v for k, v in values.items()}
    return SynthParams(**values)  # type: ignore[arg-type]


__all__ = [
    "WEATHERS", "LIGHTINGS", "GLARES", "OBJECT_CLASSES", "ATTRIBUTES",
    "POOLS", "Camera", "DEFAULT_CAMERAS", "SynthParams", "default_params",
]
