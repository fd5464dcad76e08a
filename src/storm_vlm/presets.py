"""Model presets that need no download: a tiny random STORM with a working tokenizer.

The tiny preset keeps the real architecture (SigLIP vision tower, Qwen2 LLM, bidirectional
Mamba module) at toy sizes: 32 px frames, 4 px patches → 8×8 patches → 4×4 = 16 tokens per frame,
hidden width 64. Its byte-level BPE tokenizer is trained in well under a second on a small corpus
shipped in this file, so tests and the demo run offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from .configuration_storm import StormConfig
from .model_dir import atomic_directory
from .modeling.modeling_storm import StormForConditionalGeneration
from .modeling.parts import set_generation_tokens
from .processing_storm import StormProcessor
from .tokens import CHATML_TEMPLATE, add_placeholder_tokens

if TYPE_CHECKING:
    from transformers.image_processing_utils import BaseImageProcessor

__all__ = [
    "PRESETS",
    "build_preset",
    "placeholder_ids",
    "preset_config",
    "small_model_config",
    "spread_llm_weights",
    "temporal_config",
    "tiny_tokenizer",
    "tiny_vision_tower",
]

_CORPUS = """\
What happens in the video? Which object appeared first, and which appeared last?
How many times did the red square appear? The blue circle moves from left to right.
A green triangle enters the scene, stops, and then leaves at the top of the frame.
Answer with the option's letter from the given choices directly. (A) red (B) blue (C) green (D) yellow
The video shows a person opening a door; after the door opens, a dog runs in.
Describe the motion over time: up, down, left, right, towards the camera, away from it.
One frame shows a distinct object. Which one? The needle is a white star in frame twelve.
The first event is longer than the second. Count the objects. Zero one two three four five six seven eight nine ten.
"""
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(vocab_size: int = 512, placeholders: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (Qwen2-style, ChatML tokens) trained on a built-in corpus.

    ``placeholders=False`` gives a plain LLM tokenizer, as a pretrained LLM ships it.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
    )
    if placeholders:
        add_placeholder_tokens(tokenizer)
    return tokenizer


def _round_up(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def tiny_vision_config() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=4,
        vision_use_head=False,
    )


def tiny_text_config(vocab_size: int) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs at least that
        num_key_value_heads=1,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )


def tiny_config(vocab_size: int, video_token_id: int, image_token_id: int, **storm_options) -> StormConfig:
    """Tiny SigLIP + Qwen2 + 2 Mamba blocks (d_state 8); ``storm_options`` override any field."""
    options = {"temporal_layers": 2, "d_state": 8, "vision_chunk_size": 64, **storm_options}
    return StormConfig(
        vision_config=tiny_vision_config(),
        text_config=tiny_text_config(_round_up(vocab_size)),
        video_token_id=video_token_id,
        image_token_id=image_token_id,
        **options,
    )


def build_tiny(**storm_options) -> tuple[StormForConditionalGeneration, StormProcessor]:
    """A tiny random STORM and its processor (seed with ``torch.manual_seed`` first)."""
    tokenizer = tiny_tokenizer()
    video_id, image_id = placeholder_ids(tokenizer)
    config = tiny_config(len(tokenizer), video_id, image_id, **storm_options)
    model = StormForConditionalGeneration(config).eval()
    set_generation_tokens(model, tokenizer)
    return model, StormProcessor.from_config(tiny_image_processor(), tokenizer, config)


def spread_llm_weights(model: StormForConditionalGeneration, std: float) -> None:
    """Redraw the LLM's weight matrices from N(0, std²) in place: a freshly initialised tiny LLM
    repeats one token whatever the input, which would hide an error in a batched or cached path
    (tests and benchmarks compare such paths token by token)."""
    import torch

    with torch.no_grad():
        for param in model.language_model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std)


def temporal_config(d_model: int, **storm_fields: Any) -> StormConfig:
    """A config that sizes a bare temporal module or mixer of width ``d_model`` (D): the Mamba
    fields come from ``storm_fields`` and the defaults; the towers are tiny and never built."""
    text = dict(
        model_type="qwen2", hidden_size=d_model, intermediate_size=d_model, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, vocab_size=64,
    )  # fmt: skip
    return StormConfig(vision_config=tiny_vision_config(), text_config=text, **storm_fields)


def tiny_image_processor() -> SiglipImageProcessorPil:
    return SiglipImageProcessorPil(size={"height": 32, "width": 32})


def placeholder_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """The ``<video>`` and ``<image>`` ids (a list of tokens gives a list; typed ``int | list[int]``)."""
    video_id, image_id = cast(list[int], tokenizer.convert_tokens_to_ids(["<video>", "<image>"]))
    return video_id, image_id


def small_model_config(projector_type: str = "storm") -> StormConfig:
    """SigLIP-like 224 px / 14 px tower (256 → 64 tokens per frame), Qwen2-like LLM with ~17x its parameters."""
    video_id, image_id = placeholder_ids(tiny_tokenizer())
    return StormConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
            num_attention_heads=4, image_size=224, patch_size=14, vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=576, hidden_size=640, intermediate_size=1728, num_hidden_layers=18,
            num_attention_heads=10, num_key_value_heads=2, max_position_embeddings=131072, tie_word_embeddings=True,
        ),
        projector_type=projector_type, video_token_id=video_id, image_token_id=image_id, temporal_layers=2,
    )  # fmt: skip


def preset_config(preset: str, projector_type: str = "storm") -> StormConfig:
    """The config of a named preset, random weights: ``tiny`` (tests), ``small`` (the paper's
    proportions at CPU size), ``7b-shapes`` (SigLIP-So400m-448 + Qwen2-7B)."""
    if preset == "7b-shapes":
        return StormConfig(projector_type=projector_type, video_token_id=151665, image_token_id=151666)
    if preset == "small":
        return small_model_config(projector_type)
    if preset == "tiny":
        tok = tiny_tokenizer()
        video_id, image_id = placeholder_ids(tok)
        return tiny_config(len(tok), video_id, image_id, projector_type=projector_type)
    raise ValueError(f"unknown bench preset {preset!r} (tiny, small, 7b-shapes)")


PRESETS = {"tiny": build_tiny}


def build_preset(name: str, **storm_options) -> tuple[StormForConditionalGeneration, StormProcessor]:
    """Build a named preset; raises ``ValueError`` naming the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**storm_options)


