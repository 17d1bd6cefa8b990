"""frugal checkpoints from Python: the trained tensors of model.safetensors as numpy arrays, and
a copy of the checkpoint with new values (safetensors is a JSON header and raw little-endian data,
read and written here with numpy alone)."""

import json
import os
import shutil
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}


def read_safetensors(path):
    """Header (dict) and {name: ndarray} of a .safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        arrays[name] = np.frombuffer(data[a:b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return header.get("__metadata__"), arrays


def write_safetensors(path, arrays, metadata=None):
    """Writes {name: ndarray} (names sorted, as safetensors does), atomically."""
    header, blobs, at = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    inv = {v: k for k, v in DTYPES.items()}
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": inv[a.dtype.type], "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def trained_names(ckpt):
    """The tensors a federation trains: the head in head mode, every tensor otherwise."""
    with open(os.path.join(ckpt, "frugal.json")) as f:
        info = json.load(f)
    _, arrays = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    if info.get("mode") == "head":
        return [n for n in sorted(arrays) if n.startswith("classifier.")]
    return sorted(arrays)


def load_trained(ckpt):
    """{name: float32 ndarray} of the trained tensors of a frugal checkpoint."""
    _, arrays = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    return {n: arrays[n].astype(np.float32) for n in trained_names(ckpt)}


def save_with(ckpt, out, new, extra=None):
    """A copy of checkpoint `ckpt` at `out` with the tensors in `new` replaced."""
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp)
    meta, arrays = read_safetensors(os.path.join(ckpt, "model.safetensors"))
    arrays = dict(arrays)
    for n, a in new.items():
        if n not in arrays or arrays[n].shape != a.shape:
            raise ValueError(f"array {n} {a.shape} does not fit the checkpoint")
        arrays[n] = a.astype(arrays[n].dtype)
    write_safetensors(os.path.join(tmp, "model.safetensors"), arrays, meta)
    if extra:
        with open(os.path.join(tmp, "frugal.json")) as f:
            info = json.load(f)
        info.update(extra)
        with open(os.path.join(tmp, "frugal.json"), "w") as f:
            json.dump(info, f, indent=2)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
