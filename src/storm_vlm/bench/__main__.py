"""Worker entry point: ``python -m storm_vlm.bench '<json>'`` measures one cell, prints JSON."""

from __future__ import annotations

import json
import sys

from transformers.utils import logging as hf_logging

from ..heap import keep_freed_memory
from . import _measure_cell

if __name__ == "__main__":
    keep_freed_memory()  # as the `storm-vlm` process that started this worker
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    print(json.dumps(_measure_cell(json.loads(sys.argv[1]))))
