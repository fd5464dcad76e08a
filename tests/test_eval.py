"""Evaluation: benchmark layouts, lmms-eval prompts, answer parsing, accuracy, resume, sweeps."""

from __future__ import annotations

import json

import pytest
import torch

from storm_vlm.eval import load_benchmark, parse_letter, run_benchmark
from storm_vlm.eval import runner as runner_mod
from storm_vlm.eval.benchmarks import prompt_longvideobench, prompt_mvbench, prompt_videomme
from storm_vlm.eval.items import MCItem
from storm_vlm.presets import build_tiny, spread_llm_weights

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


def test_mvbench_leaves_empty_answers_out_as_lmms_eval_does():
    from storm_vlm.eval.items import MCItem, counts_in_accuracy

    mv = MCItem("t/0", "t", "v.mp4", "q?", ["x", "y"], "A", benchmark="mvbench")
    other = MCItem("t/1", "t", "v.mp4", "q?", ["x", "y"], "A", benchmark="videomme")
    assert not counts_in_accuracy(mv, "  \n") and counts_in_accuracy(mv, "(A)") and counts_in_accuracy(other, "")
    rows = [{"parsed": "A", "correct": True, "counted": True}, {"parsed": None, "correct": False, "counted": False},
            {"parsed": "B", "correct": False, "counted": True}, {"error": "no video", "parsed": None}]  # fmt: skip
    acc = runner_mod._accuracy(rows)
    assert (acc["accuracy"], acc["left_out"], acc["unparsed"]) == (1 / 2, 1, 1)
    assert acc["accuracy_with_errors_wrong"] == pytest.approx(1 / 3)  # the error row counts wrong, the empty one not


def test_per_task_accuracy_against_hand_labels(mvbench_root, tmp_path, monkeypatch, tiny):
    model, processor = tiny
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    # hand-labelled predictions: action_sequence 2/3 right, moving_direction 1/3 right
    hand = {"action_sequence/0": "A", "action_sequence/1": "B", "action_sequence/2": "A",
            "moving_direction/0": "A", "moving_direction/1": "C", "moving_direction/2": "D"}  # fmt: skip
    real_predict, calls = runner_mod._predict, []

    def predict(model, processor, item, prompt, settings, sampled=None):
        row = real_predict(model, processor, item, prompt, settings, sampled)  # real decode + model call
        calls.append(item.id)
        row["parsed"] = hand[item.id]
        row["correct"] = hand[item.id] == item.answer
        row["counted"] = True  # a hand-labelled answer is not empty (MVBench leaves empty ones out)
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
    # Video-MME as published: videomme/test-00000-of-00001.parquet (the storm-vlm[benchmarks] extra reads it)
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    published = tmp_path / "vmme-parquet" / "videomme" / "test-00000-of-00001.parquet"
    published.parent.mkdir(parents=True)
    pq.write_table(pyarrow.Table.from_pylist(vm), published)
    _, from_parquet, _ = load_benchmark("videomme", tmp_path / "vmme-parquet")
    assert [(it.id, it.options, it.answer, it.task) for it in from_parquet] == [("001-1", ["1", "2", "3", "4"], "B",
                                                                                "Counting")]  # fmt: skip
    # mc-json: answers as letter, index or text
    mc = [{"video": "v.mp4", "question": "Q", "options": ["x", "y"], "answer": a} for a in ("B", 1, "y")]
    (tmp_path / "mc.json").write_text(json.dumps(mc))
    _, items, _ = load_benchmark("mc-json", tmp_path / "mc.json")
    assert [it.answer for it in items] == ["B", "B", "B"]
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("imagenet", tmp_path)


