#!/usr/bin/python3
"""The dsv3 training step in PyTorch, at its best on this machine, for `dsv3 bench train`.

    /usr/bin/python3 bench/train_torch.py --config configs/tiny.json [--steps 10]
        [--precision bf16|f32] [--threads 2] [--json]

The same model and step as TrainModel::step + clip + AdamW (docs/training.md), batched over
[B, T]: MLA in the naive form (K, V per head; matmuls + causal mask — torch 1.13 has no
scaled_dot_product_attention), dense SwiGLU or DeepSeekMoE (sigmoid router in F32, group-
limited top-k with the bias for selection only, grouped experts via index_select/index_add_),
the MTP modules sharing the embedding and head, the sequence-wise balance loss, global-norm
clipping, torch.optim.AdamW (no decay on 1-D tensors nor the embedding) and the aux-loss-free
bias update. bf16: torch.autocast (BF16 matmuls, F32 master weights). Random weights and
random tokens; median step time after 2 warm-up steps; model FLOPs as bench/bench_train.cpp.
"""
import argparse
import json
import math
import os
import sys
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
ap.add_argument("--config", required=True)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--precision", choices=["bf16", "f32"], default=None)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", action="store_true")
args = ap.parse_args()
with open(args.config) as f:
    TC = json.load(f)
PREC = args.precision or TC.get("precision", "bf16")
if PREC not in ("bf16", "f32"):
    sys.exit("train_torch.py: precision %r is not supported here (bf16 | f32)" % PREC)
# ../shared/SPEC.md §8: how PyTorch shows its best here; both must be set before torch loads.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx512")
if PREC == "f32":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "reference"))
from yarn_rope import frequencies, get_mscale  # noqa: E402

torch.set_num_threads(args.threads)
C = TC["model"]
if isinstance(C, str):
    with open(os.path.join(os.path.dirname(args.config), C)) as f:
        C = json.load(f)


def is_moe(l):
    return C["n_routed_experts"] > 0 and l >= C["first_k_dense_replace"] and l % C["moe_layer_freq"] == 0


class RMSNorm(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n))

    def forward(self, x):
        x = x.float()
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + C["rms_norm_eps"]) * self.weight


def lin(n_out, n_in):
    return torch.nn.Parameter(torch.randn(n_out, n_in) * C["initializer_range"])


class MLA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        H, nh, qr, r = C["hidden_size"], C["num_attention_heads"], C["q_lora_rank"], C["kv_lora_rank"]
        self.dn, self.dr, self.dv, self.nh, self.r = C["qk_nope_head_dim"], C["qk_rope_head_dim"], C["v_head_dim"], nh, r
        qk = self.dn + self.dr
        if qr:
            self.q_a_proj, self.q_a_layernorm, self.q_b_proj = lin(qr, H), RMSNorm(qr), lin(nh * qk, qr)
        else:
            self.q_proj = lin(nh * qk, H)
        self.kv_a_proj_with_mqa = lin(r + self.dr, H)
        self.kv_a_layernorm = RMSNorm(r)
        self.kv_b_proj = lin(nh * (self.dn + self.dv), r)
        self.o_proj = lin(H, nh * self.dv)

    def forward(self, x, rope):
        B, T, _ = x.shape
        cos, sin, scale = rope
        if C["q_lora_rank"]:
            q = F.linear(self.q_a_layernorm(F.linear(x, self.q_a_proj)), self.q_b_proj)
        else:
            q = F.linear(x, self.q_proj)
        q = q.view(B, T, self.nh, self.dn + self.dr)
        kv_a = F.linear(x, self.kv_a_proj_with_mqa)  # [B, T, r + dr]
        ckv = self.kv_a_layernorm(kv_a[..., :self.r])
        k_pe = apply_rope(kv_a[..., self.r:].unsqueeze(2), cos, sin)  # [B, T, 1, dr]
        kv = F.linear(ckv, self.kv_b_proj).view(B, T, self.nh, self.dn + self.dv)
        qh = torch.cat([q[..., :self.dn], apply_rope(q[..., self.dn:], cos, sin)], -1).transpose(1, 2)
        kh = torch.cat([kv[..., :self.dn], k_pe.expand(B, T, self.nh, self.dr)], -1).transpose(1, 2)
        v = kv[..., self.dn:].transpose(1, 2)  # [B, nh, T, dv]
        s = torch.matmul(qh, kh.transpose(-1, -2)).float() * scale  # [B, nh, T, T], F32 softmax
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        p = torch.softmax(s.masked_fill(mask, -math.inf), -1)
        o = torch.matmul(p.to(v.dtype), v)  # [B, nh, T, dv]
        return F.linear(o.transpose(1, 2).reshape(B, T, self.nh * self.dv), self.o_proj)


