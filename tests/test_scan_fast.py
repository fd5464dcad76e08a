"""The fused CPU scan and the backend dispatch, against the reference scan."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from storm_vlm.modeling import mamba
from storm_vlm.modeling.mamba import scan_backend, selective_scan_fn, selective_scan_ref
from storm_vlm.modeling.scan_cpu import CHUNK, selective_scan_cpu

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, dim, length, state, groups=None, decay="mixed", seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    scale = {"strong": 8.0, "weak": 0.01, "mixed": 1.0}[decay]
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    return {
        "u": torch.randn(batch, dim, length, generator=g).to(dtype),
        "delta": (torch.randn(batch, dim, length, generator=g) + (1.0 if decay == "strong" else -1.0)).to(dtype),
        "A": -torch.rand(dim, state, generator=g) * scale - 0.01,
        "B": torch.randn(*bc_shape, generator=g).to(dtype),
        "C": torch.randn(*bc_shape, generator=g).to(dtype),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g).to(dtype),
        "delta_bias": torch.randn(dim, generator=g) * 0.5,
        "initial_state": torch.randn(batch, dim, state, generator=g),
    }


def run(fn, inputs, use, softplus=True, grads=True):
    leaves = {k: v.clone().requires_grad_(grads) for k, v in inputs.items() if k in use or k in "u delta A B C"}
    kw = {k: leaves[k] for k in ("D", "z", "delta_bias", "initial_state") if k in leaves}
    out, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], delta_softplus=softplus,
                   return_last_state=True, **kw)  # fmt: skip
    if grads:
        g = torch.Generator().manual_seed(1)
        (out.float() * torch.randn(out.shape, generator=g).to(out.device)).sum().add(
            (last * torch.randn(last.shape, generator=g).to(last.device)).sum()
        ).backward()
    return out, last, {k: v.grad for k, v in leaves.items()}


def assert_same(fast, ref, rtol=1e-4, atol=1e-4):
    out_f, last_f, grads_f = fast
    out_r, last_r, grads_r = ref
    torch.testing.assert_close(out_f.float(), out_r.float(), rtol=rtol, atol=atol)
    torch.testing.assert_close(last_f, last_r, rtol=rtol, atol=atol)
    for name, g in grads_r.items():
        if g is not None:
            scale = max(1.0, float(g.abs().max()))
            torch.testing.assert_close(grads_f[name] / scale, g / scale, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("decay", ["strong", "weak", "mixed"])
@pytest.mark.parametrize("length", [1, 5, CHUNK, CHUNK + 37, 3 * CHUNK + 1])
def test_fast_scan_equals_reference(decay, length):
    inputs = make_inputs(2, 6, length, 4, decay=decay)
    use = set(NAMES)
    assert_same(run(selective_scan_cpu, inputs, use), run(selective_scan_ref, inputs, use))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    dim=st.integers(1, 9),
    length=st.integers(1, 300),
    state=st.integers(1, 17),
    optional=st.sets(st.sampled_from(["D", "z", "delta_bias", "initial_state"])),
    softplus=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fast_scan_random_shapes_and_options(batch, dim, length, state, optional, softplus, seed):
    inputs = make_inputs(batch, dim, length, state, seed=seed)
    if not softplus:  # without softplus Δ + bias must stay positive for a stable scan
        inputs["delta"] = inputs["delta"].abs() * 0.1
        inputs["delta_bias"] = inputs["delta_bias"].abs() * 0.1
    use = set(optional)
    assert_same(run(selective_scan_cpu, inputs, use, softplus), run(selective_scan_ref, inputs, use, softplus))


def test_grouped_B_C():
    inputs = make_inputs(2, 8, 150, 4, groups=2)
    use = set(NAMES)
    assert_same(run(selective_scan_cpu, inputs, use), run(selective_scan_ref, inputs, use))


def test_bf16_inputs_against_fp32_reference():
    inputs = make_inputs(1, 8, 200, 8, dtype=torch.bfloat16)
    fast = run(selective_scan_cpu, inputs, set(NAMES), grads=False)
    ref = run(selective_scan_ref, {k: v.float() for k, v in inputs.items()}, set(NAMES), grads=False)
    assert fast[0].dtype == torch.bfloat16
    torch.testing.assert_close(fast[0].float(), ref[0], rtol=2e-2, atol=5e-2)


def test_dispatch_on_cpu(monkeypatch):
    x = make_inputs(1, 4, 10, 4)
    assert scan_backend(x["u"], x["B"], x["C"], None) == "cpu"
    assert scan_backend(x["u"], torch.randn(4, 4), x["C"], None) == "reference"  # time-invariant B
    monkeypatch.setenv("STORM_SCAN_BACKEND", "reference")
    assert scan_backend(x["u"], x["B"], x["C"], None) == "reference"
    monkeypatch.setenv("STORM_SCAN_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="STORM_SCAN_BACKEND"):
        scan_backend(x["u"], x["B"], x["C"], None)


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """A stand-in mamba_ssm at the import boundary: records calls, computes with the reference."""
    calls = []

    def selective_scan_fn_stub(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False):  # fmt: skip
        calls.append({"shape": tuple(u.shape), "softplus": delta_softplus, "last": return_last_state})
        return selective_scan_ref(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                  delta_softplus=delta_softplus, return_last_state=return_last_state)  # fmt: skip

    modules = {
        "mamba_ssm": types.ModuleType("mamba_ssm"),
        "mamba_ssm.ops": types.ModuleType("mamba_ssm.ops"),
        "mamba_ssm.ops.selective_scan_interface": types.ModuleType("mamba_ssm.ops.selective_scan_interface"),
    }
    modules["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = selective_scan_fn_stub
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    mamba._mamba_ssm_scan.cache_clear()
    yield calls
    mamba._mamba_ssm_scan.cache_clear()


def test_cuda_route_uses_mamba_ssm_when_installed(fake_mamba_ssm, monkeypatch):
    from storm_vlm.modeling import scan_triton

    monkeypatch.setattr(scan_triton, "is_available", lambda: False)  # the Triton route: test_scan_triton
    x = make_inputs(1, 4, 12, 4)
    cuda_u = types.SimpleNamespace(device=torch.device("cuda"))
    assert scan_backend(cuda_u, x["B"], x["C"], None) == "mamba_ssm"
    assert scan_backend(cuda_u, x["B"], x["C"], x["initial_state"]) == "reference"  # kernel has no h0
    monkeypatch.setenv("STORM_SCAN_BACKEND", "mamba_ssm")
    out = selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                            delta_bias=x["delta_bias"], delta_softplus=True)  # fmt: skip
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                             delta_bias=x["delta_bias"], delta_softplus=True)  # fmt: skip
    assert fake_mamba_ssm == [{"shape": (1, 4, 12), "softplus": True, "last": False}]
    torch.testing.assert_close(out, ref)


def test_cuda_route_without_mamba_ssm_or_triton_is_the_reference(monkeypatch):
    from storm_vlm.modeling import scan_triton

    monkeypatch.setattr(scan_triton, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # import fails
    mamba._mamba_ssm_scan.cache_clear()
    x = make_inputs(1, 4, 12, 4)
    assert scan_backend(types.SimpleNamespace(device=torch.device("cuda")), x["B"], x["C"], None) == "reference"
    mamba._mamba_ssm_scan.cache_clear()


def test_causal_conv1d_kernel_route(monkeypatch):
    calls = []

    def kernel(x, weight, bias, activation=None):
        calls.append(activation)
        return torch.nn.functional.silu(
            torch.nn.functional.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[
                ..., : x.shape[-1]
            ]
        )

    x, w, b = torch.randn(2, 6, 11), torch.randn(6, 4), torch.randn(6)
    plain = mamba.causal_conv1d(x, w, b)
    monkeypatch.setattr(mamba, "_use_conv_kernel", lambda x: True)
    monkeypatch.setattr(mamba, "_causal_conv1d_kernel", lambda: kernel)
    torch.testing.assert_close(mamba.causal_conv1d(x, w, b), plain)
    assert calls == ["silu"]


def test_without_numba_the_reference_runs(monkeypatch):
    from storm_vlm.modeling import scan_cpu

    monkeypatch.setattr(scan_cpu, "is_available", lambda: False)
    x = make_inputs(1, 4, 10, 4)
    assert scan_backend(x["u"], x["B"], x["C"], None) == "reference"


def test_model_outputs_and_grads_agree_across_backends(tiny, monkeypatch):
    model, processor = tiny
    from .conftest import random_frames

    inputs = processor(processor.build_prompt("Q"), videos=[random_frames(6)], training=True)
    results = {}
    for backend in ("cpu", "reference"):
        monkeypatch.setenv("STORM_SCAN_BACKEND", backend)
        model.zero_grad()
        model.train()
        try:
            loss = model(**inputs, labels=inputs["input_ids"]).loss
            loss.backward()
        finally:
            model.eval()
        grad = model.temporal.layers[0].mixer.backward_branch.A_log.grad.clone()
        results[backend] = (loss.detach(), grad)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(results["cpu"][0], results["reference"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["cpu"][1], results["reference"][1], rtol=1e-3, atol=1e-5)


def test_channels_last_inputs_equal_contiguous():
    """The kernels read (B, E, L) views of (B, L, E) memory (the GEMMs' layout) without a copy."""
    inputs = make_inputs(2, 40, 150, 16)
    strided = dict(inputs)
    for name in ("u", "delta", "z"):
        strided[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
    use = set(NAMES)
    assert_same(run(selective_scan_cpu, strided, use), run(selective_scan_ref, inputs, use))


def test_reverse_and_average_equal_the_flipped_scan():
    """``reverse`` scans the flipped sequence in place; ``average`` writes the mean with what is there."""
    import numpy as np

    from storm_vlm.modeling.scan_cpu import scan_forward_arrays

    x = make_inputs(2, 20, 3 * CHUNK + 5, 8)
    arr = {k: v.numpy() for k, v in x.items()}
    bt = {k: np.ascontiguousarray(x[k].transpose(1, 2).unsqueeze(1).numpy()) for k in ("B", "C")}
    out = np.full(x["u"].shape, 3.0, np.float32)
    last, _ = scan_forward_arrays(arr["u"], arr["delta"], arr["A"], bt["B"], bt["C"], arr["D"], arr["z"],
                                  arr["delta_bias"], arr["initial_state"], out, True, reverse=True,
                                  average=True)  # fmt: skip
    flip = {k: x[k].flip(-1) for k in ("u", "delta", "B", "C", "z")}
    ref, ref_last = selective_scan_ref(flip["u"], flip["delta"], x["A"], flip["B"], flip["C"], D=x["D"], z=flip["z"],
                                       delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True,
                                       initial_state=x["initial_state"])  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(out), (ref.flip(-1) + 3.0) / 2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(last), ref_last, rtol=1e-4, atol=1e-4)
