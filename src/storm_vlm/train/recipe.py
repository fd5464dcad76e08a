"""Training recipes: one YAML file per stage, every knob named once, ``key=value`` overrides.

A recipe names where the model comes from (a model directory — typically the previous stage's
output — or ``init`` from a preset or from pretrained parts), the data, the stage, the reduction
the model trains with, and the optimisation. See ``configs/`` for the paper's three stages at
tiny (CPU) and 7B (multi-GPU) scale.
"""

from __future__ import annotations

import dataclasses
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ..limits import (
    MAX_FRAMES,
    MAX_GROUP_BATCHES,
    MAX_PACK_TOKENS,
    MAX_REDUCTION,
    MAX_SYNTH_SAMPLES,
    MAX_SYNTH_SIZE,
    MIN_SYNTH_SIZE,
)
from ..synth import check_clip_args

__all__ = [
    "CHECKPOINT_PARTS",
    "TRACKERS",
    "DataConfig",
    "InitConfig",
    "OptimConfig",
    "RecipeError",
    "SynthDataConfig",
    "TrainRecipe",
    "load_recipe",
]

CHECKPOINT_PARTS = ("vision", "temporal", "llm")  # what gradient_checkpointing may name
TRACKERS = ("tensorboard", "wandb")  # accelerate trackers that log_with may name
_BOOL_WORDS = ("true", "false", "1", "0", "yes", "no")


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the key and the problem."""


@dataclass
class InitConfig:
    """Build a new model instead of loading ``model``: from a preset or from pretrained parts."""

    preset: str | None = None  # e.g. "tiny"
    vision: str | None = None  # local HF directory of the vision tower
    llm: str | None = None  # local HF directory of the LLM and its tokenizer
    projector_type: str = "storm"
    temporal_layers: int = 2
    bidirectional: bool = True


@dataclass
class SynthDataConfig:
    """Generated clips instead of a JSON file (``storm_vlm.synth``): fresh clips at every step."""

    tasks: list[str] = field(default_factory=lambda: ["needle", "order"])
    samples: int = 10_000  # clips made for the run (steps x batch gives every step fresh ones)
    size: int = 32  # frame side in pixels
    seed: int | None = None  # None: the recipe's seed


@dataclass
class DataConfig:
    json: str = ""  # LLaVA-style list of samples
    mixture: str = ""  # or a mixture YAML of several such files (storm_vlm.train.mixture; configs/mixtures/)
    synth: SynthDataConfig | None = None  # or generated clips (then json is unused)
    media_root: str = "."  # "video"/"image" paths are relative to it (a mixture names its own per source)
    num_frames: int = 32  # frames sampled uniformly per video (a mixture source may set its own)
    max_length: int = 4096  # samples longer than this (visual tokens included) are skipped
    num_workers: int = 0  # DataLoader worker processes decoding video (0: in the training process)
    group_by_length: bool = False  # batch samples of similar estimated length (fewer pad tokens)
    group_size: int = 64  # batches per length-grouping (or packing) window (larger: closer lengths, less randomness)
    # pack several samples per row, up to this many tokens (>= max_length; batch_size is then rows per batch)
    pack_tokens: int | None = None
    strict: bool = False  # fail on the first bad sample instead of skipping it


@dataclass
class OptimConfig:
    lr: float = 1e-4
    vision_lr: float | None = None  # per-module learning rates (default: lr)
    projector_lr: float | None = None  # projector + temporal module
    llm_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    batch_size: int = 1  # per process
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs


@dataclass
class TrainRecipe:
    stage: int = 2  # 1 alignment (projector + Mamba only), 2 full SFT, 3 long-video fine-tune
    model: str | None = None  # model directory to start from (the previous stage's output)
    init: InitConfig | None = None
    output_dir: str = "runs/storm"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    temporal_pool: int | None = None  # k the model trains with (None: the model's config)
    spatial_pool: int | None = None  # p
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    # recompute activations in the backward pass: true (every part) or a list among vision, temporal, llm
    gradient_checkpointing: bool | list[str] = False
    lora: dict[str, Any] | None = None  # e.g. {r: 16, alpha: 32, dropout: 0.05}: LoRA on the LLM (peft)
    seed: int = 0
    log_every: int = 1
    log_with: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb ([]: none)
    save_every: int = 0  # optimizer steps between checkpoints (0: only the final model)
    keep_last: int = 2
    resume: bool = True  # continue from the newest checkpoint in output_dir (false: refuse to, if there is one)
    overwrite: bool = False  # train again even if output_dir/final is complete (replaced once the new one is)

    def validate(self) -> TrainRecipe:
        if self.stage not in (1, 2, 3):
            raise RecipeError(f"stage must be 1, 2 or 3, got {self.stage!r}")
        if (self.model is None) == (self.init is None):
            raise RecipeError("give exactly one of `model` (a model directory) or `init` (a new model)")
        if self.init is not None and (self.init.preset is None) == (self.init.vision is None or self.init.llm is None):
            raise RecipeError("init needs either `preset` or both `vision` and `llm`")
        if bool(self.data.json) + bool(self.data.mixture) + (self.data.synth is not None) != 1:
            raise RecipeError(
                "give exactly one of data.json (a LLaVA-style JSON file), data.mixture (a mixture YAML) "
                "or data.synth (generated clips)"
            )
        if self.data.num_workers < 0:
            raise RecipeError(f"data.num_workers must be >= 0, got {self.data.num_workers!r}")
        if not 1 <= self.data.group_size <= MAX_GROUP_BATCHES:
            raise RecipeError(f"data.group_size must be 1 to {MAX_GROUP_BATCHES:,}, got {self.data.group_size!r}")
        if self.data.synth is not None:
            synth = self.data.synth
            if not 1 <= synth.samples <= MAX_SYNTH_SAMPLES:  # the sampler holds a permutation of them
                raise RecipeError(f"data.synth.samples must be 1 to {MAX_SYNTH_SAMPLES:,}, got {synth.samples!r}")
            if not MIN_SYNTH_SIZE <= synth.size <= MAX_SYNTH_SIZE:
                raise RecipeError(
                    f"data.synth.size must be {MIN_SYNTH_SIZE} to {MAX_SYNTH_SIZE} pixels, got {synth.size!r}"
                )
            try:  # the clip as a whole: frames x size^2 must fit in memory
                check_clip_args(self.data.num_frames, synth.size, synth.samples)
            except ValueError as err:
                raise RecipeError(f"data.num_frames / data.synth: {err}") from None
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise RecipeError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self.optim, name) < 1:
                raise RecipeError(f"optim.{name} must be >= 1")
        for name in ("lr", "vision_lr", "projector_lr", "llm_lr"):
            value = getattr(self.optim, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise RecipeError(f"optim.{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.optim.epochs) and self.optim.epochs > 0):
            raise RecipeError(f"optim.epochs must be a finite number > 0, got {self.optim.epochs!r}")
        if self.optim.max_steps is not None and self.optim.max_steps < 1:
            raise RecipeError(f"optim.max_steps must be >= 1, got {self.optim.max_steps!r}")
        if self.log_every < 1:
            raise RecipeError(f"log_every must be >= 1, got {self.log_every!r}")
        if not 1 <= self.data.num_frames <= MAX_FRAMES:
            raise RecipeError(f"data.num_frames must be 1 to {MAX_FRAMES}, got {self.data.num_frames!r}")
        if self.data.max_length < 1:
            raise RecipeError(f"data.max_length must be >= 1, got {self.data.max_length!r}")
        if self.data.pack_tokens is not None:
            if not self.data.max_length <= self.data.pack_tokens <= MAX_PACK_TOKENS:
                raise RecipeError(
                    f"data.pack_tokens must be data.max_length ({self.data.max_length}) to {MAX_PACK_TOKENS:,}, "
                    f"got {self.data.pack_tokens!r}: every sample must fit one row"
                )
            if self.data.group_by_length:
                raise RecipeError("data.pack_tokens and data.group_by_length exclude each other (packing groups rows)")
        for name in ("temporal_pool", "spatial_pool"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_REDUCTION:
                raise RecipeError(f"{name} must be 1 to {MAX_REDUCTION}, got {value!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            _check_names("gradient_checkpointing", self.gradient_checkpointing, CHECKPOINT_PARTS)
        _check_names("log_with", self.log_with, TRACKERS)
        return self

    @property
    def checkpointed_parts(self) -> tuple[str, ...]:
        """The parts whose activations are recomputed: ``gradient_checkpointing`` true means all of them."""
        value = self.gradient_checkpointing
        if isinstance(value, bool):
            return CHECKPOINT_PARTS if value else ()
        return tuple(part for part in CHECKPOINT_PARTS if part in value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_names(key: str, names: list[str], known: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RecipeError(f"{key}: unknown {unknown[0]!r} (choose among {', '.join(known)})")
    if len(set(names)) != len(names):
        raise RecipeError(f"{key} names one twice: {names!r}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn YAML / command-line values into the annotated type, with a clear error."""
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if hint is type(None) or type(None) in args:
            return None
        raise RecipeError(f"{key} may not be null")
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key) if len(inner) == 1 else value
    if origin in (Union, types.UnionType):  # bool | list[str]: a flag, or the names it applies to
        if bool in args and (isinstance(value, bool) or (isinstance(value, str) and value.lower() in _BOOL_WORDS)):
            return _coerce(value, bool, key)
        listed = [a for a in args if get_origin(a) is list]
        if not listed or not isinstance(value, (str, list, tuple)):
            raise RecipeError(f"{key} must be true, false or a list of names, got {value!r}")
        return _coerce(value, listed[0], key)
    if origin is list:  # a YAML list, or on the command line one name or names with commas (none: empty)
        if isinstance(value, str):
            value = [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0] if args else str, key) for v in value]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a mapping, got {value!r}")
        return _build(hint, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecipeError(f"{key} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key} must be a mapping, got {value!r}")
        return value
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RecipeError(f"unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in values.items()})


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise RecipeError(f"override {override!r} is not key=value (e.g. optim.lr=1e-4)")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:
        raise RecipeError(f"override {key}: {raw!r} is not a YAML value ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise RecipeError(f"override {key}: the value is nested too deeply") from None
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {key}: {part} is not a mapping")
    node[parts[-1]] = value


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainRecipe:
    """Read a YAML recipe (or start from defaults), apply ``key=value`` overrides, validate.

    Relative paths are relative to the working directory, as for every other command.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        except RecursionError:
            raise RecipeError(f"{path}: nested too deeply to be a recipe") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path}: not a UTF-8 text file") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise RecipeError(f"{path}: a recipe must be a YAML mapping")
        tree = loaded or {}
    for override in overrides:
        _apply_override(tree, override)
    return _build(TrainRecipe, tree).validate()
