"""STORM model components: scan, mixer, temporal module, projector, reduction, full model."""

from .mamba import MambaMixer, selective_scan_fn, selective_scan_ref
from .modeling_storm import StormForConditionalGeneration, StormModel, StormPreTrainedModel
from .projector import Projector, space_to_depth
from .reduction import ReductionSettings, num_visual_tokens, reduce_tokens
from .temporal import TemporalEncoder

__all__ = [
    "MambaMixer",
    "Projector",
    "ReductionSettings",
    "StormForConditionalGeneration",
    "StormModel",
    "StormPreTrainedModel",
    "TemporalEncoder",
    "num_visual_tokens",
    "reduce_tokens",
    "selective_scan_fn",
    "selective_scan_ref",
    "space_to_depth",
]
