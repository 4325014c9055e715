#!/usr/bin/env python3
"""Trains the ResNet-20 teacher on Fashion-MNIST and exports it for rimc.

ResNet-20 (He et al. 2016, CIFAR variant: 3 stages of 3 basic blocks with
16/32/64 channels) for 1x28x28 inputs and 10 classes, with 1x1 conv + BN
projection shortcuts where the shape changes, module names as torchvision's
ResNet (conv1, bn1, layerS.B.conv1, layerS.B.downsample.0, fc).

Writes
  examples/models/resnet20_fmnist.safetensors     the state_dict (F32; BN statistics; metadata)
  tests/data/resnet20_fmnist_logits.safetensors   logits of the first 256 test images (parity fixture)
and prints the test accuracy. Data: Debian's dataset-fashion-mnist package.

  /usr/bin/python3 tools/train_teacher.py [--epochs 8] [--seed 0] [--threads 2]
"""
import argparse
import gzip
import pathlib
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from st_write import save_safetensors  # noqa: E402

DATA = pathlib.Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics (of x / 255)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(DATA / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    y = read_idx(DATA / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    x = (x - MEAN) / STD
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet20(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cfg, cin = [], 16
        for stage, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
            blocks = []
            for b in range(3):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def augment(x, gen):
    """Random 28x28 crops of the 2-pixel zero-padded (in normalised units) image, random horizontal flips."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def evaluate(model, x, y, batch=500):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    root = pathlib.Path(__file__).resolve().parent.parent
    xtr, ytr = load("train")
    xte, yte = load("test")
    model = ResNet20()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * ((len(xtr) + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), args.batch):
            idx = perm[i:i + args.batch]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate(model, xte, yte)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}, test accuracy {100 * acc:.2f}%, "
              f"{time.time() - t0:.0f} s", flush=True)
    acc = evaluate(model, xte, yte)
    meta = {"architecture": "resnet20", "in_channels": 1, "num_classes": 10, "dataset": "fashion-mnist",
            "normalize_mean": MEAN, "normalize_std": STD, "epochs": args.epochs, "seed": args.seed,
            "test_accuracy": f"{acc:.4f}", "torch": torch.__version__,
            "command": f"/usr/bin/python3 tools/train_teacher.py --epochs {args.epochs} --seed {args.seed}"}
    save_safetensors(root / "examples" / "models" / "resnet20_fmnist.safetensors", model.state_dict(), meta)
    model.eval()
    with torch.no_grad():
        logits = model(xte[:256])
    save_safetensors(root / "tests" / "data" / "resnet20_fmnist_logits.safetensors",
                     {"logits": logits, "labels": yte[:256]},
                     {"test_accuracy": f"{acc:.4f}", "images": "first 256 of t10k"})
    print(f"final test accuracy {100 * acc:.2f}% after {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
