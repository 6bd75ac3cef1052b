"""Write a random checkpoint (Hugging Face tensor names) for a small model config in this repo.

    python3 benchmarks/random_checkpoint.py models/qwen3-moe-check /tmp/ckpt/qwen3-moe-check

SGLang's `--load-format dummy` draws every weight from U(-1e-3, 1e-3), which leaves the residual
stream almost equal to the token embedding: logits barely depend on attention or the MoE, so
a comparison of outputs could not catch rows mixed up between ranks or micro-batches. These
weights are N(0, 0.02) with unit norms, as at initialization of a trained model, so every layer
changes the logits. Seeded: the same directory is written on every run. Qwen3-MoE and
DeepSeek-V2/V3 (MLA, shared experts, first_k_dense_replace) names are supported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import torch


def qwen3_moe(c: dict):
    h, hd = c["hidden_size"], c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    yield "model.embed_tokens.weight", (c["vocab_size"], h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (c["num_attention_heads"] * hd, h)
        yield p + "self_attn.k_proj.weight", (c["num_key_value_heads"] * hd, h)
        yield p + "self_attn.v_proj.weight", (c["num_key_value_heads"] * hd, h)
        yield p + "self_attn.o_proj.weight", (h, c["num_attention_heads"] * hd)
        yield p + "self_attn.q_norm.weight", (hd,)
        yield p + "self_attn.k_norm.weight", (hd,)
        yield p + "mlp.gate.weight", (c["num_experts"], h)
        for e in range(c["num_experts"]):
            yield from _mlp(p + f"mlp.experts.{e}.", h, c["moe_intermediate_size"])
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (c["vocab_size"], h)


def deepseek(c: dict):
    h, nh = c["hidden_size"], c["num_attention_heads"]
    nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    yield "model.embed_tokens.weight", (c["vocab_size"], h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "post_attention_layernorm.weight", (h,)
        if c.get("q_lora_rank"):
            yield p + "self_attn.q_a_proj.weight", (c["q_lora_rank"], h)
            yield p + "self_attn.q_a_layernorm.weight", (c["q_lora_rank"],)
            yield p + "self_attn.q_b_proj.weight", (nh * (nope + rope), c["q_lora_rank"])
        else:
            yield p + "self_attn.q_proj.weight", (nh * (nope + rope), h)
        yield p + "self_attn.kv_a_proj_with_mqa.weight", (c["kv_lora_rank"] + rope, h)
        yield p + "self_attn.kv_a_layernorm.weight", (c["kv_lora_rank"],)
        yield p + "self_attn.kv_b_proj.weight", (nh * (nope + v), c["kv_lora_rank"])
        yield p + "self_attn.o_proj.weight", (h, nh * v)
        if i < c["first_k_dense_replace"]:
            yield from _mlp(p + "mlp.", h, c["intermediate_size"])
            continue
        yield p + "mlp.gate.weight", (c["n_routed_experts"], h)
        if c.get("topk_method") == "noaux_tc":
            yield p + "mlp.gate.e_score_correction_bias", (c["n_routed_experts"],)
        for e in range(c["n_routed_experts"]):
            yield from _mlp(p + f"mlp.experts.{e}.", h, c["moe_intermediate_size"])
        if c.get("n_shared_experts"):
            yield from _mlp(p + "mlp.shared_experts.", h, c["moe_intermediate_size"] * c["n_shared_experts"])
    yield "model.norm.weight", (h,)
    yield "lm_head.weight", (c["vocab_size"], h)


def _mlp(prefix: str, h: int, inter: int):
    yield prefix + "gate_proj.weight", (inter, h)
    yield prefix + "up_proj.weight", (inter, h)
    yield prefix + "down_proj.weight", (h, inter)


LAYOUTS = {"Qwen3MoeForCausalLM": qwen3_moe, "DeepseekV2ForCausalLM": deepseek,
           "DeepseekV3ForCausalLM": deepseek}


def write(model_dir: str, out_dir: str, seed: int = 0) -> str:
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    layout = LAYOUTS[config["architectures"][0]]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in layout(config):
        if name.endswith("norm.weight"):
            state[name] = torch.ones(shape, dtype=torch.bfloat16)
        elif name.endswith("e_score_correction_bias"):
            state[name] = torch.zeros(shape, dtype=torch.float32)
        else:
            state[name] = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(os.path.join(model_dir, "config.json"), os.path.join(out_dir, "config.json"))
    torch.save(state, os.path.join(out_dir, "pytorch_model.bin"))
    return out_dir


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(write(args.model_dir, args.out_dir, args.seed))
