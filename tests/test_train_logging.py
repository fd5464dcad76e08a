"""Training logs through accelerate's trackers (tensorboard), the console line with ETA, recipe keys."""

from __future__ import annotations

import importlib.util
import io

import pytest
from rich.console import Console

from storm_vlm.train import load_recipe, train
from storm_vlm.train.recipe import RecipeError

from .conftest import tiny_train_overrides, train_log

SCALARS = ("loss", "accuracy", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "visual_tokens_per_sample")


def recipe(data, out, *overrides):
    return load_recipe("configs/tiny-stage2.yaml", ["model=null", *tiny_train_overrides(data, out, *overrides)])


def test_tensorboard_run_writes_every_scalar_at_every_step(data, tmp_path):
    pytest.importorskip("tensorboard", reason="log_with tensorboard needs the tensorboard package (the dev extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    buffer = io.StringIO()
    out = tmp_path / "tb"
    result = train(recipe(data, out, "log_with=tensorboard"), console=Console(file=buffer, width=200))
    assert result.steps == 4 and result.is_main_process
    events = EventAccumulator(str(out / "logs" / "storm-vlm"))
    events.Reload()
    log = train_log(out)
    for name in SCALARS:
        written = events.Scalars(f"train/{name}")
        assert [e.step for e in written] == [1, 2, 3, 4], name
        for event, record in zip(written, log):  # tensorboard keeps float32
            assert event.value == pytest.approx(record[name], rel=1e-6, abs=1e-6), name
    assert all(r["grad_norm"] > 0 and r["visual_tokens_per_sample"] > 0 for r in log)
    assert all(0 < r["lr"] for r in log[:3])
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("step ")]
    assert len(lines) == 4 and all("steps/s eta " in line for line in lines), buffer.getvalue()


def test_no_tracker_by_default_and_none_writes_no_logs(data, tmp_path):
    assert load_recipe("configs/tiny-stage2.yaml").log_with == []
    assert load_recipe("configs/tiny-stage2.yaml", ["log_with=none"]).log_with == []
    result = train(recipe(data, tmp_path / "plain", "optim.max_steps=1"))
    assert result.steps == 1 and not (tmp_path / "plain" / "logs").exists()


def test_a_tracker_without_its_package_is_refused_before_training(data, tmp_path):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: nothing to refuse")
    with pytest.raises(RecipeError, match="log_with wandb needs the wandb package"):
        train(recipe(data, tmp_path / "w", "log_with=wandb"))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("override", "parts"),
    [
        ("gradient_checkpointing=false", ()),
        ("gradient_checkpointing=true", ("vision", "temporal", "llm")),
        ("gradient_checkpointing=llm", ("llm",)),
        ("gradient_checkpointing=[llm, vision]", ("vision", "llm")),
        ("gradient_checkpointing=temporal,vision", ("vision", "temporal")),
    ],
)
def test_gradient_checkpointing_is_a_flag_or_parts(override, parts):
    assert load_recipe("configs/tiny-stage2.yaml", [override]).checkpointed_parts == parts


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gradient_checkpointing=eyes", "gradient_checkpointing: unknown 'eyes'"),
        ("gradient_checkpointing=3", "gradient_checkpointing must be true, false or a list"),
        ("gradient_checkpointing=[llm, llm]", "names one twice"),
        ("log_with=mlflow", "log_with: unknown 'mlflow' (choose among tensorboard, wandb)"),
        ("log_with=3", "log_with must be a list"),
    ],
)
def test_bad_checkpointing_or_tracker_names_are_one_line(override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_recipe("configs/tiny-stage2.yaml", [override])
