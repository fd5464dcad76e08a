"""What a STORM model directory is: checked before anything heavy loads, saved atomically.

A model directory is a Hugging Face directory: ``config.json`` (``model_type: storm``),
``model.safetensors``, tokenizer files and ``processor_config.json``. This module imports no
torch, so the CLI can reject a wrong path in milliseconds.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["ModelLoadError", "atomic_directory", "check_model_dir"]


class ModelLoadError(Exception):
    """The directory is not a loadable STORM model."""


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
