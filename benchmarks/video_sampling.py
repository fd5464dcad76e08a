"""Frame sampling speed: `sample_frames` (keyframe-aware plan) vs decoding the whole file.

Run:  .venv/bin/python benchmarks/video_sampling.py [--minutes 10] [--frames 32]

Makes two H.264 files with PyAV: a long low-resolution video (a keyframe every 2 s) and a short
clip with a single keyframe. For each, times sampling N frames against one full decode pass
(every frame decoded in order, only the N kept frames converted to RGB — the cheapest full pass),
checks that both give identical frames, and prints the ratios next to the targets:
long video >= 10x faster; short clip no more than 10% slower.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from storm_vlm.video import sample_frames, write_video


def textured_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Moving shapes over a drifting noisy texture: costs a decoder what real footage costs."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        dy, dx = (t * 2) % height, (t * 3) % width
        frames[t] = texture[dy : dy + height, dx : dx + width]
        x = (t * 5) % (width - 16)
        frames[t, height // 3 : height // 3 + 16, x : x + 16] = (255, 40, 40)
    return frames


def make_long(path: Path, minutes: float, fps: int = 25, chunk: int = 1500) -> None:
    """Encoded in chunks so memory stays small; a keyframe every 2 s."""
    total = int(minutes * 60 * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(2 * fps), "keyint_min": str(2 * fps), "sc_threshold": "0"}
        for start in range(0, total, chunk):
            for image in textured_frames(min(chunk, total - start), 96, 160, seed=start):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def full_decode(path: Path, indices: np.ndarray) -> list[np.ndarray]:
    """Every frame decoded in order; only the wanted ones converted to RGB."""
    wanted = set(indices.tolist())
    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
    return [out[i] for i in indices.tolist()]


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure(name: str, path: Path, num_frames: int) -> tuple[float, float, bool]:
    t_sample, clip = best_of(lambda: sample_frames(path, num_frames=num_frames))
    t_full, frames = best_of(lambda: full_decode(path, clip.indices))
    same = all(np.array_equal(a, b) for a, b in zip(clip.frames, frames))
    print(
        f"{name:<34} {clip.num_source_frames:>7} frames  sample_frames {t_sample * 1000:8.1f} ms "
        f"(decoded {clip.decoded_frames:>6})   full decode {t_full * 1000:8.1f} ms   "
        f"ratio {t_full / t_sample:6.2f}x   identical: {same}"
    )
    return t_sample, t_full, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the long video")
    parser.add_argument("--frames", type=int, default=32, help="frames to sample")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated files here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="storm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    long_path, short_path = workdir / f"long-{args.minutes:g}min.mp4", workdir / "short-1key.mp4"
    if not long_path.exists():
        print(f"encoding a {args.minutes:g}-minute 160x96 25 fps video (keyframe every 2 s) ...", flush=True)
        make_long(long_path, args.minutes)
    if not short_path.exists():
        write_video(short_path, textured_frames(250, 240, 320), fps=25, gop=10_000)  # 10 s, one keyframe
    print(f"sampling {args.frames} frames uniformly; best of 3 runs each\n")
    t_s, t_f, same_long = measure(f"long ({args.minutes:g} min, key every 2 s)", long_path, args.frames)
    speedup = t_f / t_s
    t_s2, t_f2, same_short = measure("short (10 s, a single keyframe)", short_path, args.frames)
    slowdown = t_s2 / t_f2 - 1
    print()
    verdict = "met" if speedup >= 10 else "NOT met"
    print(f"long video:  {speedup:.1f}x faster than a full decode   (target >= 10x: {verdict})")
    print(
        f"short clip:  {100 * slowdown:+.1f}% vs one full decode pass (target <= +10%: "
        f"{'met' if slowdown <= 0.10 else 'NOT met'})"
    )
    print(f"frames identical to a full decode: {same_long and same_short}")


if __name__ == "__main__":
    main()
