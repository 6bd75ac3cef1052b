"""`python -m sglang.launch_server` that keeps DP attention at `--dp 1`: the split's own cost on one GPU.

SGLang 0.5.17 turns DP attention off when `--dp` is 1 (`_data_parallelism_defaults` in
sglang/srt/arg_groups/overrides.py), and two-batch overlap with it. A one-rank DP-attention
server still runs SGLang's per-pass DP sync, sglang-atom's split agreement and the split passes,
over collectives of a world of one that move nothing. TBO against no TBO there is what the split
itself costs (host preparation of two child batches, twice the launches, half-size GEMMs, the cut
sequence's prefix attention) with nothing to hide. For measurement only (`tbo_serving.py --dp 1`):
no one serves a model this way, and `--backend atom` does not offer it.

    python3 benchmarks/one_rank_server.py --model-path M --tp 1 --dp 1 --enable-dp-attention ...
"""

from __future__ import annotations

import runpy


def keep_dp_attention_at_one_rank() -> None:
    """SGLang imports the rule by name from its module each time it resolves ServerArgs (in the
    launcher only: the scheduler processes receive the resolved arguments)."""
    from sglang.srt.arg_groups import overrides

    overrides._data_parallelism_defaults = lambda view: {}


if __name__ == "__main__":
    keep_dp_attention_at_one_rank()
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)
