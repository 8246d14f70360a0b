#!/usr/bin/python3
"""PyTorch reference of the DeepSeek-V3 / V2 forward for dsv3's model tests.

    /usr/bin/python3 tools/reference/deepseek_ref.py --out DIR [--variant v3|v2|all]

For each variant writes DIR/<variant>/: a tiny random checkpoint in the Hugging Face layout
(config.json, safetensors shard(s), index for v3), expected.json (prompt log-probs, MTP
log-probs, greedy tokens, routing/greedy margins) and debug/states.safetensors (F32
intermediate states for debugging). The forward follows docs/numerics.md operation by operation; see
tools/reference/README.md. Written from the public descriptions (DeepSeek-V3 report, the
released inference/model.py and HF modeling_deepseek.py for facts), not copied.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_io import (bf16_bits, bf16_round, e4m3_nearest_codes, f32_entry, fp8_dequant,  # noqa: E402
                    write_safetensors)
from yarn_rope import frequencies, get_mscale  # noqa: E402

MIN_ROUTE_MARGIN = 1e-4
MIN_GREEDY_MARGIN = 1e-3
N_GREEDY = 12

# Tiny configs with every key of the released configs (configs/deepseek-v3-671b.json,
# deepseek-v2-lite-16b.json). v3 dims are not multiples of 128 so FP8 blocks have edges.
V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 300, "hidden_size": 160, "intermediate_size": 200,
    "moe_intermediate_size": 72, "num_hidden_layers": 3, "num_nextn_predict_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 4, "n_shared_experts": 1,
    "n_routed_experts": 8, "ep_size": 1, "routed_scaling_factor": 2.5, "kv_lora_rank": 136,
    "q_lora_rank": 96, "qk_rope_head_dim": 16, "v_head_dim": 24, "qk_nope_head_dim": 32,
    "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2, "num_experts_per_tok": 3,
    "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": True,
    "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 64,
    "initializer_range": 0.02, "rms_norm_eps": 1e-06, "use_cache": True, "bos_token_id": 0,
    "eos_token_id": 1, "tie_word_embeddings": False, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 16,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "attention_bias": False, "attention_dropout": 0.0, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
}
V2_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "vocab_size": 260, "hidden_size": 96, "intermediate_size": 176,
    "moe_intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 3,
    "num_key_value_heads": 3, "n_shared_experts": 2, "n_routed_experts": 6,
    "routed_scaling_factor": 1.5, "kv_lora_rank": 48, "q_lora_rank": None,
    "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 24, "topk_method": "greedy",
    "n_group": 1, "topk_group": 1, "num_experts_per_tok": 2, "moe_layer_freq": 1,
    "first_k_dense_replace": 1, "norm_topk_prob": False, "scoring_func": "softmax",
    "hidden_act": "silu", "max_position_embeddings": 64, "rms_norm_eps": 1e-06,
    "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False, "rope_theta": 10000,
    "rope_scaling": None, "attention_bias": False, "torch_dtype": "bfloat16",
}
VARIANTS = {"v3": (V3_CONFIG, 32, True), "v2": (V2_CONFIG, 24, False)}  # config, prompt len, fp8


# ---------------------------------------------------------------- weight names and shapes
def is_moe_layer(c, l):
    return c["n_routed_experts"] > 0 and l >= c["first_k_dense_replace"] and l % c["moe_layer_freq"] == 0


def layer_specs(c, l):
    """(name, shape, kind) of one block, in the order of src/model/weights.cpp."""
    H, nh = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    p = "model.layers.%d." % l
    sa = p + "self_attn."
    out = [(p + "input_layernorm.weight", [H], "norm")]
    if c["q_lora_rank"]:
        out += [(sa + "q_a_proj.weight", [c["q_lora_rank"], H], "linear"),
                (sa + "q_a_layernorm.weight", [c["q_lora_rank"]], "norm"),
                (sa + "q_b_proj.weight", [nh * qk, c["q_lora_rank"]], "linear")]
    else:
        out += [(sa + "q_proj.weight", [nh * qk, H], "linear")]
    out += [(sa + "kv_a_proj_with_mqa.weight", [c["kv_lora_rank"] + c["qk_rope_head_dim"], H], "linear"),
            (sa + "kv_a_layernorm.weight", [c["kv_lora_rank"]], "norm"),
            (sa + "kv_b_proj.weight", [nh * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"]],
             "linear"),
            (sa + "o_proj.weight", [H, nh * c["v_head_dim"]], "linear"),
            (p + "post_attention_layernorm.weight", [H], "norm")]

    def mlp(q, inter):
        return [(q + "gate_proj.weight", [inter, H], "linear"), (q + "up_proj.weight", [inter, H], "linear"),
                (q + "down_proj.weight", [H, inter], "linear")]
    if not is_moe_layer(c, l):
        return out + mlp(p + "mlp.", c["intermediate_size"])
    E = c["n_routed_experts"]
    out.append((p + "mlp.gate.weight", [E, H], "router"))
    if c["topk_method"] == "noaux_tc":
        out.append((p + "mlp.gate.e_score_correction_bias", [E], "router_bias"))
    for e in range(E):
        out += mlp(p + "mlp.experts.%d." % e, c["moe_intermediate_size"])
    if c["n_shared_experts"]:
        out += mlp(p + "mlp.shared_experts.", c["n_shared_experts"] * c["moe_intermediate_size"])
    return out


def weight_specs(c):
    H, V = c["hidden_size"], c["vocab_size"]
    out = [("model.embed_tokens.weight", [V, H], "embedding")]
    for l in range(c["num_hidden_layers"]):
        out += layer_specs(c, l)
    out += [("model.norm.weight", [H], "norm"), ("lm_head.weight", [V, H], "head")]
    for k in range(c.get("num_nextn_predict_layers") or 0):
        l = c["num_hidden_layers"] + k
        p = "model.layers.%d." % l
        out += [(p + "embed_tokens.weight", [V, H], "embedding"), (p + "enorm.weight", [H], "norm"),
                (p + "hnorm.weight", [H], "norm"), (p + "eh_proj.weight", [H, 2 * H], "linear")]
        out += layer_specs(c, l)
        out += [(p + "shared_head.norm.weight", [H], "norm"), (p + "shared_head.head.weight", [V, H], "head")]
    return out


# ---------------------------------------------------------------- random checkpoint
def make_weights(c, fp8, g, router_gain):
    """Returns (stored, W): stored = [(name, dtype, numpy)] for the shards; W = name ->
    (float32 value the forward uses, low_precision flag: stored as BF16 or FP8)."""
    stored, W = [], {}
    for name, shape, kind in weight_specs(c):
        if kind == "norm":
            w = bf16_round(1.0 + 0.1 * torch.randn(shape, generator=g))
        elif kind == "embedding":
            w = bf16_round(torch.randn(shape, generator=g))
        elif kind == "head":
            w = bf16_round(torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[1])))
        elif kind == "router":
            w = bf16_round(torch.randn(shape, generator=g) * (router_gain / math.sqrt(shape[1])))
        elif kind == "router_bias":  # F32, as in the released checkpoint
            w = 0.1 * torch.randn(shape, generator=g)
            stored.append(f32_entry(name, w))
            W[name] = (w, False)
            continue
        elif fp8:  # linear: random E4M3 codes times random positive 128x128 block scales
            std = 1.0 / math.sqrt(shape[1])
            nb = [(shape[0] + 127) // 128, (shape[1] + 127) // 128]
            scale = (std / 16.0) * (0.5 + torch.rand(nb, generator=g))
            s_full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[: shape[0], : shape[1]]
            code = e4m3_nearest_codes(torch.randn(shape, generator=g) * std / s_full)
            stored.append((name, "F8_E4M3", code.numpy()))
            stored.append(f32_entry(name + "_scale_inv", scale))
            W[name] = (fp8_dequant(code, scale), True)
            continue
        else:
            w = bf16_round(torch.randn(shape, generator=g) / math.sqrt(shape[1]))
        stored.append((name, "BF16", bf16_bits(w)))
        W[name] = (w, True)
    return stored, W


# ---------------------------------------------------------------- the forward
class Model:
    def __init__(self, c, W):
        self.c, self.W = c, W
        self.route_margins = []  # every k-th/(k+1)-th and group gap seen
        self.absorb_err = 0.0
        self.moe_trace = None  # a list to receive (layer prefix, scores, topk ids) of every MoE call
        rd, ys = c["qk_rope_head_dim"], c["rope_scaling"]
        self.freqs = frequencies(rd, float(c["rope_theta"]), ys)  # float64
        self.amp, scale = 1.0, 1.0 / math.sqrt(c["qk_nope_head_dim"] + rd)
        if ys and ys["factor"] > 1.0:
            self.amp = get_mscale(ys["factor"], ys["mscale"]) / get_mscale(ys["factor"], ys["mscale_all_dim"])
            m = get_mscale(ys["factor"], ys["mscale_all_dim"])
            scale *= m * m
        self.softmax_scale = float(torch.tensor(scale, dtype=torch.float32))

    def lin(self, x, name):
        # F32 activations times the exact (dequantised) weight: docs/numerics.md explains why
        # activations are not rounded to BF16 (a single rounding flip diverges chaotically).
        return x @ self.W[name][0].t()

    def norm(self, x, name):
        w = self.W[name][0]
        return x * (1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + self.c["rms_norm_eps"])) * w

    def rope(self, x, T):
        """Interleaved pairs (x[2i], x[2i+1]) rotated by pos*freq_i; x [T, ..., rope]."""
        ang = torch.outer(torch.arange(T, dtype=torch.float64), self.freqs)
        cos = (torch.cos(ang) * self.amp).float()
        sin = (torch.sin(ang) * self.amp).float()
        shape = [T] + [1] * (x.dim() - 2) + [cos.shape[1]]
        cos, sin = cos.view(shape), sin.view(shape)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)

    def attention(self, x, p):
        c, T = self.c, x.shape[0]
        nh, dn, dr, dv, r = (c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"],
                             c["v_head_dim"], c["kv_lora_rank"])
        sa = p + "self_attn."
        if c["q_lora_rank"]:
            q = self.lin(self.norm(self.lin(x, sa + "q_a_proj.weight"), sa + "q_a_layernorm.weight"),
                         sa + "q_b_proj.weight")
        else:
            q = self.lin(x, sa + "q_proj.weight")
        q = q.view(T, nh, dn + dr)
        q_nope, q_pe = q[..., :dn], self.rope(q[..., dn:], T)  # [T, nh, dn], [T, nh, dr]
        kv_a = self.lin(x, sa + "kv_a_proj_with_mqa.weight")  # [T, r + dr]
        ckv = self.norm(kv_a[:, :r], sa + "kv_a_layernorm.weight")  # [T, r]
        k_pe = self.rope(kv_a[:, r:], T)  # [T, dr], shared by all heads
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)

        # naive: expand the latent to per-head keys and values
        kv = self.lin(ckv, sa + "kv_b_proj.weight").view(T, nh, dn + dv)
        k_nope, v = kv[..., :dn], kv[..., dn:]
        s = (torch.einsum("thd,shd->hts", q_nope, k_nope) + torch.einsum("thd,sd->hts", q_pe, k_pe))
        pr = torch.softmax((s * self.softmax_scale).masked_fill(mask, -math.inf), -1)  # [nh, T, T]
        o = torch.einsum("hts,shd->thd", pr, v)  # [T, nh, dv]

        # absorbed: the same sums over the latent cache, reassociated (contract table)
        wkv = self.W[sa + "kv_b_proj.weight"][0]
        c_cache = ckv
        wkv = wkv.view(nh, dn + dv, r)
        q_lat = torch.einsum("thd,hdr->thr", q_nope, wkv[:, :dn])  # [T, nh, r]
        s2 = torch.einsum("thr,sr->hts", q_lat, c_cache) + torch.einsum("thd,sd->hts", q_pe, k_pe)
        pr2 = torch.softmax((s2 * self.softmax_scale).masked_fill(mask, -math.inf), -1)
        o_lat = torch.einsum("hts,sr->thr", pr2, c_cache)
        o2 = torch.einsum("thr,hdr->thd", o_lat, wkv[:, dn:])
        err = float((o - o2).abs().max() / (o.abs().max() + 1e-30))
        assert err < 2e-5, "naive and absorbed MLA differ by %g (relative)" % err
        self.absorb_err = max(self.absorb_err, err)
        return self.lin(o.reshape(T, nh * dv), sa + "o_proj.weight")

    def mlp(self, x, q):
        h = torch.nn.functional.silu(self.lin(x, q + "gate_proj.weight")) * self.lin(x, q + "up_proj.weight")
        return self.lin(h, q + "down_proj.weight")

    def moe(self, x, p):
        c, T = self.c, x.shape[0]
        E, k, G, TG = c["n_routed_experts"], c["num_experts_per_tok"], c["n_group"], c["topk_group"]
        logits = self.lin(x, p + "mlp.gate.weight")  # [T, E]
        scores = torch.sigmoid(logits) if c["scoring_func"] == "sigmoid" else torch.softmax(logits, -1)
        biased = scores
        if c["topk_method"] == "noaux_tc":
            biased = scores + self.W[p + "mlp.gate.e_score_correction_bias"][0]
        allowed = biased
        if G > 1 and c["topk_method"] in ("noaux_tc", "group_limited_greedy"):
            grp = biased.view(T, G, E // G)
            gs = grp.topk(2, -1).values.sum(-1) if c["topk_method"] == "noaux_tc" else grp.max(-1).values
            gsort, gidx = torch.sort(gs, dim=-1, descending=True, stable=True)
            if TG < G:
                self.route_margins += (gsort[:, TG - 1] - gsort[:, TG]).tolist()
            keep = torch.zeros(T, G, dtype=torch.bool)
            keep.scatter_(1, gidx[:, :TG], True)
            allowed = biased.masked_fill(~keep.repeat_interleave(E // G, 1), -math.inf)
        ssort, sidx = torch.sort(allowed, dim=-1, descending=True, stable=True)
        n_allowed = int(torch.isfinite(ssort[0]).sum())
        if k < n_allowed:
            self.route_margins += (ssort[:, k - 1] - ssort[:, k]).tolist()
        ids = sidx[:, :k]  # [T, k], by descending biased score
        if self.moe_trace is not None:  # train_ref.py: balance loss and expert loads
            self.moe_trace.append((p, scores, ids))
        w = scores.gather(1, ids)  # unbiased scores
        if c["model_type"] == "deepseek_v3":
            if c["norm_topk_prob"]:
                w = w / w.sum(-1, keepdim=True)
            w = w * c["routed_scaling_factor"]
        elif c["norm_topk_prob"] and k > 1:
            w = w / w.sum(-1, keepdim=True)
        else:
            w = w * c["routed_scaling_factor"]
        # every expert on every token (tiny sizes), then the weighted sum of the chosen ones
        outs = torch.stack([self.mlp(x, p + "mlp.experts.%d." % e) for e in range(E)], 1)  # [T, E, H]
        y = (outs.gather(1, ids.unsqueeze(-1).expand(T, k, x.shape[1])) * w.unsqueeze(-1)).sum(1)
        if c["n_shared_experts"]:
            y = y + self.mlp(x, p + "mlp.shared_experts.")
        return y, ids, w

    def block(self, x, l, st, key):
        p = "model.layers.%d." % l
        a = self.attention(self.norm(x, p + "input_layernorm.weight"), p)
        x = x + a
        hn = self.norm(x, p + "post_attention_layernorm.weight")
        if is_moe_layer(self.c, l):
            m, ids, w = self.moe(hn, p)
            st[key + ".topk_ids"], st[key + ".topk_weights"] = ids.to(torch.int32), w
        else:
            m = self.mlp(hn, p + "mlp.")
        x = x + m
        st[key + ".attn_out"], st[key + ".mlp_out"], st[key + ".hidden"] = a, m, x
        return x

    def forward(self, ids, st):
        """ids: list -> (log-probs [T, V], final-normed hidden [T, H]); fills st."""
        x = self.W["model.embed_tokens.weight"][0][torch.tensor(ids)]
        st["embed"] = x
        for l in range(self.c["num_hidden_layers"]):
            x = self.block(x, l, st, "layers.%d" % l)
        h = self.norm(x, "model.norm.weight")
        logits = self.lin(h, "lm_head.weight")
        st["norm"], st["logits"] = h, logits
        return torch.log_softmax(logits, -1), h

    def mtp(self, ids, h0, st):
        """Module k (1-based) predicts ids[i+k+1] at position i; returns per-module log-prob lists."""
        c, T, out, h = self.c, len(ids), [], h0
        for k in range(1, (c.get("num_nextn_predict_layers") or 0) + 1):
            l = c["num_hidden_layers"] + k - 1
            p = "model.layers.%d." % l
            n = T - k  # positions 0..T-k-1
            e = self.W[p + "embed_tokens.weight"][0][torch.tensor(ids[k:])]
            eh = torch.cat([self.norm(e, p + "enorm.weight"), self.norm(h[:n], p + "hnorm.weight")], -1)
            x = self.lin(eh, p + "eh_proj.weight")  # embedding first
            key = "mtp.%d" % (k - 1)
            st[key + ".eh_proj"] = x
            x = self.block(x, l, st, key)
            h = self.norm(x, p + "shared_head.norm.weight")
            logits = self.lin(h, p + "shared_head.head.weight")
            st[key + ".norm"], st[key + ".logits"] = h, logits
            lp = torch.log_softmax(logits, -1)
            out.append([float(lp[i, ids[i + k + 1]]) for i in range(n - 1)])
        return out


def run_seed(c, prompt_len, fp8, seed, router_gain):
    g = torch.Generator().manual_seed(seed)
    stored, W = make_weights(c, fp8, g, router_gain)
    prompt = torch.randint(0, c["vocab_size"], (prompt_len,), generator=g).tolist()
    model = Model(c, W)
    st = {}
    lp, h = model.forward(prompt, st)
    logprobs = [float(lp[i, prompt[i + 1]]) for i in range(prompt_len - 1)]
    mtp = model.mtp(prompt, h, st)
    res = dict(stored=stored, states=st, prompt=prompt, logprobs=logprobs, mtp=mtp)
    if min(model.route_margins) < MIN_ROUTE_MARGIN:
        res.update(route=min(model.route_margins), greedy_m=0.0)
        return res
    seq, greedy_m = prompt[:8], math.inf
    for _ in range(N_GREEDY):
        lp, _ = model.forward(seq, {})
        top = torch.topk(lp[-1], 2).values
        greedy_m = min(greedy_m, float(top[0] - top[1]))
        seq.append(int(torch.argmax(lp[-1])))
    res.update(route=min(model.route_margins), greedy_m=greedy_m, greedy=seq, absorb=model.absorb_err)
    return res


def write_variant(out, name, c, fp8, r, seed):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    stored = r["stored"]
    if fp8:  # two shards + index, split at the tensor list's middle
        half = len(stored) // 2
        shards = [("model-00001-of-00002.safetensors", stored[:half]),
                  ("model-00002-of-00002.safetensors", stored[half:])]
        total, wmap = 0, {}
        for fn, ts in shards:
            total += write_safetensors(os.path.join(d, fn), ts)
            wmap.update({t[0]: fn for t in ts})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=1)
    else:
        write_safetensors(os.path.join(d, "model.safetensors"), stored)
    # In a subfolder: without an index the engine takes every *.safetensors of d as a shard.
    st = r["states"]
    os.makedirs(os.path.join(d, "debug"), exist_ok=True)
    write_safetensors(os.path.join(d, "debug", "states.safetensors"),
                      [(k, "I32", v.numpy()) if v.dtype == torch.int32 else f32_entry(k, v)
                       for k, v in sorted(st.items())])
    exp = {"prompt_ids": r["prompt"], "logprobs": r["logprobs"]}
    if r["mtp"]:
        exp["mtp_logprobs"] = r["mtp"]
    exp.update(greedy={"prompt_ids": r["greedy"][:8], "new_ids": r["greedy"][8:]},
               min_route_margin=r["route"], min_greedy_margin=r["greedy_m"], seed=seed,
               torch=torch.__version__)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(exp, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", default="all", choices=["v3", "v2", "all"])
    ap.add_argument("--router-gain", type=float, default=4.0,
                    help="router weight std x sqrt(hidden): larger spreads the scores apart")
    a = ap.parse_args()
    torch.set_num_threads(1)  # deterministic summation order for a given torch build
    for name in (["v3", "v2"] if a.variant == "all" else [a.variant]):
        c, plen, fp8 = VARIANTS[name]
        t0 = time.time()
        for seed in range(1, 200):
            r = run_seed(c, plen, fp8, seed, a.router_gain)
            if r["route"] >= MIN_ROUTE_MARGIN and r["greedy_m"] >= MIN_GREEDY_MARGIN:
                break
            print("%s: seed %d rejected (route margin %.3g, greedy margin %.3g)"
                  % (name, seed, r["route"], r["greedy_m"]))
        else:
            sys.exit("%s: no seed in 1..199 gives the required margins" % name)
        write_variant(a.out, name, c, fp8, r, seed)
        print("%s: seed %d, min_route_margin %.3g, min_greedy_margin %.3g, naive/absorbed max rel diff "
              "%.2g, %.1f s" % (name, seed, r["route"], r["greedy_m"], r["absorb"], time.time() - t0))


if __name__ == "__main__":
    main()
