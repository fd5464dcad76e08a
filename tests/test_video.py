"""Frame sampling on real encoded files: identity with a full decode, plans, formats, bad input."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image

from storm_vlm.video import (
    CorruptVideoError,
    EmptyVideoError,
    NotEnoughFramesError,
    NoVideoStreamError,
    VideoError,
    VideoNotFoundError,
    VideoTooLargeError,
    sample_frames,
    write_video,
)

from .media import decode_all, make, pattern

FORMATS = {
    "mp4-h264-bframes": ("clip.mp4", dict(codec="libx264", gop=8)),
    "webm-vp9-odd": ("clip.webm", dict(codec="libvpx-vp9", height=47, width=63)),
    "mkv-ffv1-odd": ("clip.mkv", dict(codec="ffv1", pix_fmt="yuv444p", height=47, width=63)),
    "avi-mpeg4": ("clip.avi", dict(codec="mpeg4", gop=6)),
    "mov-mjpeg": ("clip.mov", dict(codec="mjpeg", pix_fmt="yuvj420p")),
    "gif": ("clip.gif", dict(codec="gif", pix_fmt="rgb8", fps=10)),
    "mp4-29.97fps": ("ntsc.mp4", dict(codec="libx264", fps=29.97, height=36, width=44)),
}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("num_frames", [1, 5, 24])
def test_sampled_frames_equal_a_full_decode(media_dir, name, num_frames):
    filename, kwargs = FORMATS[name]
    path = media_dir / f"{name}-{filename}"
    if not path.exists():
        make(path, **kwargs)
    reference = decode_all(path)
    clip = sample_frames(path, num_frames=num_frames)
    assert len(clip) == min(num_frames, len(reference))
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (*reference[0].shape[:2], 3)
    for i, frame in zip(clip.indices, clip.frames):
        assert np.array_equal(frame, reference[i]), i
    assert clip.indices[0] == 0 and (num_frames == 1 or clip.indices[-1] == len(reference) - 1)
    assert np.all(np.diff(clip.timestamps) > 0)


def test_long_video_seeks_and_short_clip_decodes_once(tmp_path):
    long_path = make(tmp_path / "long.mp4", num_frames=600, height=32, width=32, gop=25)
    clip = sample_frames(long_path, num_frames=8)
    reference = decode_all(long_path)
    assert all(np.array_equal(f, reference[i]) for i, f in zip(clip.indices, clip.frames))
    assert clip.decoded_frames < 600 // 2  # seeking plan: only the GOPs holding targets
    short = make(tmp_path / "short.mp4", num_frames=60, height=32, width=32, gop=1000)  # one keyframe
    clip = sample_frames(short, num_frames=8)
    assert clip.decoded_frames == 60  # decoded once in order, not once per target


def test_fps_sampling_window_and_cap(tmp_path):
    path = make(tmp_path / "v.mp4", num_frames=50, fps=25)  # 2 s
    clip = sample_frames(path, fps=5)
    assert clip.indices.tolist() == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    np.testing.assert_allclose(clip.timestamps, np.arange(10) * 0.2, atol=1e-6)
    assert len(sample_frames(path, fps=5, max_frames=4)) == 4
    window = sample_frames(path, num_frames=3, start=1.0, end=1.44)
    assert window.indices.tolist() == [25, 30, 35]
    assert len(sample_frames(path, fps=100)) == 50  # never the same frame twice
    with pytest.raises(VideoError, match="outside the video"):
        sample_frames(path, num_frames=3, start=5.0)


def test_variable_frame_rate_uses_real_timestamps(tmp_path):
    times = np.array([0.0, 0.04, 0.5, 0.54, 1.5, 1.6, 3.0, 3.1])
    path = write_video(tmp_path / "vfr.mkv", pattern(8, 32, 32), pts=times)
    clip = sample_frames(path)
    np.testing.assert_allclose(clip.timestamps, times, atol=2e-3)
    reference = decode_all(path)
    assert all(np.array_equal(f, reference[i]) for i, f in zip(clip.indices, clip.frames))
    assert sample_frames(path, fps=1).indices.tolist() == [0, 3, 5, 6]  # frame on screen at 0, 1, 2, 3 s


def test_rotation_metadata_is_applied(tmp_path):
    frames = np.zeros((4, 32, 48, 3), dtype=np.uint8)
    frames[:, :8, :8] = 255  # white block at the top-left
    path = write_video(tmp_path / "rot.mp4", frames, rotation=90, codec="libx264", pix_fmt="yuv444p")
    clip = sample_frames(path, num_frames=2)
    assert clip.size == (48, 32)
    expected = np.rot90(frames[0], 1)  # 90° counter-clockwise: the block moves to the bottom-left
    assert np.abs(clip.frames[0].astype(int) - expected).mean() < 10


def test_images_are_one_frame_clips(tmp_path):
    for suffix in (".png", ".jpg", ".webp"):
        path = tmp_path / f"im{suffix}"
        Image.fromarray(pattern(1, 30, 41)[0]).save(path)
        clip = sample_frames(path, num_frames=16)
        assert len(clip) == 1 and clip.size == (30, 41)


def test_more_frames_than_the_clip_has(tmp_path):
    path = make(tmp_path / "short.mp4", num_frames=6)
    assert len(sample_frames(path, num_frames=10)) == 6  # default: every frame once
    repeated = sample_frames(path, num_frames=10, on_short="repeat")
    assert len(repeated) == 10 and repeated.indices.tolist() == sorted(repeated.indices.tolist())
    with pytest.raises(NotEnoughFramesError, match="only 6"):
        sample_frames(path, num_frames=10, on_short="error")


def _truncated(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    import av

    d = tmp_path_factory.mktemp("bad")
    good = make(d / "good.mp4", num_frames=100, height=32, width=32)
    fast = make(d / "fast.mp4", num_frames=100, height=32, width=32, container_options={"movflags": "+faststart"})
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    with av.open(str(d / "audio.mp4"), "w") as container:  # audio only
        stream = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = bytearray(good.read_bytes())  # frames whose coded data is wiped: nothing decodes
    mdat = data.index(b"mdat") + 4
    data[mdat : data.index(b"moov") - 4] = bytes(data.index(b"moov") - 4 - mdat)
    (d / "noframes.mp4").write_bytes(bytes(data))
    # A raw YUV4MPEG stream whose header claims 12000 x 12000 pixels.
    (d / "huge.y4m").write_bytes(b"YUV4MPEG2 W12000 H12000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\0" * 1000)
    return {
        "missing": (d / "missing.mp4", VideoNotFoundError, "no such file"),
        "empty": (d / "empty.mp4", EmptyVideoError, "empty"),
        "truncated": (_truncated(good, d / "cut.mp4"), CorruptVideoError, ""),
        "truncated-faststart": (_truncated(fast, d / "cutfast.mp4"), CorruptVideoError, "truncated"),
        "text": (d / "notes.mp4", CorruptVideoError, "not a video"),
        "audio-only": (d / "audio.mp4", NoVideoStreamError, "no video stream"),
        "no-frames": (d / "noframes.mp4", CorruptVideoError, "no frame could be decoded"),
        "huge": (d / "huge.y4m", VideoTooLargeError, "exceeds"),
        "directory": (d, VideoError, "folder without frame images"),
        "broken-image": (d / "broken.png", CorruptVideoError, "not an image"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "truncated",
        "truncated-faststart",
        "text",
        "audio-only",
        "no-frames",
        "huge",
        "directory",
        "broken-image",
    ],
)
def test_bad_input_raises_one_clear_video_error(bad_files, case, tmp_path):
    path, error, message = bad_files[case]
    if case == "broken-image":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    start = time.monotonic()
    with pytest.raises(error) as info:
        sample_frames(path, num_frames=8)
    assert time.monotonic() - start < 30  # fails fast, never hangs
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text


def test_write_video_is_atomic(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(Exception):  # noqa: B017 - any encoder error
        write_video(target, pattern(3, 32, 32), codec="no-such-codec")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("one.mp4", {}),
        ("one.webm", dict(codec="libvpx-vp9")),
        ("one.gif", dict(codec="gif", pix_fmt="rgb8", fps=10)),
    ],
)
def test_a_one_frame_video_is_a_one_frame_clip(tmp_path, name, kwargs):
    """A single frame spans one frame's duration (it used to give an empty window and be refused)."""
    path = make(tmp_path / name, num_frames=1, **kwargs)
    for clip in (sample_frames(path, num_frames=8), sample_frames(path, fps=2.0), sample_frames(path)):
        assert len(clip) == 1 and clip.duration > 0
    assert sample_frames(path, num_frames=4, on_short="repeat").frames.shape[0] == 4


