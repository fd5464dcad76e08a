"""Training data: labels on assistant turns only (token by token), collation, bad samples, recipes."""

from __future__ import annotations

import json

import pytest
import torch

from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.train.data import (
    IGNORE,
    BadSample,
    DataError,
    LengthGroupedSampler,
    LlavaVideoDataset,
    SampleStore,
    SeededSampler,
    StormCollator,
    encode_conversation,
    read_samples,
)
from storm_vlm.train.recipe import RecipeError, load_recipe

from .media import make


def test_labels_cover_exactly_the_assistant_turns(tiny):
    _, processor = tiny
    conv = [
        {"from": "human", "value": "<video>\nWhat happens?"},
        {"from": "gpt", "value": "A dog runs in."},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "It sits."},
    ]
    ids, labels = encode_conversation(processor, conv, "video", visual_tokens=5)
    assert len(ids) == len(labels)
    tok = processor.tokenizer
    # the full sequence is exactly the chat template's rendering
    messages = [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]} for t in conv]
    messages[0]["content"] = messages[0]["content"].replace("<video>", "<video>" * 5)
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    # token by token: a label is either the token itself (assistant answer + end of turn) or ignored
    target_spans, current = [], []
    for token, label in zip(ids, labels):
        assert label in (token, IGNORE)
        if label == token:
            current.append(token)
        elif current:
            target_spans.append(tok.decode(current))
            current = []
    if current:
        target_spans.append(tok.decode(current))
    assert target_spans == ["A dog runs in.<|im_end|>\n", "It sits.<|im_end|>\n"]
    assert ids.count(processor.video_token_id) == 5 and all(
        label == IGNORE for token, label in zip(ids, labels) if token == processor.video_token_id
    )


@pytest.mark.parametrize(
    ("conv", "media", "message"),
    [
        ([{"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "x"}], "video", "must contain"),
        ([{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "x"}], None, "must contain no"),
        ([{"from": "human", "value": "<video>\nQ"}], "video", "no assistant turn"),
        ([{"from": "robot", "value": "hi"}], None, "malformed turn"),
        ("not a list", None, "non-empty list"),
    ],
)
def test_bad_conversations_are_named(tiny, conv, media, message):
    _, processor = tiny
    with pytest.raises(DataError, match=message):
        encode_conversation(processor, conv, media, 4)


@pytest.fixture
def data_dir(tmp_path):
    make(tmp_path / "ok.mp4", num_frames=12, height=32, width=32)
    (tmp_path / "broken.mp4").write_text("not a video")
    ok = [{"from": "human", "value": "<video>\nQ?"}, {"from": "gpt", "value": "yes"}]
    samples = [
        {"id": "good", "video": "ok.mp4", "conversations": ok},
        {"id": "missing", "video": "nope.mp4", "conversations": ok},
        {"id": "unreadable", "video": "broken.mp4", "conversations": ok},
        {"id": "no-placeholder", "video": "ok.mp4", "conversations": [ok[0] | {"value": "Q?"}, ok[1]]},
        "not an object",
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(samples))
    return tmp_path


def test_bad_samples_are_skipped_and_counted(tiny, data_dir):
    _, processor = tiny
    samples = read_samples(data_dir / "train.json")
    ds = LlavaVideoDataset(samples, processor, data_dir, 4, ReductionSettings(), max_length=512)
    items = [ds[i] for i in range(len(ds))]
    bad = [it for it in items if isinstance(it, BadSample)]
    assert [b.index for b in bad] == [1, 2, 3, 4]
    assert "no such file" in bad[0].reason and "not a video" in bad[1].reason and "must contain" in bad[2].reason
    batch = StormCollator(processor.tokenizer.pad_token_id)(items)
    assert batch["input_ids"].shape[0] == 2 and len(batch["skipped"]) == 4
    assert batch["pixel_values_videos"].shape[:2] == (1, 4)  # only the video sample carries pixels
    # too long for the context
    short = LlavaVideoDataset(samples[:1], processor, data_dir, 4, ReductionSettings(), max_length=10)
    assert "exceed max_length" in short[0].reason
    strict = LlavaVideoDataset(samples, processor, data_dir, 4, ReductionSettings(), max_length=512, strict=True)
    with pytest.raises(DataError, match="missing"):
        strict[1]


def test_collator_pads_right_and_masks(tiny):
    _, processor = tiny
    pad = processor.tokenizer.pad_token_id
    items = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([IGNORE, 6, 7]),
         "pixel_values_videos": torch.zeros(2, 3, 32, 32), "pixel_values": None, "visual_tokens": 0},
        {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([8, 9]),
         "pixel_values_videos": torch.zeros(3, 3, 32, 32), "pixel_values": None, "visual_tokens": 0},
    ]  # fmt: skip
    batch = StormCollator(pad)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, pad]]
    # a sample's first label is never predicted (nothing comes before it)
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["use_cache"] is False and batch["counts"] == {"samples": 2, "tokens": 5, "visual": 0}
    assert isinstance(batch["pixel_values_videos"], list)  # different frame counts


def test_malformed_data_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_samples(path)
    path.write_text("{}")
    with pytest.raises(DataError, match="non-empty JSON list"):
        read_samples(path)


