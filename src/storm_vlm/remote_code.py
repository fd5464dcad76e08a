"""Ship the code with the weights: a model directory that loads without storm-vlm installed.

``AutoModel.from_pretrained(dir, trust_remote_code=True)`` (and ``AutoConfig``, ``AutoProcessor``)
import the classes named in ``auto_map`` from ``.py`` files beside the weights. transformers'
loader only follows *flat* relative imports (``from .x import y``, one folder), while this package
is nested (``from ..configuration_storm import ...``), so :func:`write_remote_code` copies the
modules a class needs into one folder and rewrites them:

* ``from ..a.b import n`` / ``from .b import n`` → ``from .b import n`` (module names are unique);
* ``from . import a, b`` → the same, plus a manifest string naming ``a`` and ``b`` so the loader
  copies their files too (it finds files by pattern, not by executing the import);
* imports of optional packages (``triton``, ``mamba_ssm``, PyAV, ...) are wrapped in
  ``try: ... except ImportError: raise`` (the same behaviour), which the loader's requirement check
  skips: they stay optional, as in the package;
* the ``Auto*.register(...)`` calls are dropped: remote classes must not replace an installed
  storm-vlm's in the same process.

The modules are found by following the imports of the entry classes, so the copy always matches
the installed code. A model directory loads with the installed package too: transformers prefers
the registered local classes when ``trust_remote_code`` is not given.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .configuration_storm import StormConfig

__all__ = ["AUTO_MAP", "PROCESSOR_AUTO_MAP", "add_auto_map", "write_model_card", "write_remote_code"]

PACKAGE = __name__.rsplit(".", 1)[0]  # "storm_vlm"
REQUIRED = {"torch", "transformers", "numpy", "safetensors", "PIL", "tokenizers", "huggingface_hub"}

AUTO_MAP = {
    "AutoConfig": "configuration_storm.StormConfig",
    "AutoModel": "modeling_storm.StormModel",
    "AutoModelForImageTextToText": "modeling_storm.StormForConditionalGeneration",
    "AutoProcessor": "processing_storm.StormProcessor",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}
ENTRY_MODULES = ("configuration_storm", "modeling.modeling_storm", "processing_storm")


def write_remote_code(directory: str | Path) -> list[str]:
    """Write the flattened modules for :data:`AUTO_MAP` into ``directory``; returns their names."""
    directory = Path(directory)
    files = flattened_modules()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return list(files)


@functools.cache
def flattened_modules() -> dict[str, str]:
    """``{file name: source}`` of the flattened modules. They depend only on the installed code, so
    they are made once per process (a model directory is saved by the model and the processor)."""
    modules = _closure([f"{PACKAGE}.{name}" for name in ENTRY_MODULES])
    flat = {name: name.rsplit(".", 1)[-1] for name in modules}
    if len(set(flat.values())) != len(flat):
        raise RuntimeError(f"two modules share a file name, cannot flatten: {sorted(flat)}")
    return {f"{flat[name]}.py": _rewrite(inspect.getsource(sys.modules[name]), name, flat) for name in sorted(modules)}


def add_auto_map(json_path: Path, auto_map: dict[str, str]) -> None:
    """Add ``auto_map`` to a saved JSON config (config.json, processor_config.json)."""
    data = json.loads(json_path.read_text())
    data["auto_map"] = dict(auto_map)
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# -- finding the modules ----------------------------------------------------------------------
def _closure(entries: list[str]) -> set[str]:
    """Every package module the entries import, directly or not (lazy imports in functions too)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        module = importlib.import_module(name)
        seen.add(name)
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            for target in _package_targets(node, name):
                if target not in seen:
                    todo.append(target)
    return seen


def _package_targets(node: ast.AST, importer: str) -> list[str]:
    """Package modules an import node refers to (``from . import a`` names modules a)."""
    if not isinstance(node, ast.ImportFrom) or node.level == 0:
        return []
    base = _resolve(importer, node.level, node.module)
    if node.module is None:
        return [f"{base}.{alias.name}" for alias in node.names]
    if _is_package(base):  # from .modeling import X: X comes from a submodule; follow it instead
        return [_defining_module(base, alias.name) for alias in node.names]
    return [base] * len(node.names)  # one per name, like the other cases


