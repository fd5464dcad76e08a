"""Token reduction after the temporal module (paper §3.3-3.4, Eq. 6-8).

All three act on X^(L) ∈ R^{T×N×D}, in this order:

1. temporal average pooling, kernel = stride = k (Eq. 6-7), trained with it;
2. spatial average pooling, a p×p kernel with stride p on each frame's token grid, trained with it;
3. test-time temporal sampling: keep frames t = 0, s, 2s, … (Eq. 8), training-free.

Ragged edges (T not a multiple of k, a grid side not a multiple of p) are averaged over the
frames / tokens the group actually has, never over zero padding, so a constant video stays
constant. Token counts: T' = ⌈⌈T/k⌉/s⌉, N' = ⌈h/p⌉·⌈w/p⌉ (see :func:`num_visual_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..limits import MAX_REDUCTION  # largest k, p or s: the most frames a clip may have

__all__ = [
    "MAX_REDUCTION",
    "PAPER_SETTINGS",
    "ReductionSettings",
    "num_visual_tokens",
    "reduce_tokens",
    "reduced_shape",
    "settings_for_budget",
    "spatial_pool",
    "temporal_pool",
    "temporal_sample",
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ReductionSettings:
    """The compression knobs: k (temporal pool), p (spatial pool), s (test-time sampling)."""

    temporal_pool: int = 1  # k
    spatial_pool: int = 1  # p (kernel side; p=2 → 4x fewer tokens per frame)
    temporal_sampling: int = 1  # s, inference only

    def __post_init__(self) -> None:
        for name in ("temporal_pool", "spatial_pool", "temporal_sampling"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_REDUCTION:
                raise ValueError(f"{name} must be an integer from 1 to {MAX_REDUCTION}, got {value!r}")

    @classmethod
    def resolve(
        cls,
        defaults: object,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        training: bool = False,
    ) -> ReductionSettings:
        """Explicit values where given, else those of ``defaults`` (a config); no sampling in training."""

        def pick(value: int | None, name: str) -> int:
            return value if value is not None else getattr(defaults, name)

        settings = cls(
            pick(temporal_pool, "temporal_pool"),
            pick(spatial_pool, "spatial_pool"),
            pick(temporal_sampling, "temporal_sampling"),
        )
        return settings.for_training() if training else settings

    def for_training(self) -> ReductionSettings:
        """Sampling is training-free: during training only the pooling applies."""
        return replace(self, temporal_sampling=1)

    def __str__(self) -> str:
        return f"k={self.temporal_pool} p={self.spatial_pool} s={self.temporal_sampling}"


# The paper's settings (§4, Table 1), by short name, with the label the paper's tables use.
PAPER_SETTINGS: dict[str, tuple[str, ReductionSettings]] = {
    "none": ("none", ReductionSettings(1, 1, 1)),
    "k4": ("T.Pool", ReductionSettings(4, 1, 1)),
    "k4s2": ("T.Pool + T.Sampling", ReductionSettings(4, 1, 2)),
    "k4s2p2": ("T.Pool + T.Samp. + S.Pool", ReductionSettings(4, 2, 2)),
}


def temporal_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Average every k consecutive frames. ``(B, T, N, D) → (B, ⌈T/k⌉, N, D)`` (Eq. 6-7).

    k ≥ T is one group of all T frames, so k is clamped to T: the result is the same and the
    zero padding (k - T frames) is never allocated, however large k is.
    """
    batch, frames, n_tokens, width = x.shape
    k = min(k, max(frames, 1))
    if k == 1:
        return x
    groups = _ceil_div(frames, k)
    pad = groups * k - frames
    sums = F.pad(x, (0, 0, 0, 0, 0, pad)).view(batch, groups, k, n_tokens, width).sum(2)
    counts = torch.full((groups,), float(k), dtype=x.dtype, device=x.device)
    counts[-1] = k - pad  # the ragged last group averages over the frames it has
    return sums / counts[:, None, None]