def apply_rope(x, cos, sin):
    """Interleaved pairs (x[2i], x[2i+1]) rotated by t·freq_i; x [B, T, h, dr], cos/sin [T, 1, dr/2]."""
    x = x.float()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)


class MLP(torch.nn.Module):
    def __init__(self, inter):
        super().__init__()
        H = C["hidden_size"]
        self.gate_proj, self.up_proj, self.down_proj = lin(inter, H), lin(inter, H), lin(H, inter)

    def forward(self, x):
        return F.linear(F.silu(F.linear(x, self.gate_proj)) * F.linear(x, self.up_proj), self.down_proj)


class MoE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        H, E, I = C["hidden_size"], C["n_routed_experts"], C["moe_intermediate_size"]
        self.gate = lin(E, H)
        self.register_buffer("e_score_correction_bias", torch.zeros(E))
        # One Parameter per expert (experts.N.*_proj): slicing one stacked [E, I, H] tensor would
        # make autograd zero-fill and add a full-size gradient for every expert used.
        self.w_gate = torch.nn.ParameterList([lin(I, H) for _ in range(E)])
        self.w_up = torch.nn.ParameterList([lin(I, H) for _ in range(E)])
        self.w_down = torch.nn.ParameterList([lin(H, I) for _ in range(E)])
        self.shared = MLP(C["n_shared_experts"] * I) if C["n_shared_experts"] else None

    def forward(self, x, n_scored):
        """x [B, T, H] -> (y, balance loss, load [E]); rows t < n_scored enter the balance loss."""
        B, T, H = x.shape
        E, K, G, TG = C["n_routed_experts"], C["num_experts_per_tok"], C["n_group"], C["topk_group"]
        xf = x.reshape(B * T, H)
        with torch.autocast("cpu", enabled=False):
            scores = torch.sigmoid(F.linear(xf.float(), self.gate))  # [BT, E], router in F32
        with torch.no_grad():
            biased = scores + self.e_score_correction_bias
            if G > 1:
                gs = biased.view(-1, G, E // G).topk(2, -1).values.sum(-1)  # [BT, G]
                keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(TG, -1).indices, True)
                biased = biased.masked_fill(~keep.repeat_interleave(E // G, 1), -math.inf)
            ids = biased.topk(K, -1).indices  # [BT, K]
        w = scores.gather(1, ids)
        if C["norm_topk_prob"]:
            w = w / w.sum(-1, keepdim=True)
        w = w * C["routed_scaling_factor"]
        # Grouped experts: the (token, slot) pairs sorted by expert, one GEMM chain per expert.
        flat = ids.reshape(-1)
        order = torch.argsort(flat)
        counts = torch.bincount(flat, minlength=E)
        tok = order // K
        wsorted = w.reshape(-1)[order]
        y = torch.zeros(B * T, H, dtype=torch.float32)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            t = tok[start:start + n]
            xe = xf.index_select(0, t)
            h = F.silu(F.linear(xe, self.w_gate[e])) * F.linear(xe, self.w_up[e])
            y = y.index_add(0, t, F.linear(h, self.w_down[e]).float() * wsorted[start:start + n, None])
            start += n
        y = y.view(B, T, H)
        if self.shared is not None:
            y = y + self.shared(x)
        # Sequence-wise balance loss: α Σ_i f_i P_i per sequence, mean over B.
        s = scores.view(B, T, E)[:, :n_scored]
        cnt = torch.zeros(B, E).scatter_add_(1, ids.view(B, T * K)[:, :n_scored * K],
                                             torch.ones(B, n_scored * K))
        f = cnt * (E / (K * n_scored))
        P = (s / s.sum(-1, keepdim=True)).mean(1)
        bal = TC.get("balance", {}).get("alpha", 1e-4) * (f * P).sum(-1).mean()
        return y, bal, cnt.sum(0)


class Block(torch.nn.Module):
    def __init__(self, l):
        super().__init__()
        H = C["hidden_size"]
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(H), RMSNorm(H)
        self.self_attn = MLA()
        self.moe = is_moe(l)
        self.mlp = MoE() if self.moe else MLP(C["intermediate_size"])

    def forward(self, x, rope, n_scored, aux):
        x = x + self.self_attn(self.input_layernorm(x), rope)
        h = self.post_attention_layernorm(x)
        if self.moe:
            m, bal, load = self.mlp(h, n_scored)
            aux.append((self, bal, load))
        else:
            m = self.mlp(h)
        return x + m


class MTPModule(torch.nn.Module):
    def __init__(self, l):
        super().__init__()
        H = C["hidden_size"]
        self.enorm, self.hnorm, self.eh_proj = RMSNorm(H), RMSNorm(H), lin(H, 2 * H)
        self.block = Block(l)
        self.norm = RMSNorm(H)  # shared_head.norm; the head itself is lm_head (shared)


class DeepSeekV3(torch.nn.Module):
    def __init__(self):
        super().__init__()
        V, H, L = C["vocab_size"], C["hidden_size"], C["num_hidden_layers"]
        self.embed_tokens = torch.nn.Parameter(torch.randn(V, H) * C["initializer_range"])
        self.layers = torch.nn.ModuleList([Block(l) for l in range(L)])
        self.norm = RMSNorm(H)
        self.lm_head = lin(V, H)
        D = (C.get("num_nextn_predict_layers") or 0) if TC.get("mtp", True) is not False else 0
        self.mtp = torch.nn.ModuleList([MTPModule(L + k) for k in range(D)])
        dr, ys = C["qk_rope_head_dim"], C.get("rope_scaling")
        self.freqs = frequencies(dr, float(C["rope_theta"]), ys)
        self.amp, scale = 1.0, 1.0 / math.sqrt(C["qk_nope_head_dim"] + dr)
        if ys and ys["factor"] > 1.0:
            self.amp = get_mscale(ys["factor"], ys["mscale"]) / get_mscale(ys["factor"], ys["mscale_all_dim"])
            scale *= get_mscale(ys["factor"], ys["mscale_all_dim"]) ** 2
        self.scale = scale

    def rope(self, T):
        ang = torch.outer(torch.arange(T, dtype=torch.float64), self.freqs)
        return ((torch.cos(ang) * self.amp).float().view(T, 1, -1), (torch.sin(ang) * self.amp).float().view(T, 1, -1),
                self.scale)

    def loss(self, ids, mtp_lambda):
        """ids [B, T+1] -> (total, main, [L_k], [(moe module, load)])."""
        B, T = ids.shape[0], ids.shape[1] - 1
        rope, aux = self.rope(T), []
        x = F.embedding(ids[:, :T], self.embed_tokens)
        for blk in self.layers:
            x = blk(x, rope, T, aux)
        h = self.norm(x)
        main = F.cross_entropy(F.linear(h, self.lm_head).float().view(B * T, -1), ids[:, 1:].reshape(-1))
        l_k = []
        for k, m in enumerate(self.mtp, 1):
            # Position i takes h_i and emb(ids[i+k]); predicts ids[i+k+1] for i ≤ T−k−1.
            e = F.embedding(ids[:, k:k + T], self.embed_tokens)
            x = F.linear(torch.cat([m.enorm(e), m.hnorm(h)], -1), m.eh_proj)
            x = m.block(x, rope, T - k, aux)
            h = m.norm(x)
            lg = F.linear(h[:, :T - k], self.lm_head).float()
            l_k.append(F.cross_entropy(lg.reshape(B * (T - k), -1), ids[:, k + 1:].reshape(-1)))
        bal = sum(b for _, b, _ in aux) if aux else torch.zeros(())
        total = main + bal + (mtp_lambda / len(l_k)) * sum(l_k) if l_k else main + bal
        return total, main, l_k, [(blk.mlp, load) for blk, _, load in aux]


def active_params_and_flops(T, D):
    """As train_flops_per_token in bench/bench_train.cpp."""
    H, V, nh = C["hidden_size"], C["vocab_size"], C["num_attention_heads"]
    dn, dr, dv, r, qr = C["qk_nope_head_dim"], C["qk_rope_head_dim"], C["v_head_dim"], C["kv_lora_rank"], C["q_lora_rank"]

    def blk(l):
        p = qr * H + nh * (dn + dr) * qr if qr else nh * (dn + dr) * H
        p += (r + dr) * H + nh * (dn + dv) * r + H * nh * dv
        if is_moe(l):
            p += C["n_routed_experts"] * H + (C["num_experts_per_tok"] + C["n_shared_experts"]) * 3 * H * C["moe_intermediate_size"]
        else:
            p += 3 * H * C["intermediate_size"]
        return p
    L = C["num_hidden_layers"]
    n = V * H + sum(blk(l) for l in range(L + D)) + D * (2 * H * H + V * H)
    return n, 6.0 * n + 6.0 * (L + D) * nh * (dn + dr + dv) * (T + 1) / 2.0


def main():
    torch.manual_seed(TC.get("seed", 1))
    model = DeepSeekV3()
    B, T = TC["batch"], TC["seq_len"]
    opt_c = TC["optimizer"]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "embed_tokens"]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and n != "embed_tokens")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt_c.get("weight_decay", 0.1)},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=opt_c["lr"], betas=(opt_c.get("beta1", 0.9), opt_c.get("beta2", 0.95)),
                            eps=opt_c.get("eps", 1e-8), foreach=True)
    n_params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    gamma = TC.get("balance", {}).get("gamma", 1e-3)
    lam = TC.get("mtp", {}).get("lambda", 0.3) if isinstance(TC.get("mtp"), dict) else 0.3
    clip = TC.get("grad_clip", 1.0)
    E = C["n_routed_experts"]
    g = torch.Generator().manual_seed(12345)
    secs, cpu, loss = [], [], 0.0  # wall and process CPU seconds per step
    for s in range(2 + args.steps):
        ids = torch.randint(0, C["vocab_size"], (B, T + 1), generator=g)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=PREC == "bf16"):
            total, main_l, l_k, loads = model.loss(ids, lam)
        total.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        with torch.no_grad():  # aux-loss-free balancing after the optimizer step
            for moe, load in loads:
                moe.e_score_correction_bias.add_(gamma * torch.sign(load.sum() / E - load))
        if s >= 2:
            secs.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        loss = float(total)
    secs.sort()
    cpu.sort()
    sec, cpu_s = secs[len(secs) // 2], cpu[len(cpu) // 2]
    n_act, fpt = active_params_and_flops(T, len(model.mtp))
    tps = B * T / sec
    r = {"bench": "train", "impl": "torch", "torch": torch.__version__, "precision": PREC,
         "threads": torch.get_num_threads(), "batch": B, "seq_len": T, "params": n_params,
         "active_params": n_act, "steps": args.steps, "step_s": round(sec, 4), "cpu_s": round(cpu_s, 4), "tokens_per_s": round(tps, 1),
         "flops_per_token": fpt, "gflops": round(fpt * tps * 1e-9, 2), "last_loss": round(loss, 4),
         "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
         "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "")}
    if args.json:
        print(json.dumps(r))
    else:
        print("torch %s train %s, batch %d x %d, threads %d: %d params (%d active per token)\n"
              "  step %.3f s median of %d, %.0f tokens/s, %.1f GFLOP/s"
              % (torch.__version__, PREC, B, T, r["threads"], n_params, n_act, sec, args.steps, tps, r["gflops"]))


if __name__ == "__main__":
    main()
