"""Scheduler glue for coordinated DP prefill admission (SGLang 0.5.17 Scheduler internals).

Every scheduler pass SGLang calls `Scheduler.get_new_batch_prefill` exactly once on every rank
(from `get_next_batch_to_run`, ahead of the DP-attention MLP sync). The AROUND hook there packs
this rank's `RankState`, all-gathers it over the TP CPU group (the exchange SGLang's own
PrefillDelayer would use; `--enable-prefill-delayer` is refused alongside, so there is still one
admission collective per pass), runs the pure policy, and either calls SGLang's prefill path or
returns no prefill batch so the rank decodes.
"""

from __future__ import annotations

import time

import torch
from sglang.srt.managers.schedule_batch import NextBatchPlan

from ..admission.policy import EpisodeState, RankState, decide, padding_ratio
from ..config import AtomConfig
from ..metrics import AtomMetrics

# Pending tokens are capped so the int64 row never overflows and one huge prompt does not
# dominate the fill signal beyond what a few passes can prefill anyway.
PENDING_CAP_BUDGETS = 4


class AdmissionController:
    """One per scheduler process; all ranks of the TP group hold one each and stay in lockstep."""

    def __init__(self, scheduler, cfg: AtomConfig, tbo_enabled: bool, metrics: AtomMetrics | None):
        ps = scheduler.ps
        self.group = scheduler.tp_cpu_group
        self.params = cfg.policy_params(tbo_enabled)
        self.dp_size = ps.attn_dp_size
        self.ranks_per_dp = ps.tp_size // ps.attn_dp_size
        self.buffer = torch.empty((self.dp_size, self.ranks_per_dp, len(RankState.FIELDS)),
                                  dtype=torch.int64)
        self.state = EpisodeState()
        self.last_decision = None
        self.hold_started = 0.0
        self.metrics = metrics

    # ------------------------------------------------------------ per pass
    def local_state(self, scheduler, running_batch) -> RankState:
        budget = scheduler.chunked_prefill_size or scheduler.max_prefill_tokens
        now = time.perf_counter()
        pending, oldest = 0, 0.0
        for req in scheduler.waiting_queue:
            pending += len(req.origin_input_ids)
            entered = req.time_stats.wait_queue_entry_time
            if entered > 0:
                oldest = max(oldest, now - entered)
        chunked = scheduler.chunked_req
        if chunked is not None:
            pending += max(0, len(chunked.origin_input_ids) - len(chunked.prefix_indices))
        usage = scheduler.pool_stats_observer.get_pool_stats().get_max_pool_usage()
        return RankState(
            waiting_reqs=len(scheduler.waiting_queue),
            pending_tokens=min(pending, PENDING_CAP_BUDGETS * budget),
            running_reqs=len(running_batch.reqs),
            kv_usage_permille=int(usage * 1000),
            chunked=int(chunked is not None),
            oldest_wait_ms=int(oldest * 1000),
            prefill_budget=budget,
        )

    def gather(self, local: RankState) -> list[RankState]:
        row = torch.tensor(local.to_row(), dtype=torch.int64)
        started = time.perf_counter()
        torch.distributed.all_gather_into_tensor(self.buffer.view(-1), row, group=self.group)
        if self.metrics is not None:
            self.metrics.exchange(time.perf_counter() - started)
        # Ranks of one attention-TP group share one request queue: read its first rank.
        return [RankState.from_row(r) for r in self.buffer[:, 0, :].tolist()]

    def step(self, ranks: list[RankState]) -> bool:
        held_before = self.state.held_passes
        decision, self.state = decide(ranks, self.state, self.params)
        self.last_decision = decision
        now = time.perf_counter()
        if not decision.fire and held_before == 0:
            self.hold_started = now
        if self.metrics is not None:
            self.metrics.decision(decision)
            if decision.fire and held_before > 0:
                self.metrics.hold_ended(held_before, now - self.hold_started)
        return decision.fire


def around_get_new_batch_prefill(original, scheduler, running_batch, *args, **kwargs):
    controller: AdmissionController | None = getattr(scheduler, "_atom_admission", None)
    if controller is None:
        return original(scheduler, running_batch, *args, **kwargs)
    ranks = controller.gather(controller.local_state(scheduler, running_batch))
    if controller.step(ranks):
        return original(scheduler, running_batch, *args, **kwargs)
    return NextBatchPlan(batch_to_run=None, running_batch=running_batch)


def observe_gathered_rows(plan, scheduler, *args, **kwargs):
    """AFTER get_next_batch_to_run: the padding ratio of this pass's gathered MoE rows, and
    whether a prefill pass ran as two micro-batches."""
    metrics = getattr(scheduler, "_atom_metrics", None)
    batch = plan.batch_to_run
    if metrics is None or batch is None:
        return None
    tokens = getattr(batch, "global_num_tokens", None)
    if tokens:
        metrics.gathered_rows(padding_ratio(tokens))
    # is_extend_in_batch is the gathered "some rank prefills" bit, set on idle ranks too
    if scheduler.server_args.enable_two_batch_overlap and getattr(batch, "is_extend_in_batch", False):
        metrics.tbo_prefill(getattr(batch, "tbo_split_seq_index", None) is not None)
    return None


def attach(scheduler, cfg: AtomConfig, admission_on: bool, tbo_on: bool) -> None:
    """AFTER Scheduler.init_schedule_policy: give this scheduler its controller and metrics.

    Every rank decides the same thing, so only TP rank 0 records metrics (no double counting).
    """
    record = scheduler.server_args.enable_metrics and scheduler.ps.tp_rank == 0
    metrics = AtomMetrics.create() if record else None
    scheduler._atom_metrics = metrics
    scheduler._atom_admission = (
        AdmissionController(scheduler, cfg, tbo_on, metrics) if admission_on else None
    )
