#!/usr/bin/env python3
"""The main job of examples/calibrate_fashion_mnist, written as a PyTorch user
would write it: the peer that bench/compare.sh runs beside rimc's demo.

Same teacher (examples/models/resnet20_fmnist.safetensors, batch norm folded
as rimc folds it), same chip emulation (every conv / linear weight quantised
to 8-bit differential pairs with a per-column scale, g 0-40 uS, then relative
drift G' = max(G + rho G xi, 0) (rimc's physical drift bounds; --drift-bounds window
clips to [0, 40 uS] as rimc did before) with xi drawn by the same
Philox4x32-10 counters and seed mixing as rimc, so the drifted weights equal
rimc's to float rounding), the same layer-wise feature-KD calibration
(PEFT-style DoRA modules: lora_A kaiming-uniform with rimc's draws, B = 0,
magnitude = drifted row norms, s = alpha / r with alpha = r, norm detached;
MSE to the teacher's pre-activation features; torch.optim.Adam, the same
steps, lr, N and sample indices; rimc's keep-the-best-step rule), and the
same evaluation on the 10,000 test images (--eval-batch, default 50 as the
demo's; inference mode).
Teacher features are computed once, each layer's student input and W0 x once
per layer (the standard approach).

--formulation statistics is the stronger peer: the same maths as rimc's
statistics path (docs/formulas.md, "The statistics form of the per-layer
loss"), written in PyTorch. Per layer, once: the im2col rows X of the input
(F.unfold), the Gram matrix X^T X, X^T Z0, X^T Q with Q = Z0 + bias - T (one
float32 matrix product), and the per-channel sums of Z0^2, Z0 Q and Q^2, all
then held in float64; each Adam step (float64, its products are r x K) evaluates
the exact feature MSE from them (autograd differentiates it), whatever N and
the feature-map size. --formulation direct (the default) runs the convolutions
every step.

Writes a metric,value CSV like the demo's (deploy_drift_seconds,
calibration_seconds, evaluation_seconds, *_top1, peak_rss_mib).

  /usr/bin/python3 bench/peer/torch_calibrate.py [--threads 2] [--samples 10] [--rank 2] [--steps 100]
      [--lr 0.01] [--seed 0] [--drift-seed 1] [--rho 0.2] [--test-images 10000] [--csv peer.csv]
      [--formulation direct|statistics] [--check rimc_dump.safetensors]

--check compares the drifted weights, adapter initialisation, sample indices
(and calibrated adapters, when the dump has them) with a dump written by
build/.../bench/rimc_dump.
"""
import argparse
import gzip
import json
import math
import pathlib
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "models" / "resnet20_fmnist.safetensors"
DATA = pathlib.Path("/usr/share/datasets/fashion-mnist")
MASK32, MASK64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------- files
def load_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    n, = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dtype = {"F32": np.float32, "F64": np.float64, "I64": np.int64}[info["dtype"]]
        out[name] = np.frombuffer(raw, dtype=dtype, count=(e - b) // np.dtype(dtype).itemsize,
                                  offset=8 + n + b).reshape(info["shape"]).copy()
    return out


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split, limit=None):
    """rimc::load_mnist_like: x -> x * (1 / (255 std)) + (-mean / std), in float32."""
    prefix = "train" if split == "train" else "t10k"
    img = read_idx(DATA / f"{prefix}-images-idx3-ubyte.gz")
    lab = read_idx(DATA / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if limit is not None:
        img, lab = img[:limit], lab[:limit]
    mean, std = np.float32(0.2860), np.float32(0.3530)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    shift = -mean / std
    x = img.astype(np.float32)  # normalised in place: no temporary copies of the 188 MB training set
    x *= scale
    x += shift
    return torch.from_numpy(x[:, None]), torch.from_numpy(lab)


# ---------------------------------------------------------------- rimc's random numbers
def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def mix_seed(seed, key):
    return splitmix64(seed ^ splitmix64((key + 0x6A09E667F3BCC909) & MASK64))


def philox4x32(i, stream, seed):
    """Philox4x32-10 of counters (i, stream) under key seed; i a uint64 array. Returns four uint64 arrays of 32-bit words."""
    u = np.uint64
    c0, c1 = i & u(MASK32), i >> u(32)
    c2 = np.full_like(i, stream & MASK32)
    c3 = np.full_like(i, stream >> 32)
    k0, k1 = seed & MASK32, seed >> 32
    m0, m1 = u(0xD2511F53), u(0xCD9E8D57)
    for _ in range(10):
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> u(32)) ^ c1 ^ u(k0), p1 & u(MASK32), (p0 >> u(32)) ^ c3 ^ u(k1), p0 & u(MASK32)
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


