"""`storm-vlm repro`: the batched scorer against a slow one, computed verdicts, and a smoke run."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from storm_vlm.modeling.reduction import ReductionSettings
from storm_vlm.repro import (
    ReproPlan,
    _claims,
    encode_samples,
    option_scores,
    rewrite_report,
    run_repro,
    sampled_indices,
)
from storm_vlm.synth import make_sample


def _slow_scores(model, processor, sample, frames: int, k: int, s: int) -> torch.Tensor:
    """One question at a time through the processor and the model's forward: prompt + option, summed."""
    settings = ReductionSettings(k, 1, s)
    clip = sample.frames[sampled_indices(sample.frames.shape[0], frames)]
    inputs = processor(processor.build_prompt(sample.question), videos=[clip], temporal_pool=k, temporal_sampling=s)
    scores = []
    for option in sample.options:
        ids = processor.tokenizer(option, add_special_tokens=False, return_tensors="pt")["input_ids"]
        full = torch.cat([inputs["input_ids"], ids], 1)
        with torch.no_grad():
            logits = model(
                input_ids=full,
                pixel_values_videos=inputs["pixel_values_videos"],
                temporal_pool=settings.temporal_pool,
                temporal_sampling=settings.temporal_sampling,
            ).logits
        logp = torch.log_softmax(logits[0, -ids.shape[1] - 1 : -1].float(), -1).gather(-1, ids[0][:, None])
        scores.append(float(logp.sum()))
    return torch.tensor(scores)


@pytest.mark.parametrize(("task", "frames", "k", "s"), [("needle", 16, 1, 1), ("count", 16, 4, 2), ("order", 8, 1, 1)])
def test_batched_scores_equal_one_question_at_a_time(tiny, task, frames, k, s):
    model, processor = tiny
    samples = [make_sample(task, "test", 0, i, 16, balanced=True) for i in range(5)]
    encoded = encode_samples(model, processor, samples, sampled_indices(16, frames), batch=2)
    fast = option_scores(model, processor, samples, encoded, k, s, batch=3)
    slow = torch.stack([_slow_scores(model, processor, x, frames, k, s) for x in samples])
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_scan_cut_changes_the_scores_of_storm(tiny):
    model, processor = tiny
    samples = [make_sample("needle", "test", 0, i, 16, balanced=True) for i in range(3)]
    full = option_scores(model, processor, samples, encode_samples(model, processor, samples, range(16)), 1, 1)
    cut = option_scores(model, processor, samples, encode_samples(model, processor, samples, range(16), cut=True), 1, 1)
    assert not torch.allclose(full, cut, atol=1e-7)


def _plan() -> ReproPlan:
    return ReproPlan(steps=2, long_steps=1, test_per_task=4, seeds=[0, 1], batch_size=2, eval_batch=4)


def test_verdicts_are_computed_from_paired_numbers():
    plan = _plan()
    n = len(plan.tasks) * plan.test_per_task
    ones, zeros = [1] * n, [0] * n
    half = [1, 0] * (n // 2)
    correct = {
        "storm/short@16": {0: ones, 1: ones}, "mlp/short@16": {0: half, 1: zeros},            # (a) held
        "storm-k4/short@16-k4": {0: ones, 1: ones}, "mlp-k4/short@16-k4": {0: zeros, 1: zeros},
        "storm/short@16-s2": {0: half, 1: half}, "storm/short@8-every2": {0: half, 1: half},        # (c) a tie
        "storm-k4-long/long@64-k4": {0: zeros, 1: ones}, "storm-k4/long@16-k4": {0: zeros, 1: zeros},
        "mlp-k4-long/long@64-k4": {0: ones, 1: zeros}, "mlp-k4/long@16-k4": {0: zeros, 1: zeros},
    }  # fmt: skip
    claims = {c["claim"][:4]: c for c in _claims(plan, correct)}
    assert claims["(a) "]["established"] and claims["(a) "]["mean"] == pytest.approx(0.75)
    assert claims["(a′)"]["established"]
    # (b): baseline drops 0.5 / 0 (1 - mean(k4)), STORM drops 0: mean 0.25 but seed 1 is 0 → not in every seed
    assert claims["(b) "]["mean"] == pytest.approx(0.25) and not claims["(b) "]["established"]
    assert claims["(c) "]["mean"] == 0 and not claims["(c) "]["established"]
    assert claims["(d) "]["per_seed"] == {0: pytest.approx(-1.0), 1: pytest.approx(1.0)}
    assert not claims["(d) "]["established"]


def test_repro_smoke_and_never_overwrites(tmp_path):
    plan = _plan()
    plan.seeds = [0]
    result = run_repro(plan, tmp_path / "report", tmp_path / "work", console=Console(quiet=True))
    report = (tmp_path / "report" / "REPORT.md").read_text()
    for claim in ("(a)", "(a′)", "(b)", "(c)", "(d)"):
        assert claim in report
    for plot in ("claims.png", "tasks.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000
    saved = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(saved["correct"]["storm/short@16"]["0"]) == len(plan.tasks) * plan.test_per_task
    assert set(saved["mamba_usage"]) == {"storm/short@16", "storm-k4/short@16-k4", "storm-k4-long/long@64-k4"}
    assert saved["blind_baseline"] == {"needle": 0.25, "order": 0.25}
    assert result["claims"] and all(isinstance(c["established"], bool) for c in result["claims"])
    assert saved["reach"]["storm (untrained, as built)"]["0"] > 0 and "mlp" not in saved["reach"]
    assert set(saved["reach"]) >= {"storm", "storm-k4", "storm-k4-long"} and not saved["reused_models"]
    with pytest.raises(FileExistsError):
        run_repro(plan, tmp_path / "report", tmp_path / "work", console=Console(quiet=True))
    rewrite_report(tmp_path / "report")  # the report is a function of results.json alone
    assert (tmp_path / "report" / "REPORT.md").read_text() == report
    again = run_repro(plan, tmp_path / "again", tmp_path / "work", console=Console(quiet=True))  # models reused
    assert len(again["reused_models"]) == 6 and again["train_seconds"] == result["train_seconds"]
    assert again["correct"] == result["correct"]
