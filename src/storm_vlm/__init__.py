"""storm-vlm: STORM (Jiang, Li et al., ICCV 2025), token-efficient long-video understanding.

from storm_vlm import StormConfig, StormForConditionalGeneration, StormProcessor
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_storm import StormConfig
from .modeling import ReductionSettings, StormForConditionalGeneration, num_visual_tokens
from .processing_storm import StormProcessor

__version__ = "0.1.0"

AutoConfig.register(StormConfig.model_type, StormConfig, exist_ok=True)
AutoModel.register(StormConfig, StormForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(StormConfig, StormForConditionalGeneration, exist_ok=True)

__all__ = [
    "ReductionSettings",
    "StormConfig",
    "StormForConditionalGeneration",
    "StormProcessor",
    "num_visual_tokens",
]