def test_malformed_fields_are_one_line_naming_file_index_and_field(tmp_path):
    make(tmp_path / "v.mp4", num_frames=8, height=32, width=32)
    good = {"video": "v.mp4", "question": "Q", "options": ["x", "y"], "answer": "A"}
    cases = [
        ({"start": "abc"}, "'start' must be a number of seconds, got 'abc'"),
        ({"start": -1}, "'start' must be a number of seconds (>= 0), got -1"),
        ({"end": float("nan")}, "'end' must be a number of seconds (>= 0), got nan"),
        ({"start": 2, "end": 1}, "'end' (1.0) must be after 'start' (2.0)"),
        ({"duration_group": ["short"]}, "'duration_group' must be a string, got ['short']"),
        ({"options": "xy"}, "'options' must be a list of strings, got 'xy'"),
        ({"answer": 5}, "'answer' must be an option index from 0 to 1, got 5"),
        ({"answer": True}, "'answer' must be a string, got True"),
        ({"video": 3.5}, "'video' must be a file path (a string), got 3.5"),
    ]
    entries = [good, *({**good, **change} for change, _ in cases), "a string", {"video": "v.mp4"}]
    path = tmp_path / "mc.json"
    path.write_text(json.dumps(entries))
    _, items, problems = load_benchmark("mc-json", path)
    assert len(items) == 1 and len(problems) == len(cases) + 2
    for i, (_, message) in enumerate(cases, start=1):
        assert problems[i - 1].startswith(f"{path}[{i}]: ") and message in problems[i - 1], problems[i - 1]
    assert problems[-2] == f"{path}[{len(cases) + 1}]: the entry is a JSON str, not an object"
    assert problems[-1] == f"{path}[{len(cases) + 2}]: missing field 'options'"
    assert all("\n" not in p for p in problems)
    # nothing usable: the error names the first problem
    path.write_text(json.dumps([{**good, "start": "soon"}]))
    with pytest.raises(ValueError, match=r"1 malformed; the first: .*mc\.json\[0\]: 'start' must be a number"):
        load_benchmark("mc-json", path)
    with pytest.raises(ValueError, match="item q: start must be a number of seconds"):
        MCItem("q", "t", "v.mp4", "Q", ["a", "b"], "A", start="abc")  # type: ignore[arg-type]


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


