"""`storm-vlm demo`: fresh clips, answers next to the truth, compression settings side by side."""

from __future__ import annotations

from rich.console import Console

from storm_vlm.demo import DEMO_MODEL, run_demo
from storm_vlm.synth import TASKS


def test_demo_runs_on_fresh_clips(tmp_path):
    console = Console(record=True, width=160)
    rows = run_demo(num_frames=8, seed=123, console=console)
    assert [r["task"] for r in rows] == list(TASKS)
    text = console.export_text()
    assert "fresh clips (seed 123" in text and "T.Pool + T.Sampling" in text and "32768" in text
    if not (DEMO_MODEL / "config.json").is_file():
        assert "random" in text


def test_shipped_demo_model_beats_twice_chance_on_fresh_questions(tmp_path):
    """Done criterion of the demo model: 200 questions from the test seed space, 4 options each."""
    from storm_vlm.eval import run_benchmark
    from storm_vlm.synth import make_suite

    assert (DEMO_MODEL / "model.safetensors").stat().st_size < 20 * 2**20
    make_suite(tmp_path / "test", split="test", num_samples=200, num_frames=16)
    results = run_benchmark(DEMO_MODEL, "synthetic", tmp_path / "test", [16], out=tmp_path / "eval", device="cpu")
    overall = results[16]["overall"]
    assert overall["answered"] == 200 and overall["accuracy"] >= 2 * 0.25
