"""Every bound on a size a user controls, in one place (no imports: the CLI reads these for its
option ranges before anything heavy is loaded).

The modules that enforce a bound import it from here; each names it in its own docstring.
"""

from __future__ import annotations

__all__ = [
    "MAX_BENCH_REPEAT",
    "MAX_DATA_FILE_BYTES",
    "MAX_DATA_SAMPLES",
    "MAX_EVAL_BATCH_SIZE",
    "MAX_FPS",
    "MAX_FRAMES",
    "MAX_GROUP_BATCHES",
    "MAX_MIXTURE_BYTES",
    "MAX_MIXTURE_SOURCES",
    "MAX_NEW_TOKENS",
    "MAX_PACK_TOKENS",
    "MAX_PIXELS",
    "MAX_REDUCTION",
    "MAX_SIDE",
    "MAX_SUBTITLE_BYTES",
    "MAX_SUBTITLE_CHARS",
    "MAX_SYNTH_SAMPLES",
    "MAX_SYNTH_SIZE",
    "MAX_TEMPORAL_LAYERS",
    "MIN_SYNTH_SIZE",
]

# video input
MAX_FRAMES = 4096  # most frames one clip may hold (num_frames, max_frames, and the implicit caps)
MAX_FPS = 240.0  # highest sampling rate: beyond it every frame of any real video is already taken
MAX_SIDE = 16384  # larger frames are refused before anything is decoded
MAX_PIXELS = 1 << 27  # ~134 Mpx, e.g. 11585 x 11585

# model
MAX_TEMPORAL_LAYERS = 64  # L: deeper than any published temporal module by far (the paper uses 2-4)
MAX_REDUCTION = MAX_FRAMES  # k, p, s: pooling or sampling beyond the longest clip changes nothing
MAX_NEW_TOKENS = 1 << 20  # most tokens one answer may ask for (CLI, server); answers are also cut to the context

# evaluation
MAX_BENCH_REPEAT = 20  # timed runs per bench cell (each can take a minute on CPU)
MAX_EVAL_BATCH_SIZE = 256  # questions one evaluation generate call may hold (each holds its clip's visual tokens)

# generated data
MAX_SYNTH_SAMPLES = 10_000_000  # clips of one set (a training sampler holds a permutation of them)
MIN_SYNTH_SIZE, MAX_SYNTH_SIZE = 8, 1024  # frame side in pixels (below 8 the square is 2 px)

# benchmark data
MAX_SUBTITLE_BYTES = 1 << 23  # a subtitle file (.srt / .json) larger than 8 MiB is refused before it is read
MAX_SUBTITLE_CHARS = 1 << 16  # subtitle text one question may show (the lines chosen for its frames); more is refused

# training data (storm_vlm.train.data / mixture / prepare)
MAX_DATA_FILE_BYTES = 1 << 33  # 8 GiB: one JSON annotation file (read whole; LLaVA-Video's largest is 0.7 GB)
MAX_DATA_SAMPLES = 100_000_000  # samples of one data file, converted output or mixture (index arrays in memory)
MAX_MIXTURE_BYTES = 1 << 20  # a mixture YAML larger than 1 MiB is refused before it is parsed
MAX_MIXTURE_SOURCES = 1024  # sources one mixture may list
MAX_GROUP_BATCHES = 65_536  # batches per length-grouping window (data.group_size)
MAX_PACK_TOKENS = 1 << 20  # tokens of one packed row (data.pack_tokens): a row is one attention block