def to_unit(hi_word, lo_word):
    return ((hi_word >> np.uint64(5)) << np.uint64(26) | (lo_word >> np.uint64(6))).astype(np.float64) * 2.0 ** -53


def uniform(i, stream, seed):
    b = philox4x32(i, stream, seed)
    return to_unit(b[0], b[1])


def normal(i, stream, seed):
    b = philox4x32(i, stream, seed)
    u1 = 1.0 - to_unit(b[0], b[1])
    u2 = to_unit(b[2], b[3])
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def sample_indices(total, n, seed):
    """rimc::sample_indices: the first n of a Philox-driven Fisher-Yates shuffle."""
    idx = np.arange(total, dtype=np.int64)
    u = uniform(np.arange(n, dtype=np.uint64), 0x73616D70, seed)
    for i in range(n):
        j = min(i + int(u[i] * float(total - i)), total - 1)
        idx[i], idx[j] = idx[j], idx[i]
    return idx[:n]


def round_half_away(v):
    a = np.abs(v)
    r = np.floor(a)
    r += (a - r) >= 0.5
    return np.copysign(r, v)


# ---------------------------------------------------------------- the network (rimc::resnet20's node order)
def resnet20_nodes():
    """(name, kind, inputs, stride, padding) in rimc::resnet20's order; the index is rimc's node id."""
    nodes = [("input", "input", [], 0, 0)]

    def add(name, kind, inputs, stride=1, pad=0):
        nodes.append((name, kind, inputs, stride, pad))
        return len(nodes) - 1

    x = add("conv1", "conv", [0], 1, 1)
    x = add("bn1", "bn", [x])
    x = add("relu", "relu", [x])
    cin = 16
    for stage in range(3):
        cout = 16 << stage
        for b in range(3):
            pre = f"layer{stage + 1}.{b}."
            stride = 2 if (b == 0 and stage > 0) else 1
            y = add(pre + "conv1", "conv", [x], stride, 1)
            y = add(pre + "bn1", "bn", [y])
            y = add(pre + "relu1", "relu", [y])
            y = add(pre + "conv2", "conv", [y], 1, 1)
            y = add(pre + "bn2", "bn", [y])
            sc = x
            if stride != 1 or cin != cout:
                sc = add(pre + "downsample.0", "conv", [x], stride, 0)
                sc = add(pre + "downsample.1", "bn", [sc])
            x = add(pre + "add", "add", [y, sc])
            x = add(pre + "relu2", "relu", [x])
            cin = cout
    x = add("avgpool", "gap", [x])
    x = add("flatten", "flatten", [x])
    add("fc", "linear", [x])
    return nodes


