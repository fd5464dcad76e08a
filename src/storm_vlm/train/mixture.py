"""Data mixtures: several LLaVA-style JSON files, each with its share, media root and frame count.

A mixture is a YAML file the trainer reads directly (``data.mixture: configs/mixtures/x.yaml``)::

    seed: 0                      # the draw below (default: the recipe's seed)
    sources:
      - name: llava-video-178k
        json: data/llava-video/llava_video_178k.json   # what `storm-vlm data llava-video` wrote
        media_root: data/llava-video
        num_frames: 32           # default: the recipe's data.num_frames
        weight: 1.0              # take weight x its samples (1: all, 0.5: a seeded half, 2: twice over)
      - name: llava-665k
        json: data/llava-665k/train.json
        media_root: data/llava-665k
        samples: 300000          # or exactly this many samples

Each source's samples are drawn once, deterministically from (seed, source position): whole passes
over the file and then a seeded subset for the remainder. The trainer's seeded sampler shuffles the
drawn samples like any data file's, so a resumed run sees exactly the batches an uninterrupted one
would. Relative paths are relative to the working directory, as in recipes. Bounded: the file by
``MAX_MIXTURE_BYTES``, its sources by ``MAX_MIXTURE_SOURCES``, the drawn samples by
``MAX_DATA_SAMPLES``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from torch.utils.data import Dataset

from ..limits import MAX_DATA_SAMPLES, MAX_FRAMES, MAX_MIXTURE_BYTES, MAX_MIXTURE_SOURCES
from .data import BadSample, DataError, LlavaVideoDataset, SampleStore, SynthVideoDataset, build_dataset, read_samples

if TYPE_CHECKING:
    from ..modeling.reduction import ReductionSettings
    from ..processing_storm import StormProcessor
    from .recipe import DataConfig

__all__ = ["Mixture", "MixtureDataset", "MixtureSource", "build_training_dataset", "draw_indices", "load_mixture"]

_SOURCE_KEYS = {"name", "json", "media_root", "num_frames", "weight", "samples"}


@dataclass(frozen=True)
class MixtureSource:
    name: str
    json: str
    media_root: str = "."
    num_frames: int | None = None  # None: the recipe's data.num_frames
    weight: float | None = None  # share of the file's samples drawn (exclusive with samples)
    samples: int | None = None  # exact number of samples drawn


@dataclass(frozen=True)
class Mixture:
    path: Path
    sources: tuple[MixtureSource, ...]
    seed: int | None = None


def _field(where: str, key: str, value: Any, kind: type, positive: bool = True) -> Any:
    """One checked field: its type (bool is not a number) and, for numbers, > 0."""
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise DataError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    if positive and kind in (int, float) and not (math.isfinite(value) and value > 0):
        raise DataError(f"{where}.{key} must be > 0, got {value!r}")
    return value


def load_mixture(path: str | Path) -> Mixture:
    """Read and check a mixture YAML; every problem is one line naming the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such mixture file")
    size = path.stat().st_size
    if size > MAX_MIXTURE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, more than the {MAX_MIXTURE_BYTES:,} a mixture file may have")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be a mixture") from None
    if not isinstance(tree, dict):
        raise DataError(f"{path}: a mixture must be a YAML mapping with `sources`")
    unknown = sorted(set(tree) - {"seed", "sources"})
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]} (known: seed, sources)")
    seed = tree.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise DataError(f"{path}: seed must be an int >= 0, got {seed!r}")
    raw = tree.get("sources")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: sources must be a non-empty list")
    if len(raw) > MAX_MIXTURE_SOURCES:
        raise DataError(f"{path}: {len(raw)} sources, more than the {MAX_MIXTURE_SOURCES} a mixture may list")
    sources, names = [], set()
    for i, entry in enumerate(raw):
        where = f"{path}: sources[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where} must be a mapping with at least `json`")
        unknown = sorted(set(entry) - _SOURCE_KEYS)
        if unknown:
            raise DataError(f"{where}: unknown key {unknown[0]} (known: {', '.join(sorted(_SOURCE_KEYS))})")
        if "json" not in entry:
            raise DataError(f"{where}.json is required (a LLaVA-style JSON file)")
        json_path = _field(where, "json", entry["json"], str, positive=False)
        name = _field(where, "name", entry.get("name", Path(json_path).stem), str, positive=False)
        if name in names:
            raise DataError(f"{where}.name {name!r} is used twice")
        names.add(name)
        media_root = _field(where, "media_root", entry.get("media_root", "."), str, positive=False)
        frames = entry.get("num_frames")
        if frames is not None:
            frames = _field(where, "num_frames", frames, int)
            if frames > MAX_FRAMES:
                raise DataError(f"{where}.num_frames must be 1 to {MAX_FRAMES}, got {frames!r}")
        if "weight" in entry and "samples" in entry:
            raise DataError(f"{where}: give weight or samples, not both")
        weight = _field(where, "weight", entry["weight"], float) if "weight" in entry else None
        samples = _field(where, "samples", entry["samples"], int) if "samples" in entry else None
        if samples is not None and samples > MAX_DATA_SAMPLES:
            raise DataError(f"{where}.samples must be at most {MAX_DATA_SAMPLES:,}, got {samples:,}")
        if weight is None and samples is None:
            weight = 1.0
        sources.append(MixtureSource(name, json_path, media_root, frames, weight, samples))
    return Mixture(path, tuple(sources), seed)


