"""A saved model directory loads through transformers alone (trust_remote_code), storm-vlm blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from storm_vlm.presets import build_tiny

from .conftest import random_frames

# Any import of storm_vlm in the child process fails: the directory's own code must be enough.
LOADER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "storm_vlm" or name.startswith("storm_vlm."):
                raise ImportError("storm_vlm is blocked in this process")

    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    directory, inputs_path, out_path = sys.argv[1:4]
    config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True).eval()
    body = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    inputs = torch.load(inputs_path)
    frames = inputs.pop("frames")
    remade = processor(text=[processor.build_prompt("what?")], videos=[frames.numpy()], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        body_logits = model.lm_head(body(**inputs).last_hidden_state)
    torch.save({"logits": logits, "config": type(config).__module__, "model": type(model).__module__,
                "processor": type(processor).__module__, "remade": dict(remade),
                "body": type(body).__name__, "body_logits": body_logits,
                "full": type(model).__name__}, out_path)
    assert not any(m == "storm_vlm" or m.startswith("storm_vlm.") for m in sys.modules)
    """
)


def test_a_saved_model_loads_without_storm_vlm(tmp_path):
    model, processor = build_tiny()
    model.eval()
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_storm.StormModel"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_storm.StormForConditionalGeneration"
    assert (directory / "modeling_storm.py").is_file() and (directory / "README.md").is_file()

    frames = random_frames(4, 32)
    inputs = dict(processor(text=[processor.build_prompt("what?")], videos=[frames]))
    torch.save({**inputs, "frames": torch.from_numpy(frames)}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    (tmp_path / "load.py").write_text(LOADER)
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, str(tmp_path / "load.py"), str(directory), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300, env=env,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["config"].startswith("transformers_modules.") and out["model"].startswith("transformers_modules.")
    assert (out["full"], out["body"]) == ("StormForConditionalGeneration", "StormModel")
    assert out["processor"].startswith("transformers_modules.")
    assert torch.equal(out["logits"], expected)
    assert torch.equal(out["body_logits"], expected)
    assert set(out["remade"]) == set(inputs)  # the remote processor makes the same inputs
    for key, value in inputs.items():
        assert torch.equal(out["remade"][key], value), key


def test_the_installed_package_still_loads_its_own_classes(tmp_path):
    """With storm_vlm imported, a directory that carries code loads the package's classes (no prompt)."""
    from transformers import AutoModel

    from storm_vlm import StormForConditionalGeneration, StormModel

    model, _ = build_tiny()
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is StormModel
    assert type(StormForConditionalGeneration.from_pretrained(tmp_path)) is StormForConditionalGeneration
