"""storm-vlm: STORM (Jiang, Li et al., ICCV 2025), token-efficient long-video understanding.

    from storm_vlm import StormConfig, StormForConditionalGeneration, StormProcessor

Importing the package registers STORM with transformers' ``AutoConfig``, ``AutoModel``,
``AutoModelForImageTextToText`` and ``AutoProcessor``.
"""

from .configuration_storm import StormConfig
from .inference import ask, load_model
from .modeling import ReductionSettings, StormForConditionalGeneration, num_visual_tokens
from .processing_storm import StormProcessor
from .video import VideoClip, VideoError, sample_frames

__version__ = "0.1.0"

__all__ = [
    "ReductionSettings",
    "StormConfig",
    "StormForConditionalGeneration",
    "StormProcessor",
    "VideoClip",
    "VideoError",
    "ask",
    "load_model",
    "num_visual_tokens",
    "sample_frames",
]
