"""A real `storm-vlm serve` process (uvicorn) on a free loopback port, for tests that need one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_tiny(out: Path) -> Path:
    """A tiny random model directory, written by the CLI as users write one."""
    subprocess.run([sys.executable, "-m", "storm_vlm", "init", "--preset", "tiny", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return out


@contextmanager
def running_server(model_dir: Path, *options: str) -> Iterator[str]:
    """``storm-vlm serve MODEL_DIR --port P OPTIONS...``; yields its base URL once /health answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "storm_vlm", "serve", str(model_dir), "--port", str(port),
                             *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.25)
        else:
            proc.kill()
        if proc.poll() is not None:
            raise RuntimeError("server did not start: " + proc.stdout.read().decode(errors="replace"))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