def spatial_pool(x: torch.Tensor, grid: tuple[int, int], p: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """p×p average pooling on each frame's ``grid``. ``(B, T, h·w, D) → (B, T, ⌈h/p⌉·⌈w/p⌉, D)``.

    ``ceil_mode`` with no padding makes PyTorch divide clipped edge windows by their in-bounds
    size, which is exactly the ragged-edge rule above.
    """
    h, w = grid
    p = min(p, max(h, w))  # a window larger than the grid covers the same tokens as one the grid's size
    if p == 1:
        return x, grid
    batch, frames, _, width = x.shape
    maps = x.reshape(batch * frames, h, w, width).permute(0, 3, 1, 2)  # (B·T, D, h, w)
    pooled = F.avg_pool2d(maps, kernel_size=p, stride=p, ceil_mode=True)
    new_grid = (pooled.shape[-2], pooled.shape[-1])
    return pooled.permute(0, 2, 3, 1).reshape(batch, frames, -1, width), new_grid


def temporal_sample(x: torch.Tensor, s: int) -> torch.Tensor:
    """Keep frames 0, s, 2s, … ``(B, T, N, D) → (B, ⌈T/s⌉, N, D)`` (Eq. 8)."""
    return x if s == 1 else x[:, ::s]


def reduce_tokens(
    x: torch.Tensor, grid: tuple[int, int], settings: ReductionSettings
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pool in time, pool in space, then sample. Returns the tokens and their grid."""
    x = temporal_pool(x, settings.temporal_pool)
    x, grid = spatial_pool(x, grid, settings.spatial_pool)
    return temporal_sample(x, settings.temporal_sampling), grid


def reduced_shape(num_frames: int, grid: tuple[int, int], settings: ReductionSettings) -> tuple[int, int]:
    """(T', N') after reduction, without running anything."""
    frames = _ceil_div(_ceil_div(num_frames, settings.temporal_pool), settings.temporal_sampling)
    h, w = grid
    p = settings.spatial_pool
    return frames, _ceil_div(h, p) * _ceil_div(w, p)


def num_visual_tokens(num_frames: int, grid: tuple[int, int], settings: ReductionSettings) -> int:
    """Visual tokens reaching the LLM for one clip: T'·N'."""
    frames, per_frame = reduced_shape(num_frames, grid, settings)
    return frames * per_frame


def settings_for_budget(
    budget: int,
    num_frames: int,
    grid: tuple[int, int],
    max_temporal_pool: int = 4,
    allow_spatial: bool = False,
) -> ReductionSettings:
    """The least compression that fits ``budget`` visual tokens, in the paper's order of preference.

    1. temporal pooling k = 1, 2, 4, … up to ``max_temporal_pool`` (what the model was trained
       with): the paper finds pooling after the Mamba module loses least;
    2. then test-time temporal sampling s = 2 (training-free, Eq. 8; the paper's setting);
    3. then spatial pooling p = 2 (2×2, the paper's setting), only if ``allow_spatial``;
    4. then stronger sampling s = 4, 8, … (with p = 2 if allowed), then stronger p.

    Raises ``ValueError`` when even the strongest setting does not fit.
    """
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= max_temporal_pool] or [1]
    k = ks[-1]
    p2 = 2 if allow_spatial else 1
    candidates = [ReductionSettings(kk, 1, 1) for kk in ks] + [ReductionSettings(k, 1, 2)]
    if allow_spatial:
        candidates.append(ReductionSettings(k, 2, 2))
    candidates += [ReductionSettings(k, p2, s) for s in (4, 8, 16, 32, 64)]
    if allow_spatial:
        candidates += [ReductionSettings(k, p, 64) for p in (3, 4, 6, 8)]
    for settings in candidates:
        if num_visual_tokens(num_frames, grid, settings) <= budget:
            return settings
    strongest = candidates[-1]
    raise ValueError(
        f"{num_frames} frames cannot fit {budget} visual tokens (the strongest setting, {strongest}, gives "
        f"{num_visual_tokens(num_frames, grid, strongest)}); use fewer frames"
        + ("" if allow_spatial else " or allow spatial pooling")
    )