def _resolve(importer: str, level: int, module: str | None) -> str:
    parts = importer.split(".")
    package = parts if _is_package(importer) else parts[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_package(name: str) -> bool:
    return hasattr(importlib.import_module(name), "__path__")


def _defining_module(package: str, attribute: str) -> str:
    value = getattr(importlib.import_module(package), attribute)
    return getattr(value, "__module__", package)


# -- rewriting one module ---------------------------------------------------------------------
def _rewrite(source: str, name: str, flat: dict[str, str]) -> str:
    tree = ast.parse(source)
    lines = source.splitlines()
    edits: list[tuple[int, int, list[str]]] = []  # (first line, last line) 1-based, replacement
    manifest: list[str] = []
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        indent = " " * getattr(node, "col_offset", 0)
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            targets = _package_targets(node, name)
            if node.module is None:
                names = ", ".join(_alias(a, flat[t]) for a, t in zip(node.names, targets))
                manifest += [f"from .{flat[t]} import *" for t in targets]
                edits.append((node.lineno, node.end_lineno or node.lineno, [f"{indent}from . import {names}"]))
            else:
                groups: dict[str, list[ast.alias]] = {}
                for alias, target in zip(node.names, targets):
                    groups.setdefault(flat[target], []).append(alias)
                new = [
                    f"{indent}from .{mod} import {', '.join(_alias(a, a.name) for a in al)}"
                    for mod, al in groups.items()
                ]
                edits.append((node.lineno, node.end_lineno or node.lineno, new))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and _optional(node) and not _in_try(node, parents):
            body = lines[node.lineno - 1 : node.end_lineno]
            wrapped = [f"{indent}try:", *("    " + line for line in body), f"{indent}except ImportError:",
                       f"{indent}    raise"]  # fmt: skip
            edits.append((node.lineno, node.end_lineno or node.lineno, wrapped))
        elif isinstance(node, ast.Expr) and _is_auto_register(node) and isinstance(parents.get(node), ast.Module):
            edits.append((node.lineno, node.end_lineno or node.lineno, []))
    for first, last, new in sorted(edits, reverse=True):
        lines[first - 1 : last] = new
    header = [f"# Copied from {name} (storm-vlm) for trust_remote_code loading; edit the package, not this file."]
    if manifest:  # the loader finds files by this pattern; the string is never executed as code
        header += ['_REMOTE_FILES = """', *sorted(set(manifest)), '"""']
    text = "\n".join(lines)
    future = "from __future__ import annotations"
    if future in text:  # it must stay the first statement after the docstring
        return text.replace(future, future + "\n\n" + "\n".join(header), 1) + "\n"
    return "\n".join(header) + "\n" + text + "\n"


def _alias(alias: ast.alias, name: str) -> str:
    return f"{name} as {alias.asname}" if alias.asname else name


def _optional(node: ast.Import | ast.ImportFrom) -> bool:
    top = (node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name
    top = top.split(".")[0]
    return bool(top) and top not in REQUIRED and top not in sys.stdlib_module_names and top != PACKAGE


def _in_try(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Already inside a try block (which the loader's requirement check skips)."""
    current = parents.get(node)
    while current is not None:
        if isinstance(current, ast.Try):
            return True
        current = parents.get(current)
    return False


def _is_auto_register(node: ast.Expr) -> bool:
    call = node.value
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "register"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id.startswith("Auto")
    )


def write_model_card(directory: str | Path, config: StormConfig) -> None:
    """A README.md model card: what the model is, its STORM settings, and how to load it."""
    c = config
    vision = getattr(getattr(c, "vision_config", None), "model_type", "?")
    text = getattr(getattr(c, "text_config", None), "model_type", "?")
    card = f"""---
library_name: transformers
pipeline_tag: video-text-to-text
tags: [storm, video-llm, mamba, long-video]
---

# STORM model

STORM (Jiang, Li et al., ICCV 2025): a {vision} vision tower per frame, a `{c.projector_type}` projector,
{c.temporal_layers} {"bidirectional" if c.bidirectional else "causal"} Mamba block(s) over all tokens of
all frames, then token reduction (temporal pool k={c.temporal_pool}, spatial pool p={c.spatial_pool},
test-time sampling s={c.temporal_sampling}) before a {text} LLM. Written by storm-vlm.

```python
from transformers import AutoModel, AutoProcessor
model = AutoModel.from_pretrained("path/to/this/dir", trust_remote_code=True)  # or `import storm_vlm` first
processor = AutoProcessor.from_pretrained("path/to/this/dir", trust_remote_code=True)
```

With storm-vlm installed: `storm-vlm ask path/to/this/dir clip.mp4 "What happens?"`.
"""
    (Path(directory) / "README.md").write_text(card, encoding="utf-8")
