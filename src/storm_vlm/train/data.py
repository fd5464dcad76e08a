"""LLaVA-style training data: JSON samples → token ids, labels on assistant turns only, pixels.

Format (LLaVA style), paths relative to a media root::

    [{"id": "v1", "video": "clips/abc.mp4",
      "conversations": [{"from": "human", "value": "<video>\\nWhat happens after the door opens?"},
                        {"from": "gpt", "value": "A dog runs in."}]},
     {"id": "i1", "image": "imgs/x.jpg", "conversations": [...]}]

A video sample may mark its video with ``<image>`` instead of ``<video>`` (LLaVA-NeXT and
LLaVA-Video-178K do): the ``video`` field says what the placeholder stands for.

Decoding runs in DataLoader workers (``data.num_workers``). The samples are held as one byte buffer
(:class:`SampleStore`), not a list of dicts, so forked workers share it instead of copying it page
by page as reference counts change. A sample that cannot be used (missing or unreadable media, a
malformed entry, a conversation without the placeholder, longer than the context) becomes a
:class:`BadSample` that the collator drops and counts, so one bad sample never kills an epoch;
``strict=True`` raises instead. :class:`LengthGroupedSampler` batches samples of similar length
(fewer pad tokens), in an order fixed by (seed, epoch) like :class:`SeededSampler`'s.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..limits import MAX_DATA_FILE_BYTES, MAX_DATA_SAMPLES
from ..modeling.reduction import ReductionSettings
from ..processing_storm import IMAGE_TOKEN, VIDEO_TOKEN, StormProcessor
from ..video import VideoError, sample_frames

if TYPE_CHECKING:
    from .recipe import DataConfig

__all__ = [
    "BadSample",
    "DataError",
    "LengthGroupedSampler",
    "LlavaVideoDataset",
    "PackedBatchSampler",
    "SampleStore",
    "SeededSampler",
    "StormCollator",
    "SynthVideoDataset",
    "build_dataset",
    "encode_conversation",
    "first_fit_decreasing",
    "read_samples",
]

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IGNORE = -100


class DataError(ValueError):
    """A sample or data file that cannot be used; the message says which and why."""


@dataclass
class BadSample:
    index: int
    reason: str


def read_samples(path: str | Path) -> list[dict[str, Any]]:
    """Load the JSON list (or JSON-lines) of samples, with one clear error for a malformed file.

    Bounded: a file over ``MAX_DATA_FILE_BYTES`` or with more than ``MAX_DATA_SAMPLES`` samples is
    refused (it is read whole, and the samplers hold index arrays of its length).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    size = path.stat().st_size
    if size > MAX_DATA_FILE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, more than the {MAX_DATA_FILE_BYTES:,} a data file may have")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    try:
        if path.suffix == ".jsonl":
            samples = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            samples = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:  # the decoder recurses per level of [ / {
        raise DataError(f"{path}: JSON nested too deeply to be training samples") from None
    if not isinstance(samples, list) or not samples:
        raise DataError(f"{path}: expected a non-empty JSON list of samples")
    if len(samples) > MAX_DATA_SAMPLES:
        raise DataError(f"{path}: {len(samples):,} samples, more than the {MAX_DATA_SAMPLES:,} a data file may have")
    return samples


