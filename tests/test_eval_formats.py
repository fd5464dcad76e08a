"""Benchmark formats as lmms-eval defines them: per-benchmark answer parsing, the MLVU rows
lmms-eval reads, and subtitles (Video-MME .srt, LongVideoBench JSON), each against lmms-eval's
own behaviour (the expected strings follow lmms-eval v0.7.3's task code line by line).

With ``LMMS_EVAL_SRC`` pointing at an unpacked ``lmms_eval`` package (no install needed:
``pip download lmms-eval==0.7.3 --no-deps`` and unzip), the last tests run lmms-eval's own
functions on the same inputs and on generated answers, and compare.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import string
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storm_vlm.eval import benchmarks as bm
from storm_vlm.eval.benchmarks import load_benchmark, prompt_longvideobench, prompt_mlvu, prompt_videomme
from storm_vlm.eval.items import (
    MCItem,
    extract_mcq_answer,
    parse_item_answer,
    parse_longvideobench,
    parse_mvbench,
    strip_reasoning,
)

from .media import make


def _item(benchmark: str, options: int = 4, id: str = "q1") -> MCItem:
    return MCItem(id, "t", "v.mp4", "Q?", [f"o{i}" for i in range(options)], "A", benchmark=benchmark)


# -- answer parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B", "B"),  # a leading letter
        ("(C) the dog", "C"),  # "(X)"
        ("The answer is (B).", "B"),  # trailing punctuation stripped, then the phrase and "(B)"
        ("I think A is wrong, the answer is C", "C"),  # a trailing letter beats everything but a leading one
        ("Answer: D", "D"),  # "Answer" is no leading A (a letter follows it)
        ("A. apples, not B. pears", "A"),  # the leading letter wins
        ("Option B) is right", "B"),  # "X)"
        ("Dog", "D"),  # nothing else matched: any occurrence, as lmms-eval's fallback does
        ("E", None),  # MLVU and Video-MME only look for A-D
        ("xyz", None),
        ("", None),
        ("   ", None),
        ("<think>A looks right but</think> C", "C"),  # reasoning stripped first (lmms-eval's default tags)
        ("thinking A ...</think>B", "B"),  # an opening tag prefilled by the template: the text after the close
    ],
)
def test_mlvu_and_videomme_parse_like_extract_mcq_answer(output, expected):
    for benchmark in ("mlvu", "videomme"):
        assert parse_item_answer(_item(benchmark), output) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("B. a cat", "B"),  # "X. text" at the start
        ("b. lower case", "B"),
        ("(C)", "C"),
        ("C) the dog", "C"),
        ("the answer is a", "A"),  # lmms-eval's quirk: any standalone a-e word, the article too
        ("Option: E", "E"),
        ("F", None),  # only A-E
        ("none of them", None),  # no letter: lmms-eval scores it wrong
        ("", None),  # empty: lmms-eval leaves it out of the accuracy (see docs/evaluation.md)
        ("<think>B?</think>", None),  # only reasoning: empty once stripped
    ],
)
def test_mvbench_parses_like_mcq_acc(output, expected):
    assert parse_item_answer(_item("mvbench", 5), output) == expected
    assert parse_mvbench(output) == (expected if not output.startswith("<think>") else "B")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("C", "C"),
        ("The answer is C.", "C"),  # the answer prefixes are removed first
        ("The best answer is: D", "D"),
        ("Best option: (B)", "B"),
        ("Based on the video, D", "B"),  # lmms-eval's quirk: the first of A-E anywhere, "Based" included
        ("E. the fifth", "E"),
    ],
)
def test_longvideobench_parses_like_parse_multi_choice_response(output, expected):
    assert parse_item_answer(_item("longvideobench", 5), output) == expected


def test_longvideobench_falls_back_to_a_seeded_random_letter():
    """Nothing parses: a random option letter, as lmms-eval, but seeded by the item id (the same in every run)."""
    outputs = ["no letter here", "", "it is the second one, obviously, as anyone watching could tell you all day"]
    for n in (2, 4, 5):
        for i in range(20):
            item = _item("longvideobench", n, id=f"lvb-{i}")
            expected = random.Random(f"longvideobench/lvb-{i}").choice("ABCDE"[:n])
            assert {parse_item_answer(item, o) for o in outputs} == {expected}
    drawn = {parse_longvideobench("none", 4, f"longvideobench/{i}") for i in range(50)}
    assert drawn == set("ABCD")  # every option can be drawn, none beyond them


def test_generic_items_keep_parse_letter():
    item = MCItem("1", "t", "v.mp4", "Q", ["blue", "green", "red", "yellow"], "C")
    assert item.benchmark == "generic"
    assert parse_item_answer(item, "the red one") == "C" and parse_item_answer(item, "E") is None


def test_item_fields_are_checked():
    with pytest.raises(ValueError, match="benchmark must be one of"):
        MCItem("1", "t", "v.mp4", "Q", ["a", "b"], "A", benchmark="mmlu")
    with pytest.raises(ValueError, match="subtitles must be a string"):
        MCItem("1", "t", "v.mp4", "Q", ["a", "b"], "A", subtitles=["x"])  # type: ignore[arg-type]


def test_strip_reasoning():
    assert strip_reasoning("<think>a</think>B<analysis>c</analysis> ") == "B"
    assert strip_reasoning("<think>unclosed B") == "<think>unclosed B"
    assert extract_mcq_answer("  (B).  ", "ABCD") == "B"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"ABCDEabcde ().:,\n", "answer is ", "The answer", "<think>"])).map("".join))
def test_parsers_never_fail(output):
    for benchmark, n in (("mvbench", 5), ("mlvu", 4), ("videomme", 4), ("longvideobench", 4), ("generic", 4)):
        letter = parse_item_answer(_item(benchmark, n), output)
        assert letter is None or letter in "ABCDE"
    assert parse_item_answer(_item("longvideobench", 3), output) in "ABCDE"  # never None


# -- MLVU as lmms-eval reads it ------------------------------------------------------------------
MLVU_ROWS = [
    {"video_name": "needle_1.mp4", "duration": 467.98, "question": "What happens?\n(A) x\n(B) y\n(C) z\n(D) w\n",
     "candidates": ["x", "y", "z", "w"], "answer": "B", "task_type": "needle", "question_id": "Q0"},
    {"video_name": "ego_2", "duration": 90.0, "question": "Which first?\n(A) p\n(B) q", "answer": "A",
     "task_type": "ego", "question_id": "Q1"},  # no candidates: the options are read from the question; no extension
]  # fmt: skip


def _mlvu_rows_folder(root: Path, kind: str) -> Path:
    root.mkdir(parents=True)
    for name in ("needle_1.mp4", "ego_2.mp4"):
        (root / name).write_bytes(b"")
    if kind == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow

        (root / "mlvu").mkdir()
        rows = [{**r, "candidates": r.get("candidates")} for r in MLVU_ROWS]
        pq.write_table(pyarrow.Table.from_pylist(rows), root / "mlvu" / "test-00000-of-00001.parquet")
    elif kind == "jsonl":
        (root / "mlvu_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MLVU_ROWS))
    else:
        (root / "mlvu_dev.json").write_text(json.dumps(MLVU_ROWS))
    return root


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "json"])
def test_mlvu_rows_in_lmms_eval_layout(tmp_path, kind):
    root = _mlvu_rows_folder(tmp_path / "mlvu", kind)
    assert bm.mlvu_layout(root) == "lmms-eval"
    _, items, problems = load_benchmark("mlvu", root)
    assert problems == []
    first, second = items
    assert (first.id, first.task, first.answer, first.options, first.question) == ("Q0", "needle", "B",
                                                                                    ["x", "y", "z", "w"],
                                                                                    "What happens?")  # fmt: skip
    assert first.video == str(root / "needle_1.mp4") and first.duration_group == "3-10 min"
    assert (second.options, second.answer, second.video) == (["p", "q"], "A", str(root / "ego_2.mp4"))
    assert first.benchmark == second.benchmark == "mlvu"
    # lmms-eval's mlvu_doc_to_text: pre_prompt ("") + question + post_prompt (mlvu_dev.yaml, default)
    assert prompt_mlvu(first) == (
        "What happens?\n(A) x\n(B) y\n(C) z\n(D) w\n\nOnly give the best option.\nBest option: ("
    )
    assert prompt_mlvu(second) == "Which first?\n(A) p\n(B) q\nOnly give the best option.\nBest option: ("


def test_mlvu_layouts_are_told_apart(tmp_path):
    original = tmp_path / "orig"
    (original / "json").mkdir(parents=True)
    entry = {"video": "v.mp4", "duration": 100, "question": "How many?", "candidates": ["1", "2"], "answer": "2",
             "question_type": "count"}  # fmt: skip
    (original / "json" / "4_count.json").write_text(json.dumps([entry]))
    assert bm.mlvu_layout(original) == "original"
    _, items, _ = load_benchmark("mlvu", original)
    # the original entries are shown as lmms-eval's rows show the same question: options inline
    assert prompt_mlvu(items[0]) == "How many?\n(A) 1\n(B) 2\n\nOnly give the best option.\nBest option: ("
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MLVU annotation files"):
        load_benchmark("mlvu", tmp_path / "empty")


def test_mlvu_bad_rows_are_reported(tmp_path):
    root = tmp_path / "mlvu"
    root.mkdir()
    rows = [
        MLVU_ROWS[0],
        {"video_name": "a.mp4", "question": "No options here", "answer": "A", "task_type": "count"},
        {"video_name": "a.mp4", "question": "Q\n(A) x\n(B) y", "answer": "C", "task_type": "count"},
        {"video_name": "a.mp4", "question": "Q\n(A) x\n(B) y\nstray text", "answer": "A", "task_type": "count"},
    ]
    with_candidates = {**rows[3], "candidates": ["x", "y"], "question_id": "Q9"}  # the row's text is asked as it is
    (root / "rows.json").write_text(json.dumps([*rows, with_candidates]))
    _, items, problems = load_benchmark("mlvu", root)
    assert [it.id for it in items] == ["Q0", "Q9"] and prompt_mlvu(items[1]).startswith("Q\n(A) x\n(B) y\nstray text\n")
    assert problems[0].startswith("rows.json[1]: 'question' has no '(A) ...' option lines")
    assert problems[1] == "rows.json[2]: answer 'C' does not match the 2 options"
    assert problems[2].startswith("rows.json[3]: 'question' has text after its options")
    (root / "rows.json").unlink()
    (root / "rows.jsonl").write_text(json.dumps(MLVU_ROWS[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON"):
        load_benchmark("mlvu", root)


# -- Video-MME subtitles -------------------------------------------------------------------------
SRT = """1
00:00:00,000 --> 00:00:01,000
<font color="white" size=".72c">hello</font>

