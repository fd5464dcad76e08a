"""Load and abuse test of `storm-vlm serve`, on loopback, bounded, stopping by itself.

Run:  .venv/bin/python benchmarks/serve_load.py [--requests 32] [--stream-frames 1000]

Starts the server on 127.0.0.1 (a free port) with a tiny causal model, then:
1. a burst of --requests concurrent chat requests mixing valid ones, malformed JSON, wrong types,
   oversized uploads, path traversal and remote URLs — prints latency percentiles per kind, status
   counts, and checks every valid request got 200 and every bad one a 4xx;
2. a live stream fed --stream-frames frames in chunks of 10 — prints the per-chunk cost at chunks
   1, 10 and 100 and the server's memory before and after;
and reports the server's resident memory before and after, then stops it.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storm_vlm.synth import motion_clip
from storm_vlm.video import write_video


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(url: str, body: bytes, timeout: float = 300) -> tuple[int, float]:
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            return r.status, time.perf_counter() - start
    except urllib.error.HTTPError as err:
        return err.code, time.perf_counter() - start


def chat(url: str) -> bytes:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What happens?"}]
    return json.dumps({"messages": [{"role": "user", "content": content}], "max_tokens": 8, "frames": 8}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--stream-frames", type=int, default=1000)
    args = parser.parse_args()
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="storm-serve-load-"))
    media = work / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    write_video(media / "clip.mp4", motion_clip("red", "right", 16, 32, rng), fps=8)
    write_video(media / "chunk.mp4", motion_clip("blue", "up", 10, 32, rng), fps=10)
    model = work / "tiny-causal"
    subprocess.run([sys.executable, "-m", "storm_vlm.cli", "init", "--preset", "tiny", "--no-bidirectional",
                    "--out", str(model)], check=True, capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "storm_vlm.cli",
            "serve",
            str(model),
            "--port",
            str(port),
            "--media-root",
            str(media),
            "--max-queue",
            str(args.requests),
            "--max-upload-mb",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        post(base + "/v1/chat/completions", chat("clip.mp4"))  # warm-up
        rss_before = rss_mib(server.pid)

        big = "data:video/mp4;base64," + base64.b64encode(b"\0" * (2 * 2**20)).decode()
        kinds = {
            "valid": chat("clip.mp4"),
            "malformed-json": b"{not json",
            "wrong-type": json.dumps({"messages": "hello"}).encode(),
            "oversized": chat(big),
            "traversal": chat("../../etc/passwd"),
            "remote-url": chat("http://127.0.0.1:1/x.mp4"),
        }
        names = list(kinds)
        jobs = [names[i % len(names)] for i in range(args.requests)]
        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            results = list(pool.map(lambda k: (k, *post(base + "/v1/chat/completions", kinds[k])), jobs))
        print(f"burst of {args.requests} concurrent requests ({', '.join(names)})\n")
        print(f"{'kind':<15} {'n':>3} {'statuses':<14} {'p50 s':>7} {'p90 s':>7} {'max s':>7}")
        ok = True
        for kind in names:
            rows = [(s, t) for k, s, t in results if k == kind]
            statuses = sorted({s for s, _ in rows})
            times = sorted(t for _, t in rows)
            p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
            print(f"{kind:<15} {len(rows):>3} {','.join(map(str, statuses)):<14} "
                  f"{statistics.median(times):7.3f} {p90:7.3f} {times[-1]:7.3f}")  # fmt: skip
            ok &= all(s == 200 for s, _ in rows) if kind == "valid" else all(400 <= s < 500 for s, _ in rows)
        alive = urllib.request.urlopen(base + "/health", timeout=5).status == 200
        rss_after = rss_mib(server.pid)
        print(f"\nevery valid request answered and every bad one 4xx: {ok}; server alive: {alive}")
        print(f"server RSS: {rss_before:.0f} MiB before the burst, {rss_after:.0f} MiB after")

        sid = json.loads(urllib.request.urlopen(urllib.request.Request(
            base + "/v1/streams", data=b'{"temporal_pool": 2}', headers={"content-type": "application/json"}
        )).read())["id"]  # fmt: skip
        frames_body = json.dumps({"video_url": {"url": "chunk.mp4"}}).encode()
        chunks = max(1, args.stream_frames // 10)
        costs = []
        rss_stream_start = rss_mib(server.pid)
        for _ in range(chunks):
            status, seconds = post(f"{base}/v1/streams/{sid}/frames", frames_body)
            assert status == 200, status
            costs.append(seconds)
        status, ask_s = post(f"{base}/v1/streams/{sid}/ask", json.dumps({"question": "What happened?"}).encode())
        rss_stream_end = rss_mib(server.pid)
        print(f"\nlive stream: {chunks * 10} frames in {chunks} chunks of 10; ask -> {status} in {ask_s:.2f} s")
        for c in (1, 10, 100):
            if c <= chunks:
                window = costs[c - 1 : c + 4]
                print(f"  chunk {c:>4}: {1000 * statistics.median(window):7.1f} ms per chunk (median of {len(window)})")
        print(f"  server RSS: {rss_stream_start:.0f} MiB at the start, {rss_stream_end:.0f} MiB after")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
