"""Packing samples into rows up to a token budget (``data.pack_tokens``): a packed row computes
exactly what each of its samples computes alone; the batch sampler is seeded, complete, shards
over processes and resumes by whole batches; a packed run resumes exactly with workers."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from hypothesis import given
from hypothesis import strategies as st

from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.presets import build_tiny, spread_llm_weights
from storm_vlm.train.data import (
    IGNORE,
    PackedBatchSampler,
    StormCollator,
    encode_conversation,
    first_fit_decreasing,
)
from storm_vlm.train.recipe import RecipeError, load_recipe

from .conftest import random_frames


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    model, processor = build_tiny()
    spread_llm_weights(model, 0.2)  # tokens that depend on their context: a leak across samples shows
    return model.eval(), processor


def _item(processor, settings, media: str | None, frames: int, question: str, answer: str, seed: int):
    visual = processor.num_visual_tokens(frames if media == "video" else 1, settings) if media else 0
    mark = {"video": "<video>\n", "image": "<image>\n", None: ""}[media]
    turns = [{"from": "human", "value": mark + question}, {"from": "gpt", "value": answer}]
    ids, labels = encode_conversation(processor, turns, media, visual)
    pixels = processor.preprocess_frames(random_frames(frames, seed=seed)) if media else None
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "pixel_values_videos": pixels if media == "video" else None,
        "pixel_values": pixels[0] if media == "image" else None,
        "visual_tokens": visual,
    }


def _alone(model, item):
    kwargs = {}
    if item["pixel_values_videos"] is not None:
        kwargs["pixel_values_videos"] = [item["pixel_values_videos"]]
    if item["pixel_values"] is not None:
        kwargs["pixel_values"] = item["pixel_values"][None]
    return model(input_ids=item["input_ids"][None], **kwargs).logits[0]


def test_a_packed_row_gives_every_sample_its_own_logits_and_loss(model_and_processor):
    model, processor = model_and_processor
    settings = ReductionSettings.resolve(model.config, training=True)
    items = [
        _item(processor, settings, "video", 4, "What moves?", "A red square.", 1),
        _item(processor, settings, "image", 1, "Colour?", "Blue, mostly.", 2),
        _item(processor, settings, None, 0, "Say hi.", "Hi there, how are you?", 3),
        _item(processor, settings, "video", 2, "How many?", "Two.", 4),  # a shorter clip
    ]
    lengths = [len(it["input_ids"]) for it in items]
    budget = sum(lengths) - 1  # not all in one row: two rows, one padded
    batch = StormCollator(processor.tokenizer.pad_token_id, pack_tokens=budget)(items)
    counts = batch.pop("counts")
    batch.pop("skipped")
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 2
    assert batch["input_ids"].shape[1] <= budget
    assert counts == {"samples": 4, "tokens": sum(lengths), "visual": sum(it["visual_tokens"] for it in items)}
    with torch.no_grad():
        packed = model(**batch)
        alone = [_alone(model, it) for it in items]
        # where each sample landed: rows of the collator's first-fit, samples by their position-id restarts
        found = 0
        for row in range(batch["input_ids"].shape[0]):
            starts = [*(batch["position_ids"][row] == 0).nonzero().flatten().tolist(), batch["input_ids"].shape[1]]
            for start, end in itertools.pairwise(starts):
                ids = batch["input_ids"][row, start:end]
                match = [i for i, it in enumerate(items) if torch.equal(it["input_ids"], ids)]
                if not match:  # the row's padding
                    assert (ids == processor.tokenizer.pad_token_id).all()
                    continue
                found += 1
                torch.testing.assert_close(packed.logits[row, start:end], alone[match[0]], rtol=1e-4, atol=1e-5)
        assert found == len(items)

        # the loss: Σ token losses / all targets, as the samples alone give it
        targets = sum(int((it["labels"][1:] != IGNORE).sum()) for it in items)
        loss = model(**batch, num_items_in_batch=torch.tensor(targets)).loss
        total = 0.0
        for it, logits in zip(items, alone):
            total += float(torch.nn.functional.cross_entropy(logits[:-1], it["labels"][1:], reduction="sum"))
        assert abs(float(loss) - total / targets) < 1e-4

        # the check can fail: the same row under one causal mask lets samples see each other
        leaky = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"]),
                      pixel_values_videos=batch["pixel_values_videos"], pixel_values=batch["pixel_values"])  # fmt: skip
        assert not torch.allclose(leaky.logits, packed.logits, rtol=1e-4, atol=1e-5)


def test_packed_batch_sampler_is_complete_seeded_shardable_and_resumable():
    lengths = [(i * 37) % 101 + 20 for i in range(300)]
    budget, rows = 256, 2
    sampler = PackedBatchSampler(lengths, budget, rows, seed=3, group_size=4)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(300))  # every sample once
    # every batch packs into `rows` rows of the budget (the last may be short)
    for b in batches:
        assert len(first_fit_decreasing([lengths[i] for i in b], budget)) <= rows
    assert sum(lengths) / (len(batches) * rows * budget) > 0.9  # rows are nearly full
    assert batches == PackedBatchSampler(lengths, budget, rows, seed=3, group_size=4).batches()
    assert batches != PackedBatchSampler(lengths, budget, rows, seed=4, group_size=4).batches()
    sampler.start_epoch(1)
    assert sampler.batches() != batches
    # resuming skips whole batches
    fresh = PackedBatchSampler(lengths, budget, rows, seed=3, group_size=4)
    fresh.start_epoch(1)
    sampler.start_epoch(1, skip_batches=6)
    assert list(sampler) == fresh.batches()[6:] and len(sampler) == len(fresh) - 6
    # accelerate shards it by whole batches: process i takes batches i, i + 2, ...; a resumed
    # sampler hands every process the batches it would have had next
    fresh.start_epoch(0)
    whole = fresh.batches()
    shards = [list(BatchSamplerShard(fresh, num_processes=2, process_index=p, even_batches=True)) for p in (0, 1)]
    for step in range(len(whole) // 2):
        assert shards[0][step] == whole[2 * step] and shards[1][step] == whole[2 * step + 1]
    fresh.start_epoch(0, skip_batches=2 * 3)  # 3 steps of 2 processes done
    resumed = [list(BatchSamplerShard(fresh, num_processes=2, process_index=p, even_batches=True)) for p in (0, 1)]
    assert resumed[0][: len(whole) // 2 - 3] == shards[0][3 : len(whole) // 2]
    assert resumed[1][: len(whole) // 2 - 3] == shards[1][3 : len(whole) // 2]


@given(st.lists(st.integers(1, 120), min_size=1, max_size=60), st.integers(1, 100))
def test_first_fit_decreasing_places_every_item_once_within_capacity(lengths, capacity):
    rows = first_fit_decreasing(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    for row in rows:  # an item over the capacity is alone in its row
        assert sum(lengths[i] for i in row) <= capacity or len(row) == 1
    fitting = [n for n in lengths if n <= capacity]
    assert len(rows) - (len(lengths) - len(fitting)) <= max(1, -(-sum(fitting) * 11 // (9 * capacity)) + 1)


def test_packing_benchmark_prints_the_three_ways():
    script = Path(__file__).parents[1] / "benchmarks" / "packing.py"
    args = ["--samples", "600", "--batch-size", "4", "--pack-tokens", "8192", "--group-size", "4"]
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"plain", "length-grouped", "packed"}
    assert rows["plain"][3] == "150" and rows["length-grouped"][1] == "150"  # 600 samples / 4
    assert int(rows["packed"][3]) < 150  # several samples per row: fewer batches


def test_packing_recipe_bounds():
    base = ["init.preset=tiny", "data.json=a.json", "data.max_length=512"]
    with pytest.raises(RecipeError, match=r"data\.pack_tokens must be data\.max_length \(512\) to"):
        load_recipe(None, [*base, "data.pack_tokens=256"])
    with pytest.raises(RecipeError, match=r"data\.pack_tokens must be"):
        load_recipe(None, [*base, "data.pack_tokens=100000000"])
    with pytest.raises(RecipeError, match="exclude each other"):
        load_recipe(None, [*base, "data.pack_tokens=1024", "data.group_by_length=true"])
    assert load_recipe(None, [*base, "data.pack_tokens=1024"]).data.pack_tokens == 1024


def test_a_packed_run_with_workers_resumes_exactly(data, tmp_path):
    """Packed rows decoded in 2 worker processes, cut after 2 steps and resumed: the losses of one
    uninterrupted in-process run, step by step."""
    from .conftest import whole_and_resumed

    # two samples per row (each is 124 or 125 tokens, estimated 125 or 126), 2 rows a step
    common = ["data.max_length=128", "data.pack_tokens=300", "data.group_size=1", "save_every=1"]
    a, b = whole_and_resumed(data, tmp_path, common, steps=4, cut_at=2)
    assert len(a) == len(b) == 4
    assert all(abs(x["loss"] - y["loss"]) <= 1e-6 for x, y in zip(a, b)), (a, b)
    assert [r["samples"] for r in a] == [r["samples"] for r in b] == [4, 4, 4, 4]  # 8 samples an epoch
