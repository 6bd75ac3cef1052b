"""Prometheus metrics of sglang-atom, served through SGLang's /metrics (`--enable-metrics`).

SGLang runs prometheus_client in multiprocess mode, so metrics created in a scheduler process
appear on the HTTP server's endpoint. Only TP rank 0 records (every rank decides the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .admission.policy import Decision, padding_ratio

HELD_PASSES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
HELD_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PASS_INTERVAL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class AtomMetrics:
    decisions: object
    held_passes: object
    held_seconds: object
    padding: object
    rows: object
    tbo_prefills: object
    pass_intervals: object

    @classmethod
    def create(cls) -> "AtomMetrics":
        from prometheus_client import Counter, Histogram

        return cls(
            decisions=Counter(
                "sglang:atom_admission_decisions_total",
                "Admission decisions per scheduler pass, by decision (fire/hold) and reason.",
                ["decision", "reason"],
            ),
            held_passes=Histogram(
                "sglang:atom_admission_held_passes",
                "Consecutive scheduler passes prefill was held before it fired.",
                buckets=HELD_PASSES_BUCKETS,
            ),
            held_seconds=Histogram(
                "sglang:atom_admission_held_seconds",
                "Seconds prefill was held before it fired.",
                buckets=HELD_SECONDS_BUCKETS,
            ),
            padding=Histogram(
                "sglang:atom_gathered_rows_padding_ratio",
                "Per forward pass with DP attention: 1 - sum(rows) / (dp_size * max(rows)) over the "
                "ranks' token rows, i.e. the padding share if every rank were padded to the largest; "
                "by pass: extend (some rank prefills) or decode (none does).",
                ["pass"],
                buckets=RATIO_BUCKETS,
            ),
            # The histogram weighs every pass the same, a drain pass of three requests as much as
            # a full one; these sums give the share of all gathered rows that is padding.
            rows=Counter(
                "sglang:atom_gathered_rows_total",
                "Gathered MoE token rows over DP ranks, by pass (extend/decode) and rows: real (the "
                "ranks' own tokens) or padding (dp_size * max(rows) - sum(rows)).",
                ["pass", "rows"],
            ),
            tbo_prefills=Counter(
                "sglang:atom_tbo_prefill_passes_total",
                "Prefill passes with two-batch overlap on, by whether every rank ran them as two "
                "overlapped micro-batches (split=yes) or whole (split=no: decode in the pass, or "
                "fewer than --atom-tbo-min-tokens on the largest rank).",
                ["split"],
            ),
            # A steady server starts a pass every few ms; an interval far above that is a stall
            # (a first-time kernel compile, a host hiccup), which throughput alone cannot tell
            # from uniformly slower passes.
            pass_intervals=Histogram(
                "sglang:atom_pass_interval_seconds",
                "Seconds between the starts of consecutive scheduler passes that ran a batch; "
                "a pass after an idle scheduler (no batch anywhere) starts a new count.",
                buckets=PASS_INTERVAL_BUCKETS,
            ),
        )

    def decision(self, decision: Decision) -> None:
        self.decisions.labels("fire" if decision.fire else "hold", decision.reason).inc()

    def hold_ended(self, passes: int, seconds: float) -> None:
        self.held_passes.observe(passes)
        self.held_seconds.observe(seconds)

    def gathered_rows(self, num_tokens: Sequence[int], extend: bool) -> None:
        """One forward pass: every DP rank's token rows."""
        kind = "extend" if extend else "decode"
        self.padding.labels(kind).observe(padding_ratio(num_tokens))
        real = sum(num_tokens)
        self.rows.labels(kind, "real").inc(real)
        self.rows.labels(kind, "padding").inc(max(num_tokens, default=0) * len(num_tokens) - real)

    def tbo_prefill(self, split: bool) -> None:
        self.tbo_prefills.labels("yes" if split else "no").inc()

    def pass_interval(self, seconds: float) -> None:
        self.pass_intervals.observe(seconds)
