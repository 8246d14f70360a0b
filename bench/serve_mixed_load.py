#!/usr/bin/env python3
"""A mixed serving load against one OpenAI-compatible URL (bench/disagg.sh runs it on a
single `dsv3 serve` and on a disaggregated router): `--streams` clients each keep one short
streamed completion running (closed loop), while one client sends a long prompt every
`--long-every` seconds. Every request has distinct random token ids (no prefix-cache help)
and "ignore_eos" (fixed lengths); "logprobs": 0 makes the server send one chunk per token, so
the gaps between chunks are the time per output token.

Prints one JSON object: per class (short, long) the requests done, TTFT p50/p90/max, and for
the short streams the inter-token gap p50/p90/p99/max and output tokens/s over the run.
Standard library only; loopback; every wait bounded by --timeout.
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def one_request(url, prompt, max_tokens, timeout):
    """Streams one completion; returns (ttft, [gaps], tokens) or raises."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "logprobs": 0})
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    times = []
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            j = json.loads(ev[6:])
            if "error" in j:
                raise RuntimeError(j["error"]["message"])
            if j["choices"] and j["choices"][0].get("logprobs"):
                times.append(time.monotonic())
    conn.close()
    if not times:
        raise RuntimeError("no tokens")
    return times[0] - t0, [b - a for a, b in zip(times, times[1:])], len(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--short-prompt", type=int, default=64)
    ap.add_argument("--short-tokens", type=int, default=64)
    ap.add_argument("--long-prompt", type=int, default=1024)
    ap.add_argument("--long-tokens", type=int, default=4)
    ap.add_argument("--long-every", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    lock = threading.Lock()
    res = {"short": {"ttft": [], "gaps": [], "tokens": 0, "done": 0, "errors": 0},
           "long": {"ttft": [], "done": 0, "errors": 0}}
    t_start = time.monotonic() + a.warmup
    t_end = t_start + a.duration
    rng_lock = threading.Lock()
    rng = random.Random(a.seed)

    def prompt(n):
        with rng_lock:
            return [rng.randrange(3, a.vocab) for _ in range(n)]

    def short_client():
        while time.monotonic() < t_end:
            try:
                ttft, gaps, n = one_request(a.url, prompt(a.short_prompt), a.short_tokens, a.timeout)
            except Exception as e:  # noqa: BLE001 - reported, the run goes on
                with lock:
                    res["short"]["errors"] += 1
                print(f"short request failed: {e}", file=sys.stderr)
                time.sleep(0.2)
                continue
            if time.monotonic() < t_start:
                continue  # warm-up
            with lock:
                s = res["short"]
                s["ttft"].append(ttft)
                s["gaps"].extend(gaps)
                s["tokens"] += n
                s["done"] += 1

    def long_client():
        nxt = t_start
        while nxt < t_end:
            time.sleep(max(0.0, nxt - time.monotonic()))
            nxt += a.long_every
            try:
                ttft, _, _ = one_request(a.url, prompt(a.long_prompt), a.long_tokens, a.timeout)
            except Exception as e:  # noqa: BLE001
                with lock:
                    res["long"]["errors"] += 1
                print(f"long request failed: {e}", file=sys.stderr)
                continue
            with lock:
                res["long"]["ttft"].append(ttft)
                res["long"]["done"] += 1

    threads = [threading.Thread(target=short_client) for _ in range(a.streams)]
    if a.long_every > 0:
        threads.append(threading.Thread(target=long_client))
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.duration + a.warmup + 2 * a.timeout)
    elapsed = time.monotonic() - t_start
    s, l = res["short"], res["long"]
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    out = {
        "short": {"done": s["done"], "errors": s["errors"], "tokens_per_s": round(s["tokens"] / elapsed, 1),
                  "ttft_ms_p50": ms(pct(s["ttft"], 0.5)), "ttft_ms_p90": ms(pct(s["ttft"], 0.9)),
                  "tpot_ms_p50": ms(pct(s["gaps"], 0.5)), "tpot_ms_p90": ms(pct(s["gaps"], 0.9)),
                  "tpot_ms_p99": ms(pct(s["gaps"], 0.99)), "tpot_ms_max": ms(max(s["gaps"]) if s["gaps"] else None),
                  "tpot_ms_mean": ms(statistics.fmean(s["gaps"]) if s["gaps"] else None)},
        "long": {"done": l["done"], "errors": l["errors"], "ttft_ms_p50": ms(pct(l["ttft"], 0.5)),
                 "ttft_ms_max": ms(max(l["ttft"]) if l["ttft"] else None)},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