def test_recipes_load_override_and_reject_mistakes(tmp_path):
    recipe = load_recipe("configs/tiny-stage2.yaml", ["optim.lr=5e-4", "data.num_frames=8", "seed=3"])
    assert recipe.optim.lr == 5e-4 and recipe.data.num_frames == 8 and recipe.seed == 3 and recipe.stage == 2
    for name in ("tiny-stage1", "tiny-stage3", "7b-stage1", "7b-stage2", "7b-stage3"):
        loaded = load_recipe(f"configs/{name}.yaml")
        assert loaded.stage == int(name[-1])
    assert load_recipe("configs/demo.yaml").init.preset == "tiny"
    assert load_recipe("configs/7b-stage3.yaml").temporal_pool == 4
    with pytest.raises(RecipeError, match=r"unknown key optim\.lrr"):
        load_recipe("configs/tiny-stage2.yaml", ["optim.lrr=1"])
    with pytest.raises(RecipeError, match=r"optim\.lr must be float"):
        load_recipe("configs/tiny-stage2.yaml", ["optim.lr=fast"])
    with pytest.raises(RecipeError, match="stage must be"):
        load_recipe("configs/tiny-stage2.yaml", ["stage=4"])
    with pytest.raises(RecipeError, match="exactly one of"):
        load_recipe("configs/tiny-stage2.yaml", ["init.preset=tiny"])
    bad = tmp_path / "r.yaml"
    bad.write_text("stage: [")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize("turn", [{"from": ["human"], "value": "hi"}, {"from": {"a": 1}, "value": "hi"}, ["human"]])
def test_malformed_turns_are_a_data_error(tiny, turn):
    _, processor = tiny
    with pytest.raises(DataError, match="malformed turn"):
        encode_conversation(processor, [turn, {"from": "gpt", "value": "ok"}], None, 0)


# --- issue 20: <image> for videos, the shared sample store, length grouping, mixtures in training ---


def test_a_video_sample_may_mark_its_video_with_image(tiny):
    _, processor = tiny
    conv = [{"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "A dog runs in."}]
    ids, _ = encode_conversation(processor, conv, "video", visual_tokens=5)
    reference, _ = encode_conversation(
        processor, [conv[0] | {"value": "<video>\nWhat happens?"}, conv[1]], "video", visual_tokens=5
    )
    assert ids == reference and ids.count(processor.video_token_id) == 5
    with pytest.raises(DataError, match="must contain one <video>"):  # both placeholders: still refused
        encode_conversation(processor, [conv[0] | {"value": "<image><video>"}, conv[1]], "video", 5)
    with pytest.raises(DataError, match="must contain one <image>"):  # an image sample is not a video
        encode_conversation(processor, [conv[0] | {"value": "<video>"}, conv[1]], "image", 5)


def test_sample_store_round_trips_and_measures_text():
    samples = [{"id": "é", "video": "a.mp4", "conversations": [{"from": "human", "value": "abcd"}]}, "odd", {"x": 1}]
    store = SampleStore(samples)
    assert len(store) == 3 and [store[i] for i in range(3)] == samples and store[-1] == {"x": 1}
    assert store.text_chars.tolist() == [4, 0, 0] and store.media.tolist() == [2, 0, 0]


def test_length_grouped_batches_are_similar_seeded_and_resumable():
    lengths = [(i * 37) % 101 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=1, group_size=5, num_processes=2)
    order = sampler.order()
    assert sorted(order) == list(range(200))  # every sample once
    assert order == LengthGroupedSampler(lengths, 4, 1, 5, 2).order()  # fixed by the seed
    assert order != LengthGroupedSampler(lengths, 4, 2, 5, 2).order()
    sampler.start_epoch(1)
    assert sampler.order() != order  # another epoch, another order
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in zip(*[iter(order)] * 4)]
    shuffled = SeededSampler(200, 1).order()
    random_spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in zip(*[iter(shuffled)] * 4)]
    assert sum(spread) * 4 < sum(random_spread)
    # the steps' blocks (2 processes x 4) come from one window: a resumed run skips whole blocks
    fresh = LengthGroupedSampler(lengths, 4, 1, 5, 2)
    fresh.start_epoch(1)
    sampler.start_epoch(1, skip=3 * 8)
    assert list(sampler) == fresh.order()[24:] and len(sampler) == 200 - 24


def test_mixture_with_length_grouping_and_workers_resumes_exactly(data, tmp_path):
    """Decoding in 2 worker processes and a resumed run give the losses of one uninterrupted
    in-process run, step by step, with a two-source mixture batched by length."""
    from .conftest import whole_and_resumed

    mixture = tmp_path / "mix.yaml"
    mixture.write_text(
        f"seed: 5\nsources:\n"
        f"  - {{name: four, json: {data / 'train.json'}, media_root: {data}, num_frames: 4}}\n"
        f"  - {{name: two, json: {data / 'train.json'}, media_root: {data}, num_frames: 2, samples: 5}}\n"
    )
    common = [
        "data.json=''",
        f"data.mixture={mixture}",
        "data.group_by_length=true",
        "data.group_size=2",
        "save_every=1",
    ]
    a, b = whole_and_resumed(data, tmp_path, common, steps=6, cut_at=3)
    assert len(a) == len(b) == 6
    assert all(abs(x["loss"] - y["loss"]) <= 1e-6 for x, y in zip(a, b)), (a, b)


def test_recipe_data_sources_are_exclusive(tmp_path):
    with pytest.raises(RecipeError, match=r"exactly one of data\.json"):
        load_recipe(None, ["init.preset=tiny", "data.json=a.json", "data.mixture=m.yaml"])
    with pytest.raises(RecipeError, match=r"data\.group_size must be 1 to"):
        load_recipe(None, ["init.preset=tiny", "data.json=a.json", "data.group_size=0"])
