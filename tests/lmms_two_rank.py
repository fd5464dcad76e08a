"""The lmms-eval plugin on stand-in requests, sharded by rank as lmms-eval's evaluator shards them.

Imported by tests/test_lmms_plugin.py (stand-in instances, the documents, one process), and run as
a script under ``accelerate launch --num_processes 2`` by its two-process test::

    python tests/lmms_two_rank.py MODEL_DIR DOCS_JSON OUT_DIR [BATCH_SIZE]

Each process keeps the documents ``rank, rank + world, ...`` (``lmms_eval.utils.create_iterator``),
answers their generate_until and multiple-choice loglikelihood requests and writes
``OUT_DIR/rank{rank}.json``. Needs storm-vlm only, not lmms-eval (nor this tests package).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPTIONS = ("red", "a long green thing", "x", "blue and yellow")  # unequal token lengths: padding is exercised
GEN_KWARGS = {"max_new_tokens": 6, "until": ["\n\n"], "temperature": 0, "do_sample": False}


class StandInInstance:
    """Mirrors lmms_eval.api.instance.Instance: the fields and ``.args`` the plugin reads."""

    def __init__(self, request_type: str, arguments: tuple, idx: int = 0, metadata: dict | None = None) -> None:
        self.request_type, self.arguments, self.idx = request_type, arguments, idx
        self.metadata = metadata or {"task": arguments[-2], "doc_id": arguments[-3], "repeats": 1}

    @property
    def args(self) -> tuple:
        return self.arguments


def to_visual(doc: dict) -> list:
    """A task's doc_to_visual: the doc's video path."""
    return [doc["video"]]


def to_messages(doc: dict) -> list[dict]:
    """A messages task's doc_to_messages, as lmms-eval's ConfigurableMessagesTask builds it from
    doc_to_visual + doc_to_text (``_auto_doc_to_messages``)."""
    return [{"role": "user", "content": [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["q"]}]}]


def shard(num_docs: int, rank: int, world: int) -> list[int]:
    """The doc ids one rank evaluates: ``islice(docs, rank, None, world)``, as lmms-eval does."""
    return list(range(num_docs))[rank::world]


def generate_requests(doc_ids: list[int], task: str = "t", split: str = "test") -> list[StandInInstance]:
    """generate_until requests as ``ConfigurableTask.construct_requests`` lays them out."""
    docs = _docs_of(task, split)
    return [
        StandInInstance("generate_until", (docs[i]["q"], dict(GEN_KWARGS), to_visual, i, task, split)) for i in doc_ids
    ]


def choice_requests(doc_ids: list[int], task: str = "t", split: str = "test", delimiter: str = " ") -> list:
    """A multiple_choice task's loglikelihood requests: one per option, ``delimiter + option``."""
    docs = _docs_of(task, split)
    return [
        StandInInstance("loglikelihood", (docs[i]["q"], f"{delimiter}{o}", to_visual, i, task, split), idx=j)
        for i in doc_ids
        for j, o in enumerate(OPTIONS)
    ]


_DOCS: dict[tuple[str, str], list[dict]] = {}


def _docs_of(task: str, split: str) -> list[dict]:
    return _DOCS[(task, split)]


def register_docs(docs: list[dict], task: str = "t", split: str = "test") -> dict:
    """The ``task_dict`` lmms-eval hands a model, for these documents."""
    _DOCS[(task, split)] = docs
    return {task: {split: docs}}


def run_shard(plugin: Any, docs: list[dict], rank: int, world: int) -> dict[str, Any]:
    """This rank's answers and option scores, keyed by doc id."""
    plugin.task_dict = register_docs(docs)
    ids = shard(len(docs), rank, world)
    texts = plugin.generate_until(generate_requests(ids))
    scored = plugin.loglikelihood(choice_requests(ids))
    out = {}
    for k, doc_id in enumerate(ids):
        options = scored[k * len(OPTIONS) : (k + 1) * len(OPTIONS)]
        out[str(doc_id)] = {"text": texts[k], "scores": [s for s, _ in options], "greedy": [g for _, g in options]}
    return out


def main(argv: list[str]) -> None:
    from storm_vlm.eval.lmms_eval_plugin import StormLmms

    model_dir, docs_json, out_dir = argv[:3]
    batch_size = argv[3] if len(argv) > 3 else "2"
    docs = json.loads(Path(docs_json).read_text())
    plugin = StormLmms(pretrained=model_dir, num_frames="8", batch_size=batch_size, device="cpu")
    result = {"rank": plugin.rank, "world": plugin.world_size, "answers": run_shard(plugin, docs, plugin.rank,
                                                                                  plugin.world_size)}  # fmt: skip
    Path(out_dir, f"rank{plugin.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
