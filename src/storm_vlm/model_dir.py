"""What a STORM model directory is: checked before anything heavy loads, saved atomically.

A model directory is a Hugging Face directory: ``config.json`` (``model_type: storm``),
``model.safetensors``, tokenizer files and ``processor_config.json``. This module imports no
torch, so the CLI can reject a wrong path in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "ModelLoadError",
    "atomic_directory",
    "check_model_dir",
    "loading_problem",
    "model_fingerprint",
    "share_like_umask",
]


class ModelLoadError(Exception):
    """The directory is not a loadable STORM model."""


def loading_problem(info: dict, missing_first: bool = False, file_key: Callable[[str], str] = str) -> str | None:
    """What is wrong in ``from_pretrained(..., output_loading_info=True)``'s report, naming the first
    tensor at fault, or None. transformers only warns (and leaves such weights random).

    ``file_key`` turns a parameter name into the tensor's name in the weight file (they differ
    where transformers renames keys on load), so the message names what the file holds.
    """
    mismatched = sorted(info.get("mismatched_keys") or [])
    missing = sorted(info.get("missing_keys") or [])
    problems = []
    if mismatched:
        key, saved, needed = mismatched[0]
        problems.append(
            f"tensor {file_key(key)} has shape {list(saved)} but the config needs {list(needed)} "
            f"({len(mismatched)} tensor(s) differ)"
        )
    if missing:
        problems.append(f"no weights for {file_key(missing[0])} ({len(missing)} tensor(s) missing)")
    if missing_first:
        problems.reverse()
    return problems[0] if problems else None


def model_fingerprint(path: str | Path) -> str:
    """A short identity of a model directory: a hash of ``config.json`` and every weight byte.

    Every byte, because training stages change only some tensors (stage 1 trains the projector and
    the Mamba module between a frozen tower and LLM): any sample of the file could miss them.
    BLAKE2b reads about 1 GB/s, so a 7B model costs ~15 s, once per evaluation.
    """
    path = Path(path)
    digest = hashlib.blake2b(digest_size=8)
    digest.update((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        digest.update(weights.name.encode())
        with weights.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def check_model_dir(path: str | Path) -> Path:
    """Return ``path`` if it looks like a STORM model directory, else raise ``ModelLoadError``."""
    path = Path(path)
    config_file = path / "config.json"
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model directory")
    if not config_file.is_file():
        raise ModelLoadError(f"{path}: not a model directory (no config.json); create one with `storm-vlm init`")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ModelLoadError(f"{config_file}: not a valid JSON config ({err})") from None
    if model_type != "storm":
        raise ModelLoadError(f"{path}: model_type is {model_type!r}, not a STORM model ('storm')")
    return path


def atomic_directory(out: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp_dir)`` on a temporary sibling of ``out``, then rename it to ``out``.

    An interrupted or failed write never leaves a half-written directory at ``out``. A non-empty
    ``out`` is refused unless ``overwrite`` (then it is replaced only once the new one is complete).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose a new output directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        share_like_umask(tmp)  # mkdtemp made it 0700: others of the group could not load the model
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def share_like_umask(root: str | Path) -> None:
    """Give ``root`` and everything in it the modes a plain ``mkdir`` / ``open`` would have.

    Folders from ``mkdtemp`` are ``0700`` and some writers use ``mkstemp`` (``0600``): a model
    directory should be readable as the umask allows (``0755`` / ``0644`` under umask 022), like
    any other file its owner writes.
    """
    mask = _umask()
    root = Path(root)
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        share_files_like_umask(Path(folder) / name for name in files)


def share_files_like_umask(paths: Iterable[Path]) -> None:
    """The files' modes as a plain ``open`` would give them (symlinks left alone)."""
    mode = 0o666 & ~_umask()
    for path in paths:
        if not path.is_symlink():
            os.chmod(path, mode)
