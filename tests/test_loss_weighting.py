"""The loss is the mean over the global batch's target tokens: batch 8 = 2 × 4 accumulation = 2 processes × 4.

Answers of very different lengths make the per-micro-batch token counts differ, so a mean of
per-micro-batch means (or of per-process means) would weight the samples differently. The
gradients the optimizer sees are captured by a global optimizer step pre-hook, all through ``train()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from storm_vlm.synth import make_motion_qa
from storm_vlm.train import load_recipe, train

# one sample's answer is 12 words: whichever 4 + 4 split the shuffle makes, the halves' token counts differ
REPEATS = [1, 1, 2, 1, 3, 1, 1, 12]


def make_data(root: Path) -> Path:
    make_motion_qa(root, num_samples=8, num_frames=8, size=32, questions=("color",))
    samples = json.loads((root / "train.json").read_text())
    for sample, n in zip(samples, REPEATS, strict=True):
        answer = sample["conversations"][1]
        answer["value"] = " ".join([answer["value"]] * n)
    (root / "train.json").write_text(json.dumps(samples))
    return root


def recipe(data: Path, out: Path, batch_size: int, grad_accum: int):
    return load_recipe(
        "configs/tiny-stage2.yaml",
        [
            "model=null",
            "init.preset=tiny",
            f"data.json={data / 'train.json'}",
            f"data.media_root={data}",
            "data.num_frames=4",
            f"optim.batch_size={batch_size}",
            f"optim.grad_accum={grad_accum}",
            "optim.max_steps=1",
            "optim.max_grad_norm=0",  # no clipping: the hook sees the raw gradient
            f"output_dir={out}",
        ],
    )


def train_and_capture(data: Path, out: Path, batch_size: int, grad_accum: int) -> torch.Tensor:
    """One optimizer step of ``train()``; every trainable gradient the optimizer saw, flattened."""
    grads: list[torch.Tensor] = []

    def hook(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        train(recipe(data, out, batch_size, grad_accum))
    finally:
        handle.remove()
    assert len(grads) == 1
    return grads[0].detach().clone()


def logged_loss(out: Path) -> float:
    return json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]


def test_batch_8_equals_2x4_accumulation_equals_2_processes_x_4(tmp_path):
    data = make_data(tmp_path / "data")
    one = train_and_capture(data, tmp_path / "b8", batch_size=8, grad_accum=1)
    accum = train_and_capture(data, tmp_path / "a2", batch_size=4, grad_accum=2)

    # the same file run by `accelerate launch` on 2 CPU processes (gloo DDP); rank 0 saves the gradient
    grads_file = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           __file__, str(data), str(tmp_path / "ddp"), str(grads_file)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    saved = torch.load(grads_file)
    assert saved["processes"] == 2  # really two processes, not one
    ddp = saved["grads"]

    assert one.abs().max() > 1e-3  # a real gradient, not zeros
    for name, other in (("2x4 accumulation", accum), ("2 processes x 4", ddp)):
        diff = float((other - one).abs().max())
        assert diff <= 1e-6, f"{name}: max |grad - grad(batch 8)| = {diff:.3g}"
    # the logged loss is the token mean of the whole global batch
    losses = [logged_loss(tmp_path / name) for name in ("b8", "a2", "ddp")]
    assert max(losses) - min(losses) <= 1e-6, losses


def _ddp_worker(data: str, out: str, grads_file: str) -> None:
    grads = train_and_capture(Path(data), Path(out), batch_size=4, grad_accum=1)
    if os.environ["RANK"] == "0":  # train() ends the process group: ask the launcher's environment
        torch.save({"grads": grads, "processes": int(os.environ["WORLD_SIZE"])}, grads_file)


if __name__ == "__main__":
    _ddp_worker(*sys.argv[1:4])
