"""The temporal module: L pre-norm residual Mamba blocks over all tokens of all frames (Eq. 4-5).

    X̃ = [X̃_1; …; X̃_T] ∈ R^{T×N×D}                                  (Eq. 4)
    X^(l) = X^(l-1) + MambaMixer(LayerNorm(X^(l-1))),  l = 1..L       (Eq. 5)

The T·N tokens form one sequence in raster-then-time order: left→right and top→bottom inside a
frame (the row-major flattening of the token grid), then frame after frame. A bidirectional mixer
also scans it in reverse, so every output token sees every frame. A final LayerNorm (our choice;
the paper is silent) keeps the output scale steady for the LLM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .mamba import BranchState, MambaMixer

if TYPE_CHECKING:
    from ..configuration_storm import StormConfig

__all__ = ["TemporalBlock", "TemporalEncoder"]


class TemporalBlock(GradientCheckpointingLayer):
    """``X + MambaMixer(LayerNorm(X))`` on a ``(B, T·N, D)`` sequence (Eq. 5)."""

    def __init__(self, config: StormConfig, out_scale: float = 1.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.mixer = MambaMixer(config, out_scale=out_scale)

    def forward(
        self, hidden_states: torch.Tensor, state: BranchState | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, BranchState]:
        if state is None and not return_state:
            return hidden_states + self.mixer(self.norm(hidden_states))
        mixed, new_state = self.mixer(self.norm(hidden_states), state, return_state=True)
        return hidden_states + mixed, new_state


class TemporalEncoder(nn.Module):
    """L = ``config.temporal_layers`` temporal blocks + final LayerNorm. ``(B, T, N, D) → (B, T, N, D)``.

    Every size comes from the :class:`~storm_vlm.StormConfig` (D = ``hidden_size``, the Mamba
    sizes, ``bidirectional``), so the module a model builds is the one its config describes.
    """

    def __init__(self, config: StormConfig) -> None:
        super().__init__()
        num_layers = config.temporal_layers
        # out_proj starts scaled by 1/√L, as mamba_ssm's rescale_prenorm_residual does: the residual
        # stream's variance does not grow with depth and each block starts close to the identity.
        out_scale = max(num_layers, 1) ** -0.5
        self.layers = nn.ModuleList(TemporalBlock(config, out_scale) for _ in range(num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.cut_at_frames = False  # the Mamba-usage diagnostic: see StormModel.scan_cut

    def forward(
        self, tokens: torch.Tensor, state: list[BranchState] | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[BranchState]]:
        """``(B, T, N, D) → (B, T, N, D)``.

        Streaming (causal mixers only): pass the ``state`` returned by the previous call and
        ``return_state=True``; frames fed in chunks give the same output as one pass over all
        of them, at a cost per frame that does not grow with the stream.
        """
        batch, frames, n_tokens, width = tokens.shape
        if self.cut_at_frames and (state is not None or return_state):
            raise ValueError("a stream cannot run with the scan cut at frame boundaries")
        if self.cut_at_frames:  # every frame its own sequence: nothing crosses a frame boundary
            hidden = tokens.reshape(batch * frames, n_tokens, width)
        else:
            hidden = tokens.reshape(batch, frames * n_tokens, width)  # raster-then-time order
        if state is None and not return_state:
            for layer in self.layers:
                hidden = layer(hidden)
            return self.norm(hidden).view(batch, frames, n_tokens, width)
        states = state if state is not None else [None] * len(self.layers)
        new_states = []
        for layer, layer_state in zip(self.layers, states):
            hidden, layer_state = layer(hidden, layer_state, return_state=True)
            new_states.append(layer_state)
        return self.norm(hidden).view(batch, frames, n_tokens, width), new_states
