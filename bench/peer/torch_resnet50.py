#!/usr/bin/env python3
"""The whole-ResNet-50 calibration of bench_calibration's calibrate_resnet50_whole, written with
PyTorch: the peer for rimc's ResNet-50 number (README, "Calibration speed").

The same setting on the same chip: ResNet-50 at --size (224) with torchvision's initialisation
(conv weights normal, std sqrt(2 / (O kh kw)); batch norm 1, 0, mean 0, var 1, folded into the
convs as rimc folds it; fc uniform +-1/sqrt(in)), every conv and fc weight quantised to 8-bit
differential pairs with a per-row scale, g 0-40 uS, relative drift rho = 0.2 with
G' = max(G + rho G xi, 0), N random images in [-2, 2], and rimc's layer-wise feature-KD
calibration of DoRA adapters (rank --rank, 100 Adam steps per layer, lr 1e-2, keep-the-best
rule) as bench/peer/torch_calibrate.py implements it, in either formulation (--formulation
direct: the convolutions every step; statistics: rimc's maths). With --draws rimc (the default)
the weights, drift draws, images and adapter initialisations are rimc's own (its Philox counters
and seeds, as bench::torchvision_init and bench_calibration draw them), so the drifted weights
equal rimc's to float rounding and the feature MSEs can be compared with rimc's; --draws torch
draws the weights, drift and images from torch's generator (--draw-seed) instead.
Prints the calibration time, the summed feature MSE before and after, and the peak RSS.

  /usr/bin/python3 bench/peer/torch_resnet50.py [--size 224] [--samples 10] [--rank 4] [--steps 100]
      [--threads 2] [--formulation direct|statistics] [--draws rimc|torch] [--draw-seed 1]
      [--check rimc_dump.safetensors] [--csv peer_resnet50.csv]

--check compares the drifted weights, node ids, adapter initialisations and images with a dump
written by build/.../bench/rimc_dump --resnet50 SIZE (then exits without calibrating).
"""
import argparse
import math
import pathlib
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_calibrate as tc  # noqa: E402


def resnet50_nodes():
    """(name, kind, inputs, stride, padding) in rimc::resnet50's order (torchvision's names)."""
    nodes = [("input", "input", [], 0, 0)]

    def add(name, kind, inputs, stride=1, pad=0):
        nodes.append((name, kind, inputs, stride, pad))
        return len(nodes) - 1

    x = add("conv1", "conv", [0], 2, 3)
    x = add("bn1", "bn", [x])
    x = add("relu", "relu", [x])
    x = add("maxpool", "maxpool", [x])
    for stage, blocks in enumerate((3, 4, 6, 3)):
        width = 64 << stage
        for b in range(blocks):
            pre = f"layer{stage + 1}.{b}."
            stride = 2 if (b == 0 and stage > 0) else 1
            y = add(pre + "conv1", "conv", [x])
            y = add(pre + "bn1", "bn", [y])
            y = add(pre + "relu1", "relu", [y])
            y = add(pre + "conv2", "conv", [y], stride, 1)
            y = add(pre + "bn2", "bn", [y])
            y = add(pre + "relu2", "relu", [y])
            y = add(pre + "conv3", "conv", [y])
            y = add(pre + "bn3", "bn", [y])
            sc = x
            if b == 0:
                sc = add(pre + "downsample.0", "conv", [x], stride, 0)
                sc = add(pre + "downsample.1", "bn", [sc])
            x = add(pre + "add", "add", [y, sc])
            x = add(pre + "relu3", "relu", [x])
    x = add("avgpool", "gap", [x])
    x = add("flatten", "flatten", [x])
    add("fc", "linear", [x])
    return nodes


