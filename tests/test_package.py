"""The package as users import it: cheap to import, one version, registered with the Auto classes."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

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
