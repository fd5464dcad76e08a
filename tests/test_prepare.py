"""`storm-vlm data`: converters on small fixtures in each dataset's released layout, mixtures, bad input.

The fixtures copy the real formats (field names, placeholders, folder and file names):

- LLaVA-Pretrain 558K: ``blip_laion_cc_sbu_558k.json`` rows ``{"id": "004539375", "image":
  "00453/004539375.jpg", "conversations": [{"from": "human", "value": "Render a clear and concise
  summary of the photo.\\n<image>"}, {"from": "gpt", "value": "..."}]}`` over ``images/00453/...``.
- LLaVA-Video-178K (``lmms-lab/LLaVA-Video-178K``): subset folders such as ``0_30_s_academic_v0_1``
  with ``0_30_s_academic_v0_1_cap_processed.json``, ``0_30_s_academic_oe_v0_1_qa_processed.json``,
  ``0_30_s_academic_mc_v0_1_qa_processed.json``; rows ``{"id", "conversations" (first human turn
  "<image>\\n..."), "data_source": "0_30_s_academic_v0_1", "video": "academic_source/Charades/RW587.mp4"}``
  with the videos unpacked into the subset folder; ``2_3_m_nextqa`` names its files
  ``2_3_m_nextqa_oe_qa_processed.json`` / ``..._mc_qa_processed.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from storm_vlm.cli import app
from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.train.data import BadSample, DataError, LlavaVideoDataset, read_samples
from storm_vlm.train.mixture import draw_indices, load_mixture
from storm_vlm.train.prepare import InputFile, convert, llava_video_inputs, summary_path

from .media import make

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def turn(who: str, text: str) -> dict[str, str]:
    return {"from": who, "value": text}


@pytest.fixture
def pretrain(tmp_path: Path) -> Path:
    """LLaVA-Pretrain 558K in miniature: 3 good rows, one image missing, one with two placeholders."""
    root = tmp_path / "LLaVA-Pretrain"
    (root / "images" / "00453").mkdir(parents=True)
    rows = []
    for i, ident in enumerate(["004539375", "004539376", "004539377"]):
        Image.new("RGB", (24, 20), (40 * i, 90, 200)).save(root / "images" / "00453" / f"{ident}.jpg")
        rows.append(
            {
                "id": ident,
                "image": f"00453/{ident}.jpg",
                "conversations": [
                    turn("human", "Render a clear and concise summary of the photo.\n<image>"),
                    turn("gpt", f"select luxury furniture {i}"),
                ],
            }
        )
    rows.append({"id": "004539399", "image": "00453/004539399.jpg", "conversations": rows[0]["conversations"]})
    two = [turn("human", "<image><image>"), turn("gpt", "a")]
    rows.append({"id": "x", "image": "00453/004539375.jpg", "conversations": two})
    (root / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(rows))
    return root


@pytest.fixture
def llava_video(tmp_path: Path) -> Path:
    """LLaVA-Video-178K in miniature: two subsets, the three splits, `<image>` marking the video."""
    root = tmp_path / "LLaVA-Video-178K"
    academic = root / "0_30_s_academic_v0_1"
    nextqa = root / "2_3_m_nextqa"
    (academic / "academic_source" / "Charades").mkdir(parents=True)
    (nextqa / "NextQA" / "NExTVideo" / "1006").mkdir(parents=True)
    make(academic / "academic_source" / "Charades" / "RW587.mp4", num_frames=8, height=32, width=32)
    make(nextqa / "NextQA" / "NExTVideo" / "1006" / "8968804598.mp4", num_frames=8, height=32, width=32)

    def row(ident: str, source: str, video: str, question: str, answer: str) -> dict:
        return {
            "id": ident,
            "conversations": [turn("human", f"<image>\n{question}"), turn("gpt", answer)],
            "data_source": source,
            "video": video,
        }

    charades = "academic_source/Charades/RW587.mp4"
    files = {
        academic / "0_30_s_academic_v0_1_cap_processed.json": [
            row("RW587", "0_30_s_academic_v0_1", charades, "Describe this video in detail.", "A man opens a door.")
        ],
        academic / "0_30_s_academic_oe_v0_1_qa_processed.json": [
            row("RW587-oe", "0_30_s_academic_v0_1", charades, "What does the man open?", "A door."),
            row("gone", "0_30_s_academic_v0_1", "academic_source/Charades/GONE.mp4", "Q?", "A."),
        ],
        academic / "0_30_s_academic_mc_v0_1_qa_processed.json": [
            row("RW587-mc", "0_30_s_academic_v0_1", charades, "What opens?\nA. door\nB. box", "A. door")
        ],
        nextqa / "2_3_m_nextqa_oe_qa_processed.json": [
            row("1006-1", "2_3_m_nextqa", "NextQA/NExTVideo/1006/8968804598.mp4", "Who runs?", "The dog.")
        ],
        nextqa / "2_3_m_nextqa_mc_qa_processed.json": [
            row("1006-8968804598", "2_3_m_nextqa", "NextQA/NExTVideo/1006/8968804598.mp4", "Why?\nA. x\nE. y", "E. y")
        ],
    }
    for path, rows in files.items():
        path.write_text(json.dumps(rows))
    return root


def test_llava_pretrain_converts_checks_images_and_counts(pretrain, tmp_path, tiny):
    out = tmp_path / "out" / "pretrain.json"
    result = runner.invoke(
        app,
        ["data", "llava-pretrain", "--json", str(pretrain / "blip_laion_cc_sbu_558k.json"),
         "--images", str(pretrain / "images"), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == ["004539375", "004539376", "004539377"]
    assert rows[0]["image"] == "00453/004539375.jpg" and rows[0]["conversations"][0]["from"] == "human"
    summary = json.loads(summary_path(out).read_text())
    assert summary["kept"] == 3 and summary["dropped"] == 2
    assert summary["dropped_by_reason"] == {"missing image": 1, "placeholder count": 1}
    assert "004539399.jpg does not exist" in summary["examples"]["missing image"][0]
    assert "kept" in result.output and "missing image" in result.output
    # the trainer reads it as it is
    _, processor = tiny
    ds = LlavaVideoDataset(read_samples(out), processor, pretrain / "images", 1, ReductionSettings(), 512)
    assert all(not isinstance(ds[i], BadSample) and ds[i]["pixel_values"] is not None for i in range(len(ds)))


def test_llava_video_converts_every_split_and_resolves_videos_per_subset(llava_video, tmp_path, tiny):
    out = tmp_path / "llava_video_178k.json"
    result = runner.invoke(app, ["data", "llava-video", "--root", str(llava_video), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert sorted(r["id"] for r in rows) == ["1006-1", "1006-8968804598", "RW587", "RW587-mc", "RW587-oe"]
    first = next(r for r in rows if r["id"] == "RW587")
    assert first["video"] == "0_30_s_academic_v0_1/academic_source/Charades/RW587.mp4"
    assert first["conversations"][0]["value"].startswith("<video>\n")  # <image> written as <video>
    assert first["data_source"] == "0_30_s_academic_v0_1"
    summary = json.loads(summary_path(out).read_text())
    assert summary["kept"] == 5 and summary["dropped_by_reason"] == {"missing video": 1}
    labels = [i["label"] for i in summary["inputs"]]
    assert labels == [
        "0_30_s_academic_v0_1/caption",
        "0_30_s_academic_v0_1/open_ended",
        "0_30_s_academic_v0_1/multi_choice",
        "2_3_m_nextqa/open_ended",
        "2_3_m_nextqa/multi_choice",
    ]
    _, processor = tiny
    ds = LlavaVideoDataset(read_samples(out), processor, llava_video, 4, ReductionSettings(), 512)
    assert all(ds[i]["pixel_values_videos"].shape[0] == 4 for i in range(len(ds)))
    # subsets and splits chosen
    picked = llava_video_inputs(llava_video, ["2_3_m_*"], ["multi_choice"])
    assert [p.path.name for p in picked] == ["2_3_m_nextqa_mc_qa_processed.json"]


def test_the_raw_llava_video_file_trains_too(llava_video, tiny):
    """data.py takes <image> as a video's placeholder: the released file needs no rewriting."""
    _, processor = tiny
    raw = read_samples(llava_video / "0_30_s_academic_v0_1" / "0_30_s_academic_v0_1_cap_processed.json")
    ds = LlavaVideoDataset(raw, processor, llava_video / "0_30_s_academic_v0_1", 4, ReductionSettings(), 512)
    item = ds[0]
    assert not isinstance(item, BadSample), item
    assert int((item["input_ids"] == processor.video_token_id).sum()) == processor.num_visual_tokens(4)


