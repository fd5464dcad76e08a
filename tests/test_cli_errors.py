"""Hostile or mistaken command lines: one line naming the file or option, exit status 2, no traceback.

Most cases run ``cli.main`` in-process (what ``python -m storm_vlm`` runs, minus the interpreter
start, ~6 s each); one runs the real subprocess to show the two agree.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from storm_vlm.cli import main
from storm_vlm.configuration_storm import StormConfig
from storm_vlm.synth import make_motion_qa, make_suite

from .media import make

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``storm-vlm ARGS`` as the entry point does; returns (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], message: str) -> None:
    code, out, err = result
    assert code == 2, (code, out, err)
    assert message in err, err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-errors")


@pytest.fixture(scope="module")
def model_dir(work) -> Path:
    with pytest.MonkeyPatch.context():
        main_out = work / "tiny"
        try:
            main(["init", "--preset", "tiny", "--out", str(main_out)])
        except SystemExit as exit_:
            assert not exit_.code
    return main_out


@pytest.fixture(scope="module")
def clip(work) -> Path:
    return make(work / "clip.mp4", num_frames=12, height=32, width=32)


@pytest.fixture(scope="module")
def broken_models(work, model_dir) -> dict[str, Path]:
    """Copies of the model whose weights are cut, empty or noise, or do not fit the config."""
    out = {}
    weights = (model_dir / "model.safetensors").read_bytes()
    for name, data in (
        ("truncated", weights[:1000]),
        ("empty", b""),
        ("random", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
    ):
        copy = work / f"model-{name}"
        shutil.copytree(model_dir, copy)
        (copy / "model.safetensors").write_bytes(data)
        out[name] = copy
    mismatch = work / "model-mismatch"
    shutil.copytree(model_dir, mismatch)
    config = json.loads((mismatch / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2  # the saved MLP weights no longer fit
    (mismatch / "config.json").write_text(json.dumps(config))
    out["mismatch"] = mismatch
    from safetensors.torch import load_file, save_file

    missing = work / "model-missing"
    shutil.copytree(model_dir, missing)
    tensors = load_file(missing / "model.safetensors")
    dropped = sorted(k for k in tensors if k.startswith("temporal."))[0]
    del tensors[dropped]  # a weight file from another model: without the check it would load half random
    save_file(tensors, missing / "model.safetensors", metadata={"format": "pt"})
    out["missing"] = missing
    out["dropped"] = Path(dropped)
    return out


@pytest.fixture(scope="module")
def mc_json(work, clip) -> dict[str, Path]:
    """mc-json files whose one question has a bad field."""
    good = {"video": clip.name, "question": "Q?", "options": ["a", "b"], "answer": "A"}
    files = {}
    for name, change in (
        ("good", {}),
        ("start-text", {"start": "soon"}),
        ("group-list", {"duration_group": ["short"]}),
        ("options-string", {"options": "ab"}),
        ("end-before-start", {"start": 0.4, "end": 0.2}),
    ):
        path = work / f"{name}.json"
        path.write_text(json.dumps([{**good, **change}]))
        files[name] = path
    return files


@pytest.mark.parametrize("broken", ["truncated", "empty", "random"])
@pytest.mark.parametrize("command", ["ask", "eval"])
def test_unreadable_weights(capsys, broken_models, clip, mc_json, command, broken):
    model = str(broken_models[broken])
    args = [command, model, str(clip), "Q?"] if command == "ask" else [
        command, model, "--benchmark", "mc-json", "--data-root", str(mc_json["good"]), "--frames", "2",
        "--out", str(mc_json["good"].parent / f"eval-{broken}")]  # fmt: skip
    assert_one_line_error(cli(capsys, *args), f"{model}/model.safetensors: not a readable weight file")


@pytest.mark.parametrize("command", ["ask", "eval"])
def test_weights_that_do_not_fit_the_config(capsys, broken_models, clip, mc_json, command):
    model = str(broken_models["mismatch"])
    args = [command, model, str(clip), "Q?"] if command == "ask" else [
        command, model, "--benchmark", "mc-json", "--data-root", str(mc_json["good"]), "--frames", "2",
        "--out", str(mc_json["good"].parent / "eval-mismatch")]  # fmt: skip
    assert_one_line_error(
        cli(capsys, *args),
        f"{model}/model.safetensors: tensor language_model.model.layers.0.mlp.down_proj.weight has shape [64, 128] "
        "but the config needs [64, 256]",
    )


def test_weights_missing_a_tensor(capsys, broken_models, clip):
    model = str(broken_models["missing"])
    message = f"{model}/model.safetensors: no weights for {broken_models['dropped']} (1 tensor(s) missing)"
    assert_one_line_error(cli(capsys, "ask", model, str(clip), "Q?"), message)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("bogus", "--device 'bogus' is not a device"),
        pytest.param(
            "cuda",
            "--device cuda: CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"),
        ),
    ],
)
@pytest.mark.parametrize("command", ["ask", "eval"])
def test_devices_that_are_not_here(capsys, model_dir, clip, mc_json, command, device, message):
    args = [command, str(model_dir), str(clip), "Q?"] if command == "ask" else [
        command, str(model_dir), "--benchmark", "mc-json", "--data-root", str(mc_json["good"]), "--frames", "2",
        "--out", str(mc_json["good"].parent / f"eval-{device}")]  # fmt: skip
    assert_one_line_error(cli(capsys, *args, "--device", device), message)


def test_square_brackets_are_text(capsys, work, model_dir, clip):
    """Paths and questions are never read as rich markup (``[/b]`` would be a markup error)."""
    missing = work / "[/b]clip[x].mp4"
    assert_one_line_error(cli(capsys, "ask", str(model_dir), str(missing), "Q"), f"{missing}: no such file")
    code, out, err = cli(capsys, "ask", str(model_dir), str(clip), "[bold]which[/bold] [/x] colour?",
                         "--max-new-tokens", "2", "--frames", "4")  # fmt: skip
    assert code == 0, err
    out_dir = work / "model[/b][x]"
    code, out, err = cli(capsys, "init", "--preset", "tiny", "--out", str(out_dir))
    assert code == 0 and f"wrote {out_dir} (" in out, (out, err)
    code, out, err = cli(capsys, "synth", "--out", str(work / "synth[/i]"), "--samples", "1", "--frames", "2")
    assert code == 0 and f"{work / 'synth[/i]' / 'train.json'}" in out, (out, err)


def test_a_text_file_named_mp4(capsys, work, model_dir):
    fake = work / "notes.mp4"
    fake.write_text("a text file, renamed\n" * 20)
    assert_one_line_error(cli(capsys, "ask", str(model_dir), str(fake), "Q"), f"{fake}: not a video")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("start-text", "[0]: 'start' must be a number of seconds, got 'soon'"),
        ("group-list", "[0]: 'duration_group' must be a string, got ['short']"),
        ("options-string", "[0]: 'options' must be a list of strings, got 'ab'"),
        ("end-before-start", "[0]: 'end' (0.2) must be after 'start' (0.4)"),
    ],
)
def test_mc_json_fields_are_checked(capsys, model_dir, mc_json, case, message):
    path = mc_json[case]
    result = cli(capsys, "eval", str(model_dir), "--benchmark", "mc-json", "--data-root", str(path))
    assert_one_line_error(result, f"{path}: no usable mc-json questions (1 malformed; the first: {path}{message}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["ask", "M", "C", "Q", "--frames", "1000000"],
            "Invalid value for '--frames': Input should be less than or equal to 4096",
        ),
        (["ask", "M", "C", "Q", "--fps", "1e6"], "Invalid value for '--fps'"),
        (["ask", "M", "C", "Q", "--max-new-tokens", "2000000"], "Invalid value for '--max-new-tokens'"),
        (["ask", "M", "C", "Q", "--temporal-pool", "1000000"], "Invalid value for '--temporal-pool'"),
        (
            ["eval", "M", "--benchmark", "mc-json", "--data-root", "C", "--frames", "8,100000"],
            "--frames: each count must be from 1 to 4096, got 100000",
        ),
        (["eval", "M", "--benchmark", "mc-json", "--data-root", "C", "--frames", ","], "at least one frame count"),
        (["init", "--preset", "tiny", "--out", "O", "--temporal-layers", "100000"], "'--temporal-layers'"),
        (["init", "--preset", "tiny", "--out", "O", "--temporal-pool", "1000000"], "'--temporal-pool'"),
        (["synth", "--out", "O", "--size", "200000"], "Invalid value for '--size'"),
        (["synth", "--out", "O", "--samples", "0"], "Invalid value for '--samples'"),
        (["synth", "--out", "O", "--samples", "100000000"], "Invalid value for '--samples'"),
        (["synth", "--out", "O", "--frames", "100000"], "Invalid value for '--frames'"),
        (["synth", "--out", "O", "--frames", "4096", "--size", "1024"], "GiB each (at most 1 GiB)"),
        (["synth", "--out", "O", "--suite", "--tasks", ","], "no synth task"),
        (["synth", "--out", "O", "--questions", ","], "no question kind"),
    ],
)
def test_bounds_and_empty_lists(capsys, work, model_dir, clip, args, message):
    out = work / f"never-{abs(hash(tuple(args)))}"
    args = [{"M": str(model_dir), "C": str(clip), "O": str(out)}.get(a, a) for a in args]
    assert_one_line_error(cli(capsys, *args), message)
    assert not out.exists()  # refused before anything was written


def test_storm_config_bounds_name_the_field():
    for field, value, message in (
        ("temporal_pool", 1_000_000, "temporal_pool must be an integer from 1 to 4096, got 1000000"),
        ("spatial_pool", 0, "spatial_pool must be an integer from 1 to 4096"),
        ("temporal_sampling", True, "temporal_sampling must be an integer"),
        ("temporal_layers", 100_000, "temporal_layers must be an integer from 0 to 64"),
        ("d_state", 10**7, "d_state must be an integer from 1 to 1024"),
    ):
        with pytest.raises(ValueError, match=message):
            StormConfig(**{field: value})
    assert StormConfig(temporal_pool=4096, temporal_layers=64).temporal_pool == 4096


def test_synth_checks_its_own_arguments(tmp_path):
    with pytest.raises(ValueError, match="synth size must be an integer from 8 to 1,024, got 200000"):
        make_suite(tmp_path / "a", size=200_000)
    with pytest.raises(ValueError, match="synth num_frames must be an integer from 1 to 4,096, got 0"):
        make_motion_qa(tmp_path / "b", num_frames=0)
    with pytest.raises(ValueError, match="no question kind"):
        make_motion_qa(tmp_path / "c", questions=())
    assert not any(tmp_path.iterdir())


def test_the_real_entry_point_agrees(tmp_path):
    """``python -m storm_vlm``: a value out of range is one line, exit 2, nothing written."""
    out = tmp_path / "never"
    args = ["init", "--preset", "tiny", "--out", str(out), "--temporal-layers", "100000"]
    proc = subprocess.run(
        [sys.executable, "-m", "storm_vlm", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert_one_line_error((proc.returncode, proc.stdout, proc.stderr), "'--temporal-layers'")
    assert "less than or equal to 64 (see `python -m storm_vlm init --help`)" in proc.stderr and not out.exists()
