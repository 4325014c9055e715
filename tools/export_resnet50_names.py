#!/usr/bin/env python3
"""Writes tests/data/resnet50_torchvision_params.txt: every state_dict key of
torchvision's ResNet-50 with its shape (no weights are downloaded), so a test
can check that rimc::resnet50() matches it exactly.

  /usr/bin/python3 tools/export_resnet50_names.py
"""
import pathlib

import torchvision

model = torchvision.models.resnet50()
out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "resnet50_torchvision_params.txt"
with open(out, "w") as f:
    f.write(f"# torchvision {torchvision.__version__} resnet50 state_dict: name shape\n")
    for name, t in model.state_dict().items():
        f.write(f"{name} {'x'.join(str(d) for d in t.shape) or 'scalar'}\n")
print(f"wrote {out}")