def fold_batch_norm(state, nodes):
    """rimc::network::fold_batch_norm, with rimc's double / float roundings."""
    w_out, b_out = {}, {}
    for i, (name, kind, inputs, _, _) in enumerate(nodes):
        if kind == "conv":
            w_out[name] = state[name + ".weight"].astype(np.float32)
            b_out[name] = np.zeros(w_out[name].shape[0], np.float32)
        elif kind == "linear":
            w_out[name] = state[name + ".weight"].astype(np.float32)
            b_out[name] = state[name + ".bias"].astype(np.float32)
        elif kind == "bn":
            conv = nodes[inputs[0]][0]
            g, beta = state[name + ".weight"], state[name + ".bias"]
            mean, var = state[name + ".running_mean"], state[name + ".running_var"]
            scale = g.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
            w = w_out[conv]
            w_out[conv] = (w.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
            b_out[conv] = ((b_out[conv] - mean).astype(np.float64) * scale + beta.astype(np.float64)).astype(np.float32)
    return w_out, b_out


class Net:
    """A folded ResNet-20 run node by node; conv / linear nodes may carry a DoRA adapter."""

    def __init__(self, nodes, weights, biases):
        self.nodes = nodes
        self.w = {k: torch.from_numpy(v) for k, v in weights.items()}
        self.b = {k: torch.from_numpy(v) for k, v in biases.items()}
        self.adapters = {}  # name -> (gamma [O], A, B, s)
        # bn nodes are identities after folding: resolve to their conv.
        self.src = list(range(len(nodes)))
        for i, (_, kind, inputs, _, _) in enumerate(nodes):
            if kind == "bn":
                self.src[i] = self.src[inputs[0]]

    def layer(self, i, x):
        name, kind, _, stride, pad = self.nodes[i]
        if kind == "conv":
            if name not in self.adapters:
                return F.conv2d(x, self.w[name], self.b[name], stride, pad)
            gamma, a, b, s = self.adapters[name]
            z0 = F.conv2d(x, self.w[name], None, stride, pad)
            lr = F.conv2d(F.conv2d(x, a, None, stride, pad), b)
            return torch.addcmul(self.b[name].view(1, -1, 1, 1), gamma.view(1, -1, 1, 1), z0 + s * lr)
        if name not in self.adapters:
            return F.linear(x, self.w[name], self.b[name])
        gamma, a, b, s = self.adapters[name]
        return gamma * (F.linear(x, self.w[name]) + s * F.linear(F.linear(x, a), b)) + self.b[name]

    def run(self, x, stop=None, capture=()):
        """Runs the nodes up to `stop` (inclusive; default all); returns (last value, {captured name: value})."""
        vals = {0: x}
        got = {}
        last = len(self.nodes) - 1 if stop is None else stop
        for i in range(1, last + 1):
            name, kind, inputs, _, _ = self.nodes[i]
            if kind == "bn":
                if name in capture:
                    got[name] = vals[self.src[i]]
                continue
            ins = [vals[self.src[j]] for j in inputs]
            if kind in ("conv", "linear"):
                v = self.layer(i, ins[0])
            elif kind == "relu":
                v = F.relu(ins[0])
            elif kind == "add":
                v = ins[0] + ins[1]
            elif kind == "gap":
                v = F.adaptive_avg_pool2d(ins[0], 1)
            elif kind == "maxpool":  # ResNet-50's stem (bench/peer/torch_resnet50.py)
                v = F.max_pool2d(ins[0], 3, 2, 1)
            else:  # flatten
                v = torch.flatten(ins[0], 1)
            vals[i] = v
            if name in capture:
                got[name] = v
        return vals[self.src[last]], got


# ---------------------------------------------------------------- the chip
def drifted_weights(w, node_id, rho, drift_seed, window=False):
    """rimc's differential 8-bit programming (per-column scale, g 0-40 uS) and relative drift; returns W_eff (float32)."""
    O = w.shape[0]
    wok = w.reshape(O, -1)
    K = wok.shape[1]
    scale = np.abs(wok).max(axis=1)                              # float32 [O]
    s64 = scale.astype(np.float64)
    wko = wok.T.astype(np.float64)                               # [K, O] as on the array
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s64 > 0, round_half_away(np.clip(wko / s64, -1.0, 1.0) * 255.0), 0.0)
    digits = np.stack([np.where(q > 0, np.abs(q), 0.0), np.where(q > 0, 0.0, np.abs(q))], axis=-1)  # [K, O, 2]
    g_prog = np.clip(0.0 + digits / 255.0 * 40.0, 0.0, 40.0).astype(np.float32)
    cell = np.arange(K * O * 2, dtype=np.uint64)                 # ((k O + o) slices + s) devices + d
    xi = normal(cell, 0x44524946, mix_seed(drift_seed, node_id)).reshape(K, O, 2)
    g = g_prog.astype(np.float64)
    g_now = np.clip(g + rho * g * xi, 0.0, 40.0 if window else None).astype(np.float32).astype(np.float64)
    code = (g_now[..., 0] - 0.0) / 40.0 * 255.0 - (g_now[..., 1] - 0.0) / 40.0 * 255.0
    w_eff = (s64 * code / 255.0).astype(np.float32)              # [K, O]
    return np.ascontiguousarray(w_eff.T).reshape(w.shape)


