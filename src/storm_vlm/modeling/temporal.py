"""The temporal module: L pre-norm residual Mamba blocks over all tokens of all frames (Eq. 4-5).

    X̃ = [X̃_1; …; X̃_T] ∈ R^{T×N×D}                                  (Eq. 4)
    X^(l) = X^(l-1) + MambaMixer(LayerNorm(X^(l-1))),  l = 1..L       (Eq. 5)

The T·N tokens form one sequence in raster-then-time order: left→right and top→bottom inside a
frame (the row-major flattening of the token grid), then frame after frame. A bidirectional mixer
also scans it in reverse, so every output token sees every frame. A final LayerNorm (our choice;
the paper is silent) keeps the output scale steady for the LLM.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .mamba import MambaMixer

__all__ = ["TemporalBlock", "TemporalEncoder"]


class TemporalBlock(GradientCheckpointingLayer):
    """``X + MambaMixer(LayerNorm(X))`` on a ``(B, T·N, D)`` sequence (Eq. 5)."""

    def __init__(self, d_model: int, **mixer_kwargs) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = MambaMixer(d_model, **mixer_kwargs)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.mixer(self.norm(hidden_states))


class TemporalEncoder(nn.Module):
    """L temporal blocks + final LayerNorm. ``(B, T, N, D) → (B, T, N, D)``."""

    def __init__(
        self,
        d_model: int,
        num_layers: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        mixer_kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, bidirectional=bidirectional)
        self.layers = nn.ModuleList(TemporalBlock(d_model, **mixer_kwargs) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, frames, n_tokens, width = tokens.shape
        hidden = tokens.reshape(batch, frames * n_tokens, width)  # raster-then-time order
        for layer in self.layers:
            hidden = layer(hidden)
        return self.norm(hidden).view(batch, frames, n_tokens, width)
