"""`storm-vlm repro`: a smoke run of the whole pipeline (train four tiny models, evaluate, report)."""

from __future__ import annotations

import json

from rich.console import Console

from storm_vlm.repro import ReproPlan, run_repro


def test_repro_smoke(tmp_path):
    plan = ReproPlan(train_samples=16, test_samples=12, epochs=1, seeds=[0], sweep_frames=[16, 32], batch_size=8)
    result = run_repro(plan, tmp_path / "report", tmp_path / "work", console=Console(quiet=True))
    report = (tmp_path / "report" / "REPORT.md").read_text()
    for claim in ("(a)", "(b)", "(c)", "(d)"):
        assert claim in report
    assert (tmp_path / "report" / "accuracy_vs_frames.png").stat().st_size > 1000
    assert (tmp_path / "report" / "accuracy_vs_tokens.png").stat().st_size > 1000
    scores = json.loads((tmp_path / "report" / "results.json").read_text())["scores"]
    assert set(scores) == {
        "storm/none@16", "storm/s2@16", "storm/raw@8", "mlp/none@16", "mlp/s2@16", "mlp/raw@8",
        "storm-k4/k4@16", "storm-k4/budget@16", "storm-k4/budget@32",
        "mlp-k4/k4@16", "mlp-k4/budget@16", "mlp-k4/budget@32",
    }  # fmt: skip
    assert all(0.0 <= v[0] <= 1.0 for v in scores.values()) and result["summary"]
