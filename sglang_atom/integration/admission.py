"""Scheduler glue for coordinated DP prefill admission (SGLang 0.5.17 Scheduler internals).

No collective of its own: the ranks' states ride on the sync SGLang already runs once per
scheduler pass under DP attention (`prepare_mlp_sync_batch_raw` -> `MLPSyncBatchInfo.all_gather`,
after the pass's batch is chosen). The hooks append this rank's `RankState` to the row that sync
gathers and read every DP rank's state back out of the gathered table. The next pass's
`Scheduler.get_new_batch_prefill` (AROUND) runs the pure policy on those numbers, the same on
every rank, and either calls SGLang's prefill path or returns no prefill batch so the rank decodes.

The state is as of the previous pass's sync, after that pass chose its batch. A fire on
"nothing pending" (no rank had prefill work at that sync) admits nothing that arrived since:
those requests wait one pass for a decision that has seen them. Without that rule the stale
"nothing pending" would fire every time and let new arrivals through unaligned; in the
simulator that erased the policy's whole effect. Every other fire saw prefill work and fires it
on all ranks together, so requests that arrived since join that pass instead of starting a
misaligned one (simulated: +2% throughput and a third less padding at c64, 2-4 ms lower TTFT
under Poisson load; benchmarks/results/NOTES-admission.md).
"""

from __future__ import annotations

import time

import torch

from ..admission.policy import FIRE_NOTHING_PENDING, PENDING_CAP_BUDGETS, EpisodeState, RankState, decide
from ..config import AtomConfig
from ..metrics import AtomMetrics

WIDTH = len(RankState.FIELDS)

# The controller of this scheduler process (SGLang runs one scheduler per process); the sync
# hooks have no scheduler argument to find it by.
_controller: "AdmissionController | None" = None


class AdmissionController:
    """One per scheduler process; all ranks of the TP group hold one each and stay in lockstep."""

    def __init__(self, scheduler, cfg: AtomConfig, tbo_enabled: bool, metrics: AtomMetrics | None,
                 tbo_min_tokens: int):
        self.scheduler = scheduler
        self.params = cfg.policy_params(tbo_enabled, tbo_min_tokens)
        self.running_batch = None  # as left by this rank's last prefill decision
        self.gathered: list[RankState] = []  # every DP rank's state, from the last sync
        self.reported: set = set()  # rids of this rank's waiting requests at the last sync
        self.state = EpisodeState()
        self.last_decision = None
        self.hold_started = 0.0
        self.metrics = metrics

    # ------------------------------------------------------------ the sync
    def local_state(self) -> RankState:
        scheduler, running = self.scheduler, self.running_batch
        budget = scheduler.chunked_prefill_size or scheduler.max_prefill_tokens
        now = time.perf_counter()
        pending, oldest = 0, 0.0
        self.reported = {req.rid for req in scheduler.waiting_queue}
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
            running_reqs=len(running.reqs) if running is not None else 0,
            kv_usage_permille=int(usage * 1000),
            chunked=int(chunked is not None),
            oldest_wait_ms=int(oldest * 1000),
            prefill_budget=budget,
        )

    def receive(self, rows) -> None:
        """The admission columns of SGLang's gathered table, one row per DP rank."""
        self.gathered = [RankState.from_row(r) for r in rows]

    # ------------------------------------------------------------ the decision
    def step(self) -> bool:
        held_before = self.state.held_passes
        # Before the first sync there is nothing gathered: no rank is known to have prefill
        # work, and the policy fires (`nothing_pending`), as plain SGLang would.
        decision, self.state = decide(self.gathered, self.state, self.params)
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
    if controller.step():
        if controller.last_decision.reason == FIRE_NOTHING_PENDING:
            plan = _prefill_reported(controller, original, scheduler, running_batch, *args, **kwargs)
        else:
            plan = original(scheduler, running_batch, *args, **kwargs)
    else:
        from sglang.srt.managers.schedule_batch import NextBatchPlan  # checked in symbols

        plan = NextBatchPlan(batch_to_run=None, running_batch=running_batch)
    controller.running_batch = plan.running_batch
    return plan


