"""Load and abuse test of `storm-vlm serve`, on loopback, bounded, stopping by itself.

Run:  .venv/bin/python benchmarks/serve_load.py [--requests 32] [--stream-frames 1000]

Starts the server on 127.0.0.1 (a free port) with a tiny causal model, then:
1. a burst of --requests concurrent chat requests mixing valid ones with hostile ones (malformed
   JSON, wrong types, oversized uploads, path traversal, remote URLs, an FFmpeg concat playlist
   upload, unbounded sizes, Infinity, placeholder text, null bytes, a question longer than the
   context, a 200 MB Content-Length) while --stalled connections send half a header and stop —
   prints requests by status, latency percentiles per kind (p50/p95 of the valid ones measured
   while the hostile ones run), whether stalled connections were closed, and the server's peak RSS;
   checks every valid request got 200 and every hostile one a 4xx;
2. a live stream fed --stream-frames frames in chunks of 10 — prints the per-chunk cost at chunks
   1, 10 and 100 and the server's memory before and after;
and reports the server's resident memory before and after, then stops it.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
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


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
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


def post_announced(url: str, length: int) -> tuple[int, float]:
    """Announce a ``length``-byte body and send none of it: the server must refuse it unread."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("POST", "/v1/chat/completions")
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(length))
        conn.endheaders()
        return conn.getresponse().status, time.perf_counter() - start
    finally:
        conn.close()


def chat(url: str, text: str = "What happens?", **extra: object) -> bytes:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": text}]
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 8, "frames": 8, **extra}
    return json.dumps(body).encode()


def stall(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send half a request line and stop (slow-header clients)."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    return sockets


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server has closed (a read gives EOF or a reset, not a timeout)."""
    closed = 0
    for s in sockets:
        s.settimeout(2)
        try:
            closed += s.recv(16) == b""
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass  # still open
        s.close()
    return closed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--stream-frames", type=int, default=1000)
    parser.add_argument("--stalled", type=int, default=100, help="Slow-header connections held open.")
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
            "--read-timeout",
            "5",
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
        playlist = "data:video/mp4;base64," + base64.b64encode(b"ffconcat version 1.0\nfile /etc/hostname\n").decode()
        kinds = {
            "valid": chat("clip.mp4"),
            "malformed-json": b"{not json",
            "wrong-type": json.dumps({"messages": "hello"}).encode(),
            "oversized": chat(big),
            "traversal": chat("../../etc/passwd"),
            "remote-url": chat("http://127.0.0.1:1/x.mp4"),
            "playlist": chat(playlist),
            "huge-pool": chat("clip.mp4", temporal_pool=400000),
            "fps-inf": chat("clip.mp4").replace(b'"frames": 8', b'"fps": Infinity'),
            "placeholder": chat("clip.mp4", text="what is <video>?"),
            "null-byte": chat("clip\u0000.mp4"),
            "long-question": chat("clip.mp4", text="x" * 150_000),
        }
        names = [*kinds, "200MB-length"]
        hostile = names[1:]
        jobs = ["valid" if i % 2 == 0 else hostile[(i // 2) % len(hostile)] for i in range(args.requests)]

        def send(kind: str) -> tuple[str, int, float]:
            if kind == "200MB-length":
                return (kind, *post_announced(base, 200 * 2**20))
            return (kind, *post(base + "/v1/chat/completions", kinds[kind]))

        valid_jobs = ["valid"] * jobs.count("valid")
        with ThreadPoolExecutor(max_workers=len(valid_jobs)) as pool:  # the same valid load, alone
            alone = sorted(t for _, _, t in pool.map(send, valid_jobs))
        stalled = stall("127.0.0.1", port, args.stalled)
        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            results = list(pool.map(send, jobs))
        print(f"burst of {args.requests} concurrent requests ({len(names)} kinds), {args.stalled} stalled "
              "connections open\n")  # fmt: skip
        print(f"{'kind':<15} {'n':>3} {'statuses':<14} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
        ok = True
        for kind in names:
            rows = [(s, t) for k, s, t in results if k == kind]
            if not rows:
                continue
            statuses = sorted({s for s, _ in rows})
            times = sorted(t for _, t in rows)
            p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
            print(f"{kind:<15} {len(rows):>3} {','.join(map(str, statuses)):<14} "
                  f"{statistics.median(times):7.3f} {p95:7.3f} {times[-1]:7.3f}")  # fmt: skip
            ok &= all(s == 200 for s, _ in rows) if kind == "valid" else all(400 <= s < 500 for s, _ in rows)
        mixed = sorted(t for k, _, t in results if k == "valid")

        def pct(times: list[float], q: float) -> float:
            return times[min(len(times) - 1, int(q * len(times)))]

        print(f"\n{len(mixed)} valid requests, p50 / p95 latency: alone {statistics.median(alone):.3f} / "
              f"{pct(alone, 0.95):.3f} s; with {len(jobs) - len(mixed)} hostile ones and the stalled connections "
              f"{statistics.median(mixed):.3f} / {pct(mixed, 0.95):.3f} s "
              f"(p50 ratio {statistics.median(mixed) / statistics.median(alone):.2f})")  # fmt: skip
        by_status = collections.Counter(s for _, s, _ in results)
        print("\nrequests by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())))
        time.sleep(6)  # past --read-timeout
        closed = closed_by_server(stalled)
        alive = urllib.request.urlopen(base + "/health", timeout=5).status == 200
        rss_after = rss_mib(server.pid)
        print(f"every valid request answered and every hostile one 4xx: {ok}; server alive: {alive}")
        print(f"stalled connections closed by the server after --read-timeout 5 s: {closed} of {len(stalled)}")
        print(f"server RSS: {rss_before:.0f} MiB before the burst, {rss_after:.0f} MiB after, "
              f"peak {rss_mib(server.pid, 'VmHWM'):.0f} MiB")  # fmt: skip

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