def torchvision_state(nodes, classes, gen):
    """torchvision's initialisation of every parameter, as numpy arrays named like its state dict."""
    state = {}
    chans = {0: 3}  # output channels per node
    for i, (name, kind, inputs, stride, _) in enumerate(nodes):
        if kind == "conv":
            c = chans[inputs[0]]
            o, k = conv_shape(name)
            std = (2.0 / (o * k * k)) ** 0.5
            state[name + ".weight"] = (torch.randn(o, c, k, k, generator=gen) * std).numpy()
            chans[i] = o
        elif kind == "bn":
            o = chans[inputs[0]]
            state[name + ".weight"] = np.ones(o, np.float32)
            state[name + ".bias"] = np.zeros(o, np.float32)
            state[name + ".running_mean"] = np.zeros(o, np.float32)
            state[name + ".running_var"] = np.ones(o, np.float32)
            chans[i] = o
        elif kind == "linear":
            c = chans[inputs[0]]
            bound = 1.0 / c ** 0.5
            state[name + ".weight"] = ((torch.rand(classes, c, generator=gen) * 2 - 1) * bound).numpy()
            state[name + ".bias"] = ((torch.rand(classes, generator=gen) * 2 - 1) * bound).numpy()
            chans[i] = classes
        elif kind != "input":
            chans[i] = chans[inputs[0]]
    return state


def rimc_state(nodes, classes):
    """bench::torchvision_init's parameters (rimc's Philox counters): conv weights normal from
    counter_rng(1), counter_rng(2), ... in node order, then the fc's bias and weight (its parameters
    in name order) uniform; batch norm 1, 0, mean 0, var 1."""
    state, chans, seed = {}, {0: 3}, 1
    for i, (name, kind, inputs, _, _) in enumerate(nodes):
        if kind == "conv":
            o, k = conv_shape(name)
            shape = (o, chans[inputs[0]], k, k)
            std = float(np.float32(math.sqrt(2.0 / (o * k * k))))  # rimc passes the std as float
            z = tc.normal(np.arange(int(np.prod(shape)), dtype=np.uint64), 0, seed)
            state[name + ".weight"] = (0.0 + std * z).astype(np.float32).reshape(shape)
            seed += 1
            chans[i] = o
        elif kind == "bn":
            o = chans[inputs[0]]
            state.update({name + ".weight": np.ones(o, np.float32), name + ".bias": np.zeros(o, np.float32),
                          name + ".running_mean": np.zeros(o, np.float32),
                          name + ".running_var": np.ones(o, np.float32)})
            chans[i] = o
        elif kind == "linear":
            c = chans[inputs[0]]
            bound = float(np.float32(1.0 / math.sqrt(c)))
            for p, shape in (("bias", (classes,)), ("weight", (classes, c))):
                u = tc.uniform(np.arange(int(np.prod(shape)), dtype=np.uint64), 0, seed)
                state[name + "." + p] = (-bound + (bound - -bound) * u).astype(np.float32).reshape(shape)
                seed += 1
            chans[i] = classes
        elif kind != "input":
            chans[i] = chans[inputs[0]]
    return state


def rimc_images(n, size):
    """bench_calibration's images: fill_uniform(images, counter_rng(13), -2, 2) in NCHW order."""
    u = tc.uniform(np.arange(n * 3 * size * size, dtype=np.uint64), 0, 13)
    return torch.from_numpy((-2.0 + 4.0 * u).astype(np.float32).reshape(n, 3, size, size))


def conv_shape(name):
    """(output channels, kernel size) of a ResNet-50 conv node."""
    if name == "conv1":
        return 64, 7
    width = 64 << (int(name[5]) - 1)
    leaf = "downsample" if name.endswith("downsample.0") else name.rsplit(".", 1)[1]
    return {"conv1": (width, 1), "conv2": (width, 3), "conv3": (width * 4, 1), "downsample": (width * 4, 1)}[leaf]


def check(path, nodes, drifted, images, rank, seed):
    """Compares this peer's chip with rimc_dump --resnet50's; True when it is the same experiment."""
    d = tc.load_safetensors(path)
    lora_a0 = {name: tc.initial_lora_a((rank,) + drifted[name].shape[1:], i, seed)
               for i, (name, kind, *_rest) in enumerate(nodes) if kind in ("conv", "linear")}
    ok = tc.check_chip(d, drifted, lora_a0, nodes)
    ref = d["images"]
    if ref.size != images.numel():
        print(f"check: images: rimc's dump holds {ref.size} values, this run {images.numel()} "
              f"(--samples and --size must match the dump's)")
        ok = False
    elif not np.array_equal(ref.reshape(images.shape), images.numpy()):
        print(f"check: images: {int((ref.reshape(images.shape) != images.numpy()).sum())} of {ref.size} differ from rimc's")
        ok = False
    print("check: " + ("the same experiment as rimc's" if ok else "MISMATCH"))
    return ok


