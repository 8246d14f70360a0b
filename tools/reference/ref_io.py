"""Exact number formats and the safetensors writer for deepseek_ref.py.

torch 1.13 has neither float8 dtypes nor a safetensors package, so both are written out here:
BF16 round-to-nearest-even on the float32 bit pattern, the 256-entry E4M3 (e4m3fn) decode table,
and the safetensors layout (u64 LE header length, JSON header, contiguous data).
"""
import json
import math
import struct

import numpy as np
import torch


def bf16_round(x):
    """float32 tensor -> float32 tensor holding the nearest BF16 value (ties to even)."""
    b = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lsb = (b >> 16) & 1
    b = ((b + 0x7FFF + lsb) >> 16) << 16
    b = torch.where(b >= 2 ** 31, b - 2 ** 32, b)  # back to a signed int32 bit pattern
    return b.to(torch.int32).view(torch.float32)


def bf16_bits(x):
    """float32 tensor of BF16-exact values -> uint16 numpy array of BF16 bit patterns."""
    b = x.contiguous().view(torch.int32).numpy().view(np.uint32)
    assert np.all(b & 0xFFFF == 0), "value is not BF16-exact"
    return (b >> 16).astype(np.uint16)


def e4m3_table():
    """decode[code] for all 256 E4M3 (e4m3fn) codes: bias 7, no infinities, S.1111.111 = NaN."""
    t = np.zeros(256, dtype=np.float32)
    for c in range(256):
        s, e, m = c >> 7, (c >> 3) & 15, c & 7
        if e == 15 and m == 7:
            v = math.nan
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        t[c] = -v if s else v
    return torch.from_numpy(t)


E4M3 = e4m3_table()
assert float(E4M3[0x7E]) == 448.0 and math.isnan(float(E4M3[0x7F])) and math.isnan(float(E4M3[0xFF]))


def e4m3_nearest_codes(x):
    """Nearest finite E4M3 code of each value (|x| clamped to 448): random codes that follow
    the distribution of x. Ties do not matter here, any nearby code is a valid weight."""
    pos = E4M3[:0x7F]  # codes 0x00..0x7E: 0 .. 448 increasing
    a = x.abs().clamp(max=448.0).contiguous()
    i = torch.bucketize(a, pos).clamp(1, 0x7E)
    lo, hi = pos[i - 1], pos[i]
    i = torch.where((a - lo) <= (hi - a), i - 1, i)
    code = i.to(torch.int64) | torch.where(x < 0, 0x80, 0)
    code = torch.where(code == 0x80, 0, code)  # -0 -> +0 (both fine; keep one form)
    return code.to(torch.uint8)


def fp8_dequant(code, scale_inv):
    """W[r, c] = decode(code[r, c]) * scale_inv[r // 128][c // 128], in float32."""
    w = E4M3[code.to(torch.int64)]
    s = scale_inv.repeat_interleave(128, 0).repeat_interleave(128, 1)
    return w * s[: w.shape[0], : w.shape[1]]


_DT = {"F32": (np.float32, 4), "BF16": (np.uint16, 2), "F8_E4M3": (np.uint8, 1),
       "I32": (np.int32, 4)}


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, numpy array already in that dtype's storage type)."""
    header, blobs, off = {}, [], 0
    for name, dt, arr in tensors:
        np_t, size = _DT[dt]
        arr = np.ascontiguousarray(arr, dtype=np_t)
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        assert len(raw) == arr.size * size
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-aligned (as the reference writer does)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def f32_entry(name, t):
    return (name, "F32", t.detach().to(torch.float32).numpy())
