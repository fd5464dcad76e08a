"""Shared fixtures: a tiny random STORM (hidden 64, 2 layers, 16 tokens/frame) and its processor."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU-only machines
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from storm_vlm.presets import build_tiny


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny():
    torch.manual_seed(0)
    return build_tiny()


@pytest.fixture(scope="session")
def tiny_mlp():
    torch.manual_seed(0)
    return build_tiny(projector_type="mlp")


def random_frames(num_frames: int, height: int = 36, width: int = 44, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
