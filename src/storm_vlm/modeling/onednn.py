"""fp32 GEMMs through oneDNN on CPU, for the Mamba module's inference path.

torch's fp32 ``mm`` on CPU calls MKL's sgemm. On the AMD CPU these numbers come from, MKL reached
170-200 GFLOP/s at the module's shapes where oneDNN's inner product reached 340-420, same threads,
same fp32 result up to summation order (benchmarks/mixer.py prints both). oneDNN ships inside
every x86 torch wheel; torch reaches its fp32 inner product through the op that Inductor emits for
frozen linear layers, ``torch.ops.mkldnn._linear_pointwise``. Where that op is missing (another
torch build), :func:`matmul_nt` is ``a @ b.T``.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def available() -> bool:
    """Whether oneDNN's inner product can be called (an x86 CPU torch built with it)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for 2-D fp32 CPU tensors: ``(M, K), (N, K) → (M, N)``, row-major.

    ``a`` may be a transposed view (read in place); ``b`` is what oneDNN calls the weights and is
    made contiguous first: given a strided ``b`` it reorders it slowly (measured: seconds for a
    ``(8192, 40)`` column slice that takes 2 ms contiguous). No autograd: inference only.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"matmul_nt needs (M, K) and (N, K), got {tuple(a.shape)} and {tuple(b.shape)}")
    if (
        not available()
        or a.device.type != "cpu"
        or a.dtype != torch.float32
        or b.dtype != torch.float32
        or _get_current_dispatch_mode() is not None  # e.g. FlopCounterMode: it counts aten.mm, not oneDNN's op
    ):
        return a @ b.T
    if a.stride(0) != 1 and a.stride(1) != 1:  # neither row- nor column-major
        a = a.contiguous()
    return torch.ops.mkldnn._linear_pointwise(a, b.contiguous(), None, "none", [], "")


def batched_matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`matmul_nt` for each batch row of whichever operand is 3-D ``(B, ·, ·)`` (the other
    one is shared), stacked to ``(B, M, N)``; a single row is a view, not a copy."""
    batch = a.shape[0] if a.dim() == 3 else b.shape[0]
    rows = [matmul_nt(a[i] if a.dim() == 3 else a, b[i] if b.dim() == 3 else b) for i in range(batch)]
    return rows[0].unsqueeze(0) if batch == 1 else torch.stack(rows)