# -- the Mamba-usage diagnostic: every question also scored with the scan cut at frame boundaries ------------


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A synthetic suite, one question per task (6), 8-frame clips."""
    from storm_vlm.synth import make_suite

    root = tmp_path_factory.mktemp("synth")
    make_suite(root, split="test", num_samples=6, num_frames=8)
    return root


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    model, processor = tiny
    path = tmp_path_factory.mktemp("tiny-storm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _rows_usage(rows):
    """What the usage summary must say, from the rows directly."""
    return {
        "answered": len(rows),
        "correct": sum(r["correct"] for r in rows),
        "correct_cut": sum(r["correct_cut"] for r in rows),
        "changed": sum(r["parsed"] != r["parsed_cut"] for r in rows),
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "accuracy_cut": sum(r["correct_cut"] for r in rows) / len(rows),
        "changed_fraction": sum(r["parsed"] != r["parsed_cut"] for r in rows) / len(rows),
    }


def test_scan_cut_scores_every_question_twice(synth_root, tiny_dir, tiny, tmp_path):
    from storm_vlm.eval import mamba_usage
    from storm_vlm.eval.runner import EvalSettings

    kw = dict(out=None, device="cpu", scoring="loglik")
    plain = run_benchmark(tiny_dir, "synthetic", synth_root, [4], **{**kw, "out": tmp_path / "plain"})[4]
    cut = run_benchmark(tiny_dir, "synthetic", synth_root, [4], **{**kw, "out": tmp_path / "cut"}, scan_cut=True)[4]
    assert "mamba_usage" not in plain and not plain["config"]["scan_cut"] and cut["config"]["scan_cut"]
    rows = cut["predictions"]
    assert len(rows) == 6 and all("error" not in r for r in rows)
    # the normal pass is exactly a run without the option: same predictions, same accuracies
    by_id = {r["id"]: r for r in plain["predictions"]}
    for row in rows:
        assert (row["parsed"], row["scores"]) == (by_id[row["id"]]["parsed"], by_id[row["id"]]["scores"])
        assert row["changed"] == (row["parsed"] != row["parsed_cut"])
    assert cut["overall"] == plain["overall"] and cut["per_task"] == plain["per_task"]
    # the second pass ran under the cut: the bidirectional scan's context changes the option scores
    diffs = [abs(a - b) for r in rows for a, b in zip(r["scores"], r["scores_cut"])]
    assert max(diffs) > 1e-4, "cut and normal scores identical: the scan cut was not applied"
    # ... and is what _predict gives inside model.scan_cut() (the same frames, the same model)
    model, processor = tiny
    _, items, _ = load_benchmark("synthetic", synth_root)
    settings = EvalSettings(num_frames=4, reduction=model.reduction_settings(), scoring="loglik")
    with model.scan_cut():
        alone = runner_mod._predict(model, processor, items[0], items[0].question, settings)
    first = next(r for r in rows if r["id"] == items[0].id)
    assert alone["scores"] == pytest.approx(first["scores_cut"], abs=1e-4)
    assert alone["scores"] != pytest.approx(first["scores"], abs=1e-4)
    # the summary: both accuracies and the changed fraction, overall and per task, as the rows say
    usage = cut["mamba_usage"]
    assert usage["applies"] is True
    assert usage["overall"] == pytest.approx(_rows_usage(rows))
    assert usage["overall"]["accuracy"] == plain["overall"]["accuracy"]
    assert set(usage["per_task"]) == {r["task"] for r in rows}
    for task, got in usage["per_task"].items():
        assert got == pytest.approx(_rows_usage([r for r in rows if r["task"] == task]))
    assert mamba_usage(rows) == usage  # the public function, from the rows alone
    saved = json.loads((tmp_path / "cut" / "frames-4" / "results.json").read_text())
    assert saved["mamba_usage"] == usage
    summary = (tmp_path / "cut" / "frames-4" / "summary.md").read_text()
    o = usage["overall"]
    assert (
        "## Mamba usage" in summary
        and (
            f"| **overall** | {100 * o['accuracy']:.1f} | {100 * o['accuracy_cut']:.1f} | "
            f"{100 * o['changed_fraction']:.1f} | {o['changed']} / 6 |"
        )
        in summary
    )
    assert "Mamba usage" not in (tmp_path / "plain" / "frames-4" / "summary.md").read_text()


def test_scan_cut_changed_fraction_decodes_once_and_resumes(synth_root, tiny_dir, tmp_path, monkeypatch):
    """The tiny random model's answers never flip under the cut (its scores move by ~1e-3): a stand-in that
    answers otherwise for every other question when (and only when) it runs inside model.scan_cut()."""
    import io

    from rich.console import Console

    real_predict, real_sample = runner_mod._predict, runner_mod._sample
    predicted, sampled = [], []

    def predict(model, processor, item, prompt, settings, sampled=None):
        row = real_predict(model, processor, item, prompt, settings, sampled)  # the real model call
        if model.temporal.cut_at_frames and int(item.id[-1]) % 2:  # set by model.scan_cut() only
            row["parsed"] = "ABCD"[("ABCD".index(row["parsed"]) + 1) % len(item.options)]
            row["correct"] = row["parsed"] == item.answer
        predicted.append(item.id)
        return row

    def sample(item, settings):
        sampled.append(item.id)
        return real_sample(item, settings)

    monkeypatch.setattr(runner_mod, "_predict", predict)
    monkeypatch.setattr(runner_mod, "_sample", sample)
    out = tmp_path / "eval"
    kw = dict(out=out, device="cpu", scoring="loglik")
    # a run without the cut first: its rows lack the cut prediction, so they are not done for a run with it
    run_benchmark(tiny_dir, "synthetic", synth_root, [4], **kw)
    assert len(predicted) == len(sampled) == 6
    predicted.clear(), sampled.clear()
    text = io.StringIO()
    res = run_benchmark(tiny_dir, "synthetic", synth_root, [4], **kw, scan_cut=True, console=Console(file=text))[4]
    assert len(sampled) == 6 and len(predicted) == 12  # every question redone, its clip decoded once for both passes
    rows = res["predictions"]
    assert len(rows) == 6 and all("parsed_cut" in r for r in rows)  # the complete rows win over the no-cut ones
    changed = sum(r["parsed"] != r["parsed_cut"] for r in rows)
    assert changed == 3 and [r["changed"] for r in rows] == [False, True] * 3  # only under the cut, odd ids
    assert res["mamba_usage"]["overall"] == pytest.approx(_rows_usage(rows))
    for task, got in res["mamba_usage"]["per_task"].items():
        assert got == pytest.approx(_rows_usage([r for r in rows if r["task"] == task]))
    o = res["mamba_usage"]["overall"]
    line = " ".join(text.getvalue().split())
    assert f"accuracy {100 * o['accuracy']:.1f}%" in line
    assert f"scan cut: accuracy {100 * o['accuracy_cut']:.1f}%" in line
    assert f"answers changed {100 * o['changed_fraction']:.1f}% ({changed}/6)" in line
    # a rerun with the cut has nothing left to do
    predicted.clear(), sampled.clear()
    again = run_benchmark(tiny_dir, "synthetic", synth_root, [4], **kw, scan_cut=True)[4]
    assert predicted == sampled == [] and again["mamba_usage"] == res["mamba_usage"]


def test_mamba_usage_function():
    from storm_vlm.eval import mamba_usage

    def row(i, task, parsed, parsed_cut, answer="A"):
        return {"id": str(i), "task": task, "parsed": parsed, "parsed_cut": parsed_cut, "answer": answer,
                "correct": parsed == answer, "correct_cut": parsed_cut == answer}  # fmt: skip

    rows = [row(0, "a", "A", "A"), row(1, "a", "A", "B"), row(2, "a", "B", None), row(3, "b", "C", "C"),
            {"id": "4", "task": "b", "error": "missing video"}]  # fmt: skip
    usage = mamba_usage(rows)
    assert usage["overall"] == {"answered": 4, "correct": 2, "correct_cut": 1, "changed": 2,
                                "accuracy": 0.5, "accuracy_cut": 0.25, "changed_fraction": 0.5}  # fmt: skip
    assert usage["per_task"]["a"]["changed"] == 2 and usage["per_task"]["a"]["changed_fraction"] == pytest.approx(2 / 3)
    assert usage["per_task"]["b"] == {"answered": 1, "correct": 0, "correct_cut": 0, "changed": 0,
                                      "accuracy": 0.0, "accuracy_cut": 0.0, "changed_fraction": 0.0}  # fmt: skip
    with pytest.raises(ValueError, match="lack the scan-cut prediction"):
        mamba_usage([{"id": "x", "task": "a", "parsed": "A", "correct": True}])


def test_mamba_usage_not_applicable_to_mlp(synth_root, tiny_mlp, tmp_path, monkeypatch):
    model, processor = tiny_mlp
    model.save_pretrained(tmp_path / "mlp")
    processor.save_pretrained(tmp_path / "mlp")
    real_predict, calls = runner_mod._predict, []

    def predict(*args, **kwargs):
        calls.append(args[2].id)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "_predict", predict)
    res = run_benchmark(tmp_path / "mlp", "synthetic", synth_root, [4], out=tmp_path / "eval", device="cpu",
                        scoring="loglik", limit=2, scan_cut=True)[4]  # fmt: skip
    assert res["mamba_usage"]["applies"] is False and "no temporal module" in res["mamba_usage"]["reason"]
    assert "overall" not in res["mamba_usage"]  # no zeros reported as a finding
    assert len(calls) == 2 and not any("parsed_cut" in r for r in res["predictions"])  # one pass: the cut is a no-op
    assert (
        "Mamba usage (scan cut at frame boundaries): not applicable"
        in (tmp_path / "eval" / "frames-4" / "summary.md").read_text()
    )


def test_cli_mamba_usage(synth_root, tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from storm_vlm.cli import app

    cli = CliRunner()
    assert "--mamba-usage" in " ".join(cli.invoke(app, ["eval", "--help"]).output.split())
    args = ["eval", str(tiny_dir), "--benchmark", "synthetic", "--data-root", str(synth_root), "--frames", "4",
            "--scoring", "loglik", "--limit", "2", "--device", "cpu", "--mamba-usage",
            "--out", str(tmp_path / "o")]  # fmt: skip
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "scan cut: accuracy" in " ".join(result.output.split())
    saved = json.loads((tmp_path / "o" / "frames-4" / "results.json").read_text())
    assert saved["mamba_usage"]["applies"] and saved["mamba_usage"]["overall"]["answered"] == 2
    assert all("parsed_cut" in r and "correct_cut" in r for r in saved["predictions"])


def test_results_are_tied_to_the_model_and_settings(synth_root, tiny_dir, tmp_path, monkeypatch):
    """A folder resumes only the run that made it: another k, scoring or model is refused, naming what
    differs; another --limit is the same run. Default folders differ per model and settings."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path / "eval"
    kw = dict(device="cpu", scoring="loglik", out=out)
    first = run_benchmark(tiny_dir, "synthetic", synth_root, [4], limit=3, **kw)[4]
    assert len(first["predictions"]) == 3
    assert first["config"]["model_fingerprint"] and first["config"]["prompt_sha"]
    more = run_benchmark(tiny_dir, "synthetic", synth_root, [4], **kw)[4]  # the same run, resumed and extended
    assert len(more["predictions"]) == 6
    assert [r for r in more["predictions"] if r["id"] in {p["id"] for p in first["predictions"]}] == first[
        "predictions"
    ]
    with pytest.raises(ValueError, match=r"another run \(temporal_pool 1 → 2\)"):
        run_benchmark(tiny_dir, "synthetic", synth_root, [4], temporal_pool=2, **kw)
    with pytest.raises(ValueError, match="scoring 'loglik' → 'generate'"):
        run_benchmark(tiny_dir, "synthetic", synth_root, [4], **{**kw, "scoring": "generate"})
    other = tmp_path / "other-model" / "final"  # another training of the same architecture, also named final
    shutil.copytree(tiny_dir, other)
    weights = load_file(other / "model.safetensors")
    key = sorted(k for k in weights if k.startswith("projector."))[0]  # as stage 1 trains: one part changes
    weights[key] = weights[key] + 0.01
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model_fingerprint"):
        run_benchmark(other, "synthetic", synth_root, [4], **kw)
    (out / "frames-4" / "run.json").unlink()
    with pytest.raises(ValueError, match=r"without run\.json"):
        run_benchmark(tiny_dir, "synthetic", synth_root, [4], **kw)
    monkeypatch.chdir(tmp_path)
    a = run_benchmark(tiny_dir, "synthetic", synth_root, [2], device="cpu", scoring="loglik", limit=1)
    b = run_benchmark(other, "synthetic", synth_root, [2], device="cpu", scoring="loglik", limit=1)
    c = run_benchmark(tiny_dir, "synthetic", synth_root, [2], device="cpu", scoring="loglik", limit=1, temporal_pool=2)
    folders = sorted(p.name for p in (tmp_path / "outputs" / "eval").iterdir())
    assert len(folders) == 3 and all(f.startswith("synthetic-") for f in folders)
    assert a[2]["config"]["model_fingerprint"] != b[2]["config"]["model_fingerprint"]
    assert c[2]["config"]["temporal_pool"] == 2
    summary = next((tmp_path / "outputs" / "eval").glob("*k2p1s1*")).joinpath("frames-2", "summary.md").read_text()
    assert "k=2 p=1 s=1" in summary and "model fingerprint" in summary and "prompt version" in summary


