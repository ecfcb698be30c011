"""Class-name prompts: display names, and the text cache against the model's own encode_text."""
from __future__ import annotations

import json

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.manifest import META_KEY
from pipeline.params import load_section
from pipeline.text import TextParams, prompts_for, read_text

TASKS = {"lighting": ("single", ["day", "dusk_dawn", "night"]), "objects": ("multi", ["car", "traffic_light"])}
TEXT = {
    "templates": {"lighting": ["a photo taken at {}.", "a street scene, lighting: {}."],
                  "default": ["a photo of a {}."]},
    "class_names": {"lighting": {"day": "broad daylight"}},
}
# What the prompts must read: display names from text.class_names, else the label with '_' -> ' '.
PROMPTS = {
    "lighting": [["a photo taken at broad daylight.", "a photo taken at dusk dawn.", "a photo taken at night."],
                 ["a street scene, lighting: broad daylight.", "a street scene, lighting: dusk dawn.",
                  "a street scene, lighting: night."]],
    "objects": [["a photo of a car.", "a photo of a traffic light."]],
}


def test_prompt_names_come_from_class_names_else_the_label():
    params = TextParams(templates={k: tuple(v) for k, v in TEXT["templates"].items()},
                        class_names=TEXT["class_names"])
    templates, names = prompts_for("lighting", TASKS["lighting"][1], params)
    assert templates == ("a photo taken at {}.", "a street scene, lighting: {}.")
    assert names == ["broad daylight", "dusk dawn", "night"]
    templates, names = prompts_for("objects", TASKS["objects"][1], params)  # no entry: the default templates
    assert templates == ("a photo of a {}.",) and names == ["car", "traffic light"]
    bad = TextParams(templates=params.templates, class_names={"lighting": {"dawn": "sunrise"}})
    with pytest.raises(ValueError, match=r"text.class_names.lighting: \['dawn'\] are not classes"):
        prompts_for("lighting", TASKS["lighting"][1], bad)
    with pytest.raises(ValueError, match="exactly once"):
        prompts_for("lighting", TASKS["lighting"][1], TextParams(templates={"lighting": ("no slot",)}))
    with pytest.raises(ValueError, match="no templates for task 'objects'"):
        prompts_for("objects", TASKS["objects"][1], TextParams(templates={"lighting": ("{}",)}))


def _manifest(path) -> None:
    meta = {"dataset": "t", "root": ".", "tasks": {t: {"type": kind, "classes": classes}
                                                   for t, (kind, classes) in TASKS.items()}}
    table = pa.table({"id": ["a"], "path": ["a.png"], "split": ["train"], "lighting": ["day"],
                      "objects": pa.array([["car"]], pa.list_(pa.string()))})
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), path)


@pytest.fixture(scope="module")
def text_cache(micro_model, tmp_path_factory):
    """The encode_text stage run on a two-task manifest with the micro model (in-process)."""
    from stages.encode_text import main

    tmp = tmp_path_factory.mktemp("text")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"model": micro_model, "text": TEXT,
                                      "runtime": {"device": "cpu", "precision": "fp32", "batch_size": 4,
                                                  "num_workers": 0}}))
    assert load_section(TextParams, "text", params).class_names == TEXT["class_names"]
    _manifest(tmp / "manifest.parquet")
    main(manifest=tmp / "manifest.parquet", out=tmp / "text.zarr", params=params)
    return tmp / "text.zarr"


@pytest.fixture(scope="module")
def reference_model(micro_model):
    """The same checkpoint through plain open_clip calls (no project code)."""
    open_clip.add_model_config(micro_model["config_dir"])
    model = open_clip.create_model(micro_model["name"], pretrained=micro_model["pretrained"])
    return model.eval(), open_clip.get_tokenizer(micro_model["name"])


def _encode(reference_model, prompts: list[str]) -> np.ndarray:
    model, tokenizer = reference_model
    with torch.no_grad():
        emb = model.encode_text(tokenizer(prompts)).double()
    return (emb / emb.norm(dim=-1, keepdim=True)).numpy()


@pytest.mark.parametrize("task", ["lighting", "objects"])
def test_text_cache_holds_encode_text_of_the_prompts(text_cache, reference_model, task):
    ctx = read_text(text_cache, task)
    assert ctx.class_names == tuple(TASKS[task][1])  # labels (the join key), not display names
    per_template = np.stack([_encode(reference_model, prompts) for prompts in PROMPTS[task]])  # [T, C, D]
    assert ctx.template_emb.shape == per_template.shape
    np.testing.assert_allclose(ctx.template_emb, per_template, atol=1e-5)
    # Ensemble: per-template normalised embeddings averaged over templates, then re-normalised.
    mean = per_template.mean(axis=0)
    np.testing.assert_allclose(ctx.class_emb, mean / np.linalg.norm(mean, axis=-1, keepdims=True), atol=1e-5)
    model, _ = reference_model
    assert ctx.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert ctx.templates == tuple(TEXT["templates"].get(task, TEXT["templates"]["default"]))


def test_ensemble_is_not_the_plain_mean_or_a_single_template(text_cache):
    """Guards the test above: with this model the alternatives really differ from the recipe."""
    ctx = read_text(text_cache, "lighting")
    mean = ctx.template_emb.mean(axis=0)
    assert np.abs(ctx.class_emb - mean).max() > 1e-3  # re-normalisation matters
    assert np.abs(ctx.class_emb - ctx.template_emb[0]).max() > 1e-2
    np.testing.assert_allclose(np.linalg.norm(ctx.class_emb, axis=-1), 1.0, atol=1e-5)


def test_text_cache_records_prompt_names(text_cache):
    import zarr

    group = zarr.open_group(str(text_cache), mode="r")
    assert group["lighting"].attrs["prompt_names"] == ["broad daylight", "dusk dawn", "night"]
    assert group["objects"].attrs["prompt_names"] == ["car", "traffic light"]
    with pytest.raises(KeyError, match="no text embeddings for task 'weather'"):
        read_text(text_cache, "weather")