# -- hostile input: files that make FFmpeg read other files, text, bounds ----------------------
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A media root whose "videos" reference a secret video outside it, and text files."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "outside").mkdir()
    secret = make(root / "outside" / "secret.mp4", num_frames=10)
    media = root / "media"
    media.mkdir()
    (media / "link.mp4").symlink_to(secret)
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{}\n#EXT-X-ENDLIST\n"
    files = {
        "concat-relative": ("rel.mp4", "ffconcat version 1.0\nfile ../outside/secret.mp4\n"),
        "concat-absolute": ("abs.mp4", f"ffconcat version 1.0\nfile {secret}\n"),
        "concat-symlink": ("vialink.mp4", "ffconcat version 1.0\nfile link.mp4\n"),  # FFmpeg's "safe" name
        "hls-relative": ("list.m3u8", hls.format("../outside/secret.mp4")),
        "hls-absolute": ("abs.m3u8", hls.format(secret)),
        "hls-as-mp4": ("hls.mp4", hls.format(secret)),
        "text-txt": ("notes.txt", "hello, this is text\n" * 40),  # FFmpeg's tty demuxer: a "video" of text
        "text-mp4": ("notes.mp4", "hello, this is text\n" * 40),
        "subtitles": ("sub.srt", "1\n00:00:01,000 --> 00:00:02,000\nhello\n"),
    }
    for name, text in files.values():
        (media / name).write_text(text)
    return {case: media / name for case, (name, _) in files.items()}