def test_a_sweep_flags_frame_counts_the_clips_cannot_supply(synth_root, tiny_dir, tmp_path):
    results = run_benchmark(tiny_dir, "synthetic", synth_root, [4, 16], device="cpu", scoring="loglik",
                            out=tmp_path / "sweep", limit=2)  # fmt: skip
    assert results[4]["frames_short"] == {"items": 0, "min_frames": None}
    assert results[16]["frames_short"] == {"items": 2, "min_frames": 8}  # 8-frame clips
    summary = (tmp_path / "sweep" / "frames-16" / "summary.md").read_text()
    assert "2 question(s) got fewer than 16 frames" in summary and "as few as 8" in summary


def test_mlvu_reports_the_mean_over_tasks_as_its_headline():
    """M-Avg weighs every task the same: 1 of 1 right in one task and 0 of 3 in another is 50%, not 25%."""
    from storm_vlm.eval.benchmarks import BENCHMARKS
    from storm_vlm.eval.runner import EvalSettings, markdown_summary, summarize
    from storm_vlm.modeling.reduction import ReductionSettings

    def row(i, task, correct):
        return {"id": str(i), "task": task, "answer": "A", "parsed": "A" if correct else "B", "correct": correct,
                "frames": 4, "visual_tokens": 64, "timings": {}}  # fmt: skip

    rows = [row(0, "count", True), row(1, "order", False), row(2, "order", False), row(3, "order", False)]
    results = summarize(rows, EvalSettings(num_frames=4, reduction=ReductionSettings()), {}, [])
    assert results["overall"]["accuracy"] == 0.25 and results["task_mean"] == 0.5
    assert "| **mean over tasks (M-Avg)** | 50.0 |" in markdown_summary(results)
    assert BENCHMARKS["mlvu"].headline == "task_mean" and BENCHMARKS["mvbench"].headline == "overall"


