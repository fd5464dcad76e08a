"""The training loop: stage freezing, exact resume, LoRA, two processes, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from storm_vlm.synth import make_motion_qa
from storm_vlm.train import load_recipe, train
from storm_vlm.train.recipe import RecipeError
from storm_vlm.train.stages import configure_stage, module_of

from .conftest import launch_overrides, tiny_train_overrides, train_log


def recipe(data, out, *overrides):
    return load_recipe("configs/tiny-stage2.yaml", ["model=null", *tiny_train_overrides(data, out, *overrides)])


def weights_by_module(path):
    groups: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "projector": {}, "llm": {}}
    for name, tensor in load_file(path / "model.safetensors").items():
        groups[module_of(name)][name] = tensor
    return groups


def changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_stage1_freezes_vision_and_llm_stage2_trains_all(data, tmp_path):
    torch.manual_seed(0)
    start = tmp_path / "init"
    result = train(recipe(data, start, "optim.max_steps=1", "optim.lr=1e-12"))
    before = weights_by_module(result.final_dir)
    s1 = train(recipe(data, tmp_path / "s1", "stage=1", "init=null", f"model={start / 'final'}"))
    after1 = weights_by_module(s1.final_dir)
    assert not changed(before["vision"], after1["vision"])  # bit-identical
    assert not changed(before["llm"], after1["llm"])
    assert changed(before["projector"], after1["projector"])
    s2 = train(recipe(data, tmp_path / "s2", "stage=2", "init=null", f"model={s1.final_dir}"))
    after2 = weights_by_module(s2.final_dir)
    for module in ("vision", "projector", "llm"):
        assert changed(after1[module], after2[module]), module
    log = train_log(tmp_path / "s2")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(k in log[0] for k in ("loss", "lr", "tokens_per_s", "samples_per_s", "accuracy"))


def test_resume_gives_the_same_losses(data, tmp_path):
    common = ("optim.max_steps=10", "optim.grad_accum=2", "save_every=1", "keep_last=2", "optim.batch_size=3")
    full = train(recipe(data, tmp_path / "full", *common))
    interrupted = tmp_path / "cut"
    stopped = train(recipe(data, interrupted, *common), stop_after_steps=7)
    assert stopped.final_dir is None and stopped.steps == 7
    assert len(list((interrupted / "checkpoints").glob("step-*"))) == 2  # keep_last
    resumed = train(recipe(data, interrupted, *common, "resume=true"))
    assert resumed.steps == 10

    def losses(path):
        return {r["step"]: r["loss"] for r in train_log(path)}

    a, b = losses(tmp_path / "full"), losses(interrupted)
    assert sorted(b) == list(range(1, 11))
    for step in range(1, 11):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    assert full.final_dir.is_dir() and resumed.final_dir.is_dir()


def test_lora_trains_adapters_and_saves_a_plain_model(data, tmp_path):
    pytest.importorskip("peft")
    result = train(recipe(data, tmp_path / "lora", "lora={r: 4, alpha: 8}", "optim.max_steps=2"))
    names = load_file(result.final_dir / "model.safetensors").keys()
    assert not any("lora_" in n or "base_model" in n for n in names)  # merged into the LLM
    from storm_vlm import StormForConditionalGeneration

    StormForConditionalGeneration.from_pretrained(result.final_dir)


def test_two_processes_match_one(data, tmp_path):
    """accelerate launch --num_processes 2 on CPU (gloo): same global batch, losses close."""
    overrides = launch_overrides(data)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "storm_vlm.cli", "train", "configs/tiny-stage2.yaml",
           *overrides, "optim.batch_size=2", f"output_dir={tmp_path / 'ddp'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for line in ("final loss", "saved ", "stage 2: trainable"):  # only the main process prints
        assert proc.stdout.count(line) == 1, proc.stdout
    train(load_recipe("configs/tiny-stage2.yaml", [*overrides, "optim.batch_size=4", f"output_dir={tmp_path / 'one'}"]))

    records = train_log(tmp_path / "ddp")
    two, one = [r["loss"] for r in records], [r["loss"] for r in train_log(tmp_path / "one")]
    assert all(r["processes"] == 2 for r in records)  # really two processes, not one
    assert len(two) == len(one) == 3
    for a, b in zip(two, one):
        assert abs(a - b) <= 0.05 * abs(b), (two, one)


def test_train_cli_bad_recipe_is_one_line(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("stage: 2\nmodel: /nonexistent\ndata: {json: x.json}\n")
    proc = subprocess.run([sys.executable, "-m", "storm_vlm.cli", "train", str(bad), "optim.lr=oops"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "optim.lr must be float" in proc.stderr and "Traceback" not in proc.stderr


def test_overfit_then_ask_gives_the_trained_answers(tmp_path):
    """A tiny run memorises a small video QA set whose answers need the video; `ask` repeats them."""
    data = tmp_path / "colors"
    make_motion_qa(data, num_samples=8, num_frames=8, size=32, questions=("color",), seed=1)
    result = train(recipe(data, tmp_path / "fit", "optim.max_steps=120", "optim.batch_size=4", "optim.lr=5e-3"))
    assert result.last_accuracy >= 0.95
    from typer.testing import CliRunner

    from storm_vlm.cli import app

    samples = json.loads((data / "train.json").read_text())
    for sample in samples[:4]:
        args = ["ask", str(result.final_dir), str(data / sample["video"]), "What colour is the square?",
                "--frames", "4", "--max-new-tokens", "3"]  # fmt: skip
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        assert out.output.strip().splitlines()[-1].endswith(sample["conversations"][1]["value"]), out.output


def test_images_and_videos_with_workers_checkpointing_and_bf16(data, tmp_path):
    from PIL import Image

    samples = json.loads((data / "train.json").read_text())[:4]
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
    samples.append({"id": "img", "image": str(tmp_path / "red.png"), "conversations": turns})
    samples.append({"id": "bad", "video": "missing.mp4", "conversations": samples[0]["conversations"]})
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(samples))
    result = train(
        recipe(
            data,
            tmp_path / "mix",
            f"data.json={mixed}",
            "data.num_workers=2",
            "gradient_checkpointing=true",
            "mixed_precision=bf16",
            "optim.max_steps=3",
            "optim.batch_size=3",
        )
    )
    assert result.final_dir.is_dir() and len(result.skipped) >= 1 and "missing.mp4" in result.skipped[0]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=.nan", "optim.lr must be a finite number"),
        ("optim.lr=.inf", "optim.lr must be a finite number"),
        ("optim.llm_lr=-1", "optim.llm_lr must be a finite number"),
        ("optim.max_steps=-5", "optim.max_steps must be >= 1"),
        ("optim.epochs=.inf", "optim.epochs must be a finite number"),
        ("log_every=0", "log_every must be >= 1"),
        ("data.synth.samples=100000000000", "data.synth.samples must be 1 to"),
        ("data.synth.size=100000", "data.synth.size must be 8 to"),
    ],
)
def test_recipes_that_cannot_train_are_refused(data, tmp_path, override, message):
    extra = ["data.json=''", "data.synth.tasks=[needle]"] if override.startswith("data.synth") else []
    with pytest.raises(RecipeError, match=message):
        recipe(data, tmp_path / "r", *extra, override)


def test_a_diverging_run_stops_without_a_final_model(data, tmp_path):
    with pytest.raises(RecipeError, match="training diverged"):
        train(recipe(data, tmp_path / "nan", "optim.lr=1e30", "optim.max_grad_norm=0", "optim.warmup_ratio=0"))
    assert not (tmp_path / "nan" / "final").exists()


def _checkpointing_grads(parts: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Every parameter's gradient after one training forward/backward of the tiny model, and how many
    times a block of each part ran forward (a checkpointed block runs again in the backward)."""
    from storm_vlm.presets import build_tiny
    from storm_vlm.train.loop import enable_checkpointing

    from .conftest import random_frames

    torch.manual_seed(0)
    model, processor = build_tiny()
    model.train()
    configure_stage(model, 2)  # every part trains; vision layers that never reach the projector are frozen
    enable_checkpointing(model, parts)
    body = model.model
    # a norm inside each part's first block: the block's recompute calls it again (transformers checkpoints the
    # block's forward, so hooks on the block itself run once)
    blocks = {"vision": body.vision_tower.encoder.layers[0].layer_norm1, "temporal": body.temporal.layers[0].norm,
              "llm": body.language_model.layers[0].input_layernorm}  # fmt: skip
    calls = dict.fromkeys(blocks, 0)
    for part, block in blocks.items():
        block.register_forward_hook(lambda *_, part=part: calls.__setitem__(part, calls[part] + 1))
    inputs = processor(processor.build_prompt("What happens first?"), videos=[random_frames(4)], training=True)
    torch.manual_seed(1)  # the same dropout / noise draws with and without checkpointing
    model(**inputs, labels=inputs["input_ids"].clone()).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == {n for n, p in model.named_parameters() if p.requires_grad}  # every trainable one
    return grads, calls


def test_gradient_checkpointing_per_part_gives_the_same_gradient_for_every_parameter():
    reference, calls = _checkpointing_grads(())
    assert calls == {"vision": 1, "temporal": 1, "llm": 1}
    for parts in (("vision",), ("temporal",), ("llm",), ("vision", "temporal", "llm")):
        grads, calls = _checkpointing_grads(parts)
        assert calls == {part: 2 if part in parts else 1 for part in calls}, (parts, calls)  # recomputed: checkpointed
        assert grads.keys() == reference.keys(), parts
        for name, grad in reference.items():
            torch.testing.assert_close(
                grads[name], grad, rtol=1e-5, atol=1e-7, msg=lambda m, n=name, p=parts: f"{p} {n}: {m}"
            )


def test_gradient_checkpointing_names_a_part_the_model_lacks(tiny_mlp):
    from storm_vlm.train.loop import enable_checkpointing

    model, _ = tiny_mlp
    enable_checkpointing(model, ("temporal",), required=False)  # gradient_checkpointing: true skips it
    with pytest.raises(RecipeError, match="no temporal module"):
        enable_checkpointing(model, ("temporal",))
