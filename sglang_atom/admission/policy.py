"""Coordinated DP prefill admission: hold or fire prefill, decided the same way on every rank.

Pure Python over plain numbers. Each scheduler pass every DP rank contributes one `RankState`;
after one all-gather every rank holds the same list and calls `decide` with the same
`EpisodeState`, so every rank reaches the same `Decision` and the same next state.

Why hold at all: with DP attention every rank joins every MoE all_gather/reduce_scatter. A pass
where one rank prefills thousands of tokens while the others decode makes those decodes wait for
the prefill (and drop out of CUDA graphs). Holding prefill a few passes until every rank has
work (and, with a fill target, enough of it) turns many mixed passes into a few aligned ones.
The must-fire rules bound the delay so nothing starves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

# Reasons, in the order the rules are checked. Metrics label decisions with these strings.
FIRE_NOTHING_PENDING = "nothing_pending"  # no rank has prefill work: firing is a no-op
FIRE_NO_DECODE = "no_decode"  # no rank decodes: a hold would hide behind nothing
FIRE_KV_PRESSURE = "kv_pressure"  # a rank's KV cache is nearly full: waiting admits no more
FIRE_MAX_WAIT = "max_wait"  # the oldest waiting request reached the age limit
FIRE_MAX_HOLD = "max_hold"  # held the limit of consecutive passes
FIRE_CHUNKED = "chunked"  # a chunked prefill in progress was held its limit
FIRE_STALL = "stall"  # pending tokens stopped growing: waiting longer gains nothing
HOLD_ALIGN = "align"  # some ranks can prefill, others cannot yet
FIRE_TBO_READY = "tbo_ready"  # every rank has enough tokens for a useful two-batch split
FIRE_FILL = "fill"  # pending tokens reached the fill target
HOLD_FILL = "fill_wait"  # below the fill target, still growing

FIRE_REASONS = (FIRE_NOTHING_PENDING, FIRE_NO_DECODE, FIRE_KV_PRESSURE, FIRE_MAX_WAIT,
                FIRE_MAX_HOLD, FIRE_CHUNKED, FIRE_STALL, FIRE_TBO_READY, FIRE_FILL)
HOLD_REASONS = (HOLD_ALIGN, HOLD_FILL)


# A rank reports its pending tokens capped at this many prefill budgets, so the int64 row never
# overflows and one huge prompt does not dominate the fill signal beyond what a few passes can
# prefill anyway.
PENDING_CAP_BUDGETS = 4


@dataclass(frozen=True)
class RankState:
    """What one DP rank reports each pass. All integers, so it packs into one int64 row."""

    waiting_reqs: int  # requests this rank could admit now
    pending_tokens: int  # their input tokens (prefix-cache hits counted too) plus a chunked prefill's remainder
    running_reqs: int  # requests decoding
    kv_usage_permille: int  # KV cache usage, 0..1000
    chunked: int  # 1 while a chunked prefill is in progress
    oldest_wait_ms: int  # age of the oldest waiting request (0 when none)
    prefill_budget: int  # tokens this rank may prefill in one pass

    FIELDS = ("waiting_reqs", "pending_tokens", "running_reqs", "kv_usage_permille", "chunked",
              "oldest_wait_ms", "prefill_budget")

    def to_row(self) -> list[int]:
        return [int(getattr(self, name)) for name in self.FIELDS]

    @classmethod
    def from_row(cls, row: Sequence[int]) -> "RankState":
        return cls(*(int(v) for v in row))

    @property
    def has_prefill(self) -> bool:
        return self.waiting_reqs > 0 or self.chunked > 0


@dataclass(frozen=True)
class PolicyParams:
    # 0 (fire once aligned), not 0.7 (SGLang's delayer and ATOM): with 8192-token budgets per
    # rank, 0.7 held 475-776 passes a run and served 0.83-0.99x the input throughput of plain
    # SGLang at the same budget, 0.01 served 0.98-1.08x (DP2, 2xH200, 2026-11-23). At DP4 with the
    # old 2048-token budget 0.7 held 0-5 passes a run, so those results were alignment's alone.
    # benchmarks/results/NOTES-admission.md, eleventh session.
    target_fill: float = 0.0
    align: bool = True
    max_hold_passes: int = 32
    max_wait_ms: int = 1000
    # 2, not 0: on 4xH200 (DP4, short mix, 2026-11-22) holding a chunk in progress for up to two
    # passes gave 6-10% more input throughput than firing at once, both repeats in both cells
    # (n = 2; the simulator has it neutral); benchmarks/results/NOTES-admission.md.
    chunked_max_hold_passes: int = 2
    stall_passes: int = 4
    kv_high: float = 0.9
    tbo_enabled: bool = False
    tbo_min_tokens: int = 4096


@dataclass(frozen=True)
class EpisodeState:
    """Identical on every rank: it only ever changes through `decide` on gathered numbers."""

    held_passes: int = 0  # consecutive holds so far
    stalled_passes: int = 0  # consecutive holds in which total pending tokens did not grow
    last_pending: int = 0  # total pending tokens at the previous hold


@dataclass(frozen=True)
class Decision:
    fire: bool
    reason: str


def decide(ranks: Sequence[RankState], state: EpisodeState, params: PolicyParams
           ) -> tuple[Decision, EpisodeState]:
    """Hold or fire prefill this pass, from every rank's numbers; returns the next state too."""

    def fire(reason):
        return Decision(True, reason), EpisodeState()

    def hold(reason, stalled):
        return Decision(False, reason), EpisodeState(state.held_passes + 1, stalled, total_pending)

    with_prefill = [r for r in ranks if r.has_prefill]
    if not with_prefill:
        return fire(FIRE_NOTHING_PENDING)
    if all(r.running_reqs == 0 for r in ranks):
        return fire(FIRE_NO_DECODE)
    if any(r.kv_usage_permille >= params.kv_high * 1000 for r in with_prefill):
        return fire(FIRE_KV_PRESSURE)
    if max(r.oldest_wait_ms for r in ranks) >= params.max_wait_ms:
        return fire(FIRE_MAX_WAIT)
    if state.held_passes >= params.max_hold_passes:
        return fire(FIRE_MAX_HOLD)
    if any(r.chunked for r in ranks) and state.held_passes >= params.chunked_max_hold_passes:
        return fire(FIRE_CHUNKED)

    total_pending = sum(r.pending_tokens for r in ranks)
    grew = state.held_passes == 0 or total_pending > state.last_pending
    stalled = 0 if grew else state.stalled_passes + 1
    if stalled >= params.stall_passes:
        return fire(FIRE_STALL)
    if params.align and len(with_prefill) < len(ranks):
        return hold(HOLD_ALIGN, stalled)
    if params.tbo_enabled and all(r.pending_tokens >= params.tbo_min_tokens for r in ranks):
        return fire(FIRE_TBO_READY)
    budget = sum(r.prefill_budget for r in with_prefill)
    if total_pending >= params.target_fill * budget:
        return fire(FIRE_FILL)
    return hold(HOLD_FILL, stalled)


def padding_ratio(num_tokens: Sequence[int]) -> float:
    """Share of gathered rows that are padding when every rank's rows are padded to the largest.

    This is the waste of a MAX_LEN gather, and for SUM_LEN gathers the share of the pass that
    smaller ranks spend waiting on the largest one. 0 for an all-idle pass.
    """
    top = max(num_tokens, default=0)
    if top == 0:
        return 0.0
    return 1.0 - sum(num_tokens) / (top * len(num_tokens))
