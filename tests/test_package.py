"""The package as users import it: cheap to import, one version, registered with the Auto classes."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import storm_vlm

HEAVY = ("torch", "transformers", "numba", "av")


def _modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint('loaded:', *[m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.splitlines()[-1].split()[1:]


def test_import_and_help_load_no_torch():
    assert _modules_after("import storm_vlm") == []
    help_run = (
        "from storm_vlm.cli import main\nsys.argv = ['storm-vlm', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    assert _modules_after(help_run) == []
    assert "torch" in _modules_after("from storm_vlm import StormConfig")  # the classes load on use


def test_version_has_one_source():
    result = subprocess.run([sys.executable, "-m", "storm_vlm", "--version"], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == f"storm-vlm {storm_vlm.__version__}"
    assert version("storm-vlm") == storm_vlm.__version__  # pyproject reads it from the package


def test_a_storm_class_registers_every_auto_class():
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    from storm_vlm import StormConfig

    assert type(AutoConfig.for_model("storm")) is StormConfig
    assert AutoModel._model_mapping[StormConfig].__name__ == "StormModel"
    assert AutoModelForImageTextToText._model_mapping[StormConfig].__name__ == "StormForConditionalGeneration"
    assert PROCESSOR_MAPPING[StormConfig].__name__ == "StormProcessor"
    assert sorted(storm_vlm.__all__) == sorted(storm_vlm._LAZY) and set(storm_vlm.__all__) <= set(dir(storm_vlm))


def _package_imports() -> dict[str, set[str]]:
    """Module → the package modules it imports at run time (module level or inside functions);
    imports under ``if TYPE_CHECKING:`` are left out, as they never run."""
    root = Path(storm_vlm.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        skipped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        targets = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or id(node) in skipped or not node.level:
                continue
            kept = package.split(".")[: len(package.split(".")) - node.level + 1]  # `..` goes one up
            base = ".".join([*kept, node.module] if node.module else kept)
            for candidate in [base, *(f"{base}.{alias.name}" for alias in node.names)]:
                if candidate in modules and candidate != name and modules[candidate].name != "__init__.py":
                    targets.add(candidate)
        graph[name] = targets
    return graph


def test_no_import_cycles():
    """Data flows one way (video → processor → model → text): no module imports one that imports it back."""
    graph = _package_imports()
    assert "storm_vlm.tokens" in graph["storm_vlm.modeling.parts"]  # the walk sees imports at all

    def on_a_cycle(start: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == start:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
        return False

    cycles = sorted(name for name in graph if on_a_cycle(name))
    assert cycles == []
    model_side = {m for m in graph if m.startswith("storm_vlm.modeling.")}
    for module in model_side:  # the model never imports the processor, streaming or the pipelines
        assert not graph[module] & {"storm_vlm.processing_storm", "storm_vlm.streaming", "storm_vlm.inference"}, module