HOSTILE = ["concat-relative", "concat-absolute", "concat-symlink", "hls-relative", "hls-absolute", "hls-as-mp4",
           "text-txt", "text-mp4", "subtitles"]  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE)
def test_references_to_other_files_and_text_are_refused(hostile, case):
    path = hostile[case]
    with pytest.raises(CorruptVideoError) as info:
        sample_frames(path, num_frames=4)
    text = str(info.value)
    assert str(path) in text and "not a video" in text and "\n" not in text


def test_the_hostile_files_do_read_outside_without_the_whitelist(hostile):
    """Plain FFmpeg opens them (the secret's 10 frames, or text as a tty "video"): the refusal above is
    the whitelist's doing, not a malformed test file."""
    import av

    read = {}
    for case in ("concat-symlink", "hls-relative", "hls-absolute", "text-txt"):
        with av.open(str(hostile[case])) as container:
            read[case] = (container.format.name, sum(1 for _ in container.decode(video=0)))
    assert read["concat-symlink"] == ("concat", 10)
    assert read["hls-relative"] == ("hls", 10) and read["hls-absolute"] == ("hls", 10)
    assert read["text-txt"][0] == "tty"


def test_accepted_containers_and_protocol_like_names_still_open(tmp_path, monkeypatch):
    for name, kwargs in [("a.ts", {}), ("a.flv", dict(codec="flv")), ("a.mpg", dict(codec="mpeg2video"))]:
        assert len(sample_frames(make(tmp_path / name, num_frames=6, **kwargs), num_frames=3)) == 3, name
    monkeypatch.chdir(tmp_path)  # relative names that look like protocols name files, not protocols
    for name in ("concat:a.mp4", "http:b.mkv", "subfile:c.avi"):
        make(tmp_path / name, num_frames=6)
        assert len(sample_frames(name, num_frames=3)) == 3, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_frames=4097), "num_frames must be from 1 to 4096"),
        (dict(num_frames=0), "num_frames must be from 1 to 4096"),
        (dict(num_frames=2.5), "num_frames must be an integer"),
        (dict(fps=1e6), "fps must be a number above 0 and at most 240"),
        (dict(fps=float("nan")), "fps must be a number"),
        (dict(fps=2.0, max_frames=10**6), "max_frames must be from 1 to 4096"),
        (dict(num_frames=4, fps=2.0), "not both"),
    ],
)
def test_parameter_bounds_name_the_parameter(tmp_path, kwargs, message):
    path = make(tmp_path / "v.mp4", num_frames=4)
    with pytest.raises(ValueError, match=message):
        sample_frames(path, **kwargs)