def draw_indices(size: int, source: MixtureSource, seed: int, position: int) -> np.ndarray:
    """The indices of a source's samples that the mixture uses, fixed by (seed, position).

    ``m`` samples of ``size``: ``m // size`` whole passes, then ``m % size`` distinct samples
    chosen by a seeded permutation (sorted, so that the file's order is kept within a pass).
    """
    wanted = source.samples if source.samples is not None else round((source.weight or 0.0) * size)
    if wanted > MAX_DATA_SAMPLES:
        raise DataError(f"source {source.name}: {wanted:,} samples drawn, more than {MAX_DATA_SAMPLES:,}")
    passes, rest = divmod(wanted, size)
    rng = np.random.default_rng([seed, position])
    extra = np.sort(rng.permutation(size)[:rest])
    return np.concatenate([np.tile(np.arange(size, dtype=np.int64), passes), extra.astype(np.int64)])


class MixtureDataset(Dataset):
    """The samples a mixture draws, one :class:`LlavaVideoDataset` per source (its media root and
    frame count), indexed as one dataset: item ``i`` is (source, sample) of a fixed table."""

    def __init__(
        self,
        mixture: Mixture,
        processor: StormProcessor,
        settings: ReductionSettings,
        data: DataConfig,
        seed: int,
    ) -> None:
        seed = mixture.seed if mixture.seed is not None else seed
        self.mixture = mixture
        self.parts: list[LlavaVideoDataset] = []
        sources, indices = [], []
        for position, source in enumerate(mixture.sources):
            try:
                store = SampleStore(read_samples(source.json))
            except DataError as err:
                raise DataError(f"{mixture.path}: source {source.name}: {err}") from None
            self.parts.append(
                LlavaVideoDataset(
                    store,
                    processor,
                    source.media_root,
                    source.num_frames or data.num_frames,
                    settings,
                    data.max_length,
                    data.strict,
                )
            )
            drawn = draw_indices(len(store), source, seed, position)
            sources.append(np.full(len(drawn), position, dtype=np.int32))
            indices.append(drawn)
        self.source = np.concatenate(sources)
        self.index = np.concatenate(indices)
        if len(self.index) == 0:
            raise DataError(f"{mixture.path}: the mixture draws no sample (every weight rounds to 0)")
        if len(self.index) > MAX_DATA_SAMPLES:
            raise DataError(f"{mixture.path}: {len(self.index):,} samples drawn, more than {MAX_DATA_SAMPLES:,}")

    def __len__(self) -> int:
        return len(self.index)

    def counts(self) -> dict[str, int]:
        """Samples drawn per source, by name."""
        drawn = np.bincount(self.source, minlength=len(self.parts))
        return {s.name: int(n) for s, n in zip(self.mixture.sources, drawn)}

    def lengths(self) -> np.ndarray:
        """Estimated tokens per drawn sample (see :meth:`LlavaVideoDataset.lengths`)."""
        out = np.empty(len(self.index), dtype=np.int64)
        for position, part in enumerate(self.parts):
            mask = self.source == position
            out[mask] = part.lengths()[self.index[mask]]
        return out

    def __getitem__(self, i: int) -> dict[str, Any] | BadSample:
        part = self.parts[int(self.source[i])]
        item = part[int(self.index[i])]
        if isinstance(item, BadSample):
            return BadSample(i, f"{self.mixture.sources[int(self.source[i])].name}: {item.reason}")
        return item


def build_training_dataset(
    data: DataConfig, processor: StormProcessor, settings: ReductionSettings, seed: int
) -> LlavaVideoDataset | SynthVideoDataset | MixtureDataset:
    """The dataset a recipe's ``data`` section names: a mixture file, a JSON file or generated clips."""
    if data.mixture:
        return MixtureDataset(load_mixture(data.mixture), processor, settings, data, seed)
    return build_dataset(data, processor, settings, seed)
