#!/usr/bin/env python3
"""PyTorch eager inference throughput on the models bench_network measures:
the ResNet-20 teacher (tools/train_teacher.py's definition, shipped weights
when present) at batch 1, 32, 128 and torchvision's ResNet-50 at 224x224,
batch 8 (random weights). Two threads, eval mode, no_grad. Prints
"<name> <images/s>" lines: the median of --reps timed runs after a warm-up.
"""
import argparse
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from train_teacher import ResNet20  # noqa: E402


def load_teacher():
    model = ResNet20()
    path = ROOT / "examples" / "models" / "resnet20_fmnist.safetensors"
    if path.exists():
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        from torch_calibrate import load_safetensors  # noqa: E402
        model.load_state_dict({k: torch.from_numpy(v) for k, v in load_safetensors(path).items()})
    return model.eval()


def throughput(model, x, reps):
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    teacher = load_teacher()
    for batch in (1, 32, 128):
        print(f"resnet20_teacher/{batch} {throughput(teacher, torch.randn(batch, 1, 28, 28), args.reps):.1f}", flush=True)
    import torchvision
    r50 = torchvision.models.resnet50().eval()
    print(f"resnet50_224/8 {throughput(r50, torch.randn(8, 3, 224, 224), max(3, args.reps // 4)):.1f}", flush=True)


if __name__ == "__main__":
    main()