2
00:00:01,500 --> 00:00:01,550
<font color="white" size=".72c">between two sampled frames</font>

3
00:00:02,000 --> 00:00:03,000
plain text: lmms-eval keeps only the font-tagged text

4
00:00:03,000 --> 00:00:04,000
<font color="white" size=".72c">bye</font>
<font color="white" size=".72c">second line</font>
"""
VIDEOMME_ROWS = [
    {"videoID": "abc", "question_id": "001-1", "duration": "short", "task_type": "Counting", "question": "How many?",
     "options": ["A. 1", "B. 2", "C. 3", "D. 4"], "answer": "B"},
    {"videoID": "nosub", "question_id": "002-1", "duration": "short", "task_type": "OCR", "question": "What?",
     "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "A"},
]  # fmt: skip


def _videomme_root(tmp_path: Path, srt: str | bytes = SRT) -> Path:
    root = tmp_path / "vmme"
    (root / "data").mkdir(parents=True)
    (root / "subtitle").mkdir()
    make(root / "data" / "abc.mp4", num_frames=40, height=32, width=32, fps=10)  # 4 s
    make(root / "data" / "nosub.mp4", num_frames=10, height=32, width=32, fps=10)
    path = root / "subtitle" / "abc.srt"
    path.write_bytes(srt if isinstance(srt, bytes) else srt.encode())
    (root / "videomme.json").write_text(json.dumps(VIDEOMME_ROWS))
    return root


def test_videomme_subtitles_as_videomme_w_subtitle(tmp_path):
    root = _videomme_root(tmp_path)
    _, items, problems = load_benchmark("videomme_w_subtitle", root)
    assert problems == []
    with_subs, without = items
    # 32 frames over 40 (0, 1, 2, 3, 5, ...): cue 1 (frames 0-9) and cue 4 (30-39) are hit, cue 2 (frames 15-15)
    # is not, cue 3 is hit but has no font tag; of cue 4 lmms-eval keeps the first tagged text only
    assert with_subs.subtitles == "hello\nbye"
    assert without.subtitles == "No subtitles available"
    instruction = bm.VIDEOMME_INSTRUCTION
    assert prompt_videomme(with_subs) == (
        "This video's subtitles are listed below: \nhello\nbye\n"
        f"{instruction}\nHow many?\nA. 1\nB. 2\nC. 3\nD. 4\nThe best answer is:"
    )
    assert prompt_videomme(without).startswith("This video's subtitles are listed below: \nNo subtitles available\n")
    # the same folder without subtitles: no subtitle text, the plain prompt
    _, plain, _ = load_benchmark("videomme", root)
    assert plain[0].subtitles is None and prompt_videomme(plain[0]).endswith("\n\n" + bm.DIRECT)


def test_videomme_subtitle_folder_can_be_given(tmp_path):
    root = _videomme_root(tmp_path)
    elsewhere = tmp_path / "subs"
    (root / "subtitle").rename(elsewhere)
    _, items, _ = load_benchmark("videomme_w_subtitle", root, subtitles=elsewhere)
    assert items[0].subtitles == "hello\nbye"
    with pytest.raises(FileNotFoundError, match=r"subtitle: subtitle folder not found"):
        load_benchmark("videomme_w_subtitle", root)
    with pytest.raises(ValueError, match="asked without subtitles; subtitles go with videomme_w_subtitle"):
        load_benchmark("videomme", root, subtitles=elsewhere)


@pytest.mark.parametrize(
    ("srt", "message"),
    [
        (SRT.replace("00:00:03,000 --> 00:00:04,000", "00:00:03 --> 00:00:04"), "cue 4: bad time '00:00:03'"),
        (SRT.replace("00:00:00,000 --> 00:00:01,000", "00:00:00,000 - 00:00:01,000"), "cue 1: bad time range"),
        ("1\n00:00:00,000 --> 00:00:01,000\n\xe9t\xe9\n".encode("latin-1"), "subtitle file is not UTF-8"),
    ],
)
def test_a_bad_srt_is_one_line_naming_the_file(tmp_path, srt, message):
    root = _videomme_root(tmp_path, srt)
    _, items, problems = load_benchmark("videomme_w_subtitle", root)
    assert [it.id for it in items] == ["002-1"]  # the question whose subtitles are bad is skipped, and reported
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith(f"videomme[0]: {root / 'subtitle' / 'abc.srt'}: ") and message in problems[0]


def test_subtitles_are_bounded(tmp_path, monkeypatch):
    root = _videomme_root(tmp_path)
    monkeypatch.setattr(bm, "MAX_SUBTITLE_BYTES", 100)
    _, _, problems = load_benchmark("videomme_w_subtitle", root)
    assert "over the 100 allowed (MAX_SUBTITLE_BYTES)" in problems[0] and "abc.srt" in problems[0]
    monkeypatch.setattr(bm, "MAX_SUBTITLE_BYTES", 1 << 20)
    monkeypatch.setattr(bm, "MAX_SUBTITLE_CHARS", 5)
    _, _, problems = load_benchmark("videomme_w_subtitle", root)
    assert "hold 9 characters, over the 5 allowed (MAX_SUBTITLE_CHARS)" in problems[0]


def test_an_unreadable_video_gets_no_subtitle_lines(tmp_path):
    root = _videomme_root(tmp_path)
    (root / "data" / "abc.mp4").write_bytes(b"not a video")
    _, items, problems = load_benchmark("videomme_w_subtitle", root)
    assert problems == [] and items[0].subtitles == "" and items[0].extra["subtitle_source"].startswith("video")


# -- LongVideoBench subtitles --------------------------------------------------------------------
LVB_SUBS = [
    {"timestamp": [10.0, 11.0], "text": "first"},  # 0-1 s after the offset: frame 0 is not strictly inside
    {"timestamp": [12.5, 13.5], "text": "second"},  # 2.5-3.5 s: between the frames at 2 and 4 s
    {"start": "00:00:13.000", "end": "00:00:15.000", "line": "third"},  # 3-5 s: the frame at 4 s
    {"timestamp": [40.0, None], "text": "last"},  # no end: lmms-eval puts the duration there (32 s, then shifted)
]
LVB_ROW = {"id": "q1", "video_path": "v.mp4", "subtitle_path": "v_en.json", "duration": 32.0,
           "starting_timestamp_for_subtitles": 10.0, "duration_group": 60, "question": "Q?",
           "candidates": ["a", "b", "N/A"], "correct_choice": 1, "question_category": "E2O"}  # fmt: skip


def _lvb_root(tmp_path: Path, subs: Any = LVB_SUBS, rows: list[dict[str, Any]] | None = None) -> Path:
    root = tmp_path / "lvb"
    (root / "videos").mkdir(parents=True)
    (root / "subtitles").mkdir()
    (root / "lvb_val.json").write_text(json.dumps(rows or [LVB_ROW]))
    (root / "subtitles" / "v_en.json").write_text(subs if isinstance(subs, str) else json.dumps(subs))
    return root


def test_longvideobench_subtitles_as_val_i(tmp_path):
    _, items, problems = load_benchmark("longvideobench_w_subtitle", _lvb_root(tmp_path))
    assert problems == []
    (item,) = items
    # 16 frame times every 2 s: "third" covers 4 s; "last" (30 -> 22 s shifted, widened to 25.5-26.5) covers 26 s
    assert item.subtitles == "third\nlast"
    assert item.options == ["a", "b"] and item.answer == "B" and item.benchmark == "longvideobench"
    # longvideobench_val_i's text without its <image> markers (the video is given whole)
    assert prompt_longvideobench(item) == "third\nlast\nQ?\nA. a\nB. b\n" + bm.DIRECT + "\n"
    _, plain, _ = load_benchmark("longvideobench", _lvb_root(tmp_path / "again"))
    assert plain[0].subtitles is None and prompt_longvideobench(plain[0]) == "Q?\nA. a\nB. b\n" + bm.DIRECT + "\n"


def test_longvideobench_rows_with_option_fields(tmp_path):
    row = {k: v for k, v in LVB_ROW.items() if k != "candidates"}
    row.update(option0="a", option1="b", option2="c", option3="N/A", option4="N/A")
    _, items, _ = load_benchmark("longvideobench", _lvb_root(tmp_path, rows=[row]))
    assert items[0].options == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("subs", "message"),
    [
        ("{not json", "subtitle file is not valid JSON"),
        ({"timestamp": [0, 1]}, "subtitle file must be a JSON list"),
        ([{"timestamp": ["x", 1], "text": "a"}], "entry 0: 'timestamp' must be [start, end] in seconds"),
        ([{"start": "1:2", "end": "0:0:1", "line": "a"}], "entry 0: bad time '1:2'"),
        ([{"timestamp": [0.0, 1.0], "text": 3}], "entry 0: the text ('text' or 'line') must be a string"),
        ([{"text": "a"}], "entry 0: needs 'timestamp', or 'start' and 'end'"),
    ],
)
def test_a_bad_lvb_subtitle_file_is_one_line_naming_it(tmp_path, subs, message):
    root = _lvb_root(tmp_path, subs, rows=[LVB_ROW, {**LVB_ROW, "id": "q2", "subtitle_path": "missing.json"}])
    with pytest.raises(ValueError, match="no usable longvideobench_w_subtitle questions") as err:
        load_benchmark("longvideobench_w_subtitle", root)
    assert f"lvb_val.json[0]: {root / 'subtitles' / 'v_en.json'}: " in str(err.value) and message in str(err.value)
    _, problems = bm.load_longvideobench(root, root / "subtitles")
    assert problems[1] == f"lvb_val.json[1]: {root / 'subtitles' / 'missing.json'}: subtitle file not found"
    assert all("\n" not in p for p in problems)


def test_lvb_subtitles_need_the_times(tmp_path):
    row = {k: v for k, v in LVB_ROW.items() if k != "starting_timestamp_for_subtitles"}
    _, problems = bm.load_longvideobench(_lvb_root(tmp_path, rows=[row, LVB_ROW]), tmp_path / "lvb" / "subtitles")
    assert problems == ["lvb_val.json[0]: subtitles need 'duration' and 'starting_timestamp_for_subtitles'"]


# -- against lmms-eval's own code (LMMS_EVAL_SRC=<unpacked lmms_eval package>) -----------------------
LMMS = os.environ.get("LMMS_EVAL_SRC")
needs_lmms = pytest.mark.skipif(not LMMS, reason="set LMMS_EVAL_SRC to an unpacked lmms_eval package")


def _lmms(relpath: str, *names: str, **env: Any) -> dict[str, Any]:
    """Named top-level functions of one lmms-eval file, with its literal constants, executed alone
    (its imports need packages this project does not install: cv2, decord, loguru, datasets)."""
    tree = ast.parse(Path(LMMS or "", relpath).read_text())
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert {n.name for n in wanted} == set(names), relpath
    constants = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            try:
                ast.literal_eval(node.value)
            except ValueError:
                continue
            constants.append(node)
    namespace: dict[str, Any] = {"re": re, "random": random, "string": string, "os": os, "json": json}
    namespace.update({name: getattr(typing, name) for name in ("Any", "Dict", "List", "Optional")})  # annotations
    namespace.update(env)
    exec(compile(ast.Module(body=constants + wanted, type_ignores=[]), relpath, "exec"), namespace)
    return namespace


def _post_prompt(relpath: str, key: str = "post_prompt") -> str:
    import yaml

    text = "".join(line for line in Path(LMMS or "", relpath).read_text().splitlines(True) if "!function" not in line)
    return yaml.safe_load(text)["lmms_eval_specific_kwargs"]["default"][key]


ANSWERS = st.lists(
    st.sampled_from(
        [*"ABCDEFabcde ().:,!?'\"\n", "answer is ", "The answer is", "Best option:", "<think>", "</think>", "x"]
    ),
    max_size=40,
).map("".join)


@needs_lmms
@settings(max_examples=500, deadline=None)
@given(ANSWERS)
def test_parsers_agree_with_lmms_eval(output):
    mcq = _lmms("tasks/_task_utils/mcq_extract.py", "extract_mcq_answer")
    mvb = _lmms("tasks/mvbench/utils.py", "mcq_acc")
    lvb = _lmms("tasks/longvideobench/utils.py", "parse_multi_choice_response")
    strip = _lmms("api/reasoning.py", "strip_reasoning_tags")["strip_reasoning_tags"]
    text = strip(output, [["<think>", "</think>"], ["<analysis>", "</analysis>"]])
    assert strip_reasoning(output) == text
    assert (parse_item_answer(_item("mlvu"), output) or "") == mcq["extract_mcq_answer"](text, ["A", "B", "C", "D"])
    parsed = parse_item_answer(_item("mvbench", 5), output)
    assert [mvb["mcq_acc"](gt, text) for gt in "ABCDE"] == [int(parsed == gt) for gt in "ABCDE"]
    random.seed(0)
    theirs = lvb["parse_multi_choice_response"](text, list("ABCD"), {})
    ours = parse_item_answer(_item("longvideobench", 4), output)
    cleaned = text.strip()
    for prefix in ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                   "The correct option is", "Best answer:", "Best option:"):  # fmt: skip
        cleaned = cleaned.replace(prefix, "")
    if re.search("[ABCDE]", cleaned):  # the deterministic branch; else both draw a random option letter
        assert ours == theirs
    else:
        assert ours in "ABCD" and theirs in "ABCD"


@needs_lmms
def test_prompts_agree_with_lmms_eval(tmp_path):
    # MLVU
    ns = _lmms("tasks/mlvu/utils.py", "mlvu_doc_to_text")
    kwargs = {"pre_prompt": "", "post_prompt": _post_prompt("tasks/mlvu/mlvu_dev.yaml")}
    _, items, _ = load_benchmark("mlvu", _mlvu_rows_folder(tmp_path / "mlvu", "json"))
    for row, item in zip(MLVU_ROWS, items, strict=True):
        assert prompt_mlvu(item) == ns["mlvu_doc_to_text"](row, kwargs)
    # Video-MME, with and without subtitles: lmms-eval's function with OpenCV's frame count and rate stood in
    root = _videomme_root(tmp_path)
    vmme = _lmms("tasks/videomme/utils.py", "parse_subtitle_time", "load_subtitles", "convert_time_to_frame",
                 "videomme_doc_to_text", "videomme_doc_to_text_subtitle")  # fmt: skip
    shapes = {"abc": (40, 10.0), "nosub": (10, 10.0)}

    def extract_subtitles(video_path, subtitle_path):
        total, fps = shapes[Path(subtitle_path).stem]
        subs = vmme["load_subtitles"](subtitle_path)
        return [(int(s * fps), int(e * fps), t) for (s, e), t in subs.items()], total

    import numpy as np

    vmme.update(extract_subtitles=extract_subtitles, np=np, base_cache_dir=str(tmp_path), cache_name="vmme")
    _, subbed, _ = load_benchmark("videomme_w_subtitle", root)
    _, plain, _ = load_benchmark("videomme", root)
    sub_kwargs = {"frame_num": _post_prompt("tasks/videomme/videomme_w_subtitle.yaml", "frame_num"), "pre_prompt": ""}
    plain_kwargs = {"pre_prompt": "", "post_prompt": _post_prompt("tasks/videomme/videomme.yaml")}
    for row, with_subs, without in zip(VIDEOMME_ROWS, subbed, plain, strict=True):
        assert prompt_videomme(with_subs) == vmme["videomme_doc_to_text_subtitle"](row, sub_kwargs)
        assert prompt_videomme(without) == vmme["videomme_doc_to_text"](row, plain_kwargs)
    # LongVideoBench (val_i interleaves <image> markers with the lines; we give the video whole)
    lroot = _lvb_root(tmp_path)
    lvb = _lmms("tasks/longvideobench/utils.py", "timestamp_to_seconds", "compute_frame_timestamps",
                "insert_subtitles_into_frames", "longvideobench_doc_to_text",
                _resolve_dataset_dir=lambda *a: (str(lroot / "subtitles"), {}))  # fmt: skip
    doc = {**{k: v for k, v in LVB_ROW.items() if k != "candidates"}, "option0": "a", "option1": "b"}
    doc.update(option2="N/A", option3="N/A", option4="N/A")  # the HF rows lmms-eval reads have all five
    lvb_kwargs = {"pre_prompt": "", "post_prompt": _post_prompt("tasks/longvideobench/longvideobench_val_i.yaml"),
                  "insert_interleave_subtitles": True}  # fmt: skip
    theirs = lvb["longvideobench_doc_to_text"](doc, lvb_kwargs)
    _, (item,), _ = load_benchmark("longvideobench_w_subtitle", lroot)
    assert prompt_longvideobench(item) == "\n".join(line for line in theirs.split("\n") if line != "<image>")
    lvb_kwargs["insert_interleave_subtitles"] = False
    _, (plain_item,), _ = load_benchmark("longvideobench", lroot)
    assert prompt_longvideobench(plain_item) == lvb["longvideobench_doc_to_text"](doc, lvb_kwargs)


CUES = st.lists(
    st.tuples(st.integers(0, 60_000), st.integers(0, 8_000), st.sampled_from(["tagged", "plain"]), st.integers(0, 9)),
    max_size=30,
)


@needs_lmms
@settings(max_examples=150, deadline=None)
@given(CUES, st.integers(1, 3000), st.sampled_from([10.0, 24.0, 25.0, 29.97, 30.0]))
def test_videomme_subtitle_lines_agree_with_lmms_eval(tmp_path_factory, cues, total, fps):
    """Random cues, frame counts and rates: the lines chosen (and their order) are lmms-eval's."""
    import numpy as np

    def stamp(ms: int) -> str:
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    blocks = []
    for n, (start, length, kind, word) in enumerate(cues, 1):
        text = f'<font color="white" size=".72c">w{word}</font>' if kind == "tagged" else f"w{word}"
        blocks.append(f"{n}\n{stamp(start)} --> {stamp(start + length)}\n{text}\n")
    path = tmp_path_factory.mktemp("srt") / "v.srt"
    path.write_text("\n".join(blocks))
    vmme = _lmms("tasks/videomme/utils.py", "parse_subtitle_time", "load_subtitles", "convert_time_to_frame",
                 "videomme_doc_to_text_subtitle")  # fmt: skip
    subs = vmme["load_subtitles"](str(path))
    frames = [(int(s * fps), int(e * fps), t) for (s, e), t in subs.items()]
    vmme.update(extract_subtitles=lambda *a: (frames, total), np=np, base_cache_dir=str(path.parent), cache_name="")
    (path.parent / "subtitle").mkdir()
    path.rename(path.parent / "subtitle" / "v.srt")
    theirs = vmme["videomme_doc_to_text_subtitle"]({"videoID": "v", "question": "Q", "options": []}, {"frame_num": 32})
    ours = "\n".join(bm.videomme_subtitle_lines(bm.parse_srt(path.parent / "subtitle" / "v.srt"), total, fps))
    assert theirs.startswith(f"{bm.VIDEOMME_SUBTITLE_INTRO}{ours}\n{bm.VIDEOMME_INSTRUCTION}")


