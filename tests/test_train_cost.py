"""The analytic training-memory estimate (storm_vlm.bench.train_memory): its arithmetic, fast."""

from __future__ import annotations

import pytest
import torch

from storm_vlm.bench.train_memory import activation_bytes, estimate, parameter_count, recipe_estimates
from storm_vlm.modeling.modeling_storm import StormForConditionalGeneration
from storm_vlm.presets import preset_config
from storm_vlm.train.stages import configure_stage


def test_parameter_count_equals_the_built_model() -> None:
    """The meta-device count is the count of the model the config really builds (tiny: fast)."""
    config = preset_config("tiny")
    model = StormForConditionalGeneration(config)
    configure_stage(model, 2)
    total, trainable, largest = parameter_count(config, stage=2)
    assert total == sum(p.numel() for p in model.parameters())
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < largest < total


def test_small_parameter_count() -> None:
    """The small preset (the benchmark's model): the same count on meta as built for real."""
    config = preset_config("small")
    with torch.device("cpu"):
        model = StormForConditionalGeneration(config)
    assert parameter_count(config)[0] == sum(p.numel() for p in model.parameters())


def test_checkpointing_lowers_activations_and_states_shard() -> None:
    config = preset_config("small")
    counts = (800, 640, 100)
    est = estimate(config, "x", frames=32, temporal_pool=4, gpus=8, counts=counts)
    assert est.states == pytest.approx((2 * 800 + 14 * 640) / 8)  # bf16 weights; bf16 grads + fp32 master, m, v
    assert est.gathered == 200
    assert sum(est.activations_ckpt.values()) < sum(est.activations.values())
    assert est.total_ckpt < est.total
    # head and projector are not checkpointed: the same either way
    assert est.activations_ckpt["head"] == est.activations["head"]
    assert est.activations_ckpt["projector"] == est.activations["projector"]


def test_activations_scale() -> None:
    """Without checkpointing the layer terms are linear in tokens: twice the frames, twice the bytes;
    k = 4 divides only the LLM's tokens, never the vision tower's or the Mamba module's."""
    config = preset_config("small")
    a16, a32 = activation_bytes(config, 16, text_tokens=0), activation_bytes(config, 32, text_tokens=0)
    for part in ("vision", "temporal", "llm", "projector", "head"):
        assert a32[part] == pytest.approx(2 * a16[part])
    k4 = activation_bytes(config, 32, temporal_pool=4, text_tokens=0)
    assert k4["vision"] == a32["vision"] and k4["temporal"] == a32["temporal"]
    assert k4["llm"] == pytest.approx(a32["llm"] / 4)


def test_7b_recipes() -> None:
    """Both 7B recipes give 8192 visual tokens to the LLM; checkpointing is what makes them fit."""
    rows = {r["name"]: r for r in recipe_estimates()}
    assert set(rows) == {"7b-stage2", "7b-stage3"}
    assert rows["7b-stage2"]["llm_tokens"] == rows["7b-stage3"]["llm_tokens"] == 8192 + 256
    assert 7.5e9 < rows["7b-stage2"]["params"] < 9e9
    for r in rows.values():
        assert r["total_ckpt"] < 80 * 2**30 < r["total"]
