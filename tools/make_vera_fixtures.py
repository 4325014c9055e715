#!/usr/bin/env python3
"""Writes tests/data/vera_fixtures.safetensors: VeRA forward outputs and
gradients computed by PyTorch autograd in float64, for rimc's parity test.

The layer is PEFT's VeRA (VeraLayer.forward):
    y = W0 x + bias + lambda_b * (B[:O] (lambda_d * (A[:, :K] x)))
with the projections vera_A [r, max_in] and vera_B [max_out, r] shared and
frozen (sliced to the layer's K and O, as PEFT slices them) and lambda_d [r],
lambda_b [O] trained. For a convolution (which PEFT's VeRA does not cover)
A's slice is reshaped to [r, C, kh, kw] and applied as a convolution with
the layer's stride and padding, B as a 1x1 convolution. VeRA+ keeps one
(lambda_d, lambda_b) pair per drift level: each case has two levels, both
non-trivial, with one grad_y.

Run with Debian's python3-torch:  /usr/bin/python3 tools/make_vera_fixtures.py
"""
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from st_write import save_safetensors  # noqa: E402


def vera(x, w0, bias, a_full, b_full, ld, lb, conv):
    o, r = w0.shape[0], a_full.shape[0]
    k = w0[0].numel()
    a = a_full[:, :k]
    b = b_full[:o, :]
    if conv:
        base = F.conv2d(x, w0, bias, stride=2, padding=1)
        u = F.conv2d(x, a.reshape(r, *w0.shape[1:]), None, stride=2, padding=1)
        return base + lb.view(1, -1, 1, 1) * F.conv2d(ld.view(1, -1, 1, 1) * u, b.reshape(o, r, 1, 1))
    return F.linear(x, w0, bias) + lb * F.linear(ld * F.linear(x, a), b)


def case(name, conv, gen, out):
    if conv:
        n_, c, h, w, o, k, r, max_in, max_out = 2, 3, 7, 6, 4, 3, 2, 30, 5
        x = torch.randn(n_, c, h, w, generator=gen, dtype=torch.float64)
        w0 = torch.randn(o, c, k, k, generator=gen, dtype=torch.float64) * 0.3
    else:
        n_, kk, o, r, max_in, max_out = 3, 7, 5, 3, 9, 6
        x = torch.randn(n_, kk, generator=gen, dtype=torch.float64)
        w0 = torch.randn(o, kk, generator=gen, dtype=torch.float64) * 0.3
    a_full = (torch.rand(r, max_in, generator=gen, dtype=torch.float64) * 2 - 1) / max_in**0.5
    b_full = (torch.rand(max_out, r, generator=gen, dtype=torch.float64) * 2 - 1) / r**0.5
    bias = torch.randn(o, generator=gen, dtype=torch.float64) * 0.1
    for key, t in {"x": x, "w0": w0, "bias": bias, "vera_A": a_full, "vera_B": b_full}.items():
        out[f"{name}.{key}"] = t
    grad_y = None
    for level in range(2):
        ld = torch.randn(r, generator=gen, dtype=torch.float64)
        lb = torch.randn(o, generator=gen, dtype=torch.float64)
        out[f"{name}.{level}.lambda_d"] = ld
        out[f"{name}.{level}.lambda_b"] = lb
        xs, lds, lbs = (t.clone().requires_grad_(True) for t in (x, ld, lb))
        y = vera(xs, w0, bias, a_full, b_full, lds, lbs, conv)
        if grad_y is None:
            grad_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
            out[f"{name}.grad_y"] = grad_y
        y.backward(grad_y)
        out[f"{name}.{level}.y"] = y.detach()
        out[f"{name}.{level}.dx"] = xs.grad
        out[f"{name}.{level}.dlambda_d"] = lds.grad
        out[f"{name}.{level}.dlambda_b"] = lbs.grad
    return {f"{name}.rank": str(r)}


def main():
    gen = torch.Generator().manual_seed(20261130)
    tensors, meta = {}, {"generator": "tools/make_vera_fixtures.py", "torch": torch.__version__}
    meta.update(case("linear", False, gen, tensors))
    meta.update(case("conv", True, gen, tensors))
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "vera_fixtures.safetensors"
    save_safetensors(path, tensors, meta)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
