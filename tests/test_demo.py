"""`storm-vlm demo`: fresh clips, answers next to the truth, compression settings side by side."""

from __future__ import annotations

from rich.console import Console

from storm_vlm.demo import DEMO_MODEL, run_demo
from storm_vlm.synth import TASKS


def test_demo_runs_on_fresh_clips(tmp_path):
    console = Console(record=True, width=160)
    rows = run_demo(num_frames=8, seed=123, console=console)
    assert [r["task"] for r in rows] == list(TASKS) and all("cut" in r for r in rows)
    text = console.export_text()
    assert "scan cut" in text
    assert "fresh clips (seed 123" in text and "T.Pool + T.Sampling" in text and "32768" in text
    if not (DEMO_MODEL / "config.json").is_file():
        assert "random" in text


def test_shipped_demo_model_beats_chance_on_every_task_and_uses_its_scan(tmp_path):
    """Done criterion of the demo model: 200 fresh questions (50 per task, balanced answers, 4
    options), every task above chance by its 95% interval; cutting the scan at frame boundaries
    costs it the order task, which no single frame can answer."""
    import math

    from storm_vlm.eval import run_benchmark
    from storm_vlm.synth import make_suite

    assert (DEMO_MODEL / "model.safetensors").stat().st_size < 20 * 2**20
    make_suite(tmp_path / "test", split="test", num_samples=200, num_frames=16)
    results = run_benchmark(DEMO_MODEL, "synthetic", tmp_path / "test", [16], out=tmp_path / "eval", device="cpu",
                            scoring="loglik", scan_cut=True)[16]  # fmt: skip
    assert results["overall"]["answered"] == 200
    for task, acc in results["per_task"].items():
        p, n = acc["accuracy"], acc["answered"]
        assert p - 1.96 * math.sqrt(p * (1 - p) / n) > 0.25, (task, p)
    usage = results["mamba_usage"]["per_task"]
    assert usage["order"]["accuracy_cut"] < usage["order"]["accuracy"] - 0.2
    assert usage["color"]["changed"] == 0  # one frame answers it: the cut changes nothing
