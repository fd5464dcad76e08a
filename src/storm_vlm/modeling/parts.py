"""Building STORM from pretrained parts: a vision tower and a causal LLM in local HF directories.

The vision directory may hold a vision model (``SiglipVisionModel``, ``CLIPVisionModel``), a
dual encoder (``SiglipModel``, ``CLIPModel``) or a vision-language model whose config nests a
``vision_config`` (PaliGemma, LLaVA, LLaVA-OneVision, LLaVA-NeXT-Video, ...). Loading such a
directory with the vision class's ``from_pretrained`` silently leaves the tower random when the
checkpoint stores it under a prefix (``vision_tower.vision_model.*``, ``model.vision_tower.*``),
so the tower's tensors are located in the safetensors files by name, stripped of their prefix
and loaded explicitly; every tower tensor must be found. The VLM's other tensors (its LLM and
projector) are ignored.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..configuration_storm import StormConfig
from ..model_dir import ModelLoadError, loading_problem
from ..tokens import add_placeholder_tokens, stop_token_ids

if TYPE_CHECKING:
    from .modeling_storm import StormForConditionalGeneration

__all__ = [
    "PartsError",
    "build_from_parts",
    "llm_location",
    "load_llm",
    "load_tokenizer",
    "load_vision_tower",
    "tower_prefix",
    "vision_model_class",
]

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


class PartsError(ModelLoadError, ValueError):
    """A pretrained part cannot be used as it stands (a missing tensor, no tower, a bad config)."""


def vision_model_class(vision_config: Any) -> type[PreTrainedModel]:
    """The vision-tower class for a vision sub-config (e.g. SiglipVisionConfig → SiglipVisionModel)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(vision_config)]  # type: ignore[return-value]  # annotated as the tokenizer pair
    except KeyError as err:
        raise PartsError(f"no vision model class is registered for {type(vision_config).__name__}") from err


def vision_config_of(path: str | Path) -> Any:
    """The tower's config: the directory's own, or the ``vision_config`` a dual encoder / VLM nests."""
    config = AutoConfig.from_pretrained(path)
    vision_config = copy.deepcopy(getattr(config, "vision_config", config))
    if not all(hasattr(vision_config, field) for field in ("image_size", "patch_size")):
        raise PartsError(
            f"{path}: {type(config).__name__} has no vision tower (no image_size / patch_size); give a SigLIP or "
            "CLIP vision model, a dual encoder, or a vision-language model such as PaliGemma or LLaVA"
        )
    if hasattr(vision_config, "vision_use_head"):
        vision_config.vision_use_head = False  # SigLIP's pooling head is unused by STORM
    return vision_config


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a HF directory: the shards its index names, else ``model.safetensors``."""
    path = Path(path)
    index = path / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise PartsError(f"{index}: not a valid safetensors index ({err})") from None
        return [path / name for name in dict.fromkeys(weight_map.values())]
    if (path / SAFE_SINGLE).is_file():
        return [path / SAFE_SINGLE]
    raise PartsError(f"{path}: no {SAFE_SINGLE} or {SAFE_INDEX} (only safetensors checkpoints are supported)")


def tower_prefix(names: Iterable[str], expected: Iterable[str], where: str | Path) -> str:
    """The prefix under which a checkpoint stores the tower: the one matching most expected keys.

    ``names`` are the checkpoint's tensor names, ``expected`` the tower's own state-dict keys. A
    prefix ends at a dot (``vision_tower.vision_model.``, ``model.vision_tower.``) or is empty; two
    prefixes matching equally many keys (e.g. two towers) are an error rather than a guess.
    """
    wanted = set(expected)
    counts: Counter[str] = Counter()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in wanted:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    if not counts:
        raise PartsError(f"{where}: no vision tower tensors found (none named like {min(wanted)})")
    ranked = counts.most_common()
    best, n = ranked[0]
    tied = sorted(prefix for prefix, count in ranked if count == n)
    if len(tied) > 1:
        raise PartsError(f"{where}: the vision tower is ambiguous, {n} tensors each under prefixes {tied}")
    return best


def load_vision_tower(path: str | Path, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """The vision tower of a vision model, dual encoder or VLM directory, with all its weights loaded.

    A tower tensor the checkpoint lacks, or holds with another shape, is a :class:`PartsError`
    naming it, where ``from_pretrained`` would warn and leave it random.
    """
    vision_config = vision_config_of(path)
    model_class = vision_model_class(vision_config)
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in model_class._from_config(vision_config).state_dict().items()}
    files = weight_files(path)
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(file, "pt") as f:
            where.update(dict.fromkeys(f.keys(), file))
    prefix = tower_prefix(where, shapes, path)
    missing = [key for key in shapes if prefix + key not in where]
    if missing:
        raise PartsError(
            f"{path}: the vision tower has no weight for {prefix + missing[0]} "
            f"({len(missing)} of {len(shapes)} {model_class.__name__} tensors missing)"
        )
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(file, "pt") as f:
            for key in shapes:
                if where[prefix + key] == file:
                    saved = tuple(f.get_slice(prefix + key).get_shape())
                    if saved != shapes[key]:
                        raise PartsError(
                            f"{file}: tensor {prefix + key} has shape {list(saved)} but the vision config needs "
                            f"{list(shapes[key])}"
                        )
                    state_dict[key] = f.get_tensor(prefix + key)
    loaded = model_class.from_pretrained(
        None, config=vision_config, state_dict=state_dict, dtype=dtype, output_loading_info=True
    )
    tower, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)  # output_loading_info: (model, info)
    _check_loading_info(path, info, "vision tower")
    return tower


def llm_location(path: str | Path) -> tuple[Path, dict[str, str]]:
    """Where an LLM is: a HF directory, or a ``.gguf`` file (llama.cpp's format, dequantised by
    transformers: needs the ``gguf`` package). Returns the folder and the ``from_pretrained``
    keywords that pick the file (``gguf_file``)."""
    path = Path(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PartsError(f"{path}: no such GGUF file")
        return path.parent, {"gguf_file": path.name}
    return path, {}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer (with its chat template and special tokens), from a directory or a GGUF file."""
    folder, where = llm_location(path)
    return AutoTokenizer.from_pretrained(folder, **where)


