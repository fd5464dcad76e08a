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
    """Register STORM with vLLM's model registry and its video loader registry (idempotent).

    The config class is imported too: that registers ``model_type: storm`` with transformers'
    ``AutoConfig``, so vLLM reads a STORM directory without ``trust_remote_code``. Only the config:
    the model modules import numba (llvmlite), and vLLM 0.32's CPU worker, scanning every loaded
    module for Triton kernels when it starts, fails on llvmlite's objects
    (``'_lib_fn_wrapper' object has no attribute 'get'``); vLLM imports the model after that scan.
    """
    from vllm import ModelRegistry

    from .. import configuration_storm  # noqa: F401  (registers AutoConfig)

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "storm_vlm.vllm_plugin.model:StormVllmForConditionalGeneration")
    from . import video_loader

    video_loader.register_loader()
