"""Training: LLaVA-style data, the paper's three stages, an accelerate loop with exact resume."""

from .data import LlavaVideoDataset, StormCollator, encode_conversation, read_samples
from .loop import TrainingInterrupted, TrainResult, train
from .recipe import RecipeError, TrainRecipe, load_recipe
from .stages import configure_stage, param_groups

__all__ = [
    "LlavaVideoDataset",
    "RecipeError",
    "StormCollator",
    "TrainRecipe",
    "TrainResult",
    "TrainingInterrupted",
    "configure_stage",
    "encode_conversation",
    "load_recipe",
    "param_groups",
    "read_samples",
    "train",
]