class SampleStore(Sequence):
    """Samples as one compact buffer of JSON bytes plus offsets; ``store[i]`` parses sample ``i``.

    A Python list of dicts in the main process is copied into every forked DataLoader worker bit by
    bit (reading an object writes its reference count, which dirties its page): with a million
    samples and 8 workers that is gigabytes. Two numpy arrays are never written, so they stay shared.
    Text statistics for length grouping are taken while the samples are serialised.
    """

    def __init__(self, samples: Sequence[Any]) -> None:
        blobs = [json.dumps(sample, ensure_ascii=False).encode("utf-8") for sample in samples]
        self._offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        self.text_chars = np.array([_text_chars(sample) for sample in samples], dtype=np.int64)
        self.media = np.array([_media_kind(sample) for sample in samples], dtype=np.int8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            raise TypeError("a SampleStore is indexed by one int")
        if index < 0:
            index += len(self)
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        return json.loads(self._buffer[start:end].tobytes())


NO_MEDIA, IMAGE, VIDEO = 0, 1, 2
_MEDIA_NAMES = {NO_MEDIA: None, IMAGE: "image", VIDEO: "video"}
CALIBRATION_SAMPLES = 256  # samples tokenised exactly to fit the text part of the length estimate


def _media_kind(sample: Any) -> int:
    if not isinstance(sample, dict):
        return NO_MEDIA
    return VIDEO if "video" in sample else IMAGE if "image" in sample else NO_MEDIA


def _text_chars(sample: Any) -> int:
    """Characters of a sample's turns: the text part of its length estimate (about 4 per token)."""
    turns = sample.get("conversations") if isinstance(sample, dict) else None
    if not isinstance(turns, list):
        return 0
    return sum(len(t["value"]) for t in turns if isinstance(t, dict) and isinstance(t.get("value"), str))


def encode_conversation(
    processor: StormProcessor, conversations: Any, media: str | None, visual_tokens: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; labels are ``-100`` except on assistant turns.

    The chat template renders prefixes of the conversation: text up to each assistant answer is
    context (masked), the answer and its end-of-turn token are targets. ``media`` is ``"video"``,
    ``"image"`` or ``None``; its placeholder must appear exactly once and is expanded to
    ``visual_tokens`` placeholder tokens. For a video, one ``<image>`` (and no ``<video>``) is
    taken as its placeholder.
    """
    if not isinstance(conversations, list) or not conversations:
        raise DataError("`conversations` must be a non-empty list")
    messages = []
    for turn in conversations:
        role = turn.get("from") if isinstance(turn, dict) else None
        if not isinstance(role, str) or role not in ROLES or not isinstance(turn.get("value"), str):
            # reprlib: a bounded excerpt, however large or deeply nested the turn is
            raise DataError(f"malformed turn {reprlib.repr(turn)}: need {{'from': human|gpt|system, 'value': str}}")
        messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant turn to learn from")
    text = "".join(m["content"] for m in messages)
    counts = {VIDEO_TOKEN: text.count(VIDEO_TOKEN), IMAGE_TOKEN: text.count(IMAGE_TOKEN)}
    if media == "video" and counts == {VIDEO_TOKEN: 0, IMAGE_TOKEN: 1}:
        # LLaVA-NeXT / LLaVA-Video-178K mark a video with <image>; the `video` field says what it is
        for m in messages:
            m["content"] = m["content"].replace(IMAGE_TOKEN, VIDEO_TOKEN)
        counts = {VIDEO_TOKEN: 1, IMAGE_TOKEN: 0}
    expected = {VIDEO_TOKEN: int(media == "video"), IMAGE_TOKEN: int(media == "image")}
    if counts != expected:
        want = f"one {VIDEO_TOKEN if media == 'video' else IMAGE_TOKEN}" if media else "no placeholder"
        raise DataError(f"the conversation must contain {want}, found {counts}")
    if media is not None:
        token = VIDEO_TOKEN if media == "video" else IMAGE_TOKEN
        for m in messages:
            m["content"] = m["content"].replace(token, token * visual_tokens)

    def render(part: list[dict[str, str]], generation_prompt: bool) -> str:
        return processor.tokenizer.apply_chat_template(part, add_generation_prompt=generation_prompt, tokenize=False)

    def tokens(piece: str) -> list[int]:
        return processor.tokenizer(piece, add_special_tokens=False)["input_ids"]

    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(messages[:i], generation_prompt=True)
        full = render(messages[: i + 1], generation_prompt=False)
        if not (prefix.startswith(done) and full.startswith(prefix)):
            raise DataError("the tokenizer's chat template does not render conversations prefix by prefix")
        context, answer = tokens(prefix[len(done) :]), tokens(full[len(prefix) :])
        ids += context + answer
        labels += [IGNORE] * len(context) + answer
        done = full
    return ids, labels


class LlavaVideoDataset(Dataset):
    """Samples of a LLaVA-style JSON file, decoded and tokenised on access (in workers)."""

    def __init__(
        self,
        samples: Sequence[Any],
        processor: StormProcessor,
        media_root: str | Path,
        num_frames: int,
        settings: ReductionSettings,
        max_length: int,
        strict: bool = False,
    ) -> None:
        self.samples = samples if isinstance(samples, SampleStore) else SampleStore(samples)
        self.processor = processor
        self.media_root = Path(media_root)
        self.num_frames = num_frames
        self.settings = settings.for_training()
        self.max_length = max_length
        self.strict = strict

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> np.ndarray:
        """Estimated tokens per sample, without decoding anything: the visual tokens of
        ``num_frames`` frames (one for an image) plus the text's tokens, estimated from its
        characters by a line fitted to up to ``CALIBRATION_SAMPLES`` samples tokenised exactly
        (the chat template's own tokens are the line's intercept).

        Good enough to group and pack samples; a clip shorter than ``num_frames`` gives fewer
        visual tokens than estimated.
        """
        per_video = self.processor.num_visual_tokens(self.num_frames, self.settings)
        per_image = self.processor.num_visual_tokens(1, self.settings)
        visual = np.select([self.samples.media == VIDEO, self.samples.media == IMAGE], [per_video, per_image], 0)
        intercept, slope = self._text_tokens_per_char()
        return visual + np.ceil(intercept + slope * self.samples.text_chars).astype(np.int64)

    def _text_tokens_per_char(self) -> tuple[float, float]:
        """(tokens of an empty conversation, tokens per character), fitted by least squares to a
        seeded pick of samples (visual placeholders expanded to nothing); (1, 1/4) if none parses."""
        pick = np.random.default_rng(0).permutation(len(self.samples))[:CALIBRATION_SAMPLES]
        chars, tokens = [], []
        for i in pick.tolist():
            sample = self.samples[i]
            media = _MEDIA_NAMES[int(self.samples.media[i])]
            try:
                ids, _ = encode_conversation(self.processor, sample.get("conversations"), media, 0)
            except (DataError, AttributeError, TypeError, ValueError):
                continue
            chars.append(int(self.samples.text_chars[i]))
            tokens.append(len(ids))
        if not tokens:
            return 1.0, 0.25
        if len(set(chars)) < 2:  # one length: no slope to fit
            return float(np.mean(tokens)) - 0.25 * chars[0], 0.25
        slope, intercept = np.polyfit(np.asarray(chars, float), np.asarray(tokens, float), 1)
        return float(intercept), float(max(slope, 0.0))

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        try:
            return self._load(index)
        except (DataError, VideoError, ValueError, OSError, RecursionError) as err:
            reason = f"sample {index} ({self._sample_id(index)}): {err}"
            if self.strict:
                raise DataError(reason) from None
            return BadSample(index, reason)

    def _sample_id(self, index: int) -> str:
        sample = self.samples[index]
        value = sample.get("id", "?") if isinstance(sample, dict) else "?"
        return value if isinstance(value, str) else reprlib.repr(value)

    def _load(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        if not isinstance(sample, dict):
            raise DataError("a sample must be a JSON object")
        if "video" in sample and "image" in sample:
            raise DataError("a sample may have a video or an image, not both")
        media = "video" if "video" in sample else "image" if "image" in sample else None
        pixels: torch.Tensor | None = None
        visual = 0
        if media is not None:
            if not isinstance(sample[media], str):
                raise DataError(f"`{media}` must be a path string")
            path = self.media_root / sample[media]
            clip = sample_frames(path, num_frames=self.num_frames if media == "video" else 1)
            pixels = self.processor.preprocess_frames(clip.frames)  # (T, 3, S, S)
            visual = self.processor.num_visual_tokens(len(clip) if media == "video" else 1, self.settings)
        ids, labels = encode_conversation(self.processor, sample.get("conversations"), media, visual)
        if len(ids) > self.max_length:
            raise DataError(f"{len(ids)} tokens ({visual} visual) exceed max_length {self.max_length}")
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values_videos": pixels if media == "video" else None,
            "pixel_values": pixels[0] if media == "image" and pixels is not None else None,
            "visual_tokens": visual,
        }


class SynthVideoDataset(Dataset):
    """Generated clips made on access (``storm_vlm.synth``): sample ``i`` comes from (seed, i).

    With as many samples as the run consumes, every training step sees fresh clips, and a resumed
    run sees exactly the clips it would have seen. Tasks alternate by index.
    """

    def __init__(
        self,
        tasks: list[str],
        num_samples: int,
        num_frames: int,
        size: int,
        seed: int,
        processor: StormProcessor,
        settings: ReductionSettings,
    ) -> None:
        from ..synth import TASKS

        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown:
            raise DataError(f"data.synth.tasks: unknown or no task(s) {unknown}; choose from {', '.join(TASKS)}")
        self.tasks, self.num_samples, self.num_frames, self.size, self.seed = tasks, num_samples, num_frames, size, seed
        self.processor = processor
        self.visual = processor.num_visual_tokens(num_frames, settings.for_training())

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..synth import conversation, make_sample

        sample = make_sample(self.tasks[index % len(self.tasks)], "train", self.seed, index, self.num_frames, self.size)
        ids, labels = encode_conversation(self.processor, conversation(sample), "video", self.visual)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values_videos": self.processor.preprocess_frames(sample.frames),
            "pixel_values": None,
            "visual_tokens": self.visual,
        }


def build_dataset(
    data: DataConfig, processor: StormProcessor, settings: ReductionSettings, seed: int
) -> LlavaVideoDataset | SynthVideoDataset:
    """The dataset a recipe's ``data`` section names: a LLaVA-style JSON file, or generated clips
    (a mixture file is ``storm_vlm.train.mixture``'s)."""
    if data.synth is not None:
        synth = data.synth
        return SynthVideoDataset(
            list(synth.tasks),
            synth.samples,
            data.num_frames,
            synth.size,
            synth.seed if synth.seed is not None else seed,
            processor,
            settings,
        )
    return LlavaVideoDataset(
        SampleStore(read_samples(data.json)),
        processor,
        data.media_root,
        data.num_frames,
        settings,
        data.max_length,
        data.strict,
    )


class StormCollator:
    """Right-pads a batch, builds the attention mask, drops and counts bad samples.

    Returns model inputs (``use_cache=False``: training needs no KV cache) plus ``skipped`` (the
    reasons) and ``counts`` (samples, tokens and visual tokens of the batch), which the loop
    removes before the call. Clips of different lengths travel as a list (the model scans each
    clip on its own).

    With ``pack_tokens`` the samples are packed instead: first-fit by decreasing length into rows of
    at most ``pack_tokens`` tokens, each sample's position ids restarting at 0 and no attention
    mask, so the LLM attends block-diagonally (transformers' ``masking_utils`` reads the packing
    from the position ids, as flash-attention's varlen path does) and every sample sees exactly
    what it sees alone. A row's padding is a block of its own. The first label of each sample is
    ignored: alone it is never predicted, packed it would be predicted from the previous sample.
    Clips and images are listed in the order their placeholders appear (row by row), which is the
    order the model splices them in.
    """

    def __init__(self, pad_token_id: int, pack_tokens: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pack_tokens = pack_tokens

    def __call__(self, items: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
        good = [it for it in items if not isinstance(it, BadSample)]
        skipped = [it.reason for it in items if isinstance(it, BadSample)]
        if not good:
            return {"skipped": skipped}
        rows = self._rows(good)
        length = max(sum(len(it["input_ids"]) for it in row) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        positions = torch.zeros((len(rows), length), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for it in row:
                n = len(it["input_ids"])
                input_ids[r, start : start + n], labels[r, start : start + n] = it["input_ids"], it["labels"]
                labels[r, start] = IGNORE
                attention[r, start : start + n], positions[r, start : start + n] = 1, torch.arange(n)
                start += n
            positions[r, start:] = torch.arange(length - start)  # the padding: a block of its own
        # no KV cache in training: transformers' Qwen2 would fill one, and with a cache it ignores the packing
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "use_cache": False}
        if self.pack_tokens is None:
            batch["attention_mask"] = attention
        else:
            batch["position_ids"] = positions
        ordered = [it for row in rows for it in row]
        videos = [it["pixel_values_videos"] for it in ordered if it["pixel_values_videos"] is not None]
        images = [it["pixel_values"] for it in ordered if it["pixel_values"] is not None]
        if videos:
            same = len({v.shape for v in videos}) == 1
            batch["pixel_values_videos"] = torch.stack(videos) if same else videos
        if images:
            batch["pixel_values"] = torch.stack(images)
        batch["skipped"] = skipped
        batch["counts"] = {
            "samples": len(good),
            "tokens": int(attention.sum()),
            "visual": sum(int(it["visual_tokens"]) for it in good),
        }
        return batch

    def _rows(self, items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """One sample per row, or (packing) first-fit decreasing into rows of ``pack_tokens``."""
        if self.pack_tokens is None:
            return [[it] for it in items]
        lengths = [len(it["input_ids"]) for it in items]
        if max(lengths) > self.pack_tokens:
            raise DataError(f"a sample of {max(lengths)} tokens does not fit data.pack_tokens {self.pack_tokens}")
        return [[items[i] for i in row] for row in first_fit_decreasing(lengths, self.pack_tokens)]


def first_fit_decreasing(lengths: Sequence[int] | np.ndarray, capacity: int) -> list[list[int]]:
    """Positions of ``lengths`` packed into rows of at most ``capacity`` (an item over it gets a row
    of its own): longest first, each into the first row with room. Deterministic: ties keep their
    order. Within 11/9 of the fewest rows possible (plus one)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    free = np.empty(len(order), dtype=np.int64)
    rows: list[list[int]] = []
    for i in order.tolist():
        n = int(lengths[i])
        fits = np.flatnonzero(free[: len(rows)] >= n)
        if len(fits):
            rows[fits[0]].append(i)
            free[fits[0]] -= n
        else:
            free[len(rows)] = capacity - n
            rows.append([i])
    return rows


class SeededSampler(Sampler[int]):
    """A shuffled order fixed by (seed, epoch), so a resumed run sees exactly the same batches.

    The loop drives it with :meth:`start_epoch`, which can also skip the samples of batches that
    a resumed run already consumed. ``set_epoch`` is deliberately inert: accelerate calls it with
    its own per-loader iteration count, which restarts at 0 for a resumed loader.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch, self.skip = 0, 0

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def set_epoch(self, epoch: int) -> None:  # see the class docstring
        pass

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.skip :])

    def __len__(self) -> int:
        return self.size - self.skip


class LengthGroupedSampler(SeededSampler):
    """Batches of samples of similar length, in an order fixed by (seed, epoch); resumable.

    The seeded shuffle of :class:`SeededSampler` is cut into windows of ``group_size`` batches;
    each window is sorted by length (longest first) and cut into batches, and the windows' batches
    are shuffled in blocks of ``num_processes`` (so that the processes of one step get batches of
    one window: similar lengths, similar step times). Every window but the last holds whole
    batches, so the DataLoader's batches are exactly these, and skipping ``k`` whole global batches
    of the order (what a resumed run does) lands on the same batch as an uninterrupted run.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        seed: int,
        group_size: int = 64,
        num_processes: int = 1,
    ) -> None:
        super().__init__(len(lengths), seed, shuffle=True)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.group_size, self.num_processes = batch_size, group_size, num_processes

    def order(self) -> list[int]:
        shuffled = np.asarray(super().order(), dtype=np.int64)
        window = self.batch_size * self.num_processes * self.group_size
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        out: list[int] = []
        for start in range(0, len(shuffled), window):
            chunk = shuffled[start : start + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            step = self.batch_size * self.num_processes  # one step's batches over every process
            blocks = [chunk[i : i + step] for i in range(0, len(chunk), step)]
            whole = [b for b in blocks if len(b) == step]
            tail = [b for b in blocks if len(b) != step]  # only in the last window: it stays last
            for i in rng.permutation(len(whole)):
                out += whole[i].tolist()
            for b in tail:
                out += b.tolist()
        return out


class PackedBatchSampler(Sampler[list[int]]):
    """Batches of whole samples that pack into ``batch_size`` rows of ``pack_tokens`` tokens each,
    by estimated length; in an order fixed by (seed, epoch), resumable by whole batches.

    The seeded shuffle of :class:`SeededSampler` is cut into windows of about ``group_size``
    batches' worth of estimated tokens; each window is packed first-fit by decreasing length into
    rows, the fullest rows (a multiple of ``batch_size``) are shuffled and cut into batches of
    ``batch_size`` rows, and the samples of the rest carry over into the next window. The number of
    samples per batch varies (accelerate shards such a batch sampler by whole batches, process
    ``i`` taking batches ``i``, ``i + n``, ...), so a resumed run skips whole batches
    (:meth:`start_epoch`). The collator packs the decoded samples again by their real lengths (an
    estimate may be off by a few tokens).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        pack_tokens: int,
        batch_size: int,
        seed: int,
        group_size: int = 64,
    ) -> None:
        self.shuffle = SeededSampler(len(lengths), seed)
        # an estimate over the budget still gets a row (its real length is checked on decoding)
        self.lengths = np.minimum(np.asarray(lengths, dtype=np.int64), pack_tokens)
        self.pack_tokens, self.rows_per_batch, self.group_size, self.seed = pack_tokens, batch_size, group_size, seed
        self.epoch, self.skip = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def start_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def set_epoch(self, epoch: int) -> None:  # inert, as SeededSampler's
        pass

    def batches(self) -> list[list[int]]:
        """Every batch of this epoch (cached: ``len`` and iteration draw them once)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self.shuffle.start_epoch(self.epoch)
            self._cache = (self.epoch, self._pack(np.asarray(self.shuffle.order(), dtype=np.int64)))
        return self._cache[1]

    def _pack(self, shuffled: np.ndarray) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 2])
        cumulative = np.cumsum(self.lengths[shuffled])
        window_tokens = self.group_size * self.rows_per_batch * self.pack_tokens
        out: list[list[int]] = []
        carried: list[int] = []
        start = 0
        while start < len(shuffled):
            done = int(cumulative[start - 1]) if start else 0
            need = window_tokens - int(self.lengths[carried].sum())
            end = int(np.searchsorted(cumulative, done + need, side="left")) + 1
            window = carried + shuffled[start:end].tolist()
            start = min(end, len(shuffled))
            rows = [[window[j] for j in row] for row in first_fit_decreasing(self.lengths[window], self.pack_tokens)]
            last = start >= len(shuffled)
            whole = len(rows) if last else len(rows) // self.rows_per_batch * self.rows_per_batch
            # the emptiest rows' samples go on to the next window, to be packed with its samples
            fill = [-int(self.lengths[row].sum()) for row in rows]
            by_fill = [rows[i] for i in np.argsort(fill, kind="stable")]
            kept = [by_fill[i] for i in rng.permutation(whole)]
            for b in range(0, whole, self.rows_per_batch):
                out.append([i for row in kept[b : b + self.rows_per_batch] for i in row])
            carried = [i for row in by_fill[whole:] for i in row]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.skip :])

    def __len__(self) -> int:
        return len(self.batches()) - self.skip