@needs_lmms
@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 500), st.one_of(st.none(), st.floats(0, 500)), st.booleans()), max_size=20),
    st.floats(1, 400),
    st.floats(0, 100),
)
def test_longvideobench_subtitle_lines_agree_with_lmms_eval(tmp_path_factory, cues, duration, offset):
    lvb = _lmms("tasks/longvideobench/utils.py", "timestamp_to_seconds", "compute_frame_timestamps",
                "insert_subtitles_into_frames")  # fmt: skip
    entries = []
    for k, (start, end, as_text) in enumerate(cues):
        if as_text:  # the "start"/"end" strings shape
            stop = end if end is not None else start
            entries.append({"start": f"0:{int(start // 60)}:{start % 60:.3f}",
                            "end": f"0:{int(stop // 60)}:{stop % 60:.3f}", "line": f"l{k}"})  # fmt: skip
        else:
            entries.append({"timestamp": [start, end], "text": f"t{k}"})
    path = tmp_path_factory.mktemp("lvb") / "s.json"
    path.write_text(json.dumps(entries))
    times = lvb["compute_frame_timestamps"](duration, 16)
    theirs = lvb["insert_subtitles_into_frames"](times, json.loads(path.read_text()), offset, duration)
    ours = bm.longvideobench_subtitle_lines(bm.parse_lvb_subtitles(path), duration, offset)
    assert ours == [line for line in theirs.split("\n") if line and line != "<image>"]
