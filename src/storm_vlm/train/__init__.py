"""Training: LLaVA-style data, the paper's three stages, an accelerate loop with exact resume.

The names load on first use (PEP 562), so that importing a light submodule (``prepare``, whose
commands the CLI registers at start-up) does not import torch, transformers and accelerate.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LlavaVideoDataset": ".data",
    "RecipeError": ".recipe",
    "StormCollator": ".data",
    "TrainRecipe": ".recipe",
    "TrainResult": ".loop",
    "TrainingInterrupted": ".loop",
    "configure_stage": ".stages",
    "encode_conversation": ".data",
    "load_recipe": ".recipe",
    "param_groups": ".stages",
    "read_samples": ".data",
    "train": ".loop",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'storm_vlm.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