def test_generic_llava_json_merges_files_and_names_every_drop(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    Image.new("RGB", (8, 8)).save(media / "a.png")
    rows = [
        {"id": 1, "image": "a.png", "conversations": [turn("human", "<image>\nQ"), turn("gpt", "A")]},
        {"conversations": [turn("human", "text only"), turn("gpt", "fine")]},
        {"image": ["a.png", "a.png"], "conversations": [turn("human", "<image><image>"), turn("gpt", "x")]},
        {"image": "a.png", "video": "v.mp4", "conversations": [turn("human", "<image>"), turn("gpt", "x")]},
        {"image": "a.png", "conversations": [turn("human", "<image>")]},
        {"image": "a.png", "conversations": [{"from": "robot", "value": "<image>"}]},
        {"conversations": [turn("human", "<video> but no video"), turn("gpt", "x")]},
        [1, 2],
    ]
    (tmp_path / "a.json").write_text(json.dumps(rows[:4]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[4:]))
    out = tmp_path / "merged.json"
    summary = convert(
        [InputFile(tmp_path / "a.json", "a", lambda v: [v]), InputFile(tmp_path / "b.jsonl", "b", lambda v: [v])],
        media,
        out,
    )
    assert summary.kept == 2 and summary.dropped == 6
    assert dict(summary.by_reason) == {
        "multiple images": 1,
        "both video and image": 1,
        "no assistant turn": 1,
        "malformed conversation": 1,
        "placeholder without media": 1,
        "not an object": 1,
    }
    assert [r["id"] for r in json.loads(out.read_text())] == ["1", "a-1"]  # ids kept, or made from file + index


def test_bad_input_is_one_line_and_writes_nothing(pretrain, tmp_path):
    out = tmp_path / "x.json"
    cases = [
        (["data", "llava-pretrain", "--json", str(tmp_path / "nope.json"), "--images", str(pretrain / "images"),
          "--out", str(out)], "nope.json: no such data file"),
        (["data", "llava-video", "--root", str(tmp_path), "--out", str(out)], "no LLaVA-Video-178K annotation files"),
        (["data", "llava-video", "--root", str(pretrain), "--kinds", "captions", "--out", str(out)],
         "unknown or no kind(s) ['captions']"),
        (["data", "llava", "--json", str(pretrain / "blip_laion_cc_sbu_558k.json"), "--media-root",
          str(tmp_path / "none"), "--out", str(out)], "--media-root"),
    ]  # fmt: skip
    (tmp_path / "broken.json").write_text('[{"id": 1,')
    cases.append(
        (["data", "llava", "--json", str(tmp_path / "broken.json"), "--media-root", str(tmp_path), "--out", str(out)],
         "broken.json: not valid JSON")
    )  # fmt: skip
    for argv, message in cases:
        result = _main(argv)
        assert result[0] == 2, (argv, result)
        lines = result[1].strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, lines)
    assert not out.exists() and not list(tmp_path.glob(".x.json.tmp-*"))


