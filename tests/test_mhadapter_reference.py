"""CLIP-MHAdapter against a forward written from the reference's description, and its per-task params.

Reference (SpaceTimeLab/CLIP-MHAdapter): the adapter reads the patch tokens only
(``tokens[:, 1:]``), and its output is blended with the raw projected image
feature (not the unit-norm one) before normalising.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import yaml

from pipeline.heads import make_head
from pipeline.heads.clip_mhadapter import MHAdapterNet
from tests.conftest import REPO


def _by_hand(net: MHAdapterNet, cls: torch.Tensor, norm: torch.Tensor, tokens: torch.Tensor, heads: int):
    """Plain tensor algebra with the net's weights: MLP, multi-head self-attention, mean, blend."""
    lin1, lin2, ln = net.mlp[0], net.mlp[2], net.mlp[4]
    patches = tokens[:, 1:]
    h = torch.relu(torch.relu(patches @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias)
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + ln.eps)
    h = h * ln.weight + ln.bias
    d = h.shape[-1]
    wq, wk, wv = net.attn.in_proj_weight.split(d)
    bq, bk, bv = net.attn.in_proj_bias.split(d)
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(h @ wq.T + bq), split(h @ wk.T + bk), split(h @ wv.T + bv)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
    att = att.transpose(1, 2).reshape(h.shape) @ net.attn.out_proj.weight.T + net.attn.out_proj.bias
    adapted = att.mean(dim=1)
    mixed = net.blend * adapted + (1 - net.blend) * cls * norm[:, None]
    mixed = mixed / mixed.norm(dim=-1, keepdim=True)
    return net.logit_scale * mixed @ net.class_weights.T


def test_forward_is_patch_tokens_only_and_blends_the_raw_feature():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    classes = rng.standard_normal((3, 16)).astype(np.float32)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    net = MHAdapterNet(24, classes, 100.0, bottleneck=12, heads=4, blend=0.8).eval()
    cls = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    norm = torch.rand(5) * 10 + 5
    tokens = torch.randn(5, 1 + 9, 24)
    with torch.no_grad():
        got = net({"cls": cls, "cls_norm": norm, "tokens": tokens})
        want = _by_hand(net, cls, norm, tokens, heads=4)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # the class token (index 0) never reaches the adapter
        other = tokens.clone()
        other[:, 0] = torch.randn(5, 24) * 100
        torch.testing.assert_close(net({"cls": cls, "cls_norm": norm, "tokens": other}), got)
        # the blend is with the raw feature: its norm matters (a unit-norm blend would ignore it)
        assert not torch.allclose(net({"cls": cls, "cls_norm": norm * 3, "tokens": tokens}), got, atol=1e-3)


def test_default_recipe_and_per_task_overrides():
    block = yaml.safe_load((REPO / "params.yaml").read_text())["heads"]["clip_mhadapter"]
    weather, glare, lighting = (make_head("clip_mhadapter", block, 16, t) for t in ("weather", "glare", "lighting"))
    assert (weather.optimizer, weather.weight_decay, weather.epochs, weather.batch_size) == ("adamw", 5e-4, 100, 256)
    assert (weather.warmup_epochs, weather.patience, weather.monitor, weather.template) == (5, 10, "accuracy", 0)
    assert (weather.blend, weather.heads, weather.class_weight) == (0.8, 8, "none")
    assert (glare.blend, glare.heads, glare.class_weight) == (0.8, 4, "none")
    assert (lighting.blend, lighting.heads, lighting.class_weight) == (0.8, 8, "inverse")
