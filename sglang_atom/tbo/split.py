"""Token-level even split of a prefill batch into two micro-batches.

Pure Python. The cut falls at total // 2 tokens; when it lands inside a sequence that sequence
is cut in two, and its second part is an extend whose prefix is the first part (so it attends
to the KV the first part writes). Every DP rank must split or none does: `agree_split` is the
rule all ranks apply to the same gathered numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Segment:
    """Part of one sequence's extend: tokens [prefix_len, prefix_len + extend_len) of it."""

    seq: int  # index of the sequence in the parent batch
    prefix_len: int  # tokens before this segment (cached prefix plus any earlier segment)
    extend_len: int  # new tokens in this segment
    offset: int  # where the segment starts within the sequence's extend tokens


@dataclass(frozen=True)
class Split:
    first: tuple[Segment, ...]
    second: tuple[Segment, ...]
    cut_token: int  # index into the batch's flattened extend tokens where `second` begins

    @property
    def first_tokens(self) -> int:
        return sum(s.extend_len for s in self.first)

    @property
    def second_tokens(self) -> int:
        return sum(s.extend_len for s in self.second)


def split_even(extend_lens: Sequence[int], prefix_lens: Sequence[int]) -> Split:
    """Cut the batch at total // 2 tokens, cutting a sequence in the middle when needed."""
    if len(extend_lens) != len(prefix_lens):
        raise ValueError("extend_lens and prefix_lens must have the same length")
    cut = sum(extend_lens) // 2
    first: list[Segment] = []
    second: list[Segment] = []
    start = 0
    for seq, (n, prefix) in enumerate(zip(extend_lens, prefix_lens)):
        end = start + n
        if end <= cut:
            first.append(Segment(seq, prefix, n, 0))
        elif start >= cut:
            second.append(Segment(seq, prefix, n, 0))
        else:
            head = cut - start
            first.append(Segment(seq, prefix, head, 0))
            second.append(Segment(seq, prefix + head, n - head, head))
        start = end
    return Split(tuple(first), tuple(second), cut)


def seq_cut(extend_lens: Sequence[int]) -> tuple[int, bool]:
    """Where `split_even` cuts, in SGLang's terms: (k, inside).

    Sequences [0, k) lie wholly before the cut at total // 2. `inside` says the cut falls
    strictly inside sequence k (then the first micro-batch is sequences [0, k] and the second
    [k, n)); otherwise the cut is the boundary before sequence k.
    """
    cut = sum(extend_lens) // 2
    start = 0
    for k, n in enumerate(extend_lens):
        if start + n > cut:
            return k, start < cut
        start += n
    return len(extend_lens), False


def micro_batch_rows(rank_tokens: Sequence[int]) -> tuple[list[int], list[int]]:
    """Rows of each micro-batch on every rank, from the gathered per-rank token counts."""
    first = [n // 2 for n in rank_tokens]
    return first, [n - f for n, f in zip(rank_tokens, first)]


def agree_split(rank_tokens: Sequence[int], min_tokens: int) -> bool:
    """Whether every rank splits this prefill forward: the same answer on every rank from the
    gathered token counts. The caller asks only for passes in which every busy rank extends
    (decode TBO loses with TP-sharded experts). Split when the largest rank has enough tokens
    for halves worth overlapping; ranks with 0 tokens still split (two empty micro-batches) so
    they join each micro-batch's collectives."""
    return bool(rank_tokens) and max(rank_tokens) >= min_tokens


# A split pass pays only where its GEMMs outweigh what splitting costs: about twice the kernel
# launches (two micro-batches per layer) and SGLang's preparation of two child batches, a
# fixed host cost per layer whatever the width. Served on 2xH200 at DP2 (2026-11-22/23, both
# servers eager; benchmarks/results/NOTES-tbo.md), a pass whose expert GEMMs came to 1.2 TFLOP
# ran split at 0.86x of the same pass unsplit (Qwen3-235B widths at 4096 tokens per rank), and
# passes from 2.5 TFLOP up at 0.95-1.05x (Qwen3-235B widths at 8k-16k, DeepSeek-V3 widths at
# 4k-16k: 0.98-1.05x with dummy routing that sent every token to the same 8 experts,
# benchmarks/results/NOTES-moe-configs.md, and 0.95x at 8k with spread routing, 2026-11-24).
# The threshold sits between the two; DP4 and up, where the collectives to hide are larger, are
# not measured against it yet.
SPLIT_MIN_EXPERT_FLOP = 2e12


def auto_min_tokens(hidden: int, moe_intermediate: int, experts_per_token: int) -> int:
    """Tokens on the largest rank from which a prefill splits under `--atom-tbo-min-tokens 0`:
    where the pass's expert GEMMs (gate, up and down of every expert a token uses, shared
    experts counted) reach SPLIT_MIN_EXPERT_FLOP, rounded up to a multiple of 1024."""
    if min(hidden, moe_intermediate, experts_per_token) <= 0:
        raise ValueError(f"need positive widths, got hidden {hidden}, moe_intermediate "
                         f"{moe_intermediate}, experts_per_token {experts_per_token}")
    flop_per_token = 6 * hidden * moe_intermediate * experts_per_token
    tokens = -(-int(SPLIT_MIN_EXPERT_FLOP) // flop_per_token)
    return -(-tokens // 1024) * 1024
