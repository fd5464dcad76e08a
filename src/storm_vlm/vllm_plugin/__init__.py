"""vLLM plugin: STORM served by vLLM (``pip install "storm-vlm[vllm]"``, then ``vllm serve DIR``).

vLLM calls :func:`register` in every process through the ``vllm.general_plugins`` entry point.
It registers the architecture lazily (by module path, so vLLM imports the model only when a
STORM directory is served) and a ``storm`` video loader (PyAV, the frames ``storm-vlm ask``
samples). Nothing here imports vLLM at import time: the package stays importable without it.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURE", "register"]

ARCHITECTURE = "StormForConditionalGeneration"  # config.json's "architectures" entry


def register() -> None:
    """Register STORM with vLLM's model registry and its video loader registry (idempotent)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "storm_vlm.vllm_plugin.model:StormVllmForConditionalGeneration")
    from . import video_loader

    video_loader.register_loader()
