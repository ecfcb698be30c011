"""Networks of the intra-modal overlap correction (Kravets & Namboodiri, BMVC 2024,
"CLIP Adaptation by Intra-modal Overlap Correction", arXiv 2409.11338).

:class:`OverlapAdapter` is the lightweight bottleneck adapter that is trained on
a generic image collection so that same-class and different-class image-image
cosine similarities overlap less; Tip-Adapter's cache is then rebuilt from the
corrected embeddings. The paper places AdaptFormer-style parallel adapters
inside the MLP of every block of the CLIP image encoder (``ffn_num = 64``,
LoRA-style initialisation with a zero up-projection, scale 0.03 supervised /
0.1 with DINO in the released code).

Deviation: here a single residual bottleneck acts on the *cached*
L2-normalised image embedding ``f`` [.., D], so the encoder is never re-run::

    f' = normalise(f + ratio * W_up ReLU(W_down f + b_down) + b_up)

``W_down`` is Kaiming-uniform and ``W_up``/biases are zero (the reference's
"lora" initialisation), so an untrained adapter is exactly the identity on
normalised inputs and training starts from the frozen CLIP geometry. A
residual low-rank map can rescale a subspace (amplify directions that carry
semantics, damp nuisance directions) which is what reducing the overlap needs.

:class:`DinoHead` is DINO's projection head (Caron et al. 2021, "Emerging
Properties in Self-Supervised Vision Transformers", reference ``DINOHead``):
MLP with GELU (``nlayers = 3``) -> L2-normalised bottleneck -> weight-normalised
linear layer onto ``out_dim`` prototypes, with the weight norm fixed to 1
(``norm_last_layer=True``), implemented by normalising the prototype rows in
``forward`` instead of ``torch.nn.utils.weight_norm`` (same function, no
deprecated parametrisation). Sizes are smaller than DINO's (2048 hidden, 256
bottleneck, 65536 prototypes), and ``n_layers = 0`` (no MLP: the prototypes
act directly on the L2-normalised adapter output) is allowed; see
``OverlapAdapterParams.head_layers`` for why the overlap correction uses it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class OverlapAdapter(nn.Module):
    """Residual bottleneck on a D-dim normalised embedding, identity at init."""

    def __init__(self, dim: int, reduction: int = 4, ratio: float = 1.0) -> None:
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(f"reduction {reduction} leaves no bottleneck units for dimension {dim}")
        self.dim, self.reduction, self.ratio = dim, reduction, ratio
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        with torch.no_grad():  # the reference's "lora" init: identity map at the start
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The learned correction added to ``x`` (before scaling by ``ratio``)."""
        return self.up(F.relu(self.down(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.ratio * self.residual(x), dim=-1)


class DinoHead(nn.Module):
    """DINO projection head: MLP -> L2-normalised bottleneck -> normalised prototypes.

    ``n_layers`` is DINO's ``nlayers`` (3 there; 1 = a single linear layer to the
    bottleneck). ``n_layers = 0`` drops the MLP: the prototypes act directly on
    the input, which must then already be L2-normalised (the adapter output is).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim] if n_layers else [in_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            linear = nn.Linear(a, b)
            nn.init.trunc_normal_(linear.weight, std=0.02)  # DINO's init
            nn.init.zeros_(linear.bias)
            layers += [linear] if i == len(dims) - 2 else [linear, nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        # weight_norm's direction parameter v, initialised like nn.Linear; g is fixed to 1
        self.prototypes = nn.Parameter(torch.empty(out_dim, dims[-1]))
        nn.init.kaiming_uniform_(self.prototypes, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).T


__all__ = ["OverlapAdapter", "DinoHead"]
