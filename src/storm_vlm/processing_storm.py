"""`StormProcessor`: frames and prompts in, model tensors out.

Processing is kept out of the model (as in transformers' Qwen2-VL): the processor resizes and
normalises frames with the vision tower's image processor, applies the tokenizer's chat template,
and expands each ``<video>`` / ``<image>`` placeholder into exactly as many placeholder ids as the
model will produce visual tokens for that clip under the chosen reduction (k, p, s):
``T'·N'`` with ``T' = ⌈⌈T/k⌉/s⌉`` and ``N' = ⌈h/p⌉·⌈w/p⌉`` on the ``token_grid`` (h, w).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoProcessor, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

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

Frames = np.ndarray | torch.Tensor  # (T, H, W, 3) uint8, or (H, W, 3) for one image


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


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus ChatML's ``<|im_end|>`` when the vocabulary has it (a base Qwen2's EOS is
    ``<|endoftext|>``, but chat-formatted answers end with ``<|im_end|>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_of_turn = tokenizer.get_vocab().get("<|im_end|>")
    if end_of_turn is not None and end_of_turn not in ids:
        ids.append(end_of_turn)
    return ids


class StormProcessor(ProcessorMixin):
    """Image processor + tokenizer + the token accounting that ties them to the model.

    Args:
        image_processor: the vision tower's image processor (e.g. SigLIP, 448 px).
        tokenizer: the LLM tokenizer with ``<video>`` / ``<image>`` added.
        token_grid: ``(h, w)`` tokens per frame after the projector (``StormConfig.token_grid``).
        temporal_pool, spatial_pool, temporal_sampling: default k, p, s (the model's defaults).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        token_grid: Sequence[int] = (16, 16),
        temporal_pool: int = 1,
        spatial_pool: int = 1,
        temporal_sampling: int = 1,
        chat_template: str | None = None,
        **kwargs,
    ) -> None:
        self.token_grid = tuple(int(x) for x in token_grid)
        self.temporal_pool = temporal_pool
        self.spatial_pool = spatial_pool
        self.temporal_sampling = temporal_sampling
        if chat_template is None and tokenizer is not None:
            chat_template = tokenizer.chat_template
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.video_token_id == tokenizer.unk_token_id or self.video_token_id is None:
            raise ValueError("the tokenizer has no <video> token; call add_placeholder_tokens(tokenizer) first")

    @classmethod
    def from_config(cls, image_processor, tokenizer: PreTrainedTokenizerBase, config: StormConfig) -> StormProcessor:
        """A processor matching a model config (grid, default k/p/s, placeholder ids checked)."""
        processor = cls(
            image_processor,
            tokenizer,
            token_grid=config.token_grid,
            temporal_pool=config.temporal_pool,
            spatial_pool=config.spatial_pool,
            temporal_sampling=config.temporal_sampling,
        )
        if (processor.video_token_id, processor.image_token_id) != (config.video_token_id, config.image_token_id):
            raise ValueError(
                f"tokenizer placeholder ids (video {processor.video_token_id}, image {processor.image_token_id}) "
                f"do not match the model config (video {config.video_token_id}, image {config.image_token_id})"
            )
        return processor

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's EOS and the chat template's end of turn."""
        return stop_token_ids(self.tokenizer)

    # -- settings ----------------------------------------------------------------------------
    def reduction_settings(
        self,
        temporal_pool: int | None = None,
        spatial_pool: int | None = None,
        temporal_sampling: int | None = None,
        training: bool = False,
    ) -> ReductionSettings:
        """Explicit k/p/s, else this processor's defaults; sampling is dropped for training inputs."""
        return ReductionSettings.resolve(self, temporal_pool, spatial_pool, temporal_sampling, training)

    def num_visual_tokens(self, num_frames: int, settings: ReductionSettings | None = None) -> int:
        return num_visual_tokens(num_frames, self.token_grid, settings or self.reduction_settings())

    # -- pixels ------------------------------------------------------------------------------
    def preprocess_frames(self, frames: Frames, device: torch.device | str | None = None) -> torch.Tensor:
        """``(T, H, W, 3)`` uint8 → ``(T, 3, S, S)`` float, resized and normalised.

        On a CUDA ``device`` the frames are resized and normalised there in torch
        (:meth:`preprocess_frames_torch`); elsewhere by the vision tower's image processor.
        """
        array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
            raise ValueError(f"frames must be a non-empty (T, H, W, 3) array, got shape {array.shape}")
        if device is not None and torch.device(device).type == "cuda":
            return self.preprocess_frames_torch(array, device)
        pixels = self.image_processor(images=list(array), return_tensors="pt")["pixel_values"]
        return pixels.to(device) if device is not None else pixels

    def preprocess_frames_torch(self, frames: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """The image processor's resize → rescale → normalise, in torch on ``device``.

        The PIL path costs ~2 ms per 448-px frame on one core (a quarter second at 128 frames);
        on a GPU this is negligible. Equal to the PIL path when no resize is needed, within a
        grey level otherwise (bilinear/bicubic with antialiasing, rounded to uint8 like PIL).
        """
        ip = self.image_processor
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        if getattr(ip, "do_resize", True):
            size = (ip.size["height"], ip.size["width"])
            if tuple(x.shape[-2:]) != size:
                mode = "bicubic" if int(getattr(ip, "resample", 3)) == 3 else "bilinear"
                x = torch.nn.functional.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
                x = x.round().clamp(0, 255)
        if getattr(ip, "do_rescale", True):
            x = x * float(ip.rescale_factor)
        if getattr(ip, "do_normalize", True):
            mean = torch.tensor(ip.image_mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(ip.image_std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    # -- text --------------------------------------------------------------------------------
    def build_prompt(self, question: str, media: str | None = "video") -> str:
        """One user turn (media placeholder first, as in LLaVA) and the assistant prefix.

        A question that itself contains ``<video>`` or ``<image>`` is refused: those strings are
        the placeholders the visual tokens replace, so the count would no longer match the media.
        """
        for token in (VIDEO_TOKEN, IMAGE_TOKEN):
            if token in question:
                raise ValueError(f"the question text contains {token}, the media placeholder; remove it")
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

    def tokenize(
        self,
        text: str | Sequence[str],
        video_lengths: Sequence[int] = (),
        num_images: int = 0,
        settings: ReductionSettings | None = None,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor]:
        """Token ids with placeholders expanded for clips of ``video_lengths`` frames (in
        placeholder order across the batch) and ``num_images`` images. No pixels needed."""
        texts = [text] if isinstance(text, str) else list(text)
        settings = settings or self.reduction_settings()
        video_counts = [self.num_visual_tokens(t, settings) for t in video_lengths]
        image_count = self.num_visual_tokens(1, settings)
        expanded, vi, ii = [], 0, 0
        for t in texts:
            nv, ni = t.count(VIDEO_TOKEN), t.count(IMAGE_TOKEN)
            expanded.append(self.expand_placeholders(t, video_counts[vi : vi + nv], [image_count] * ni))
            vi, ii = vi + nv, ii + ni
        if vi != len(video_counts) or ii != num_images:
            raise ValueError(
                f"the prompts have {vi} {VIDEO_TOKEN} and {ii} {IMAGE_TOKEN} placeholders "
                f"but {len(video_counts)} videos and {num_images} images were given"
            )
        self.tokenizer.padding_side = padding_side
        return dict(self.tokenizer(expanded, padding=True, return_tensors="pt"))

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
        """Tokenise prompts and preprocess media, given in the order their placeholders appear.

        Returns ``input_ids``, ``attention_mask`` and, when given, ``pixel_values_videos``
        (``(B, T, 3, S, S)`` when all clips have the same length, else a list of ``(T_i, 3, S, S)``)
        and ``pixel_values`` ``(M, 3, S, S)``.
        """
        settings = self.reduction_settings(temporal_pool, spatial_pool, temporal_sampling, training)
        clips = [self.preprocess_frames(v) for v in videos or []]
        pics = [self.preprocess_frames(im)[0] for im in images or []]
        data = self.tokenize(text, [c.shape[0] for c in clips], len(pics), settings, padding_side)
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


AutoProcessor.register(StormConfig, StormProcessor, exist_ok=True)
