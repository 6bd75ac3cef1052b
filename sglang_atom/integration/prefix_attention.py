"""Plan DeepSeek's MHA attention over a cached prefix from host lengths (flashinfer MLA backend).

A DeepSeek prefill pass whose sequences have a prefix in the KV cache runs SGLang's MHA path
over it: a chunked-prefill continuation, and in every two-batch split the second micro-batch,
whose cut sequence attends to the first part's KV. SGLang 0.5.17 plans flashinfer's ragged
kernels for that path (`FlashInferMhaChunkKVRunner.update_wrapper`, in the pass's first
attention layer) from index arrays it computes on the GPU, and flashinfer's `plan` reads them
back to the host: a device-to-host copy that waits until the GPU has run everything queued
before it. In a split pass that is most of micro-batch A's first layer: on 2xH200 it blocked the
host 6-12 ms and emptied the GPU's queue of launches ahead (twentieth session).

The same arrays follow from lengths the batch already holds on the host, so this replacement
hands `plan` host tensors, which it copies to the GPU without waiting. It plans the same
wrappers with the same arguments; the only thing it leaves out is SGLang's rewrite of the
backend's `qo_indptr` buffer, which holds the same values from the pass's own metadata.
"""

from __future__ import annotations

from itertools import accumulate

TARGET = ("sglang.srt.layers.attention.flashinfer_mla_backend."
          "FlashInferMhaChunkKVRunner.update_wrapper")
READS = ("sglang.srt.model_executor.forward_batch_deepseek_mha_mixin."
         "ForwardBatchDeepSeekMHAMixin.prepare_chunked_prefix_cache_info",)


def indptr(lengths) -> list[int]:
    """[0, l0, l0 + l1, ...]: flashinfer's offsets of each sequence's rows."""
    return [0, *accumulate(int(n) for n in lengths)]


def update_wrapper(runner, forward_batch, disable_flashinfer_ragged: bool = False) -> None:
    """REPLACE of FlashInferMhaChunkKVRunner.update_wrapper, from the batch's host lengths:
    rows to compute per sequence (`extend_seq_lens_cpu`), prefix rows per sequence in each chunk
    of the prefix (`prefix_chunk_seq_lens_cpu`, from `prepare_chunked_prefix_cache_info`), and
    whole sequence lengths (`seq_lens_cpu`) for the one-shot variant that attends to prefix and
    new rows in one call."""
    import torch

    def host(values):
        return torch.tensor(values, dtype=torch.int32)

    num_chunks = forward_batch.num_prefix_chunks
    assert num_chunks is not None
    runner.update_prefix_chunks(num_chunks)
    qo_indptr = host(indptr(forward_batch.extend_seq_lens_cpu))
    shape = dict(num_qo_heads=runner.num_local_heads, num_kv_heads=runner.num_local_heads,
                 head_dim_qk=runner.qk_nope_head_dim + runner.qk_rope_head_dim,
                 head_dim_vo=runner.v_head_dim, q_data_type=runner.q_data_type)
    for chunk in range(num_chunks):
        runner.chunk_ragged_wrappers[chunk].begin_forward(
            qo_indptr=qo_indptr,
            kv_indptr=host(indptr(forward_batch.prefix_chunk_seq_lens_cpu[chunk].tolist())),
            causal=False, **shape)
    if not disable_flashinfer_ragged:
        kv_indptr = (host(indptr(forward_batch.seq_lens_cpu.tolist()))
                     if forward_batch.mha_one_shot else qo_indptr)
        runner.ragged_wrapper.begin_forward(qo_indptr=qo_indptr, kv_indptr=kv_indptr,
                                            causal=True, **shape)


def hooks():
    from sglang.srt.plugins.hook_registry import HookType

    return [(TARGET, update_wrapper, HookType.REPLACE)]
