"""Bench: analytic FLOPs against torch's flop counter, token counts, the 7B shapes, a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from storm_vlm.bench import CONFIGS, preset_config, run_bench
from storm_vlm.bench.flops import (
    conv_flops,
    llm_flops,
    projector_flops,
    scan_flops,
    temporal_flops,
    vision_flops,
)
from storm_vlm.bench.report import write_report
from storm_vlm.modeling.reduction import ReductionSettings, num_visual_tokens


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("projector", ["storm", "mlp"])
def test_analytic_flops_match_the_flop_counter(projector):
    from storm_vlm import StormForConditionalGeneration

    config = preset_config("tiny", projector)
    model = StormForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")  # the counter does not see CPU SDPA kernels; eager matmuls it does
    frames = 3
    pixels = torch.randn(1, frames, 3, 32, 32)
    with torch.no_grad():
        feats = model.model.encode_frames(pixels[0])
        assert counted(lambda: model.model.encode_frames(pixels[0])) == pytest.approx(
            vision_flops(config, frames), rel=0.05
        )
        grid = config.patch_grid
        assert counted(lambda: model.projector(feats, grid)) == pytest.approx(projector_flops(config, frames), rel=0.05)
        tokens = model.projector(feats, grid).view(1, frames, -1, config.hidden_size)
        # numba's fused scan is invisible to the counter, and in CPU inference the fused conv too
        expected_temporal = temporal_flops(config, frames) - scan_flops(config, frames) - conv_flops(config, frames)
        assert counted(lambda: model.apply_temporal(tokens)) == pytest.approx(expected_temporal, rel=0.01, abs=1)
        seq = 40
        embeds = torch.randn(1, seq, config.hidden_size)
        prefill, _ = llm_flops(config, seq)
        got = counted(lambda: model(inputs_embeds=embeds, logits_to_keep=1))
        assert got == pytest.approx(prefill, rel=0.05)


def test_7b_shapes_match_the_paper():
    config = preset_config("7b-shapes")
    assert config.token_grid == (16, 16)
    expected = {"none": 32768, "k4": 8192, "k4s2": 4096, "k4s2p2": 1024}
    for name, tokens in expected.items():
        assert num_visual_tokens(128, config.token_grid, CONFIGS[name][1]) == tokens
    cells = run_bench("7b-shapes", [128], ["none", "k4s2"], measure=True)  # shapes only: never measured
    assert [c.visual_tokens for c in cells] == [32768, 4096] and cells[0].latency_s is None
    assert cells[0].flops["llm_prefill"] > 10 * cells[1].flops["llm_prefill"] / 2


def test_small_preset_has_the_papers_proportions():
    from storm_vlm import StormForConditionalGeneration

    model = StormForConditionalGeneration(preset_config("small")).eval()
    vision = sum(p.numel() for p in model.vision_tower.parameters())
    llm = sum(p.numel() for p in model.language_model.parameters()) + sum(
        p.numel() for p in model.lm_head.parameters() if p is not model.get_input_embeddings().weight
    )
    assert 14 <= llm / vision <= 20
    assert model.config.token_grid == (8, 8)


def test_tiny_bench_run_and_report(tmp_path):
    cells = run_bench("tiny", [8], ["none", "k4s2"], workdir=tmp_path / "work")
    for cell in cells:
        settings = CONFIGS[cell.config][1]
        assert cell.visual_tokens == num_visual_tokens(8, (4, 4), settings)  # measured == formula (checked inside)
        assert set(cell.latency_s) == {"decode", "vision", "temporal", "prefill", "decoding"}
        assert cell.decode_tokens_per_s > 0 and cell.peak_rss_mib >= 0
    notes = write_report(cells, tmp_path / "out", "tiny")
    assert (tmp_path / "out" / "bench.md").read_text().count("| k4s2 |") == 1
    assert json.loads((tmp_path / "out" / "bench.json").read_text())[0]["config"] == "none"
    for name in ("tokens_vs_frames.png", "latency_vs_frames.png", "stages.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert any("none / k4s2" in n for n in notes)
    budget = run_bench("tiny", [16], ["none"], token_budget=40, measure=False)[0]
    assert budget.visual_tokens <= 40 and budget.settings == str(ReductionSettings(4, 1, 2))
    assert all(c.runs == 1 for c in cells) and "one timed run per cell" in (tmp_path / "out" / "bench.md").read_text()


def test_bench_repeat_reports_stage_medians(tmp_path):
    (cell,) = run_bench("tiny", [4], ["k4s2"], workdir=tmp_path / "work", repeat=3)
    assert cell.runs == 3 and cell.end_to_end_s == pytest.approx(
        sum(cell.latency_s[k] for k in ("vision", "temporal", "prefill", "decoding"))
    )
    write_report([cell], tmp_path / "out", "tiny")
    assert "stage medians of 3 timed runs per cell" in (tmp_path / "out" / "bench.md").read_text()
