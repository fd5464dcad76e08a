"""`StormProcessor`: frames and prompts in, model tensors out.

Processing is kept out of the model (as in transformers' Qwen2-VL): the processor resizes and
normalises frames with the vision tower's image processor, and expands each ``<video>`` /
``<image>`` placeholder in the prompt into exactly as many placeholder ids as the model will
produce visual tokens for that clip under the chosen reduction (k, p, s).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerBase

from .configuration_storm import StormConfig
from .modeling.reduction import ReductionSettings, num_visual_tokens

__all__ = ["IMAGE_TOKEN", "VIDEO_TOKEN", "StormProcessor", "add_placeholder_tokens"]

VIDEO_TOKEN = "<video>"
IMAGE_TOKEN = "<image>"

# Qwen2's ChatML template, for tokenizers that have the ChatML tokens but no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A plain template for tokenizers with neither.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

Frames = np.ndarray | torch.Tensor  # (T, H, W, 3) uint8


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<video>`` and ``<image>`` as special tokens (and a chat template and pad token if
    missing). Returns their ids ``(video_token_id, image_token_id)``."""
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN, IMAGE_TOKEN]})
    if tokenizer.chat_template is None:
        has_chatml = "<|im_start|>" in tokenizer.get_vocab()
        tokenizer.chat_template = CHATML_TEMPLATE if has_chatml else PLAIN_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(VIDEO_TOKEN), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


class StormProcessor:
    """Tokenizer + image processor + the model config that fixes the token grid and defaults.

    Args:
        tokenizer: the LLM tokenizer with ``<video>`` / ``<image>`` added.
        image_processor: the vision tower's image processor (resize + normalise).
        config: the model's :class:`StormConfig` (token grid, default k/p/s).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_processor, config: StormConfig) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.video_token_id != config.video_token_id or self.image_token_id != config.image_token_id:
            raise ValueError(
                f"tokenizer placeholder ids (video {self.video_token_id}, image {self.image_token_id}) do not match "
                f"the model config (video {config.video_token_id}, image {config.image_token_id})"
            )

    # -- files -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path) -> StormProcessor:
        """Load from a STORM model directory (config.json + tokenizer + preprocessor files)."""
        return cls(
            AutoTokenizer.from_pretrained(path),
            AutoImageProcessor.from_pretrained(path),
            StormConfig.from_pretrained(path),
        )

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)

    # -- settings ----------------------------------------------------------------------------
    def reduction_settings(
        self,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        training: bool = False,
    ) -> ReductionSettings:
        """Explicit k/p/s, else the config's; sampling is dropped for training inputs."""
        return ReductionSettings.resolve(self.config, temporal_pool, spatial_pool, temporal_sampling, training)

    def num_visual_tokens(self, num_frames: int, settings: ReductionSettings) -> int:
        return num_visual_tokens(num_frames, self.config.token_grid, settings)

    # -- pixels ------------------------------------------------------------------------------
    def preprocess_frames(self, frames: Frames) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 → ``(T, 3, S, S)`` float, resized and normalised."""
        array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
            raise ValueError(f"frames must be a non-empty (T, H, W, 3) array, got shape {array.shape}")
        out = self.image_processor(images=list(array), return_tensors="pt")
        return out["pixel_values"]

    # -- prompts -----------------------------------------------------------------------------
    def build_prompt(self, question: str, media: str | None = "video") -> str:
        """One user turn (with the media placeholder first) and the assistant prefix."""
        placeholder = {"video": VIDEO_TOKEN + "\n", "image": IMAGE_TOKEN + "\n", None: ""}[media]
        messages = [{"role": "user", "content": placeholder + question}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def expand_placeholders(self, text: str, video_tokens: Sequence[int], image_tokens: Sequence[int]) -> str:
        """Replace the i-th ``<video>`` with ``video_tokens[i]`` copies (and the same for images)."""
        for token, counts in ((VIDEO_TOKEN, video_tokens), (IMAGE_TOKEN, image_tokens)):
            found = text.count(token)
            if found != len(counts):
                raise ValueError(f"the prompt has {found} {token} placeholder(s) but {len(counts)} input(s) were given")
            pieces = text.split(token)
            text = pieces[0] + "".join(token * n + rest for n, rest in zip(counts, pieces[1:]))
        return text

    def __call__(
        self,
        text: str | Sequence[str],
        videos: Sequence[Frames] | None = None,
        images: Sequence[Frames] | None = None,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        training: bool = False,
        padding_side: str = "left",
    ) -> BatchFeature:
        """Tokenise prompts and preprocess media, in the order their placeholders appear.

        Returns ``input_ids``, ``attention_mask`` and, when given, ``pixel_values_videos``
        (a ``(B, T, 3, S, S)`` tensor when all clips have the same length, else a list) and
        ``pixel_values`` ``(M, 3, S, S)``.
        """
        texts = [text] if isinstance(text, str) else list(text)
        settings = self.reduction_settings(temporal_pool, spatial_pool, temporal_sampling, training)
        clips = [self.preprocess_frames(v) for v in videos or []]
        pics = [self.preprocess_frames(im)[0] for im in images or []]
        video_counts = [self.num_visual_tokens(c.shape[0], settings) for c in clips]
        image_counts = [self.num_visual_tokens(1, settings)] * len(pics)

        # Distribute the media over the prompts in placeholder order.
        expanded, vi, ii = [], 0, 0
        for t in texts:
            nv, ni = t.count(VIDEO_TOKEN), t.count(IMAGE_TOKEN)
            expanded.append(self.expand_placeholders(t, video_counts[vi : vi + nv], image_counts[ii : ii + ni]))
            vi, ii = vi + nv, ii + ni
        if vi != len(clips) or ii != len(pics):
            raise ValueError(
                f"the prompts have {vi} {VIDEO_TOKEN} and {ii} {IMAGE_TOKEN} placeholders "
                f"but {len(clips)} videos and {len(pics)} images were given"
            )
        self.tokenizer.padding_side = padding_side
        data = dict(self.tokenizer(expanded, padding=True, return_tensors="pt"))
        if clips:
            same = len({c.shape for c in clips}) == 1
            data["pixel_values_videos"] = torch.stack(clips) if same else clips
        if pics:
            data["pixel_values"] = torch.stack(pics)
        return BatchFeature(data, tensor_type=None)

    def batch_decode(self, ids: torch.Tensor, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True, **kwargs)

    def decode(self, ids: torch.Tensor, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, **kwargs)
