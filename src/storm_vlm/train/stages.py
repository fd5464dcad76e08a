"""What trains in each of the paper's stages (§4.1, App. 8.4), and the optimizer's parameter groups.

Stage 1 (alignment): only the projector and the Mamba module train; the vision tower and the LLM
stay frozen (bit-identical). Stages 2 (SFT, 32 frames) and 3 (long video, 128 frames, k = 4):
everything trains, optionally with per-module learning rates. Vision-tower parameters that never
reach the projector (layers after ``vision_feature_layer``, the post-norm, a pooling head) are
frozen in every stage: they get no gradient, and DDP would stop on them.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..modeling.modeling_storm import StormForConditionalGeneration
from .recipe import OptimConfig

__all__ = ["configure_stage", "module_of", "param_groups"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _unused_vision_parameter(name: str, feature_depth: int) -> bool:
    """Layers past the first ``feature_depth`` (``StormConfig.vision_feature_depth``), the post-norm
    and a pooling head never reach the projector."""
    if "post_layernorm" in name or name.startswith("head.") or ".head." in name:
        return True
    match = _LAYER.search(name)
    return match is not None and int(match.group(1)) >= feature_depth


def configure_stage(model: StormForConditionalGeneration, stage: int) -> dict[str, int]:
    """Set ``requires_grad`` for the stage; returns trainable parameter counts per module."""
    trainable = {"vision": stage >= 2, "projector": True, "llm": stage >= 2}
    for name, param in model.named_parameters():
        module = module_of(name)
        flag = trainable[module]
        if module == "vision":
            inner = name.split("vision_tower.", 1)[1]
            if _unused_vision_parameter(inner, model.config.vision_feature_depth):
                flag = False
        param.requires_grad_(flag)
    counts = {k: 0 for k in trainable}
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[module_of(name)] += param.numel()
    return counts


def module_of(name: str) -> str:
    """The part a parameter of :class:`StormForConditionalGeneration` belongs to: ``model.vision_tower.*``
    → vision, ``model.projector.*`` / ``model.temporal.*`` → projector, the LLM body and ``lm_head`` → llm."""
    name = name.removeprefix("model.")
    if name.startswith("vision_tower."):
        return "vision"
    if name.startswith(("projector.", "temporal.")):
        return "projector"
    return "llm"


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: per-module learning rates; no weight decay on norms, biases and 1-D tensors."""
    lrs = {
        "vision": optim.vision_lr or optim.lr,
        "projector": optim.projector_lr or optim.lr,
        "llm": optim.llm_lr or optim.lr,
    }
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name.replace("module.", "", 1) if name.startswith("module.") else name
        decay = param.dim() >= 2 and "norm" not in clean.lower() and not clean.endswith("A_log")
        groups.setdefault((module_of(clean), decay), []).append(param)
    return [
        {"params": params, "lr": lrs[module], "weight_decay": optim.weight_decay if decay else 0.0, "name": module}
        for (module, decay), params in sorted(groups.items())
    ]