def initial_lora_a(shape_ak, node_id, seed):
    """rimc's lora_A draw: U(-b, b), b = 1/sqrt(K), from counter_rng(seed ^ golden (id + 1), "dora")."""
    K = int(np.prod(shape_ak[1:]))
    bound = np.float32(1.0 / math.sqrt(K))
    s = seed ^ ((0x9E3779B97F4A7C15 * (node_id + 1)) & MASK64)
    u = uniform(np.arange(int(np.prod(shape_ak)), dtype=np.uint64), 0x646F7261, s)
    lo, hi = -float(bound), float(bound)
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape_ak)


# ---------------------------------------------------------------- calibration
def calibrate(teacher, student, images, args, report):
    """Layer-wise feature KD with DoRA adapters (rimc::calibrate_feature_kd's method)."""
    r, s = args.rank, 1.0  # alpha = r
    targets = [i for i, n in enumerate(student.nodes) if n[1] in ("conv", "linear")]
    names = [student.nodes[i][0] for i in targets]
    with torch.no_grad():
        _, t_out = teacher.run(images, capture=set(names))  # the teacher's features, once
    for i in targets:
        name, kind, inputs, stride, pad = student.nodes[i]
        with torch.no_grad():
            x, _ = student.run(images, stop=student.src[inputs[0]])  # the calibrated-so-far student's input, once
            w0 = student.w[name]
            z0 = F.conv2d(x, w0, None, stride, pad) if kind == "conv" else F.linear(x, w0)  # W0 x, once
        target = t_out[name]
        bias = student.b[name].view(1, -1, 1, 1) if kind == "conv" else student.b[name]
        O = w0.shape[0]
        w0f = w0.reshape(O, -1)
        a_shape = (r,) + tuple(w0.shape[1:])
        a = torch.nn.Parameter(torch.from_numpy(initial_lora_a(a_shape, i, args.seed)))
        b = torch.nn.Parameter(torch.zeros((O, r, 1, 1) if kind == "conv" else (O, r)))
        m = torch.nn.Parameter(w0f.norm(dim=1))
        lr = args.lr
        opt = torch.optim.Adam([m, a, b], lr=lr)
        stats = statistics(x, z0, target, student.b[name], w0, kind, stride, pad) if args.formulation == "statistics" else None

        def weight_norm():
            with torch.no_grad():  # PEFT's DoRA: the weight norm is detached
                return (w0f + s * (b.reshape(O, r) @ a.reshape(r, -1))).norm(dim=1).clamp_min(1e-6)

        def statistics_loss():
            """The feature MSE from the layer's statistics (docs/formulas.md), in float64."""
            g = (m / weight_norm()).double()
            d = g - 1
            A, B = a.reshape(r, -1).double(), b.reshape(O, r).double()
            az, aq = A @ stats["xz"], A @ stats["xq"]              # [r, O]
            quad = ((B @ (A @ stats["gram"] @ A.T)) * B).sum(1)    # B_o (A X^T X A^T) B_o^T
            cross = (B * (d[:, None] * az.T + aq.T)).sum(1)
            total = d * d * stats["zz"] + 2 * d * stats["zq"] + stats["qq"] + 2 * s * g * cross + s * s * g * g * quad
            return total.sum() / stats["count"]

        def forward():
            with torch.no_grad():  # PEFT's DoRA: the weight norm is detached
                n = (w0f + s * (b.reshape(O, r) @ a.reshape(r, -1))).norm(dim=1).clamp_min(1e-6)
            g = m / n
            if kind == "conv":
                low = F.conv2d(F.conv2d(x, a, None, stride, pad), b)
                return g.view(1, -1, 1, 1) * (z0 + s * low) + bias
            return g * (z0 + s * F.linear(F.linear(x, a), b)) + bias

        before = last_good = None
        good = None
        for step in range(args.steps + 1):
            loss = statistics_loss() if stats is not None else F.mse_loss(forward(), target)
            lv = loss.item()
            if step == 0:
                before = last_good = lv
            if not math.isfinite(lv) or lv > 1e3 * max(before, 1e-30):  # rimc's divergence guard
                with torch.no_grad():
                    for p, v in zip((m, a, b), good):
                        p.copy_(v)
                lr *= 0.5
                opt = torch.optim.Adam([m, a, b], lr=lr)
                continue
            if lv <= last_good:  # keep the best parameters seen
                last_good = lv
                good = [t.detach().clone() for t in (m, a, b)]
            if step == args.steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            for p, v in zip((m, a, b), good):
                p.copy_(v)
            after = F.mse_loss(forward(), target).item()
            n = (w0f + s * (b.reshape(O, r) @ a.reshape(r, -1))).norm(dim=1).clamp_min(1e-6)
            student.adapters[name] = ((m / n).detach().clone(), a.detach().clone(), b.detach().clone(), s)
        report.append((name, before, after))


