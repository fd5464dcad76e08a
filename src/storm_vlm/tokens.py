"""The LLM tokenizer's part in STORM: the ``<video>`` / ``<image>`` placeholders, a chat template
for tokenizers without one, and the ids that end an answer.

Its own module because both the processor and :func:`~storm_vlm.modeling.parts.build_from_parts`
need it, and the model must not import the processor.
"""

from __future__ import annotations

from typing import cast

from transformers import PreTrainedTokenizerBase

__all__ = [
    "CHATML_TEMPLATE",
    "IMAGE_TOKEN",
    "PLAIN_TEMPLATE",
    "VIDEO_TOKEN",
    "add_placeholder_tokens",
    "stop_token_ids",
]

VIDEO_TOKEN = "<video>"
IMAGE_TOKEN = "<image>"

_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
)
# Qwen2's ChatML template, for tokenizers that have the ChatML tokens but no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _CONTENT + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A plain template for tokenizers with neither.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: " + _CONTENT + "\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def add_placeholder_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """Add ``<video>`` and ``<image>`` as special tokens (and a chat template and pad token if
    missing). Returns their ids ``(video_token_id, image_token_id)``."""
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN, IMAGE_TOKEN]})
    if tokenizer.chat_template is None:
        has_chatml = "<|im_start|>" in tokenizer.get_vocab()
        tokenizer.chat_template = CHATML_TEMPLATE if has_chatml else PLAIN_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = cast(list[int], tokenizer.convert_tokens_to_ids([VIDEO_TOKEN, IMAGE_TOKEN]))  # a list in, a list out
    return ids[0], ids[1]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus ChatML's ``<|im_end|>`` when the vocabulary has it (a base Qwen2's EOS is
    ``<|endoftext|>``, but chat-formatted answers end with ``<|im_end|>``)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_of_turn = tokenizer.get_vocab().get("<|im_end|>")
    if end_of_turn is not None and end_of_turn not in ids:
        ids.append(end_of_turn)
    return ids