def _prefill_reported(controller, original, scheduler, running_batch, *args, **kwargs):
    """SGLang's prefill path over the waiting requests this rank reported at the last sync; the
    ones that arrived since go back to the queue, in order, for the next decision. (SGLang's path
    still runs for its bookkeeping, e.g. moving requests whose grammar is ready into the queue.)"""
    later = [req for req in scheduler.waiting_queue if req.rid not in controller.reported]
    if not later:
        return original(scheduler, running_batch, *args, **kwargs)
    scheduler.waiting_queue = [req for req in scheduler.waiting_queue if req.rid in controller.reported]
    try:
        return original(scheduler, running_batch, *args, **kwargs)
    finally:
        scheduler.waiting_queue.extend(later)


def around_local_tensor(original, info, device, dtype=torch.int64):
    """AROUND MLPSyncBatchInfo._get_local_tensor: this rank's row, plus its admission state."""
    row = original(info, device, dtype)
    if _controller is None:
        return row
    extra = torch.tensor(_controller.local_state().to_row(), device=row.device, dtype=row.dtype)
    return torch.cat([row, extra])


def around_fallback_tensor(original, info, device, dtype=torch.int64):
    """AROUND MLPSyncBatchInfo._get_fallback_tensor: the row of an inactive slot; its admission
    state is all zeros (nothing waiting, nothing running), so it never holds prefill."""
    row = original(info, device, dtype)
    if _controller is None:
        return row
    return torch.cat([row, torch.zeros(WIDTH, device=row.device, dtype=row.dtype)])


def after_all_gather(result, info, *args, **kwargs):
    """AFTER MLPSyncBatchInfo.all_gather: every DP rank's admission state, from its first
    attention-TP rank (ranks of one DP group share one request queue)."""
    if _controller is not None:
        _controller.receive(info.tp0_info[:, -WIDTH:].tolist())
    return None


def observe_gathered_rows(plan, scheduler, *args, **kwargs):
    """AFTER get_next_batch_to_run: the padding ratio of this pass's gathered MoE rows, whether a
    prefill pass ran as two micro-batches, and the interval since the previous pass."""
    metrics = getattr(scheduler, "_atom_metrics", None)
    batch = plan.batch_to_run
    if metrics is None:
        return None
    now, last = time.monotonic(), scheduler._atom_last_pass_at
    scheduler._atom_last_pass_at = None if batch is None else now
    if batch is None:
        return None
    if last is not None:
        metrics.pass_interval(now - last)
    # is_extend_in_batch is the gathered "some rank prefills" bit, set on idle ranks too
    extend = bool(getattr(batch, "is_extend_in_batch", False))
    tokens = getattr(batch, "global_num_tokens", None)
    if tokens:
        metrics.gathered_rows(tokens, extend)
    if scheduler.server_args.enable_two_batch_overlap and extend:
        metrics.tbo_prefill(getattr(batch, "tbo_split_seq_index", None) is not None)
    return None


def attach(scheduler, cfg: AtomConfig, admission_on: bool, tbo_on: bool, tbo_min_tokens: int) -> None:
    """AFTER Scheduler.init_schedule_policy: give this scheduler its controller and metrics.

    Every rank decides the same thing, so only TP rank 0 records metrics (no double counting).
    `tbo_min_tokens`: --atom-tbo-min-tokens resolved for the served model.
    """
    global _controller
    record = scheduler.server_args.enable_metrics and scheduler.ps.tp_rank == 0
    metrics = AtomMetrics.create() if record else None
    scheduler._atom_metrics = metrics
    scheduler._atom_last_pass_at = None  # monotonic start of the last pass that ran a batch
    _controller = (AdmissionController(scheduler, cfg, tbo_on, metrics, tbo_min_tokens)
                   if admission_on else None)
    scheduler._atom_admission = _controller