def statistics(x, z0, target, bias, w0, kind, stride, pad):
    """A layer's loss statistics: Gram X^T X, X^T Z0, X^T Q, and per channel sum Z0^2, Z0 Q, Q^2 (held in float64)."""
    O = w0.shape[0]
    if kind == "conv":
        cols = F.unfold(x, w0.shape[2:], padding=pad, stride=stride)     # [N, K, P]
        X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        Z0 = z0.permute(0, 2, 3, 1).reshape(-1, O)
        T = target.permute(0, 2, 3, 1).reshape(-1, O)
    else:
        X, Z0, T = x, z0, target
    # The products over the N P rows in float32 (sgemm, as fast as PyTorch goes), the rest in float64.
    X, Z0 = X.double(), Z0.double()
    Q = Z0 + bias.double() - T.double()
    return {"gram": X.T @ X, "xz": X.T @ Z0, "xq": X.T @ Q, "zz": (Z0 * Z0).sum(0), "zq": (Z0 * Q).sum(0),
            "qq": (Q * Q).sum(0), "count": float(Z0.numel())}


def evaluate(net, x, y, batch):
    hits = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch):
            logits, _ = net.run(x[i:i + batch])
            hits += int((logits.argmax(dim=1) == y[i:i + batch]).sum())
    return hits / x.shape[0], time.perf_counter() - t0


def check_chip(d, drifted, lora_a0, nodes):
    """Compares drifted weights, node ids and initial lora_A with a rimc_dump file's tensors d; True when equal."""
    ok = True
    worst = 0.0
    mismatched = total = 0
    for name, w in drifted.items():
        ref = d[name + ".weight"].reshape(w.shape)
        mismatched += int((ref != w).sum())
        total += w.size
        worst = max(worst, float(np.abs(ref - w).max() / max(np.abs(ref).max(), 1e-30)))
        nid = [i for i, n in enumerate(nodes) if n[0] == name][0]
        if int(d[name + ".node_id"][0]) != nid:
            print(f"check: {name}: node id {nid}, rimc {int(d[name + '.node_id'][0])}")
            ok = False
        if not np.array_equal(d[name + ".lora_A"].reshape(lora_a0[name].shape), lora_a0[name]):
            print(f"check: {name}: lora_A differs from rimc's")
            ok = False
    print(f"check: drifted weights: {mismatched} of {total} differ from rimc's (max relative difference {worst:.3g})")
    return ok and worst < 1e-5


