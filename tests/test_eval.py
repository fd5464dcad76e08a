"""Evaluation: benchmark layouts, lmms-eval prompts, answer parsing, accuracy, resume, sweeps."""

from __future__ import annotations

import json

import pytest

from storm_vlm.eval import load_benchmark, parse_letter, run_benchmark
from storm_vlm.eval import runner as runner_mod
from storm_vlm.eval.benchmarks import prompt_longvideobench, prompt_mvbench, prompt_videomme
from storm_vlm.eval.items import MCItem

from .media import make


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B", "B"),
        ("(C) the dog", "C"),
        ("D. It runs.", "D"),
        ("The answer is (A).", "A"),
        ("I think option B is right", "B"),
        ("A)", "A"),
        ("the red one", "C"),  # option text
        ("E", None),  # beyond the 4 options
        ("", None),
    ],
)
def test_parse_letter(output, expected):
    assert parse_letter(output, 4, ["blue", "green", "red", "yellow"]) == expected


def test_prompts_match_lmms_eval():
    item = MCItem("1", "t", "v.mp4", "What happened?", ["x", "y", "z"], "A")
    assert prompt_mvbench(item) == "Question:What happened?\nOption:\n(A) x\n(B) y\n(C) z\nOnly give the best option.\n"
    assert prompt_longvideobench(item) == (
        "What happened?\nA. x\nB. y\nC. z\nAnswer with the option's letter from the given choices directly.\n"
    )
    vm = MCItem(
        "1", "t", "v.mp4", "Q?", ["Apples.", "Pears."], "A", extra={"options_as_given": ["A. Apples.", "B. Pears."]}
    )
    assert prompt_videomme(vm).endswith(
        "Q?\nA. Apples.\nB. Pears.\n\nAnswer with the option's letter from the given choices directly."
    )


@pytest.fixture(scope="module")
def mvbench_root(tmp_path_factory):
    """A small MVBench layout: two tasks, real mp4 files, one missing video, one malformed entry."""
    root = tmp_path_factory.mktemp("MVBench")
    (root / "json").mkdir()
    star = root / "star" / "Charades_v1_480"
    clevrer = root / "clevrer" / "video_validation"
    star.mkdir(parents=True)
    clevrer.mkdir(parents=True)
    for i in range(3):
        make(star / f"s{i}.mp4", num_frames=20, height=32, width=32, fps=10)
        make(clevrer / f"c{i}.mp4", num_frames=12, height=32, width=32)
    seq = [
        {"video": f"s{i}.mp4", "question": f"What happened first in {i}?", "candidates": ["open", "close", "sit"],
         "answer": ["open", "close", "sit"][i], "start": 0.2, "end": 1.5}
        for i in range(3)
    ]  # fmt: skip
    seq.append({"video": "s0.mp4", "question": "broken", "candidates": ["a", "b"], "answer": "c"})  # not an option
    direction = [
        {"video": f"c{i}.mp4", "question": "Which way?", "candidates": ["left", "right", "up", "down"],
         "answer": ["left", "right", "up", "down"][i]}
        for i in range(3)
    ]  # fmt: skip
    direction.append(
        {"video": "missing.mp4", "question": "Which way?", "candidates": ["left", "right"], "answer": "left"}
    )
    (root / "json" / "action_sequence.json").write_text(json.dumps(seq))
    (root / "json" / "moving_direction.json").write_text(json.dumps(direction))
    return root


def test_mvbench_layout(mvbench_root):
    _, items, problems = load_benchmark("mvbench", mvbench_root)
    assert len(items) == 7 and len(problems) == 1 and "not one of the options" in problems[0]
    first = items[0]
    assert first.task == "action_sequence" and first.answer == "A" and (first.start, first.end) == (0.2, 1.5)
    assert first.video.endswith("star/Charades_v1_480/s0.mp4")
    assert [it.answer for it in items if it.task == "moving_direction"] == ["A", "B", "C", "A"]


def test_per_task_accuracy_against_hand_labels(mvbench_root, tmp_path, monkeypatch, tiny):
    model, processor = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    # hand-labelled predictions: action_sequence 2/3 right, moving_direction 1/3 right
    hand = {"action_sequence/0": "A", "action_sequence/1": "B", "action_sequence/2": "A",
            "moving_direction/0": "A", "moving_direction/1": "C", "moving_direction/2": "D"}  # fmt: skip
    real_predict, calls = runner_mod._predict, []

    def predict(model, processor, item, prompt, settings):
        row = real_predict(model, processor, item, prompt, settings)  # real decode + model call
        calls.append(item.id)
        row["parsed"] = hand[item.id]
        row["correct"] = hand[item.id] == item.answer
        return row

    monkeypatch.setattr(runner_mod, "_predict", predict)
    out = tmp_path / "eval"
    results = run_benchmark(model_dir, "mvbench", mvbench_root, [4], out=out, device="cpu")[4]
    assert results["per_task"]["action_sequence"]["accuracy"] == pytest.approx(2 / 3)
    assert results["per_task"]["moving_direction"]["accuracy"] == pytest.approx(1 / 3)
    assert results["per_task"]["moving_direction"]["errors"] == 1  # the missing video: counted, not fatal
    assert results["overall"]["accuracy"] == pytest.approx(3 / 6) and results["overall"]["errors"] == 1
    assert results["mean_visual_tokens"] == 4 * 16 and results["load_problems"]
    saved = json.loads((out / "frames-4" / "results.json").read_text())
    assert len(saved["predictions"]) == 7 and all("raw_output" in p for p in saved["predictions"] if "error" not in p)
    assert "| action_sequence | 66.7 |" in (out / "frames-4" / "summary.md").read_text()
    # a rerun resumes: only the errored question is tried again
    calls.clear()
    again = run_benchmark(model_dir, "mvbench", mvbench_root, [4], out=out, device="cpu")[4]
    assert calls == [] and again["overall"] == results["overall"]


