"""The Triton selective scan against the reference: on CUDA when present, else in Triton's
interpreter on CPU (TRITON_INTERPRET=1, set in conftest)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from storm_vlm.modeling import mamba, scan_triton
from storm_vlm.modeling.mamba import scan_backend, selective_scan_ref

from .test_scan_fast import NAMES, assert_same, make_inputs, run

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def on_device(inputs: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in inputs.items()}


@pytest.mark.parametrize(
    ("batch", "dim", "length", "state", "decay", "groups"),
    [
        (1, 8, 1, 4, "mixed", None),
        (2, 8, 40, 4, "strong", None),
        (2, 6, 70, 3, "weak", None),  # N padded to 4, a partial last chunk
        (1, 16, 65, 16, "mixed", 2),  # grouped B/C
        (1, 5, 33, 2, "mixed", None),  # channels not a power of two
    ],
)
def test_triton_scan_equals_reference(batch, dim, length, state, decay, groups):
    inputs = on_device(make_inputs(batch, dim, length, state, groups=groups, decay=decay))
    use = set(NAMES)
    assert_same(run(scan_triton.selective_scan_triton, inputs, use), run(selective_scan_ref, inputs, use))


@pytest.mark.parametrize("optional", [set(), {"D"}, {"z", "initial_state"}, {"delta_bias"}])
@pytest.mark.parametrize("softplus", [True, False])
def test_triton_scan_optional_arguments(optional, softplus):
    inputs = on_device(make_inputs(1, 4, 37, 4, seed=3))
    if not softplus:
        inputs["delta"] = inputs["delta"].abs() * 0.1
        inputs["delta_bias"] = inputs["delta_bias"].abs() * 0.1
    ref = run(selective_scan_ref, inputs, optional, softplus)
    assert_same(run(scan_triton.selective_scan_triton, inputs, optional, softplus), ref)


@pytest.mark.parametrize("defer_da", [True, False])
def test_triton_backward_variants_agree(monkeypatch, defer_da):
    """The backward's tuning switches (dA reduced per chunk or once at the end) give the same gradients."""
    monkeypatch.setattr(scan_triton._SelectiveScanTriton, "BWD_DEFER_DA", defer_da)
    inputs = on_device(make_inputs(2, 8, 70, 4, decay="mixed"))
    use = set(NAMES)
    assert_same(run(scan_triton.selective_scan_triton, inputs, use), run(selective_scan_ref, inputs, use))


def test_triton_bf16_inputs_against_fp32_reference():
    inputs = on_device(make_inputs(1, 8, 50, 4, dtype=torch.bfloat16))
    fast = run(scan_triton.selective_scan_triton, inputs, set(NAMES))
    ref = run(selective_scan_ref, {k: v.float() for k, v in inputs.items()}, set(NAMES))
    assert fast[0].dtype == torch.bfloat16 and fast[2]["u"].dtype == torch.bfloat16
    torch.testing.assert_close(fast[0].float(), ref[0], rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(fast[2]["B"].float(), ref[2]["B"], rtol=3e-2, atol=1e-1)


def test_cuda_dispatch_prefers_mamba_ssm_then_triton(monkeypatch):
    x = make_inputs(1, 4, 8, 4)
    cuda_u = types.SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # mamba_ssm absent
    mamba._mamba_ssm_scan.cache_clear()
    assert scan_backend(cuda_u, x["B"], x["C"], None) == "triton"
    monkeypatch.setattr(scan_triton, "is_available", lambda: False)  # triton absent too
    assert scan_backend(cuda_u, x["B"], x["C"], None) == "reference"
    mamba._mamba_ssm_scan.cache_clear()


def test_cuda_dispatch_with_mamba_ssm_present_and_an_initial_state(monkeypatch):
    fake = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    fake.selective_scan_fn = selective_scan_ref
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", fake)
    mamba._mamba_ssm_scan.cache_clear()
    x = make_inputs(1, 4, 8, 4)
    cuda_u = types.SimpleNamespace(device=torch.device("cuda"))
    assert scan_backend(cuda_u, x["B"], x["C"], None) == "mamba_ssm"
    assert scan_backend(cuda_u, x["B"], x["C"], x["initial_state"]) == "triton"  # streaming needs h0
    mamba._mamba_ssm_scan.cache_clear()


def test_triton_backend_through_the_model_entry_point(monkeypatch):
    monkeypatch.setenv("STORM_SCAN_BACKEND", "triton")
    x = on_device(make_inputs(1, 4, 20, 4))
    out = mamba.selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_softplus=True)
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_softplus=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
