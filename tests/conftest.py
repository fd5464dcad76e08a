"""Shared fixtures: a tiny random STORM (hidden 64, 2 layers, 16 tokens/frame) and its processor."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on CPU-only machines
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPVisionConfig

from storm_vlm.presets import build_tiny
from storm_vlm.synth import make_motion_qa


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


def tiny_clip_vision_config() -> CLIPVisionConfig:
    """A tiny CLIP tower: 32 px frames in 4 px patches (an 8 x 8 grid plus CLS)."""
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 generated clips with colour questions: training data for the tiny recipes."""
    root = tmp_path_factory.mktemp("motion")
    make_motion_qa(root, num_samples=8, num_frames=8, size=32, questions=("color",))
    return root


def tiny_train_overrides(data: Path, out: Path, *extra: str) -> list[str]:
    """Recipe overrides that train the tiny preset on ``data`` for 4 steps into ``out``."""
    base = [
        "init.preset=tiny",
        f"data.json={data / 'train.json'}",
        f"data.media_root={data}",
        "data.num_frames=4",
        "optim.batch_size=2",
        "optim.lr=2e-3",
        "optim.max_steps=4",
        f"output_dir={out}",
    ]
    return base + list(extra)


def train_log(out: Path) -> list[dict]:
    """The records of a run's ``train_log.jsonl``, one per logged step."""
    import json

    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def launch_overrides(data: Path) -> list[str]:
    """Recipe overrides on configs/tiny-stage2.yaml for the multi-process launch tests: a new tiny
    model trained on ``data`` for 3 steps (batch size and output directory left to the test)."""
    return [
        "model=null",
        "init.preset=tiny",
        f"data.json={data / 'train.json'}",
        f"data.media_root={data}",
        "data.num_frames=4",
        "optim.lr=1e-3",
        "optim.max_steps=3",
    ]


def whole_and_resumed(data: Path, tmp_path: Path, overrides: list[str], steps: int, cut_at: int) -> tuple[list, list]:
    """Train the tiny recipe (``overrides`` on top) once uninterrupted in-process, and once in 2
    DataLoader workers cut after ``cut_at`` steps and resumed; the two runs' log records."""
    from storm_vlm.train import load_recipe, train

    def recipe(out: Path, *extra: str):
        return load_recipe(None, tiny_train_overrides(data, out, *overrides, f"optim.max_steps={steps}", *extra))

    assert train(recipe(tmp_path / "whole", "data.num_workers=0")).steps == steps
    cut = tmp_path / "cut"
    assert train(recipe(cut, "data.num_workers=2"), stop_after_steps=cut_at).final_dir is None
    resumed = train(recipe(cut, "data.num_workers=2"))
    assert resumed.steps == steps and resumed.final_dir is not None and resumed.final_dir.is_dir()
    return train_log(tmp_path / "whole"), train_log(cut)