def load_llm(path: str | Path, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """The causal LLM of a directory or GGUF file; a weight it lacks or holds with another shape is an error."""
    folder, where = llm_location(path)
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True, **where
    )
    llm, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)  # output_loading_info: (model, info)
    _check_loading_info(path, info, "LLM")
    if where and hasattr(llm.config, "quantization_config"):
        # the GGUF weights are dequantised to plain tensors; a config still naming the quantisation
        # would make every later from_pretrained mark the model quantised, and saving it fail
        del llm.config.quantization_config
    return llm


def _check_loading_info(path: str | Path, info: Mapping[str, Any], part: str) -> None:
    """transformers only warns about missing weights (left random): here they are an error."""
    problem = loading_problem(dict(info), missing_first=True)
    if problem is not None:
        raise PartsError(f"{path}: {part}: {problem}")


def set_generation_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Stop at the end of the assistant turn and pad with the tokenizer's pad token, in the
    generation config (saved as generation_config.json): no caller's generate() repeats them."""
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def build_from_parts(
    cls: type[StormForConditionalGeneration],
    vision_path: str | Path | PreTrainedModel,
    llm_path: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype | str | None = None,
    **storm_options: Any,
) -> StormForConditionalGeneration:
    """``cls.from_parts``: pretrained tower + LLM, random projector and temporal module (paper §4.1).

    ``vision_path`` may also be a tower already built (e.g. a small random SigLIP beside a real
    LLM); ``llm_path`` a directory or a ``.gguf`` file. ``tokenizer`` (the LLM's, loaded from
    ``llm_path`` when not given) gets the ``<video>`` / ``<image>`` placeholders, and the LLM's
    embeddings grow to hold them.
    """
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(llm_path)
    video_token_id, image_token_id = add_placeholder_tokens(tokenizer)
    if isinstance(vision_path, PreTrainedModel):
        vision = vision_path.to(dtype) if dtype is not None else vision_path  # type: ignore[arg-type]
    else:
        vision = load_vision_tower(vision_path, dtype=dtype)
    llm = load_llm(llm_path, dtype=dtype)
    if len(tokenizer) > cast(torch.nn.Embedding, llm.get_input_embeddings()).num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    config = StormConfig(
        vision_config=vision.config,
        text_config=llm.config,
        video_token_id=video_token_id,
        image_token_id=image_token_id,
        **storm_options,
    )
    model = cls(config, vision_tower=vision, language_model=llm)
    set_generation_tokens(model, tokenizer)
    return model.to(dtype) if dtype is not None else model  # type: ignore[arg-type]  # @wraps(Module.to) keeps self
