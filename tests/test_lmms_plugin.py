"""The lmms-eval plugin: batching against one request at a time, options scored together against one
forward per option, the chat (doc_to_messages) model against the simple one, two processes against
one, and the plugin's answers and scores against storm-vlm's own eval runner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storm_vlm.eval.lmms_eval_plugin import StormLmms, StormLmmsChat
from storm_vlm.inference import left_pad, until_stop
from storm_vlm.limits import MAX_EVAL_BATCH_SIZE

from .lmms_two_rank import (
    GEN_KWARGS,
    OPTIONS,
    StandInInstance,
    choice_requests,
    generate_requests,
    register_docs,
    run_shard,
    to_messages,
    to_visual,
)
from .media import make

QUESTIONS = [
    "Which colour flashes first?",
    "How many times does the bar cross the frame, and which way does it go at the end of the clip?",
    "Q?",
    "What happens after the red bar appears on the left side?",
    "Count the flashes.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny preset with its weights perturbed (seeded): a freshly initialised tiny model answers
    every prompt with one repeated token, which would hide padding errors."""
    from storm_vlm.presets import build_tiny

    torch.manual_seed(0)
    model, processor = build_tiny()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.3)
    path = tmp_path_factory.mktemp("lmms-model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    """Five documents: clips of 3 to 12 frames (fewer than num_frames=8 too, so the visual token
    counts differ) and questions of different lengths."""
    root = tmp_path_factory.mktemp("lmms-videos")
    out = []
    for i, (frames, question) in enumerate(zip((12, 5, 8, 3, 10), QUESTIONS)):
        video = make(root / f"v{i}.mp4", num_frames=frames, height=32, width=32)
        out.append({"video": str(video), "q": question, "answer": "B"})
    return out


@pytest.fixture(scope="module")
def plugin(model_dir) -> StormLmms:
    return StormLmms(pretrained=str(model_dir), num_frames="8", device="cpu")


def _tokens(plugin: StormLmms, requests, batch_size: int) -> list[list[int]]:
    """Each request's answer ids (cut after the first stop token, as the answers are), ``batch_size``
    prompts per generate call."""
    from storm_vlm.eval.lmms_eval_plugin import _Generation

    prepared = [plugin._prepare(r.args[0], plugin._visuals(*r.args[2:])) for r in requests]
    gen = _Generation.read(requests[0].args[1], plugin.max_new_tokens)
    out = []
    for lo in range(0, len(prepared), batch_size):
        for ids, limit in plugin._generate_ids(prepared[lo : lo + batch_size], gen):
            out.append(until_stop(plugin.model, ids[:limit]))
    return out


def test_left_pad_puts_each_prompt_at_the_end():
    a, b = torch.ones(1, 2, 3), torch.full((1, 4, 3), 2.0)
    embeds, mask = left_pad([a, b], [torch.ones(1, 2, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)])
    assert embeds.shape == (2, 4, 3) and mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert embeds[0, :2].abs().sum() == 0 and torch.equal(embeds[0, 2:], a[0]) and torch.equal(embeds[1], b[0])


def test_batched_generation_equals_one_request_at_a_time(plugin, docs):
    """batch_size 3 (left-padded prompt embeddings, one generate call per 3) against batch_size 1 (each
    prompt alone, unpadded: the reference), token for token; a stop token that some rows reach early
    and others never exercises the rows a batch keeps padding after they finish."""
    plugin.task_dict = register_docs(docs)
    requests = generate_requests(list(range(len(docs))))
    saved_eos = plugin.model.generation_config.eos_token_id
    try:
        plugin.batch_size_per_gpu = 1
        free = _tokens(plugin, requests, 1)
        stop = free[0][2]  # a token the first answer emits third: some rows now stop early
        plugin.model.generation_config.eos_token_id = [*plugin.model.generation_config.eos_token_id, stop]
        alone = _tokens(plugin, requests, 1)
        together = _tokens(plugin, requests, 3)
        assert together == alone
        lengths = {len(t) for t in alone}
        assert len(lengths) > 1 and GEN_KWARGS["max_new_tokens"] in lengths  # early stops and full rows
        assert len({tuple(t) for t in alone}) == len(alone)  # the answers differ: the test can see errors
        texts_alone = plugin.generate_until(requests)
        plugin.batch_size_per_gpu = 3
        texts_together = plugin.generate_until(requests)
        plugin.batch_size_per_gpu = len(requests)
        assert plugin.generate_until(requests) == texts_together == texts_alone
        assert texts_alone == [plugin._answer(torch.tensor(t), 99, ["\n\n"]) for t in alone]
    finally:
        plugin.model.generation_config.eos_token_id = saved_eos
        plugin.batch_size_per_gpu = 1


def test_batches_keep_generation_kwargs_apart_and_answers_in_order(plugin, docs):
    """Requests with other generation kwargs never share a call; answers come back in request order."""
    plugin.task_dict = register_docs(docs)
    requests = generate_requests(list(range(len(docs))))
    short = StandInInstance("generate_until", (docs[1]["q"], {"max_new_tokens": 2}, to_visual, 1, "t", "test"))
    mixed = [requests[0], short, *requests[1:]]
    chunks = StormLmms._chunks(plugin, mixed, lambda r: r.args[1])
    assert all(len({json.dumps(mixed[i].args[1], sort_keys=True) for i in c}) == 1 for c in chunks)
    plugin.batch_size_per_gpu = 4
    try:
        answers = plugin.generate_until(mixed)
    finally:
        plugin.batch_size_per_gpu = 1
    assert answers == [plugin.generate_until([r])[0] for r in mixed]
    assert [len(c) for c in StormLmms._chunks(plugin, mixed, lambda r: r.args[1])] == [1] * 6  # batch_size 1


def test_options_scored_together_equal_one_forward_per_option(plugin, docs):
    """Multiple-choice options (one prefill, the options batched through option_logprobs), a
    loglikelihood task's target and text-only requests (an empty context too) against one forward of
    prompt + continuation each, scores and greedy flags; one option is the greedy answer itself."""
    from storm_vlm.inference import prepare_inputs

    plugin.task_dict = register_docs(docs)
    prepared = prepare_inputs(plugin.model, plugin.processor, plugin._clip(docs[0]["video"]), docs[0]["q"],
                              plugin.settings)  # fmt: skip
    with torch.inference_mode():
        greedy_ids = plugin.model.generate(inputs_embeds=prepared.inputs_embeds, attention_mask=prepared.attention_mask,
                                           max_new_tokens=3, do_sample=False)[0].tolist()  # fmt: skip
    tokenizer = plugin.processor.tokenizer
    greedy_text = next(  # the longest greedy prefix that tokenizes back to itself
        text
        for n in (3, 2, 1)
        if tokenizer(text := tokenizer.decode(greedy_ids[:n]), add_special_tokens=False)["input_ids"] == greedy_ids[:n]
    )
    requests = choice_requests([0, 3])
    requests.append(StandInInstance("loglikelihood", (docs[0]["q"], greedy_text, to_visual, 0, "t", "test")))
    requests.append(StandInInstance("loglikelihood", (docs[2]["q"], lambda d: d["answer"], to_visual, 2, "t", "test")))
    meta = {"task": "t", "doc_id": 0, "repeats": 1}
    requests += [StandInInstance("loglikelihood", ("", f" {o}"), metadata=meta) for o in OPTIONS]
    requests.append(StandInInstance("loglikelihood", ("The answer is", " B"), metadata=meta))
    batched = plugin.loglikelihood(requests)

    reference = []
    for request in requests:
        if len(request.args) == 2:
            context, continuation = request.args
            ids = tokenizer(context, return_tensors="pt")["input_ids"]
            ids = ids if ids.shape[1] else torch.tensor([[tokenizer.eos_token_id]])
            with torch.inference_mode():
                embeds = plugin.model.get_input_embeddings()(ids)
            reference.append(plugin._score(embeds, torch.ones_like(ids), continuation))
            continue
        context, target, _, doc_id, _, _ = request.args
        doc = docs[doc_id]
        p = prepare_inputs(plugin.model, plugin.processor, plugin._clip(doc["video"]), context, plugin.settings)
        reference.append(plugin._score(p.inputs_embeds, p.attention_mask, target(doc) if callable(target) else target))
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in reference], abs=1e-4)
    assert [g for _, g in batched] == [g for _, g in reference]
    assert batched[len(OPTIONS) * 2] == (pytest.approx(reference[len(OPTIONS) * 2][0], abs=1e-4), True)
    assert all(loss > 0 for loss, _ in batched)  # losses: multiple_choice picks the lowest


def test_an_empty_continuation_scores_log_one(plugin, docs):
    plugin.task_dict = register_docs(docs)
    request = StandInInstance("loglikelihood", (docs[0]["q"], "", to_visual, 0, "t", "test"))
    assert plugin.loglikelihood([request]) == [(0.0, True)]


@pytest.fixture(scope="module")
def chat(model_dir) -> StormLmmsChat:
    return StormLmmsChat(pretrained=str(model_dir), num_frames="8", device="cpu", batch_size="3")


def _chat_requests(doc_ids: list[int]) -> list[StandInInstance]:
    """A messages task's requests: ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)``."""
    from .lmms_two_rank import _docs_of

    docs = _docs_of("t", "test")
    return [
        StandInInstance("generate_until", (docs[i]["q"], to_messages, dict(GEN_KWARGS), i, "t", "test"))
        for i in doc_ids
    ]


def test_chat_messages_answer_as_the_simple_model_does(chat, plugin, docs):
    """The chat model, batched through the processor (3 per call), on messages made as lmms-eval makes
    them from doc_to_visual + doc_to_text, against the simple model one request at a time."""
    chat.task_dict = plugin.task_dict = register_docs(docs)
    ids = list(range(len(docs)))
    assert chat.generate_until(_chat_requests(ids)) == plugin.generate_until(generate_requests(ids))
    chat.batch_size_per_gpu = 1
    try:
        assert chat.generate_until(_chat_requests(ids)) == plugin.generate_until(generate_requests(ids))
    finally:
        chat.batch_size_per_gpu = 3


def test_chat_messages_with_a_system_turn_images_and_a_time_window(chat, docs):
    """What tasks written with doc_to_messages send: a system turn, an image part (a PIL image), a
    video part with start/end times (a dict visual with video_start / video_end), text-only turns."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    window = {"video": docs[0]["video"], "video_start": 0.0, "video_end": 0.2}  # 25 fps: 5 frames
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "url": image},
                {"type": "video", "url": window},
                {"type": "text", "text": "Same scene?"},
            ],
        },
    ]
    text, videos, images = chat.render(messages)
    assert "Answer briefly." in text and text.index("<image>") < text.index("<video>") < text.index("Same scene?")
    assert [v.shape[0] for v in videos] == [5] and [i.shape for i in images] == [(32, 32, 3)]
    chat.task_dict = {"m": {"test": [{"messages": messages}, {"messages": messages[1:]}]}}
    requests = [StandInInstance("generate_until", ("", lambda d: d["messages"], {"max_new_tokens": 3}, i, "m", "test"))
                for i in (0, 1)]  # fmt: skip
    together = chat.generate_until(requests)
    assert together == [chat.generate_until([r])[0] for r in requests]
    with pytest.raises(ValueError, match="audio"):
        chat.render([{"role": "user", "content": [{"type": "audio", "url": "a.wav"}]}])


def test_answers_and_scores_equal_storm_vlm_eval(plugin, docs):
    """The same model, questions, frames and settings through storm-vlm's own eval (runner._predict,
    generate and loglik scoring) and through the plugin (batched): the same answers, the same scores
    (the plugin's in lmms-eval's form, the mean loss over the option's tokens)."""
    from storm_vlm.eval.benchmarks import prompt_mvbench
    from storm_vlm.eval.items import MCItem
    from storm_vlm.eval.runner import EvalSettings, _predict

    items = [MCItem(str(i), "t", d["video"], d["q"], list(OPTIONS), "B") for i, d in enumerate(docs)]
    prompts = [prompt_mvbench(item) for item in items]
    lmms_docs = [{"video": item.video, "q": prompt} for item, prompt in zip(items, prompts)]
    plugin.task_dict = register_docs(lmms_docs)
    ids = list(range(len(items)))
    gen = [StandInInstance("generate_until", (p, {"max_new_tokens": 6}, to_visual, i, "t", "test"))
           for i, p in enumerate(prompts)]  # fmt: skip
    plugin.batch_size_per_gpu = 3
    try:
        answers = plugin.generate_until(gen)
        scores = plugin.loglikelihood(choice_requests(ids, delimiter=""))  # storm-vlm scores the bare option text
    finally:
        plugin.batch_size_per_gpu = 1
    for setting, key in (("generate", "raw_output"), ("loglik", "scores")):
        settings = EvalSettings(num_frames=8, reduction=plugin.settings, scoring=setting, max_new_tokens=6)
        rows = [_predict(plugin.model, plugin.processor, item, p, settings) for item, p in zip(items, prompts)]
        if key == "raw_output":
            assert answers == [row["raw_output"] for row in rows]
        else:  # lmms-eval's loss is minus storm-vlm's summed log-probability over the option's tokens
            tokens = [len(plugin.processor.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in OPTIONS]
            for k, row in zip(ids, rows):
                losses = [loss for loss, _ in scores[k * len(OPTIONS) : (k + 1) * len(OPTIONS)]]
                assert losses == [-s / n for s, n in zip(row["scores"], tokens)]  # the same numbers: exact


# -- moved from tests/test_eval.py (the plugin on the shared tiny model) -----------------------------
def test_lmms_eval_plugin_with_stand_in_instances(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    make(tmp_path / "v.mp4", num_frames=10, height=32, width=32)
    plugin = StormLmms(pretrained=str(tmp_path / "m"), num_frames="8", temporal_pool="4", device="cpu")
    doc = {"video": str(tmp_path / "v.mp4"), "answer": "B"}
    plugin.task_dict = {"videomme": {"test": [doc]}}
    to_visual = lambda d: [d["video"]]  # noqa: E731 - lmms-eval passes a function of the doc
    gen_kwargs = {"max_new_tokens": 3, "until": ["\n\n"]}
    gen = StandInInstance("generate_until", ("Which? A. x B. y", gen_kwargs, to_visual, 0, "videomme", "test"))
    (text,) = plugin.generate_until([gen])
    assert isinstance(text, str)
    ll = StandInInstance("loglikelihood", ("Which? A. x B. y", lambda d: d["answer"], to_visual, 0, "videomme", "test"))
    ((loss, greedy),) = plugin.loglikelihood([ll])
    assert loss > 0 and isinstance(greedy, bool)
    with pytest.raises(NotImplementedError):
        plugin.generate_until_multi_round([gen])
    assert plugin.settings.temporal_pool == 4


def test_entry_point_is_declared():
    import tomllib

    meta = tomllib.loads(open("pyproject.toml").read())
    assert meta["project"]["entry-points"]["lmms_eval.models"]["storm_vlm"] == (
        "storm_vlm.eval.lmms_eval_plugin:manifest"
    )


def test_lmms_eval_plugin_frames_text_only_order_and_ranks(tiny, tmp_path):
    """A list of PIL frames is one clip; two-argument loglikelihood scores text alone; results come back
    in request order although they run longest-first; rank, world size and device are accelerate's."""
    from accelerate import PartialState

    from storm_vlm.inference import prepare_inputs

    model, processor = tiny
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    plugin = StormLmms(pretrained=str(tmp_path / "m"), num_frames="4", device="cpu")
    state = PartialState()
    assert (plugin.rank, plugin.world_size) == (state.process_index, state.num_processes)
    assert plugin.device == torch.device("cpu") and plugin.batch_size == 1
    frames = [Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)) for i in range(10)]
    clip = plugin._clip(frames)
    assert len(clip) == 4 and not clip.is_image  # 10 frames sampled uniformly to num_frames
    assert [int(clip.frames[i, 0, 0, 0]) for i in range(4)] == [0, 60, 120, 180]
    assert plugin._clip(frames[:1]).is_image
    plugin.task_dict = {"t": {"test": [{"frames": frames, "answer": "B"}]}}
    to_visual = lambda d: d["frames"]  # noqa: E731
    video_ll = StandInInstance("loglikelihood", ("Which? A or B", lambda d: d["answer"], to_visual, 0, "t", "test"))
    text_ll = StandInInstance(
        "loglikelihood", ("The answer is", " B"), metadata={"task": "t", "doc_id": 0, "repeats": 1}
    )
    (video_score, _), (text_score, _) = plugin.loglikelihood([video_ll, text_ll])
    prepared = prepare_inputs(model, processor, clip, "Which? A or B", plugin.settings)
    assert video_score == pytest.approx(plugin._score(prepared.inputs_embeds, prepared.attention_mask, "B")[0])
    ids = processor.tokenizer("The answer is", return_tensors="pt")
    embeds = model.get_input_embeddings()(ids["input_ids"])
    assert text_score == pytest.approx(plugin._score(embeds, ids["attention_mask"], " B")[0]) and text_score > 0
    short = StandInInstance("generate_until", ("Q?", {"max_new_tokens": 2}, to_visual, 0, "t", "test"))
    long = StandInInstance("generate_until", ("A much longer question?" * 3, {"max_new_tokens": 2}, to_visual, 0, "t",
                                              "test"))  # fmt: skip
    both = plugin.generate_until([short, long])
    assert both == [plugin.generate_until([short])[0], plugin.generate_until([long])[0]]


def test_batch_size_bounds(model_dir):
    for bad in ("auto", "0", str(MAX_EVAL_BATCH_SIZE + 1), "2.5"):
        with pytest.raises(ValueError, match="batch_size"):
            StormLmms(pretrained=str(model_dir), batch_size=bad)
    with pytest.raises(ValueError, match="num_frames"):
        StormLmms(pretrained=str(model_dir), num_frames="0")


def test_manifest_registers_the_simple_and_the_chat_model(monkeypatch):
    """``manifest()`` as lmms-eval's registry reads it (its ModelManifest stood in: lmms-eval is not a
    test dependency); each class path imports, with the ``is_simple`` its type asks for."""
    import importlib
    import types
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class ModelManifest:  # lmms_eval.models.registry_v2.ModelManifest's fields
        model_id: str
        simple_class_path: str | None = None
        chat_class_path: str | None = None
        aliases: tuple[str, ...] = ()

    registry = types.ModuleType("lmms_eval.models.registry_v2")
    registry.ModelManifest = ModelManifest  # type: ignore[attr-defined]
    for name in ("lmms_eval", "lmms_eval.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "lmms_eval.models.registry_v2", registry)
    from storm_vlm.eval.lmms_eval_plugin import manifest

    found = {}
    for m in manifest():
        for kind, path in (("simple", m.simple_class_path), ("chat", m.chat_class_path)):
            if path:
                module, name = path.rsplit(".", 1)
                found[(m.model_id, kind)] = getattr(importlib.import_module(module), name)
    assert found == {("storm_vlm", "simple"): StormLmms, ("storm_vlm_chat", "chat"): StormLmmsChat}
    assert StormLmms.is_simple and not StormLmmsChat.is_simple


def test_two_processes_answer_as_one(model_dir, docs, plugin, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` (gloo on a CPU machine): each rank takes
    the docs lmms-eval's evaluator gives it (rank, rank + 2, ...), batch_size 2; the union of both
    ranks' answers and option scores equals one process's."""
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(Path(__file__).with_name("lmms_two_rank.py")), str(model_dir), str(tmp_path / "docs.json"),
           str(out), "2"]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    assert sorted(ranks[0]["answers"]) == ["0", "2", "4"] and sorted(ranks[1]["answers"]) == ["1", "3"]
    union = {**ranks[0]["answers"], **ranks[1]["answers"]}
    single = run_shard(plugin, docs, rank=0, world=1)
    assert {k: v["text"] for k, v in union.items()} == {k: v["text"] for k, v in single.items()}
    assert {k: v["greedy"] for k, v in union.items()} == {k: v["greedy"] for k, v in single.items()}
    for k, v in single.items():
        assert union[k]["scores"] == pytest.approx(v["scores"], abs=1e-5)
    print(f"two processes: {elapsed:.1f} s")
