#!/usr/bin/env python3
"""Writes tests/data/dora_fixtures.safetensors: DoRA forward outputs and
gradients computed by PyTorch autograd in float64, for rimc's parity test.

The layer is PEFT's DoRA: y = (m / n) * (W0 x + s B (A x)) + bias with
n = ||W0 + s B A||_row; "detached" treats n as a constant in the backward
pass (PEFT, DoRA paper Sec. 4.3), "exact" differentiates through it.
Cases: a linear layer, and a conv layer with stride 2, padding 1, a
non-square input and batch 2. m is perturbed away from the norms and B is
non-zero so the test is not the identity-at-init case.

Run with Debian's python3-torch:  /usr/bin/python3 tools/make_dora_fixtures.py
"""
import math
import pathlib
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from st_write import save_safetensors  # noqa: E402


def dora(x, w0, a, b, m, bias, s, detach, conv):
    v = w0 + s * (b.flatten(1) @ a.flatten(1)).reshape(w0.shape)
    n = v.flatten(1).norm(dim=1)
    if detach:
        n = n.detach()
    gamma = m / n
    if conv:
        z = F.conv2d(x, w0, None, stride=2, padding=1) + s * F.conv2d(F.conv2d(x, a, None, stride=2, padding=1), b)
        return gamma.view(1, -1, 1, 1) * z + bias.view(1, -1, 1, 1)
    z = x @ w0.T + s * (x @ a.T) @ b.T
    return gamma * z + bias


def case(name, conv, gen, out):
    if conv:
        n_, c, h, w, o, k, r, alpha, rslora = 2, 3, 7, 6, 4, 3, 2, 3.0, True
        x = torch.randn(n_, c, h, w, generator=gen, dtype=torch.float64)
        w0 = torch.randn(o, c, k, k, generator=gen, dtype=torch.float64) * 0.3
        a = torch.randn(r, c, k, k, generator=gen, dtype=torch.float64) * 0.2
        b = torch.randn(o, r, 1, 1, generator=gen, dtype=torch.float64) * 0.2
    else:
        n_, kk, o, r, alpha, rslora = 3, 7, 5, 2, 4.0, False
        x = torch.randn(n_, kk, generator=gen, dtype=torch.float64)
        w0 = torch.randn(o, kk, generator=gen, dtype=torch.float64) * 0.3
        a = torch.randn(r, kk, generator=gen, dtype=torch.float64) * 0.2
        b = torch.randn(o, r, generator=gen, dtype=torch.float64) * 0.2
    s = alpha / math.sqrt(r) if rslora else alpha / r
    m = w0.flatten(1).norm(dim=1) * (1 + 0.3 * torch.rand(o, generator=gen, dtype=torch.float64))
    bias = torch.randn(o, generator=gen, dtype=torch.float64) * 0.1
    for key, t in {"x": x, "w0": w0, "A": a, "B": b, "m": m, "bias": bias}.items():
        out[f"{name}.{key}"] = t
    grad_y = None
    for mode in ("detached", "exact"):
        xs, as_, bs, ms = (t.clone().requires_grad_(True) for t in (x, a, b, m))
        y = dora(xs, w0, as_, bs, ms, bias, s, mode == "detached", conv)
        if grad_y is None:
            grad_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
            out[f"{name}.grad_y"] = grad_y
            out[f"{name}.y"] = y.detach()
        y.backward(grad_y)
        out[f"{name}.{mode}.dx"] = xs.grad
        out[f"{name}.{mode}.dA"] = as_.grad
        out[f"{name}.{mode}.dB"] = bs.grad
        out[f"{name}.{mode}.dm"] = ms.grad
    return {f"{name}.rank": str(r), f"{name}.alpha": repr(alpha), f"{name}.use_rslora": str(rslora).lower()}


def main():
    gen = torch.Generator().manual_seed(20261128)
    tensors, meta = {}, {"generator": "tools/make_dora_fixtures.py", "torch": torch.__version__}
    meta.update(case("linear", False, gen, tensors))
    meta.update(case("conv", True, gen, tensors))
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "dora_fixtures.safetensors"
    save_safetensors(path, tensors, meta)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
