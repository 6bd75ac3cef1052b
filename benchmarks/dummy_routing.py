"""How SGLang's `--load-format dummy` weights route tokens in the shipped MoE models (CPU).

    python3 benchmarks/dummy_routing.py [--tokens 4096] [--out DIR] [MODEL_DIR ...]

Benchmarks here serve dummy weights, so the experts' load is whatever the dummy router makes of
it. This builds a model's router (the norm before it, the gate, and DeepSeek-V3's routing
correction bias when `topk_method` is `noaux_tc`), fills it with SGLang's own dummy initializer
(`initialize_dummy_weights`: uniform in +-1e-3, the server's distribution; the server draws on
the GPU, so not its exact values), and routes random tokens through SGLang's own top-k functions
(`biased_grouped_topk_impl`, `grouped_topk_gpu`, `fused_topk_torch_native`) as the model would.
The MoE input is the normed embedding of random tokens: at dummy scale the first layers'
attention and MLP outputs are small next to the embedding.

Prints per model the experts used, the busiest expert's share of the routed rows, and the busiest
expert's load over the mean (1.0 is perfectly even); --out writes DIR/dummy_routing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import model_config, provenance, record_json  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOE_MODELS = ["models/qwen3-moe-tiny", "models/qwen3-235b-width", "models/deepseek-v3-width"]


class Router(torch.nn.Module):
    """The parameters that decide routing, shaped and typed as in SGLang 0.5.17's models."""

    def __init__(self, cfg: dict):
        super().__init__()
        experts = cfg.get("n_routed_experts") or cfg["num_experts"]
        hidden = cfg["hidden_size"]
        self.norm = torch.nn.Parameter(torch.empty(hidden, dtype=torch.bfloat16))
        self.gate = torch.nn.Parameter(torch.empty(experts, hidden, dtype=torch.bfloat16))
        self.bias = (torch.nn.Parameter(torch.empty(experts, dtype=torch.float32))
                     if cfg.get("topk_method") == "noaux_tc" else None)


def route(cfg: dict, tokens: int, seed: int = 0) -> torch.Tensor:
    """Top-k expert ids [tokens, k] of `tokens` random tokens under dummy weights."""
    from sglang.srt.layers.moe.topk import (
        biased_grouped_topk_impl, fused_topk_torch_native, grouped_topk_gpu)
    from sglang.srt.model_loader.weight_utils import initialize_dummy_weights

    router = Router(cfg)
    initialize_dummy_weights(router)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(tokens, cfg["hidden_size"], generator=gen) * 2 - 1) * 1e-3  # dummy embedding rows
    h = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.get("rms_norm_eps", 1e-6))).bfloat16() * router.norm
    k = cfg["num_experts_per_tok"]
    if "n_routed_experts" in cfg:  # DeepSeek: bf16 x bf16 -> fp32 router GEMM, grouped top-k
        logits = h.float() @ router.gate.float().t()
        groups = dict(num_expert_group=cfg["n_group"], topk_group=cfg["topk_group"])
        if router.bias is not None:
            _, ids = biased_grouped_topk_impl(h, logits, router.bias.data, k, cfg["norm_topk_prob"], **groups)
        else:
            _, ids = grouped_topk_gpu(h, logits, k, cfg["norm_topk_prob"], scoring_func=cfg["scoring_func"],
                                      **groups)
    else:  # Qwen3-MoE: bf16 gate, softmax top-k
        logits = torch.nn.functional.linear(h, router.gate)
        _, ids = fused_topk_torch_native(h, logits, k, cfg.get("norm_topk_prob", True))
    return ids


def load_stats(ids: torch.Tensor, experts: int) -> dict:
    counts = torch.bincount(ids.flatten().long(), minlength=experts).float()
    top = counts.sort(descending=True).values
    top16 = min(16, experts)
    return dict(experts=experts, experts_used=int((counts > 0).sum()),
                busiest_share=round(float(top[0] / counts.sum()), 4),
                busiest_over_mean=round(float(top[0] / counts.mean()), 2),
                top16_share=round(float(top[:top16].sum() / counts.sum()), 4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=MOE_MODELS)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rows = []
    for model in args.models:
        cfg = model_config(os.path.join(REPO, model) if not os.path.isabs(model) else model)
        stats = load_stats(route(cfg, args.tokens), cfg.get("n_routed_experts") or cfg["num_experts"])
        rows.append(dict(model=model, topk_method=cfg.get("topk_method"), **stats))
        print(f"{model}: {stats['experts_used']}/{stats['experts']} experts used, busiest "
              f"{stats['busiest_share']:.1%} of routed rows ({stats['busiest_over_mean']}x the mean), "
              f"16 busiest {stats['top16_share']:.1%}", flush=True)
    if args.out:
        record_json(os.path.join(args.out, "dummy_routing.json"), dict(provenance(), tokens=args.tokens, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