def test_frame_sweep_writes_table_and_plot(mvbench_root, tmp_path, tiny):
    model, processor = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    out = tmp_path / "sweep"
    results = run_benchmark(
        model_dir, "mvbench", mvbench_root, [8, 16, 32], out=out, tasks=["moving_direction"], scoring="loglik"
    )
    assert sorted(results) == [8, 16, 32]
    assert results[8]["mean_frames"] == 8 and results[32]["mean_frames"] == 12  # the clips have 12 frames
    table = (out / "sweep.md").read_text()
    assert "8 frames" in table and "32 frames" in table
    assert (out / "sweep.png").stat().st_size > 1000


def test_other_layouts(tmp_path):
    make(tmp_path / "v.mp4", num_frames=8, height=32, width=32)
    # MLVU
    (tmp_path / "mlvu" / "json").mkdir(parents=True)
    (tmp_path / "mlvu" / "video" / "4_count").mkdir(parents=True)
    (tmp_path / "mlvu" / "video" / "4_count" / "v.mp4").write_bytes((tmp_path / "v.mp4").read_bytes())
    mlvu = [{"video": "v.mp4", "duration": 400.0, "question": "How many?", "candidates": ["1", "2", "3", "4"],
             "answer": "3", "question_type": "count"}]  # fmt: skip
    (tmp_path / "mlvu" / "json" / "4_count.json").write_text(json.dumps(mlvu))
    _, items, _ = load_benchmark("mlvu", tmp_path / "mlvu")
    assert items[0].answer == "C" and items[0].task == "count" and items[0].duration_group == "3-10 min"
    # LongVideoBench
    (tmp_path / "lvb" / "videos").mkdir(parents=True)
    good = {"id": "q1", "video_path": "v.mp4", "duration": 30, "duration_group": 60, "question": "Q?",
            "candidates": ["a", "b", "c"], "correct_choice": 2, "question_category": "E2O"}  # fmt: skip
    bad = {"id": "bad", "video_path": "v.mp4", "question": "Q?", "candidates": ["a"], "correct_choice": 0}
    lvb = [good, bad]
    (tmp_path / "lvb" / "lvb_val.json").write_text(json.dumps(lvb))
    _, items, problems = load_benchmark("longvideobench", tmp_path / "lvb")
    assert items[0].answer == "C" and items[0].duration_group == "60s" and len(problems) == 1
    # Video-MME (JSON export of the parquet)
    (tmp_path / "vmme").mkdir()
    vm = [{"video_id": "001", "duration": "short", "videoID": "abc", "question_id": "001-1", "task_type": "Counting",
           "question": "How many?", "options": ["A. 1", "B. 2", "C. 3", "D. 4"], "answer": "B"}]  # fmt: skip
    (tmp_path / "vmme" / "videomme.json").write_text(json.dumps(vm))
    _, items, _ = load_benchmark("videomme", tmp_path / "vmme")
    assert items[0].options == ["1", "2", "3", "4"] and items[0].duration_group == "short"
    # mc-json: answers as letter, index or text
    mc = [{"video": "v.mp4", "question": "Q", "options": ["x", "y"], "answer": a} for a in ("B", 1, "y")]
    (tmp_path / "mc.json").write_text(json.dumps(mc))
    _, items, _ = load_benchmark("mc-json", tmp_path / "mc.json")
    assert [it.answer for it in items] == ["B", "B", "B"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("imagenet", tmp_path)


class StandInInstance:
    """Mirrors lmms_eval.api.instance.Instance: the fields and ``.args`` the plugin reads."""

    def __init__(self, request_type, arguments, idx=0, metadata=None):
        self.request_type, self.arguments, self.idx = request_type, arguments, idx
        self.metadata = metadata or {"task": arguments[-2], "doc_id": arguments[-3], "repeats": 1}

    @property
    def args(self):
        return self.arguments


def test_lmms_eval_plugin_with_stand_in_instances(tiny, tmp_path):
    from storm_vlm.eval.lmms_eval_plugin import StormLmms

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
    ((logprob, greedy),) = plugin.loglikelihood([ll])
    assert logprob < 0 and isinstance(greedy, bool)
    with pytest.raises(NotImplementedError):
        plugin.generate_until_multi_round([gen])
    assert plugin.settings.temporal_pool == 4


def test_entry_point_is_declared():
    import tomllib

    meta = tomllib.loads(open("pyproject.toml").read())
    assert meta["project"]["entry-points"]["lmms_eval.models"]["storm_vlm"] == (
        "storm_vlm.eval.lmms_eval_plugin:manifest"
    )


def test_sharded_eval_with_accelerate(mvbench_root, tmp_path, tiny):
    import subprocess
    import sys

    model, processor = tiny
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "storm_vlm.cli", "eval", str(tmp_path / "m"),
           "--benchmark", "mvbench", "--data-root", str(mvbench_root), "--frames", "4", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "frames-4" / "predictions.rank0.jsonl").is_file()
    assert (out / "frames-4" / "predictions.rank1.jsonl").is_file()
    results = json.loads((out / "frames-4" / "results.json").read_text())
    ids = [p["id"] for p in results["predictions"]]
    assert len(ids) == len(set(ids)) == 7  # each question once
