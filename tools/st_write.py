"""Minimal safetensors writer shared by rimc's export scripts (no dependency
beyond the standard library and torch): tensors in name order, header padded
with spaces to a multiple of 8 bytes, as the format specifies."""
import json
import struct

_DTYPES = {"float64": ("F64", "d"), "float32": ("F32", "f"), "int64": ("I64", "q")}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        dtype, fmt = _DTYPES[str(t.dtype).replace("torch.", "")]
        data = struct.pack(f"<{t.numel()}{fmt}", *t.flatten().tolist())
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
