"""Fitted heads as shareable files: learned tensors in safetensors, everything else in JSON. No pickle.

A fitted head is two files side by side::

    weather-16-1.json           format, head name, constructor params, task, shots, seed, classes,
                                text side (templates, class names, logit scale), encoder identity
                                (model, weights hash, preprocessing, decoding), the learned state
                                as tagged JSON, and the sha256 of the tensor file
    weather-16-1.safetensors    every learned array / tensor / module weight, by attribute path

Serialisation is generic over the estimator contract: the constructor params come
from ``get_params()``, the learned state is every attribute ending in ``_``. Values
are stored by kind: numpy arrays and torch tensors (safetensors), ``nn.Module``
(its ``state_dict`` in safetensors plus its plain scalar attributes), scalars,
strings, lists / tuples / dicts of those, ``torch.device``, and nested estimators
of an allowlist (scikit-learn's ``LogisticRegression``). A value of any other kind
is refused when saving, naming the attribute.

Loading never executes code from the file: the head class is looked up by name in
:data:`pipeline.heads.HEADS` (or :data:`EXTRA`), a module is rebuilt empty by the
head's own ``_empty_module(attr, shapes)`` hook (the one hook a head holding an
``nn.Module`` needs) and filled with ``load_state_dict``; a tensor file that is a
pickle (or anything but safetensors) is refused. :func:`load_head` compares the
file's encoder identity with the cache it is applied to and names every differing
field, like :func:`pipeline.cache.check_identity`.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.cache import flatten
from pipeline.errors import UserError
from pipeline.files import atomic_path, sha256_file

log = logging.getLogger(__name__)

FORMAT = "clipcache-head"
FORMAT_VERSION = 1
TENSOR_SUFFIX = ".safetensors"
#: the cache identity fields that say which encoder made the features (and how images were decoded)
ENCODER_FIELDS = ("model", "weights", "open_clip_version", "image_size", "mean", "std", "interpolation",
                  "resize_mode", "decode")
#: non-head estimators a model file may hold, by name (never imported from the file)
EXTRA = {"cdul_classifier": "pipeline.cdul.classifier:CdulClassifier"}
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save's zip archive


class ModelFileError(UserError, ValueError):
    """A model file is malformed, unsafe (a pickle), or does not fit what it is applied to."""


@dataclass
class LoadedHead:
    head: Any
    meta: dict           # the JSON document, less the learned state
    path: Path


# --- identity ----------------------------------------------------------------------------------------


def encoder_identity(cache_identity: Mapping[str, Any]) -> dict[str, Any]:
    """The encoder fields of an image cache's identity (what a head's features depend on)."""
    return {k: cache_identity[k] for k in ENCODER_FIELDS if k in cache_identity}


def text_identity(text: Any) -> dict[str, Any]:
    """Class names, templates and logit scale of a :class:`~pipeline.features.TextContext`."""
    return {"class_names": list(text.class_names), "templates": list(text.templates),
            "logit_scale": float(text.logit_scale)}


def check_encoder(found: Mapping[str, Any], cache: Mapping[str, Any], path: Path | str, partial: bool = False) -> None:
    """Refuse a model file made with another encoder than the cache's, naming every differing field.

    ``partial``: compare only the fields ``cache`` has (an expectation built before any model is loaded).
    """
    have, want = flatten(encoder_identity(found)), flatten(encoder_identity(_plain(cache)))
    keys = set(want) if partial else set(have) | set(want)
    diffs = [f"'{k}' is {have.get(k, '<absent>')!r} in the model file but {want.get(k, '<absent>')!r} in the cache"
             for k in sorted(keys) if have.get(k, "<absent>") != want.get(k, "<absent>")]
    if diffs:
        raise ModelFileError(f"{path}: the head was fitted on another encoder's features: " + "; ".join(diffs))


# --- save --------------------------------------------------------------------------------------------


def save_head(head: Any, path: Path | str, *, name: str, **info: Any) -> Path:
    """Write ``head`` as ``<path>.json`` + ``<path>.safetensors`` (``path`` may end in .json); return the JSON path.

    ``info`` goes into the JSON as is (task, shots, seed, classes, text, encoder, ...).
    The tensor file is written first, so a JSON always names a complete tensor file.
    """
    from safetensors.numpy import save_file

    json_path = Path(path).with_suffix(".json")
    tensor_path = json_path.with_suffix(TENSOR_SUFFIX)
    tensors: dict[str, np.ndarray] = {}
    state = {attr: _encode(getattr(head, attr), attr, tensors) for attr in learned_attributes(head)}
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "head": name, "class": type(head).__name__,
           "params": _plain(head.get_params()), **_plain(info), "state": state,
           "tensors": {"file": tensor_path.name, "sha256": sha256_file(tensor_path)}}
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False))
    return json_path


def learned_attributes(obj: Any) -> list[str]:
    """Public attributes ending in ``_``: the learned state of a fitted estimator."""
    return sorted(k for k in vars(obj) if k.endswith("_") and not k.startswith("_"))


def _encode(value: Any, key: str, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return {"scalar": value.dtype.str, "value": _encode(value.item(), key, tensors)}
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            tensors[key] = np.ascontiguousarray(value)
            return {"array": key}
        if value.dtype.kind in "UO" and all(isinstance(v, str) for v in value.flat):
            return {"strings": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().numpy()
        return {"tensor": key}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, nn.Module):
        for name, t in value.state_dict().items():
            tensors[f"{key}/{name}"] = t.detach().cpu().numpy()
        attrs = {k: _encode(v, key, tensors) for k, v in vars(value).items()
                 if not k.startswith("_") and k != "training" and (v is None or isinstance(v, (bool, int, float, str)))}
        return {"module": type(value).__name__, "prefix": key, "attrs": attrs}
    if type(value).__name__ in _estimators():
        return {"estimator": type(value).__name__, "params": _plain(value.get_params()),
                "state": {a: _encode(getattr(value, a), f"{key}/{a}", tensors) for a in learned_attributes(value)}}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"dict": {k: _encode(v, f"{key}/{k}", tensors) for k, v in value.items()}}
        return {"pairs": [[_encode(k, f"{key}/{i}k", tensors), _encode(v, f"{key}/{i}", tensors)]
                          for i, (k, v) in enumerate(value.items())]}
    raise ModelFileError(f"cannot store learned attribute '{key}' of type {type(value).__name__}: the model file "
                         "holds arrays, tensors, modules, scalars, strings and containers of those")


# --- load --------------------------------------------------------------------------------------------


def load_head(path: Path | str, expect_encoder: Mapping[str, Any] | None = None,
              device: torch.device | str | None = None) -> LoadedHead:
    """Read a model file written by :func:`save_head`; refuse pickles and another encoder than ``expect_encoder``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if path.suffix == TENSOR_SUFFIX:
        path = path.with_suffix(".json")
    doc = _read_json(path)
    if expect_encoder is not None:
        check_encoder(doc.get("encoder") or {}, expect_encoder, path)
    cls = head_class(doc.get("head"), path)
    ref = doc.get("tensors") or {}
    name = str(ref.get("file", ""))
    if Path(name).name != name or not name.endswith(TENSOR_SUFFIX):
        raise ModelFileError(f"{path}: 'tensors.file' must name a {TENSOR_SUFFIX} file beside it, got {name!r}")
    tensor_path = path.parent / name
    _refuse_pickle(tensor_path)
    if sha256_file(tensor_path) != ref.get("sha256"):
        raise ModelFileError(f"{tensor_path}: sha256 differs from the one {path.name} records "
                             "(the two files do not belong together)")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{tensor_path}: not a safetensors file ({exc})") from exc
    from pipeline.heads.base import head_params

    head = cls(**head_params(doc["head"], cls, doc.get("params")))
    dev = torch.device(device) if device is not None else torch.device("cpu")
    loader = _Decoder(head, tensors, dev, path)
    for attr, value in (doc.get("state") or {}).items():
        if not attr.endswith("_"):
            raise ModelFileError(f"{path}: state '{attr}' is not a learned attribute (those end in '_')")
        setattr(head, attr, loader.decode(value, attr))
    meta = {k: v for k, v in doc.items() if k != "state"}
    return LoadedHead(head, meta, path)


