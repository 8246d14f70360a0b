#!/usr/bin/python3
"""PyTorch (oneDNN / MKL-free ATen) matmul GFLOP/s for the GEMM comparison (docs/PERF.md).

usage: compare_torch.py --dtype bf16|f32 [--form fprop|dgrad|wgrad] [--threads 2]
                        [--seconds 1] MxNxK [MxNxK ...]
Prints one JSON line per shape with `gflops` (median), `gflops_best` and `gflops_cpu`
(FLOPs per process CPU-second: with one thread, the per-core figure a busy machine
cannot disturb much). Run it with
OMP_WAIT_POLICY=PASSIVE (f32) and ATEN_CPU_CAPABILITY=avx512, as bench/gemm_vs_libs.sh does.
The forms match `dsv3 bench gemm`: fprop x[M,K]·W[N,K]^T, dgrad dy[M,K]·W[K,N],
wgrad dy[K,M]^T·x[K,N].
"""
import argparse
import json
import time

import torch


def bench(m, n, k, dtype, form, seconds):
    g = torch.Generator().manual_seed(1)
    if form == "fprop":
        a = torch.rand(m, k, generator=g).to(dtype)
        b = torch.rand(n, k, generator=g).to(dtype)
        run = lambda: torch.matmul(a, b.t())
    elif form == "dgrad":
        a = torch.rand(m, k, generator=g).to(dtype)
        b = torch.rand(k, n, generator=g).to(dtype)
        run = lambda: torch.matmul(a, b)
    else:
        a = torch.rand(k, m, generator=g).to(dtype)
        b = torch.rand(k, n, generator=g).to(dtype)
        run = lambda: torch.matmul(a.t(), b)
    c0 = time.process_time()
    run()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10000:
            break
    cpu_per_rep = (time.process_time() - c0) / (len(times) + 1)
    times.sort()
    flop = 2.0 * m * n * k
    return (flop / times[len(times) // 2] * 1e-9, flop / times[0] * 1e-9,
            flop / cpu_per_rep * 1e-9, len(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--form", choices=["fprop", "dgrad", "wgrad"], default="fprop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("shapes", nargs="+", help="MxNxK")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    for s in args.shapes:
        m, n, k = (int(v) for v in s.lower().split("x"))
        med, best, cpu, reps = bench(m, n, k, dtype, args.form, args.seconds)
        print(json.dumps({"bench": "torch_matmul", "dtype": args.dtype, "form": args.form,
                          "m": m, "n": n, "k": k, "threads": args.threads, "reps": reps,
                          "gflops": round(med, 2), "gflops_best": round(best, 2),
                          "gflops_cpu": round(cpu, 2),
                          "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
