#!/usr/bin/python3
"""PyTorch (CPU, float32) timings of the ops `dsv3 bench ops` measures, at the same shapes,
for a side-by-side comparison in the same session:

    OMP_WAIT_POLICY=PASSIVE ATEN_CPU_CAPABILITY=avx512 /usr/bin/python3 bench/ext/torch_ops.py --tokens 64 --threads 1
    build/release/dsv3 bench ops --tokens 64 --threads 1

Median of repeated calls after a warm-up; prints microseconds per call.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def median_us(fn, seconds):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    T, C, I, H, R, V, E = a.tokens, 7168, 2048, 128, 64, 129280, 256
    g = torch.Generator().manual_seed(0)
    x = torch.rand(T, C, generator=g) * 4 - 2
    w = torch.rand(C, generator=g) + 0.5
    gu = torch.rand(T, 2 * I, generator=g) * 8 - 4
    att = torch.rand(T, T, generator=g) * 16 - 8
    mask = torch.ones(T, T).tril().bool()
    q = torch.rand(T, H, R // 2, 2, generator=g)
    ang = torch.rand(T, 1, R // 2, generator=g)
    cos, sin = ang.cos(), ang.sin()
    Tv = min(T, 16)
    logits = (torch.rand(Tv, V, generator=g) * 20 - 10).requires_grad_()
    tgt = torch.randint(0, V, (Tv,), generator=g)
    scores = torch.rand(T, E, generator=g)
    row = torch.rand(V, generator=g)

    def rmsnorm():
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def swiglu():
        return F.silu(gu[:, :I]) * gu[:, I:]

    def softmax_causal():
        return torch.softmax(att.masked_fill(~mask, float("-inf")) * 0.135, -1)

    def rope():
        x0, x1 = q[..., 0], q[..., 1]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), -1)

    def ce():
        logits.grad = None
        F.cross_entropy(logits, tgt).backward()

    cases = [("rmsnorm_fwd", rmsnorm), ("swiglu_fwd", swiglu), ("softmax_causal_fwd", softmax_causal),
             ("rope_fwd (out of place)", rope), ("cross_entropy_fwd_bwd", ce),
             ("topk_route_8of256", lambda: torch.topk(scores, 8, -1)),
             ("topk_sample_50ofV", lambda: torch.topk(row, 50))]
    for name, fn in cases:
        print("torch %-24s T=%d threads=%d  %10.1f us" % (name, T, a.threads, median_us(fn, a.seconds)))


if __name__ == "__main__":
    main()