def check(dump_path, weights, drifted, lora_a0, samples, student, nodes):
    d = load_safetensors(dump_path)
    ok = check_chip(d, drifted, lora_a0, nodes)
    if not np.array_equal(d["samples"].astype(np.int64), samples):
        print(f"check: sample indices {samples} != rimc's {d['samples'].astype(np.int64)}")
        ok = False
    cal = [k for k in d if k.startswith("calibrated.")]
    if cal:
        worst = 0.0
        for k in cal:
            _, name, what = k.split(".", 1)[0], *k.split(".", 1)[1].rsplit(".", 1)
            gamma, a, b, s = student.adapters[name]
            mine = {"lora_A": a, "lora_B": b}.get(what)
            if mine is None:
                continue
            ref = d[k].reshape(mine.shape)
            worst = max(worst, float(np.abs(ref - mine.numpy()).max() / max(np.abs(ref).max(), 1e-30)))
        print(f"check: calibrated lora_A / lora_B: max relative difference to rimc's {worst:.3g} (float rounding, amplified by Adam)")
    print("check: " + ("the same experiment as rimc's" if ok else "MISMATCH"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drift-seed", type=int, default=1)
    ap.add_argument("--rho", type=float, default=0.2)
    ap.add_argument("--drift-bounds", choices=("physical", "window"), default="physical")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--eval-batch", type=int, default=50, help="test images per forward (default 50, as the demo)")
    ap.add_argument("--csv", default="peer_calibration.csv")
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--check", help="a rimc_dump file to compare with")
    ap.add_argument("--formulation", choices=("direct", "statistics"), default="direct",
                    help="each step from the convolutions (direct) or from per-layer statistics (rimc's maths)")
    ap.add_argument("--layers", action="store_true", help="print each layer's feature MSE before and after")
    args = ap.parse_args()
    if args.eval_batch < 1:
        ap.error(f"--eval-batch must be >= 1, got {args.eval_batch}")
    torch.set_num_threads(args.threads)

    print("loading Fashion-MNIST and the teacher...", file=sys.stderr)
    nodes = resnet20_nodes()
    weights, biases = fold_batch_norm(load_safetensors(args.model), nodes)
    teacher = Net(nodes, weights, biases)
    train_x, _ = load_split("train")
    test_x, test_y = load_split("test", args.test_images)
    ideal, _ = evaluate(teacher, test_x, test_y, args.eval_batch)

    print(f"programming and drifting (relative drift {args.rho:.2f}, seed {args.drift_seed})...", file=sys.stderr)
    t0 = time.perf_counter()
    drifted = {}
    for i, (name, kind, *_rest) in enumerate(nodes):
        if kind in ("conv", "linear"):
            drifted[name] = drifted_weights(weights[name], i, args.rho, args.drift_seed, args.drift_bounds == "window")
    student = Net(nodes, drifted, biases)
    deploy_s = time.perf_counter() - t0
    drift_top1, _ = evaluate(student, test_x, test_y, args.eval_batch)

    print(f"feature-KD calibration with {args.samples} samples, rank {args.rank}, {args.steps} steps per layer...",
          file=sys.stderr)
    samples = sample_indices(train_x.shape[0], args.samples, args.seed)
    images = train_x[torch.from_numpy(samples)].contiguous()
    report = []
    t0 = time.perf_counter()
    calibrate(teacher, student, images, args, report)
    calib_s = time.perf_counter() - t0
    if args.layers:
        for k, (name, before, after) in enumerate(report):
            print(f"  [{k + 1:2d}/{len(report)}] {name:22} feature MSE {before:.4g} -> {after:.4g}", file=sys.stderr)
    calibrated, eval_s = evaluate(student, test_x, test_y, args.eval_batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    n = test_x.shape[0]
    print(f"ResNet-20 on Fashion-MNIST ({n} test images), PyTorch {torch.__version__}, {args.threads} threads, "
          f"relative drift {args.rho:.2f}, N = {args.samples}, rank {args.rank}\n")
    print(f"{'setting':34} {'top-1 %':>10}")
    print(f"{'ideal (digital teacher)':34} {100 * ideal:10.2f}")
    print(f"{'drifted':34} {100 * drift_top1:10.2f}")
    print(f"{'DoRA feature-KD calibration':34} {100 * calibrated:10.2f}")
    print(f"\ntime: deploy + drift {deploy_s:.3f} s, feature-KD calibration {calib_s:.3f} s ({len(report)} layers), "
          f"evaluation {eval_s:.3f} s ({n / eval_s:.0f} images/s); peak RSS {peak:.1f} MiB")
    rows = [("rho", args.rho), ("samples", args.samples), ("rank", args.rank), ("ideal_top1", ideal),
            ("drifted_top1", drift_top1), ("calibrated_top1", calibrated), ("deploy_drift_seconds", deploy_s),
            ("calibration_seconds", calib_s), ("evaluation_seconds", eval_s), ("peak_rss_mib", peak)]
    pathlib.Path(args.csv).write_text("metric,value\n" + "".join(f"{k},{v}\n" for k, v in rows))
    print(f"wrote {pathlib.Path(args.csv).resolve()}")
    if args.check:
        lora_a0 = {nodes[i][0]: initial_lora_a((args.rank,) + weights[nodes[i][0]].shape[1:], i, args.seed)
                   for i in range(len(nodes)) if nodes[i][1] in ("conv", "linear")}
        if not check(args.check, weights, drifted, lora_a0, samples, student, nodes):
            sys.exit(1)


if __name__ == "__main__":
    main()
