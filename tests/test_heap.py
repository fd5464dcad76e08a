"""The `storm-vlm` process keeps freed memory mapped (storm_vlm.heap): what it changes, and its switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from storm_vlm.heap import ENV, keep_freed_memory

_PROBE = """
import json, resource, torch
from storm_vlm.heap import keep_freed_memory
kept = keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(20):  # a 64 MiB activation, allocated, written and freed, as a layer's are
    before = faults(); t = torch.ones(16 * 2**20); counts.append(faults() - before); del t
print(json.dumps({"kept": kept, "faults": counts[-5:]}))
"""


def _probe(setting: str) -> dict:
    env = {**os.environ, ENV: setting}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults():
    """With glibc's defaults every 64 MiB block is a fresh mmap whose pages fault in on first
    write (16384 faults of 4 KiB); kept, the steady state reuses warm pages."""
    kept, system = _probe("keep"), _probe("system")
    if not kept["kept"]:
        pytest.skip("not glibc: mallopt is unavailable")
    assert system["kept"] is False
    assert sum(system["faults"]) > 0
    assert sum(kept["faults"]) * 10 < sum(system["faults"]), (kept, system)


def test_the_switch_is_validated(monkeypatch):
    monkeypatch.setenv(ENV, "system")
    assert keep_freed_memory() is False  # opted out: nothing changed in this process
    monkeypatch.setenv(ENV, "jemalloc")
    with pytest.raises(ValueError, match="STORM_MALLOC must be 'keep' or 'system'"):
        keep_freed_memory()


def test_the_command_rejects_a_bad_switch_in_one_line():
    env = {**os.environ, ENV: "bogus"}
    done = subprocess.run([sys.executable, "-m", "storm_vlm", "--version"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: STORM_MALLOC must be 'keep' or 'system', got 'bogus'"
    assert done.stdout == ""
