"""Vision-to-LLM projector: 2×2 space-to-depth, LayerNorm, then one Linear (STORM) or an MLP.

Eq. 3 of the paper reduces each frame's N̂ patch tokens to N = N̂/r; with 1024 SigLIP patches
and 256 tokens per frame, r = 4, i.e. a 2×2 window. As in VILA's ``mlp_downsample`` (which the
paper builds on), the window is a parameter-free space-to-depth (the 4 neighbours' channels are
concatenated; odd grids are zero-padded), followed by LayerNorm(4C). STORM then applies a single
Linear(4C → D) and leaves the rest to the Mamba module; the no-Mamba baseline applies
Linear-GELU-Linear (paper Fig. 6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mamba import keep_default_init

__all__ = ["Projector", "space_to_depth"]


def space_to_depth(x: torch.Tensor, r: int) -> torch.Tensor:
    """``(M, h, w, C) → (M, ⌈h/r⌉, ⌈w/r⌉, r·r·C)``, zero-padding the bottom/right edges."""
    if r == 1:
        return x
    m, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (-w) % r, 0, (-h) % r))
    hh, ww = x.shape[1] // r, x.shape[2] // r
    x = x.view(m, hh, r, ww, r, c).permute(0, 1, 3, 2, 4, 5)  # (M, h/r, w/r, r, r, C)
    return x.reshape(m, hh, ww, r * r * c)


class Projector(nn.Module):
    """``(M, h·w, C)`` patch features of M frames → ``(M, N, D)`` tokens, N = ⌈h/r⌉·⌈w/r⌉."""

    def __init__(self, vision_width: int, text_width: int, downsample: int = 2, kind: str = "storm") -> None:
        super().__init__()
        self.downsample = downsample
        in_width = vision_width * downsample * downsample
        self.norm = nn.LayerNorm(in_width)
        self.proj: nn.Module
        if kind == "storm":
            self.proj = nn.Linear(in_width, text_width)
        elif kind == "mlp":
            self.proj = nn.Sequential(nn.Linear(in_width, text_width), nn.GELU(), nn.Linear(text_width, text_width))
        else:
            raise ValueError(f"unknown projector kind {kind!r} (expected 'storm' or 'mlp')")
        # Our choice (the paper is silent): PyTorch's default Linear init (kaiming-uniform) with zero
        # biases, as LLaVA and VILA get it by building the projector outside the HF init. Unlike the
        # generic normal(0.02), its output scale does not depend on the vision width.
        for linear in (m for m in self.modules() if isinstance(m, nn.Linear)):
            keep_default_init(linear)

    def forward(self, features: torch.Tensor, patch_grid: tuple[int, int]) -> torch.Tensor:
        m, _, c = features.shape
        h, w = patch_grid
        x = space_to_depth(features.view(m, h, w, c), self.downsample)  # (M, h/r, w/r, r²C)
        return self.proj(self.norm(x.flatten(1, 2)))
