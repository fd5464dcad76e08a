"""The shipped accelerate configs: FSDP for real on 2 CPU processes (gloo), DeepSpeed ZeRO-3 as a launch check.

FSDP: ``configs/accelerate/fsdp.yaml`` with only the hardware changed (2 processes, CPU, fp32) is
launched and trains the tiny preset for 3 steps; the losses equal a 1-process run with the same
global batch and the saved model loads. accelerate 1.15 shards with FSDP only on accelerator devices
(``AcceleratorState`` turns ``ACCELERATE_USE_FSDP`` into FSDP for MULTI_GPU / NPU / XPU / ... processes;
CPU processes stay MULTI_CPU, DDP over gloo), so on CPU this checks the config, the launch and the
loop under it, not the sharding itself: the test asserts which one ran. DeepSpeed needs CUDA (its
engine, its ops): on CPU the config is read by accelerate's own launcher code and the settings the
loop relies on are checked. Real FSDP / ZeRO-3 sharding runs only on GPUs (see docs/training.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from storm_vlm.train import load_recipe, train

from .conftest import launch_overrides, train_log

CONFIGS = Path("configs/accelerate")


def test_fsdp_config_on_two_cpu_processes_matches_one_process_and_saves_a_loadable_model(data, tmp_path):
    config = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
    config |= {"num_processes": 2, "use_cpu": True, "mixed_precision": "no"}  # the hardware, nothing else
    cpu_config = tmp_path / "fsdp_cpu.yaml"
    cpu_config.write_text(yaml.safe_dump(config))
    overrides = launch_overrides(data)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cpu_config),
           "-m", "storm_vlm.cli", "train", "configs/tiny-stage2.yaml",
           *overrides, "optim.batch_size=2", f"output_dir={tmp_path / 'fsdp'}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("final loss") == 1, proc.stdout  # the main process only
    one = train(
        load_recipe("configs/tiny-stage2.yaml", [*overrides, "optim.batch_size=4", f"output_dir={tmp_path / 'one'}"])
    )

    sharded, single = train_log(tmp_path / "fsdp"), train_log(tmp_path / "one")
    # FSDP on GPUs; on CPU accelerate runs the FSDP launch as DDP over gloo (see the module docstring)
    expected = "FSDP" if torch.cuda.is_available() else "MULTI_CPU"
    assert all(r["processes"] == 2 and r["distributed"] == expected for r in sharded), sharded
    assert len(sharded) == len(single) == 3
    # The same samples and the same arithmetic; only the order of the gradient sums (a reduction
    # over 2 processes vs one backward over 4 samples) differs, a float32 rounding of ~1e-7 that 3
    # Adam steps carry forward (measured: 1e-7 relative); 1e-4 is 1000x that and 1000x below one
    # step's loss change (~0.4).
    for a, b in zip(sharded, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (sharded, single)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)

    from storm_vlm import StormForConditionalGeneration

    final = tmp_path / "fsdp" / "final"
    StormForConditionalGeneration.from_pretrained(final)  # gathered from the shards into one loadable model
    weights, reference = load_file(final / "model.safetensors"), load_file(one.final_dir / "model.safetensors")
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-3, atol=1e-5, msg=name)


def test_deepspeed_zero3_config_launches_with_what_the_loop_relies_on():
    """accelerate's launcher reads the config into the environment the training processes get."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    path = CONFIGS / "deepspeed_zero3.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == "DEEPSPEED" and config.deepspeed_config["zero_stage"] == 3
    argv = ["--config_file", str(path), "-m", "storm_vlm.cli", "train", "configs/7b-stage2.yaml"]
    args, defaults, mp_from_config = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.use_deepspeed and args.num_processes == 8
    # as accelerate's launch_command does before starting the deepspeed launcher
    fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)  # one node: no command (torchrun's), only the environment
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    # _save_final's accelerator.get_state_dict gathers ZeRO-3 shards only with 16-bit gathering on
    assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    assert env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"] == "none"
    for stage in (1, 2, 3):
        recipe = load_recipe(f"configs/7b-stage{stage}.yaml")
        # under DeepSpeed the engine clips (the loop's clip_grad_norm_ only reads its norm): the same bound
        assert float(env["ACCELERATE_GRADIENT_CLIPPING"]) == recipe.optim.max_grad_norm, stage
        assert env["ACCELERATE_MIXED_PRECISION"] == recipe.mixed_precision, stage
        assert recipe.checkpointed_parts == ("vision", "temporal", "llm"), stage
    if not torch.cuda.is_available():
        return
    pytest.importorskip("deepspeed", reason="pip install 'storm-vlm[deepspeed]'")
    from accelerate.utils import DeepSpeedPlugin

    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            if key.startswith("ACCELERATE_"):
                patch.setenv(key, value)
        plugin = DeepSpeedPlugin()
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3


def test_fsdp_config_wraps_the_blocks_the_model_has():
    """The FSDP units named in the shipped config are the classes of the 7B model's repeated blocks."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert config.distributed_type.value == "FSDP"
    wrapped = set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    assert wrapped == {"Qwen2DecoderLayer", "SiglipEncoderLayer", "TemporalBlock"}
    assert config.fsdp_config["fsdp_activation_checkpointing"] is False  # the recipe's gradient_checkpointing does it
    from storm_vlm.presets import build_tiny

    model, _ = build_tiny()  # the tiny preset has the same block classes (Qwen2 + SigLIP + Mamba)
    assert wrapped <= {type(m).__name__ for m in model.modules()}