def head_class(name: Any, path: Path | str = "") -> type:
    """The estimator class registered under ``name`` (HEADS, or :data:`EXTRA`)."""
    from pipeline.heads import HEADS

    if name in HEADS:
        return HEADS[name]
    if name in EXTRA:
        import importlib

        module, attr = EXTRA[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise ModelFileError(f"{path}: unknown head {name!r} (registered: {', '.join(sorted([*HEADS, *EXTRA]))})")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model file here (run the train stage)")
    _refuse_pickle(path)
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not a model file (not JSON: {exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a model file ('format' is not {FORMAT!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: 'format_version' is {doc.get('format_version')!r}, "
                             f"this version reads {FORMAT_VERSION}")
    return doc


def _refuse_pickle(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as fh:
        head = fh.read(4)
    if any(head.startswith(magic) for magic in _PICKLE_MAGIC):
        raise ModelFileError(f"{path}: is a pickle (or torch.save archive); refused, since loading one can run "
                             "arbitrary code. Model files are JSON + safetensors")


class _Decoder:
    def __init__(self, head: Any, tensors: dict[str, np.ndarray], device: torch.device, path: Path) -> None:
        self.head, self.tensors, self.device, self.path = head, tensors, device, path

    def tensor(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            raise ModelFileError(f"{self.path}: tensor '{key}' missing from the tensor file")
        return self.tensors[key]

    def decode(self, value: Any, attr: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, list):
            return [self.decode(v, attr) for v in value]
        if not isinstance(value, dict) or len(value) == 0:
            raise ModelFileError(f"{self.path}: state '{attr}' holds an unknown value {value!r}")
        if "float" in value:
            return float(value["float"])
        if "scalar" in value:
            return np.dtype(value["scalar"]).type(self.decode(value["value"], attr))
        if "array" in value:
            return self.tensor(value["array"])
        if "strings" in value:
            return np.array(value["strings"], dtype=np.dtype(value["dtype"]))
        if "tensor" in value:
            return torch.from_numpy(self.tensor(value["tensor"]).copy()).to(self.device)
        if "device" in value:
            return self.device
        if "tuple" in value:
            return tuple(self.decode(v, attr) for v in value["tuple"])
        if "dict" in value:
            return {k: self.decode(v, attr) for k, v in value["dict"].items()}
        if "pairs" in value:
            return {self.decode(k, attr): self.decode(v, attr) for k, v in value["pairs"]}
        if "module" in value:
            return self.module(value, attr)
        if "estimator" in value:
            return self.estimator(value, attr)
        raise ModelFileError(f"{self.path}: state '{attr}' holds an unknown value kind {sorted(value)}")

    def module(self, value: dict, attr: str) -> nn.Module:
        prefix = value["prefix"] + "/"
        weights = {k[len(prefix):]: torch.from_numpy(v.copy()) for k, v in self.tensors.items() if k.startswith(prefix)}
        hook = getattr(self.head, "_empty_module", None)
        if hook is None:
            raise ModelFileError(f"{self.path}: {type(self.head).__name__} has no _empty_module hook "
                                 f"to rebuild '{attr}'")
        module = hook(attr, {k: tuple(v.shape) for k, v in weights.items()})
        if type(module).__name__ != value["module"]:
            raise ModelFileError(f"{self.path}: '{attr}' is a {value['module']} in the file but the head builds "
                                 f"a {type(module).__name__}")
        try:
            module.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"{self.path}: '{attr}' does not fit its weights: {exc}") from exc
        for k, v in value.get("attrs", {}).items():
            setattr(module, k, self.decode(v, attr))
        return module.to(self.device).eval()

    def estimator(self, value: dict, attr: str) -> Any:
        cls = _estimators().get(value["estimator"])
        if cls is None:
            raise ModelFileError(f"{self.path}: '{attr}' is a {value['estimator']!r}, not an allowed estimator")
        est = cls(**_tuples(value.get("params") or {}))
        for k, v in value.get("state", {}).items():
            setattr(est, k, self.decode(v, attr))
        return est


def _estimators() -> dict[str, type]:
    from sklearn.linear_model import LogisticRegression

    return {"LogisticRegression": LogisticRegression}


def _tuples(params: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _plain(obj: Any) -> Any:
    """JSON-ready copy: tuples as lists, numpy scalars as Python ones."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else list(o)))