def test_no_sample_kept_and_existing_output_write_nothing(pretrain, tmp_path):
    images = pretrain / "images"
    for path in images.rglob("*.jpg"):
        path.unlink()
    out = tmp_path / "none.json"
    with pytest.raises(DataError, match="no sample kept"):
        convert([InputFile(pretrain / "blip_laion_cc_sbu_558k.json", "p", lambda v: [v])], images, out)
    assert not out.exists() and not summary_path(out).exists() and os.listdir(tmp_path) == [pretrain.name]
    out.write_text("[]")
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        convert([InputFile(pretrain / "blip_laion_cc_sbu_558k.json", "p", lambda v: [v])], images, out)
    assert out.read_text() == "[]"


def _main(argv: list[str]) -> tuple[int, str]:
    """The real entry point (one-line errors, exit 2), in a subprocess."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "storm_vlm", *argv], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    return proc.returncode, proc.stderr


# -- mixtures ------------------------------------------------------------------------------------


def write_mixture(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mixture_draws_are_seeded_whole_passes_then_a_subset(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"conversations": [turn("human", "q"), turn("gpt", str(i))]} for i in range(10)]))
    mix = load_mixture(
        write_mixture(
            tmp_path / "m.yaml",
            f"seed: 3\nsources:\n  - {{json: {data}, weight: 2.5}}\n  - {{name: b, json: {data}, samples: 4}}\n",
        )
    )
    a, b = mix.sources
    drawn = draw_indices(10, a, 3, 0)
    assert len(drawn) == 25 and sorted(drawn[:20].tolist()) == sorted(list(range(10)) * 2)
    assert len(set(drawn[20:].tolist())) == 5
    assert (draw_indices(10, a, 3, 0) == drawn).all() and not (draw_indices(10, a, 4, 0) == drawn).all()
    assert len(draw_indices(10, b, 3, 1)) == 4 and len(set(draw_indices(10, b, 3, 1).tolist())) == 4
    assert a.name == "d" and b.name == "b" and mix.seed == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "a mixture must be a YAML mapping"),
        ("sources: []", "sources must be a non-empty list"),
        ("sources:\n  - {weight: 1}", r"sources\[0\].json is required"),
        ("sources:\n  - {json: a.json, weight: -1}", r"sources\[0\].weight must be > 0"),
        ("sources:\n  - {json: a.json, weight: 1, samples: 3}", "weight or samples, not both"),
        ("sources:\n  - {json: a.json, samples: 1.5}", r"sources\[0\].samples must be int"),
        ("sources:\n  - {json: a.json, num_frames: 99999}", "num_frames must be 1 to"),
        ("sources:\n  - {json: a.json, frames: 8}", "unknown key frames"),
        ("sources:\n  - {json: a.json}\n  - {json: b/a.json}", "name 'a' is used twice"),
        ("sources: [\n", "not valid YAML"),
        ("seed: -1\nsources:\n  - {json: a.json}", "seed must be an int >= 0"),
    ],
)
def test_bad_mixtures_are_one_line_naming_file_and_field(tmp_path, text, message):
    path = write_mixture(tmp_path / "bad.yaml", text)
    with pytest.raises(DataError, match=message) as err:
        load_mixture(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_oversized_mixture_file_is_refused_before_parsing(tmp_path, monkeypatch):
    import storm_vlm.train.mixture as mixture

    monkeypatch.setattr(mixture, "MAX_MIXTURE_BYTES", 16)
    path = write_mixture(tmp_path / "big.yaml", "sources:\n  - {json: a.json}\n")
    with pytest.raises(DataError, match="more than the 16"):
        load_mixture(path)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs" / "mixtures").glob("*.yaml")))
def test_shipped_mixtures_load(name):
    mix = load_mixture(REPO / "configs" / "mixtures" / name)
    assert mix.sources and all(s.json.startswith("data/") for s in mix.sources)


def test_mixture_command_shows_the_draw(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"conversations": [turn("human", "q"), turn("gpt", "a")]}] * 6))
    path = write_mixture(tmp_path / "m.yaml", f"sources:\n  - {{json: {data}, weight: 0.5, num_frames: 8}}\n")
    result = runner.invoke(app, ["data", "mixture", str(path)])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and "3" in result.output
