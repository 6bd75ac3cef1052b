"""Dummy-weight routing of the shipped MoE models, through SGLang 0.5.17's own dummy initializer
and top-k functions: benchmarks on `--load-format dummy` must load the experts as a real model
would, not send every token to the same few."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import dummy_routing  # noqa: E402


@pytest.mark.parametrize("model", dummy_routing.MOE_MODELS)
def test_shipped_models_spread_tokens_over_their_experts(model):
    cfg = json.loads((REPO / model / "config.json").read_text())
    experts = cfg.get("n_routed_experts") or cfg["num_experts"]
    stats = dummy_routing.load_stats(dummy_routing.route(cfg, 2048), experts)
    assert stats["experts_used"] == experts, stats
    assert stats["busiest_over_mean"] < 4, stats


def test_deepseek_routing_bias_collapses_dummy_routing():
    """Why deepseek-v3-width leaves out the correction bias: with it, dummy weights route every
    token to the same top-k experts."""
    cfg = json.loads((REPO / "models" / "deepseek-v3-width" / "config.json").read_text())
    stats = dummy_routing.load_stats(dummy_routing.route({**cfg, "topk_method": "noaux_tc"}, 2048), 256)
    assert stats["experts_used"] <= 16 and stats["top16_share"] == 1.0, stats