def build_from_parts(
    vision: str | Path | PreTrainedModel, llm: str | Path, dtype=None, **storm_options
) -> tuple[StormForConditionalGeneration, StormProcessor]:
    """STORM from a pretrained vision tower and LLM (a HF directory or a ``.gguf`` file), with its
    processor. ``vision`` may be a tower already built (:func:`tiny_vision_tower`): its frames are
    then normalised SigLIP's way."""
    from transformers import AutoImageProcessor

    from .modeling.parts import load_tokenizer

    tokenizer = load_tokenizer(llm)
    model = StormForConditionalGeneration.from_parts(vision, llm, tokenizer=tokenizer, dtype=dtype, **storm_options)
    size = model.config.vision_config.image_size
    if isinstance(vision, PreTrainedModel):
        image_processor: BaseImageProcessor = SiglipImageProcessorPil(size={"height": size, "width": size})
    else:
        image_processor = frame_processor(AutoImageProcessor.from_pretrained(vision), size)
    processor = StormProcessor.from_config(image_processor, tokenizer, model.config)
    return model, processor


def tiny_vision_tower() -> PreTrainedModel:
    """A tiny random SigLIP tower (the tiny preset's: 32 px frames, 16 tokens each), to put beside a
    real LLM when only the language side is pretrained (seed with ``torch.manual_seed`` first)."""
    from transformers import SiglipVisionModel

    return SiglipVisionModel(tiny_vision_config())


def frame_processor(image_processor: BaseImageProcessor, image_size: int) -> BaseImageProcessor:
    """The part's image processor if it makes a frame one ``image_size``² image, else a SigLIP-style one.

    STORM feeds each frame whole, squared to the tower's input, and its CUDA preprocessing reads
    ``size["height"]`` / ``size["width"]``. A VLM's multi-crop processor (LLaVA-OneVision's
    any-res) or a shortest-edge + centre-crop one (CLIP's) does not fit that, so only its
    normalisation is kept.
    """
    import numpy as np

    size = getattr(image_processor, "size", None) or {}
    if size.get("height") == image_size and size.get("width") == image_size:
        probe = np.zeros((image_size // 2, image_size, 3), np.uint8)  # not square: a crop or tiling shows
        pixels = image_processor(images=[probe], return_tensors="pt")["pixel_values"]
        if tuple(pixels.shape) == (1, 3, image_size, image_size):
            return image_processor
    return SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        resample=getattr(image_processor, "resample", 3),
        rescale_factor=getattr(image_processor, "rescale_factor", 1 / 255),
        image_mean=list(getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)),
        image_std=list(getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5)),
    )


def save_model_dir(model: StormForConditionalGeneration, processor: StormProcessor, out: str | Path) -> Path:
    """Write a complete model directory (weights, config, tokenizer, processor) atomically."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return atomic_directory(out, write)