def test_batched_option_scores_equal_one_forward_per_option(tiny):
    """The fast path (the prompt once, its cache repeated, the options in one padded batch) against the
    obvious one (prompt + option through the whole model, option by option)."""
    import numpy as np
    import torch

    from storm_vlm.eval.runner import option_logprobs, option_logprobs_reference
    from storm_vlm.inference import prepare_inputs
    from storm_vlm.video import VideoClip

    model, processor = tiny
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    clip = VideoClip(frames, np.arange(4.0), np.arange(4), 1.0, 4.0, (32, 32), 4)
    prepared = prepare_inputs(
        model, processor, clip, "Which? A. red B. a long green thing C. x", model.reduction_settings()
    )
    options = ["red", "a long green thing", "x", "blue and yellow"]
    ids = [processor.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    assert len({len(i) for i in ids}) > 1  # unequal lengths: the padding is exercised
    with torch.inference_mode():
        fast = option_logprobs(model, prepared.inputs_embeds, prepared.attention_mask, ids)
        slow = option_logprobs_reference(model, prepared.inputs_embeds, prepared.attention_mask, ids)
    assert fast == pytest.approx(slow, abs=1e-4)
    assert max(range(4), key=fast.__getitem__) == max(range(4), key=slow.__getitem__)
    with pytest.raises(ValueError, match="at least one token"):
        option_logprobs(model, prepared.inputs_embeds, prepared.attention_mask, [ids[0], []])


def test_batched_eval_gives_the_one_at_a_time_answers(mvbench_root, tmp_path):
    """--batch-size: questions share one generate call (left-padded prompts of different lengths);
    every row's answer equals the one-question run's, the missing video is still an error row."""
    torch.manual_seed(0)
    model, processor = build_tiny()
    spread_llm_weights(model, 0.5)  # varied greedy tokens: a fresh tiny model repeats one, hiding padding errors
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    runs = {}
    for batch in (1, 4):
        out = tmp_path / f"eval-b{batch}"
        run_benchmark(model_dir, "mvbench", mvbench_root, [4], out=out, device="cpu", batch_size=batch)
        rows = runner_mod._read_rows(sorted((out / "frames-4").glob("predictions*.jsonl")))
        runs[batch] = {r["id"]: r for r in rows}
    assert set(runs[1]) == set(runs[4]) and len(runs[1]) == 7
    # 7 questions in calls of 4: the first 4, then 3 of which one has no video (an error row): 2 together
    assert sorted(r["batch"] for r in runs[4].values() if "error" not in r) == [2, 2, 4, 4, 4, 4]
    assert len({r["raw_output"] for r in runs[1].values() if "error" not in r}) > 1  # the answers differ
    for key, row in runs[1].items():
        batched = runs[4][key]
        assert ("error" in row) == ("error" in batched), key
        if "error" not in row:
            assert (batched["raw_output"], batched["parsed"]) == (row["raw_output"], row["parsed"]), key
