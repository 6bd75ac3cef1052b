"""The compute of SGLang's Qwen3-MoE and DeepSeek-V2/V3 decoder layers, cut where TBO needs it.

`tbo.overlap.micro_batch_program` drives these as `LayerOps`: `attention` runs a micro-batch's
local rows up to the MoE input (input norm, attention, post-attention norm: what SGLang's
LayerCommunicator does before its DP gather when attention TP is 1); `experts` runs the MoE on
the all-gathered rows of every rank with its own all-reduce skipped (the reduce_scatter sums the
TP-sharded partial results); `combine` takes the reduced local rows as the layer output.
The residual add is left to the next layer's input norm, as in SGLang.

Ranks or micro-batches with no rows skip attention and norms but still run the MoE on the
gathered rows of the others: every rank issues the same collectives in the same order.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache

logger = logging.getLogger("sglang_atom")

_QWEN3 = "sglang.srt.models.qwen3_moe.Qwen3MoeDecoderLayer"
_DEEPSEEK = "sglang.srt.models.deepseek_v2.DeepseekV2DecoderLayer"
READS = (_QWEN3, _DEEPSEEK, "sglang.srt.runtime_context.get_forward",
         "sglang.srt.layers.communicator.get_attn_tp_context")


class SGLangMoeLayers:
    """LayerOps over a range of sparse decoder layers, for two micro-batches."""

    def __init__(self, layers, inputs: list[dict]):
        self.layers = layers
        self.state = [dict(inp) for inp in inputs]  # hidden_states, residual, positions, forward_batch

    def attention(self, mb: int, layer: int):
        s, lyr = self.state[mb], self.layers[layer]
        fb = s["forward_batch"]
        hidden, residual = lyr.layer_communicator.prepare_attn(
            s["hidden_states"], s["residual"], fb, **self._prepare_attn_kwargs(lyr))
        if hidden.shape[0]:  # a child with no rows has no attention metadata either
            hidden = self._self_attention(lyr, s, hidden)
            hidden, residual = lyr.post_attention_layernorm(hidden, residual)
        s["residual"] = residual
        return hidden

    def experts(self, mb: int, layer: int, gathered):
        from sglang.srt.runtime_context import get_forward

        with get_forward().scoped(mlp_reduce_scatter=True):  # skip the MoE's own all-reduce
            return self._moe(self.layers[layer], gathered, self.state[mb]["forward_batch"])

    def combine(self, mb: int, layer: int, local) -> None:
        self.state[mb]["hidden_states"] = local

    def outputs(self) -> list[dict]:
        return [{k: s[k] for k in ("hidden_states", "residual", "forward_batch")} for s in self.state]

    # Architecture specifics.
    def _prepare_attn_kwargs(self, layer) -> dict:
        return {}

    def _self_attention(self, layer, state, hidden):
        return layer.self_attn(positions=state["positions"], hidden_states=hidden,
                               forward_batch=state["forward_batch"])

    def _moe(self, layer, hidden, forward_batch):
        return layer.mlp(hidden, forward_batch)


# A micro-batch of at least this many tokens on a rank runs a cached prefix through MHA over the
# decompressed prefix instead of absorbed MLA. Decompressing costs about kv_lora x heads x
# (qk_nope + v) x 2 FLOPs per prefix token; absorbed attention costs about heads x 2 x
# (2 kv_lora + rope - qk - v) FLOPs more per (query, key) pair. They break even near 170 queries
# at DeepSeek-V3 widths.
MHA_MIN_EXTEND_TOKENS = 256


@contextmanager
def prefix_through_mha(attn, extend_tokens: int):
    """While a split micro-batch runs: let SGLang take MHA for a cached prefix of any length.

    The split's second half always has a prefix, namely the first half. SGLang 0.5.17 sends an
    extend with a prefix under SGLANG_CHUNKED_PREFIX_CACHE_THRESHOLD (8192) through absorbed MLA.
    Measured on 2xH200 (DeepSeek-V3 widths, flashinfer, 8k per rank), that took 10.7 ms for a
    4k half against 3.7 ms of MHA for the whole 8k, and TBO ran at 0.85x. With the threshold
    at 1 it ran at 1.01x. Only attention backends that read the threshold (flashinfer, fa3,
    flashmla, cutlass_mla) benefit; triton always takes absorbed MLA for a prefix, which
    validation refuses.
    """
    if extend_tokens < MHA_MIN_EXTEND_TOKENS:
        yield
        return
    if not hasattr(attn, "chunked_prefix_cache_threshold"):
        _warn_no_threshold()
        yield
        return
    saved = attn.chunked_prefix_cache_threshold
    attn.chunked_prefix_cache_threshold = 1
    try:
        yield
    finally:
        attn.chunked_prefix_cache_threshold = saved


@lru_cache(maxsize=1)
def _warn_no_threshold() -> None:
    logger.warning("sglang-atom TBO: this SGLang's DeepSeek attention has no "
                   "chunked_prefix_cache_threshold; a split prompt's second half may run absorbed "
                   "MLA, which is slower for prefill.")


class DeepseekMoeLayers(SGLangMoeLayers):
    """DeepSeek-V2/V3 sparse layers (MLA attention; shared experts are TP-sharded, so their
    output is part of the partial sum the reduce_scatter adds up)."""

    def _prepare_attn_kwargs(self, layer) -> dict:
        return {"quant_format": getattr(layer, "_gfx95_quant_format", "")}

    def _self_attention(self, layer, state, hidden):
        from sglang.srt.layers.communicator import get_attn_tp_context

        fb = state["forward_batch"]
        with (layer.self_attn.maybe_use_decode_attn_tp(fb),
              prefix_through_mha(layer.self_attn, hidden.shape[0])):
            out = layer.self_attn(positions=state["positions"], hidden_states=hidden, forward_batch=fb,
                                  zero_allocator=state["zero_allocator"], llama_4_scaling=None,
                                  layer_scatter_modes=layer.layer_scatter_modes, prev_topk_indices=None)
        get_attn_tp_context().clear_attn_inputs()
        return out[0] if isinstance(out, tuple) else out

    def _moe(self, layer, hidden, forward_batch):
        return layer.mlp(hidden, forward_batch, None)


@lru_cache(maxsize=1)
def _layer_classes() -> tuple[type, type]:
    import pkgutil

    return pkgutil.resolve_name(_QWEN3), pkgutil.resolve_name(_DEEPSEEK)


def layer_ops_for(layers) -> type[SGLangMoeLayers]:
    """The LayerOps class for this TBO layer range, or a clear error naming what to change.
    Runs per TBO forward: a scan of the layer objects, microseconds beside a prefill."""
    qwen3, deepseek = _layer_classes()
    if all(type(x) is qwen3 for x in layers):
        ops = SGLangMoeLayers
    elif all(type(x) is deepseek for x in layers):
        ops = DeepseekMoeLayers
    else:
        names = sorted({type(x).__name__ for x in layers})
        raise RuntimeError(f"sglang-atom TBO runs Qwen3-MoE and DeepSeek-V2/V3 decoder layers, not "
                           f"{', '.join(names)}; drop --enable-two-batch-overlap.")
    dense = [x.layer_id for x in layers if not getattr(x, "is_layer_sparse", False)]
    if dense:
        raise RuntimeError(f"sglang-atom TBO needs every overlapped layer to be an MoE layer, but "
                           f"layers {dense} are dense (moe_layer_freq > 1 or mlp_only_layers); "
                           f"drop --enable-two-batch-overlap for this model.")
    return ops