def test_max_fps_and_the_implicit_frame_cap(tmp_path, monkeypatch):
    from storm_vlm import video

    path = make(tmp_path / "v.mp4", num_frames=30)
    assert len(sample_frames(path, fps=video.MAX_FPS)) == 30  # every frame once
    monkeypatch.setattr(video, "MAX_FRAMES", 7)
    for clip in (sample_frames(path), sample_frames(path, fps=100.0)):  # no max_frames: capped at MAX_FRAMES
        assert len(clip) == 7 and clip.indices[0] == 0 and clip.indices[-1] == 29


def _fps_reference(times: np.ndarray, fps: float, t0: float, t1: float) -> np.ndarray:
    """The rule of `_select_fps` as one target per 1/fps seconds (what it computed before)."""
    targets = np.arange(t0, t1 - 1e-9, 1.0 / fps)
    return np.unique(np.clip(np.searchsorted(times, targets + 1e-9, side="right") - 1, 0, len(times) - 1))


def test_fps_selection_equals_one_target_per_step_and_ignores_the_duration():
    from storm_vlm.video import _select_fps, _StreamIndex

    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        gaps = rng.choice([0.04, 1 / 30, 0.1, 0.5, 2.0], size=n) * rng.uniform(0.5, 1.5, n)
        pts = np.cumsum(np.round(gaps * 1000)).astype(np.int64)  # ms, variable rate, possibly repeated
        index = _StreamIndex(np.sort(pts), np.ones(n, bool), 0.001, int(pts.min()))
        times = index.seconds()
        t0 = float(rng.choice([0.0, float(times[rng.integers(0, n)]), float(rng.uniform(0, times[-1] + 0.1))]))
        t1 = float(rng.choice([times[-1] + 0.04, times[-1] + 0.5, rng.uniform(t0, times[-1] + 0.5)]))
        candidates = np.flatnonzero((times >= t0 - 1e-9) & (times < t1 - 1e-9))
        if len(candidates) == 0:
            continue
        fps = float(rng.choice([0.25, 1.0, 2.0, 7.5, 29.97, 240.0]))
        got = _select_fps(index, candidates, fps, t0, t1, 4096)
        expected = candidates[_fps_reference(times[candidates], fps, t0, t1)]
        assert got.tolist() == expected.tolist(), trial
    # a damaged header's pts can span 10^12 s: the cost follows the 3 frames, not the duration
    index = _StreamIndex(np.array([0, 1, 10**15]), np.ones(3, bool), 0.001, 0)
    start = time.monotonic()
    assert _select_fps(index, np.arange(3), 240.0, 0.0, 1e12 + 1, 4096).tolist() == [0, 1, 2]
    assert time.monotonic() - start < 1


def test_a_stream_that_changes_size_gives_one_size(tmp_path):
    from .media import make_size_switch

    path = make_size_switch(tmp_path / "switch.avi")
    assert {f.shape for f in decode_all(path)} == {(32, 32, 3), (48, 64, 3)}
    clip = sample_frames(path)
    assert clip.frames.shape == (8, 32, 32, 3) and clip.size == (32, 32)
    assert np.abs(clip.frames[:, 10, 10, 0].astype(int) - np.arange(8) * 30).max() <= 3  # every frame, in order
