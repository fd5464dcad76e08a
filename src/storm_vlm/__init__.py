"""storm-vlm: STORM (Jiang, Li et al., ICCV 2025), token-efficient long-video understanding.

    from storm_vlm import StormConfig, StormForConditionalGeneration, StormProcessor

Attributes load on first use (PEP 562), so ``import storm_vlm`` and ``storm-vlm --help`` load no
torch. Importing any STORM class registers STORM with transformers' ``AutoConfig``,
``AutoModel``, ``AutoModelForImageTextToText``, ``AutoProcessor`` (and ``AutoVideoProcessor``
where transformers has it: it needs torchvision).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY = {
    "ReductionSettings": ".modeling.reduction",
    "StormConfig": ".configuration_storm",
    "StormForConditionalGeneration": ".modeling.modeling_storm",
    "StormModel": ".modeling.modeling_storm",
    "StormProcessor": ".processing_storm",
    "StormVideoProcessor": ".video_processing_storm",
    "VideoClip": ".video",
    "VideoError": ".video",
    "ask": ".inference",
    "load_model": ".inference",
    "num_visual_tokens": ".modeling.reduction",
    "sample_frames": ".video",
}

__all__ = [
    "ReductionSettings",
    "StormConfig",
    "StormForConditionalGeneration",
    "StormModel",
    "StormProcessor",
    "StormVideoProcessor",
    "VideoClip",
    "VideoError",
    "ask",
    "load_model",
    "num_visual_tokens",
    "sample_frames",
]

if TYPE_CHECKING:
    from .configuration_storm import StormConfig
    from .inference import ask, load_model
    from .modeling.modeling_storm import StormForConditionalGeneration, StormModel
    from .modeling.reduction import ReductionSettings, num_visual_tokens
    from .processing_storm import StormProcessor
    from .video import VideoClip, VideoError, sample_frames
    from .video_processing_storm import StormVideoProcessor


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'storm_vlm' has no attribute {name!r}")
    if name.startswith("Storm"):  # a STORM class: make the Auto classes know all of them at once
        importlib.import_module(".modeling", __name__)
        importlib.import_module(".processing_storm", __name__)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