def drifted(w, rho, gen):
    """8-bit differential programming with a per-row scale, g 0-40 uS, relative drift (torch's normals)."""
    t = torch.from_numpy(w)
    o = t.shape[0]
    flat = t.reshape(o, -1).double()
    scale = flat.abs().amax(dim=1, keepdim=True)
    q = torch.where(scale > 0, torch.round(torch.clamp(flat / scale, -1, 1) * 255), torch.zeros_like(flat))
    g = torch.stack([q.clamp_min(0), (-q).clamp_min(0)]) / 255.0 * 40.0
    g = torch.clamp(g + rho * g * torch.randn(g.shape, generator=gen, dtype=torch.float64), min=0.0)
    code = (g[0] - g[1]) / 40.0 * 255.0
    return (scale * code / 255.0).float().reshape(t.shape).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rho", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formulation", choices=("direct", "statistics"), default="direct")
    ap.add_argument("--draws", choices=("rimc", "torch"), default="rimc",
                    help="weights, drift, images from rimc's counters (the same chip as rimc's) or torch's generator")
    ap.add_argument("--draw-seed", type=int, default=1, help="seed of torch's generator with --draws torch")
    ap.add_argument("--drift-seed", type=int, default=1, help="rimc's drift seed with --draws rimc")
    ap.add_argument("--check", help="a rimc_dump --resnet50 file to compare the chip with (then exit)")
    ap.add_argument("--csv", default="peer_resnet50.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.draw_seed)
    nodes = resnet50_nodes()
    state = rimc_state(nodes, 1000) if args.draws == "rimc" else torchvision_state(nodes, 1000, gen)
    weights, biases = tc.fold_batch_norm(state, nodes)
    del state
    teacher = tc.Net(nodes, weights, biases)
    t0 = time.perf_counter()
    if args.draws == "rimc":  # rimc's programming and drift (per node id), as torch_calibrate.py draws them
        ids = {name: i for i, (name, *_rest) in enumerate(nodes)}
        drifted_w = {k: tc.drifted_weights(v, ids[k], args.rho, args.drift_seed) for k, v in weights.items()}
    else:
        drifted_w = {k: drifted(v, args.rho, gen) for k, v in weights.items()}
    student = tc.Net(nodes, drifted_w, biases)
    deploy_s = time.perf_counter() - t0
    if args.draws == "rimc":
        images = rimc_images(args.samples, args.size)
    else:
        images = torch.rand(args.samples, 3, args.size, args.size, generator=gen) * 4 - 2
    if args.check:
        sys.exit(0 if check(args.check, nodes, drifted_w, images, args.rank, args.seed) else 1)
    del drifted_w
    report = []
    t0 = time.perf_counter()
    tc.calibrate(teacher, student, images, args, report)
    calib_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    before, after = sum(r[1] for r in report), sum(r[2] for r in report)
    print(f"ResNet-50 at {args.size}x{args.size}, N = {args.samples}, rank {args.rank}, {args.steps} steps, "
          f"{args.formulation}, {args.draws}'s draws, PyTorch {torch.__version__}, {args.threads} threads: calibration {calib_s:.3f} s "
          f"({len(report)} layers), summed feature MSE {before:.4g} -> {after:.4g} ({after / before:.3f}), "
          f"deploy + drift {deploy_s:.2f} s, peak RSS {peak:.0f} MiB")
    rows = [("calibration_seconds", calib_s), ("layers", len(report)), ("mse_after_over_before", after / before),
            ("peak_rss_mib", peak)]
    pathlib.Path(args.csv).write_text("metric,value\n" + "".join(f"{k},{v}\n" for k, v in rows))


if __name__ == "__main__":
    main()
