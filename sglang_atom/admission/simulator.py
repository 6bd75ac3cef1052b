"""Simulate DP-attention ranks under InferenceX-style load, with and without prefill admission.

Pure Python; the admission policy is the production `decide`. Each pass, every rank either
prefills (up to its token budget, chunking the last request), decodes its running requests,
or idles; all ranks share one pass whose time comes from `StepModel`. SGLang runs prefill
first, so a prefilling rank's running requests do not decode in that pass, and the other
ranks' decodes wait for it: that is the cost admission tries to cut. With `frontend_ms`,
each request reaches the scheduler after its own random delay (exponential, that mean), a
stand-in for SGLang's front end: its tokenizer manager, one process at a full core, held
requests 150-300 ms on 1xH200 (benchmarks/results/2026-11-23-frontend-probe-1xh200). Fitted to
the GPU's TTFT, it reproduces how often a fill target holds, but it scatters arrivals more than
the GPU's front end does (benchmarks/results/NOTES-admission.md, twelfth session).

    python -m sglang_atom.admission.simulator --out DIR [--dp 4,8,16,32,64] [--graph-decode-speedup 2]

writes DIR/sim.json, DIR/sim.md (table) and DIR/sim.png (plot, when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
from dataclasses import dataclass, field

from .policy import (FIRE_NOTHING_PENDING, PENDING_CAP_BUDGETS, EpisodeState, PolicyParams, RankState,
                     decide, padding_ratio)


# --------------------------------------------------------------------------- step-time model
@dataclass(frozen=True)
class StepModel:
    """Pass time in ms: c0 + k * (attn_share * max_r tokens_r + moe_share * sum_r rows_r / dp).

    Attention and dense work run per rank on its own tokens (the slowest rank sets the pace);
    the experts, TP-sharded over dp ranks, run on every rank over all gathered rows. The shares
    are Qwen3-30B-A3B's parameter counts per token (attention projections ~19M, 8 active
    experts ~38M). `c0` and `k` are fitted to probes on 2xH200 (see `fit_step_model`).
    """

    c0_ms: float
    k_ms: float
    attn_share: float = 1 / 3
    moe_share: float = 2 / 3
    graph_decode_speedup: float = 1.0  # pure-decode passes with CUDA graphs (1.0: graphs off, as measured)
    # SGLang 0.5.17 with its breakable prefill CUDA graphs on (non-MLA models): an extend pass in
    # which no rank decodes gathers MAX_LEN, and TP-sharded experts compute the pad rows too,
    # dp x max rows (dp_attn.py:266-291, forward_batch_info.py:1270-1288; see NOTES-admission.md).
    max_len_aligned_prefill: bool = False

    def step_ms(self, tokens: list[int], any_extend: bool, any_decode: bool = True) -> float:
        dp = len(tokens)
        padded = self.max_len_aligned_prefill and any_extend and not any_decode
        rows = dp * max(tokens) if padded else sum(tokens)
        work = self.attn_share * max(tokens) + self.moe_share * rows / dp
        t = self.c0_ms + self.k_ms * work
        return t if any_extend else t / self.graph_decode_speedup


# Probes from `benchmarks/admission_ab.py --calibrate`, plain SGLang, tp2 dp2, tiny Qwen3-MoE,
# 2xH200, 2026-11-22 (benchmarks/results/2026-11-22-admission-dp2-first-look): decode ITL p50 at
# 1/16/64 requests per rank; one prefill per rank of 4096 tokens (one pass) and of 8192 tokens
# (two passes of the 4096-token per-rank chunk). The 1024-token probe paid kernel compiles and
# is left out.
CALIBRATION_DP2 = (
    ([1, 1], False, 10.95),
    ([16, 16], False, 16.02),
    ([64, 64], False, 15.78),
    ([4096, 4096], True, 46.39),
    ([4096, 4096], True, 55.4 / 2),
)


def fit_step_model(points=CALIBRATION_DP2) -> tuple[StepModel, float]:
    """Least-squares c0, k over the probes; returns the model and the RMS residual in ms."""
    base = StepModel(0.0, 1.0)
    xs = [base.step_ms(tokens, ext) for tokens, ext, _ in points]  # work units (c0=0, k=1)
    ys = [t for _, _, t in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    model = StepModel(my - k * mx, k)
    rms = (sum((model.step_ms(t, e) - y) ** 2 for t, e, y in points) / len(points)) ** 0.5
    return model, rms


# --------------------------------------------------------------------------- policies
class NoPolicy:
    name = "none"
    continues_chunks_when_held = False

    def fire(self, ranks: list[RankState]) -> bool:
        return True


class SGLangDelayer:
    """SGLang 0.5.17's PrefillDelayer, one bit per rank: delay while some ranks can prefill and
    others cannot, for at most `max_delay_passes`; a chunked continuation always proceeds.
    (Its slot/queue triggers for the all-prefillable case are off by default and not modelled.)"""

    name = "sglang_delayer"
    continues_chunks_when_held = True  # SGLang's add_chunked_req ignores the delayer's verdict

    def __init__(self, max_delay_passes: int = 30):
        self.max_delay_passes, self.delayed = max_delay_passes, 0

    def fire(self, ranks: list[RankState]) -> bool:
        prefillable = [r.has_prefill for r in ranks]
        if all(prefillable) or not any(prefillable) or self.delayed >= self.max_delay_passes - 1:
            self.delayed = 0
            return True
        self.delayed += 1
        return False


class AtomPolicy:
    name = "atom"
    continues_chunks_when_held = False  # the policy itself decides about chunks (chunked rule)

    def __init__(self, params: PolicyParams, state_lag_passes: int = 1):
        self.params, self.state, self.reasons = params, EpisodeState(), {}
        # 1 as in production: the states ride on SGLang's DP sync of the previous pass, taken
        # after that pass chose its batch (integration/admission.py); 0: fresh states each pass.
        self.state_lag_passes = state_lag_passes

    def fire(self, ranks: list[RankState]) -> bool:
        decision, self.state = decide(ranks, self.state, self.params)
        self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1
        # as in production: late arrivals join a fire that saw prefill work somewhere
        self.admits_late = decision.fire and decision.reason != FIRE_NOTHING_PENDING
        return decision.fire


# --------------------------------------------------------------------------- simulation
@dataclass
class Req:
    arrival_ms: float  # sent by the client: TTFT and E2E count from here
    input_len: int
    output_len: int
    queued_ms: float = 0.0  # reached the scheduler: the policy's age counts from here, as SGLang's
    prefilled: int = 0
    ttft_ms: float = 0.0
    e2e_ms: float = 0.0
    synced: bool = False  # seen by a DP sync: a lagged policy's decision covers it


@dataclass
class Rank:
    waiting: list = field(default_factory=list)
    chunked: Req | None = None
    running: list = field(default_factory=list)  # heap of (finish_at_decode_count, id, req)
    decodes: int = 0  # passes in which this rank decoded


@dataclass(frozen=True)
class Workload:
    name: str
    input_len: int
    output_len: int
    range_ratio: float = 0.8
    output_range_ratio: float | None = None  # None: the same as range_ratio

    def draw(self, rng: random.Random) -> tuple[int, int]:
        out_ratio = self.range_ratio if self.output_range_ratio is None else self.output_range_ratio
        return (rng.randint(max(1, int(self.input_len * self.range_ratio)), self.input_len),
                rng.randint(max(1, int(self.output_len * out_ratio)), self.output_len))


WORKLOADS = {
    "1k1k": Workload("1k1k", 1024, 1024),
    "8k1k": Workload("8k1k", 8192, 1024),
    # the GPU A/B's short mix (benchmarks/serving.py): 800-2400 in, 64 out
    "short": Workload("short", 2400, 64, range_ratio=1 / 3, output_range_ratio=1.0),
}


def rank_state(r: Rank, now: float, budget: int, kv_tokens: int, batch=None) -> RankState:
    """A rank's admission state; with `batch` (this pass's prefill, list of (req, tokens)), as
    it stands after the batch was chosen."""
    pending = sum(q.input_len for q in r.waiting)
    chunked = r.chunked is not None
    if r.chunked:
        pending += r.chunked.input_len - r.chunked.prefilled
    for q, take in batch or ():
        rest = q.input_len - q.prefilled - take
        if rest > 0:
            pending, chunked = pending + rest, True
    used = sum(q.input_len + q.output_len for _, _, q in r.running)
    return RankState(len(r.waiting), min(pending, PENDING_CAP_BUDGETS * budget), len(r.running),
                     min(1000, int(1000 * used / kv_tokens)), int(chunked),
                     int(now - r.waiting[0].queued_ms) if r.waiting else 0, budget)


def mark_synced(ranks: list[Rank]) -> None:
    """Every waiting request is now in the states a decision will see."""
    for r in ranks:
        for q in r.waiting:
            q.synced = True


def simulate(policy, dp: int, workload: Workload, model: StepModel, concurrency_per_rank: int = 32,
             requests_per_client: int = 3, budget: int = 8192, kv_tokens: int = 400_000,
             arrival: str = "closed", rate_per_rank_s: float = 0.0, seed: int = 0,
             frontend_ms: float = 0.0) -> dict:
    """Run until every client has sent its requests (closed loop) or as many Poisson arrivals.
    `frontend_ms`: the front end's mean delay per request (0: requests reach the scheduler
    when sent)."""
    rng = random.Random(seed)
    ranks = [Rank() for _ in range(dp)]
    clients = dp * concurrency_per_rank
    total = clients * requests_per_client
    now, sent, done, seq, rr = 0.0, 0, [], 0, 0
    poisson_next = 0.0
    in_frontend: list = []  # heap of (time it reaches the scheduler, id, rank, request)

    def send(t):
        nonlocal sent, rr
        n_in, n_out = workload.draw(rng)
        q, rank = Req(t, n_in, n_out, queued_ms=t), ranks[rr % dp]
        if frontend_ms > 0:
            q.queued_ms = t + rng.expovariate(1.0 / frontend_ms)
            heapq.heappush(in_frontend, (q.queued_ms, sent, rank, q))
        else:
            rank.waiting.append(q)
        rr += 1
        sent += 1

    if arrival == "closed":
        for _ in range(clients):
            send(0.0)
    passes = mixed = busy = idle_rank_steps = holds = 0
    pad = []
    synced: list[RankState] = []  # nothing gathered before the first pass
    lagged = getattr(policy, "state_lag_passes", 0) > 0
    while len(done) < total:
        if arrival == "poisson":
            while sent < total and poisson_next <= now:
                send(poisson_next)
                poisson_next += rng.expovariate(rate_per_rank_s * dp / 1000.0)
        while in_frontend and in_frontend[0][0] <= now:
            *_, rank, q = heapq.heappop(in_frontend)
            rank.waiting.append(q)
        states = [rank_state(r, now, budget, kv_tokens) for r in ranks]
        if not lagged:
            mark_synced(ranks)
        fire = policy.fire(synced if lagged else states)
        # A lagged decision on "nothing pending" admits nothing that arrived after the last
        # sync: it waits for the next pass's decision (waiting lists are in arrival order).
        late_ok = getattr(policy, "admits_late", True)
        holds += int(not fire and any(s.has_prefill for s in states))
        # Each rank: prefill (if allowed and it has work), else decode, else idle.
        tokens, extends = [], []
        for r in ranks:
            chunk_only = r.chunked is not None and policy.continues_chunks_when_held
            if (fire or chunk_only) and (r.waiting or r.chunked):
                left, batch = budget, []
                if r.chunked:
                    take = min(left, r.chunked.input_len - r.chunked.prefilled)
                    batch.append((r.chunked, take))
                    left -= take
                    r.chunked = None
                while (left > 0 and r.waiting and (r.waiting[0].synced or late_ok)
                       and not (chunk_only and not fire)):
                    q = r.waiting.pop(0)
                    take = min(left, q.input_len - q.prefilled)
                    batch.append((q, take))
                    left -= take
                if batch:
                    tokens.append(budget - left)
                    extends.append(batch)
                    continue
            tokens.append(len(r.running))  # decode (or idle)
            extends.append(None)
        # What the DP sync of this pass carries to the next decision: each rank after choosing
        # its batch (waiting requests left, the part of a chunked request still to come).
        synced = [rank_state(r, now, budget, kv_tokens, batch) for r, batch in zip(ranks, extends)]
        mark_synced(ranks)
        any_extend = any(e is not None for e in extends)
        any_decode = any(e is None and r.running for e, r in zip(extends, ranks))
        step = model.step_ms(tokens, any_extend, any_decode)
        if max(tokens) == 0 and not any_extend:
            # Nothing anywhere: jump to the next arrival instead of spinning.
            upcoming = [t for t in (poisson_next if arrival == "poisson" and sent < total else None,
                                    in_frontend[0][0] if in_frontend else None) if t is not None]
            now = max(now, min(upcoming)) if upcoming else now + step
            continue
        passes += 1
        now += step
        busy += 1
        mixed += int(any_extend and any_decode)
        idle_rank_steps += sum(1 for t in tokens if t == 0)
        pad.append(padding_ratio(tokens))
        for r, batch in zip(ranks, extends):
            if batch is None:
                if r.running:
                    r.decodes += 1
                    while r.running and r.running[0][0] <= r.decodes:
                        _, _, q = heapq.heappop(r.running)
                        q.e2e_ms = now - q.arrival_ms
                        done.append(q)
                        if arrival == "closed" and sent < total:
                            send(now)
                continue
            for q, take in batch:
                q.prefilled += take
                if q.prefilled < q.input_len:
                    r.chunked = q
                else:
                    q.ttft_ms = now - q.arrival_ms
                    seq += 1
                    # the first token comes with the prefill; output_len - 1 decode passes remain
                    heapq.heappush(r.running, (r.decodes + q.output_len - 1, seq, q))
    ttft = sorted(q.ttft_ms for q in done)
    tpot = [(q.e2e_ms - q.ttft_ms) / (q.output_len - 1) for q in done if q.output_len > 1]
    seconds = now / 1000.0
    return {
        "policy": policy.name, "dp": dp, "workload": workload.name, "arrival": arrival,
        "requests": len(done), "sim_seconds": round(seconds, 3),
        "input_tok_s_per_rank": round(sum(q.input_len for q in done) / seconds / dp, 1),
        "output_tok_s_per_rank": round(sum(q.output_len for q in done) / seconds / dp, 1),
        # mean as well: issue 3's TTFT bound and the GPU harness's tables use the mean
        "ttft_mean_ms": round(statistics.mean(ttft), 1),
        "ttft_p50_ms": round(ttft[len(ttft) // 2], 1), "ttft_p99_ms": round(ttft[int(0.99 * (len(ttft) - 1))], 1),
        # what holding trades TTFT for: decode passes that no rank's prefill interrupts
        "tpot_mean_ms": round(statistics.mean(tpot), 2) if tpot else 0.0,
        "padding_ratio_mean": round(statistics.mean(pad), 4) if pad else 0.0,
        "eager_pass_share": round(mixed / max(1, busy), 4),
        "dummy_rank_step_share": round(idle_rank_steps / max(1, busy * dp), 4),
        "held_passes": holds, "passes": passes,
        "reasons": dict(sorted(getattr(policy, "reasons", {}).items())),
    }


def policies(params: PolicyParams, state_lag_passes: int = 1):
    return [NoPolicy(), SGLangDelayer(), AtomPolicy(params, state_lag_passes)]


def run_matrix(dps, workloads, model, params: PolicyParams = PolicyParams(), state_lag_passes: int = 1,
               **kwargs) -> list[dict]:
    rows = []
    for wname in workloads:
        for dp in dps:
            for policy in policies(params, state_lag_passes):
                rows.append(simulate(policy, dp, WORKLOADS[wname], model, **kwargs))
    return rows


def markdown(rows: list[dict]) -> str:
    cols = ["workload", "dp", "policy", "input_tok_s_per_rank", "output_tok_s_per_rank", "ttft_mean_ms", "ttft_p50_ms",
            "ttft_p99_ms", "tpot_mean_ms", "padding_ratio_mean", "eager_pass_share", "dummy_rank_step_share", "held_passes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(len(workloads), 3, figsize=(15, 4 * len(workloads)), squeeze=False)
    for i, w in enumerate(workloads):
        for j, (metric, label) in enumerate((("output_tok_s_per_rank", "output tok/s per rank"),
                                             ("ttft_p99_ms", "TTFT p99 (ms)"),
                                             ("padding_ratio_mean", "padding ratio (mean)"))):
            ax = axes[i][j]
            for name in ("none", "sglang_delayer", "atom"):
                pts = sorted((r["dp"], r[metric]) for r in rows if r["workload"] == w and r["policy"] == name)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("DP ranks")
            ax.set_title(f"{w}: {label}")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dp", default="4,8,16,32,64")
    ap.add_argument("--workloads", default="1k1k,8k1k")
    ap.add_argument("--arrival", choices=("closed", "poisson"), default="closed")
    ap.add_argument("--concurrency-per-rank", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=3)
    ap.add_argument("--rate-per-rank", type=float, default=1.0, help="Poisson requests/s per rank")
    ap.add_argument("--graph-decode-speedup", type=float, default=1.0,
                    help="pure-decode pass speedup from CUDA graphs (1.0: graphs off, as measured)")
    ap.add_argument("--max-len-aligned-prefill", action="store_true",
                    help="extend passes without a decoding rank compute the experts on dp x max "
                         "rows, as SGLang 0.5.17 does with its prefill CUDA graphs on")
    ap.add_argument("--target-fill", type=float, default=PolicyParams.target_fill)
    ap.add_argument("--stall-passes", type=int, default=PolicyParams.stall_passes)
    ap.add_argument("--max-hold-passes", type=int, default=PolicyParams.max_hold_passes)
    ap.add_argument("--chunked-max-hold-passes", type=int, default=PolicyParams.chunked_max_hold_passes)
    ap.add_argument("--frontend-ms", type=float, default=0.0,
                    help="mean delay per request (exponential) in the front end between clients and "
                         "the scheduler (0: none; see benchmarks/results/NOTES-admission.md)")
    ap.add_argument("--budget", type=int, default=8192,
                    help="prefill token budget per rank and pass (SGLang's per-rank chunked prefill size)")
    ap.add_argument("--state-lag-passes", type=int, choices=(0, 1), default=1,
                    help="1: the policy sees the states of the previous pass's DP sync, as in "
                         "production; 0: fresh states each pass (the version before 2026-11-22's third session)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    fitted, rms = fit_step_model()
    model = StepModel(fitted.c0_ms, fitted.k_ms, graph_decode_speedup=args.graph_decode_speedup,
                      max_len_aligned_prefill=args.max_len_aligned_prefill)
    params = PolicyParams(target_fill=args.target_fill, stall_passes=args.stall_passes,
                          max_hold_passes=args.max_hold_passes,
                          chunked_max_hold_passes=args.chunked_max_hold_passes)
    rows = run_matrix([int(d) for d in args.dp.split(",")], args.workloads.split(","), model, params,
                      state_lag_passes=args.state_lag_passes, concurrency_per_rank=args.concurrency_per_rank,
                      requests_per_client=args.requests_per_client, arrival=args.arrival,
                      rate_per_rank_s=args.rate_per_rank, budget=args.budget, frontend_ms=args.frontend_ms)
    meta = {"step_model": model.__dict__, "fit_rms_ms": round(rms, 2), "args": vars(args)}
    with open(os.path.join(args.out, "sim.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    table = markdown(rows)
    with open(os.path.join(args.out, "sim.md"), "w") as f:
        f.write(f"Step model: {meta['step_model']} (fit RMS {meta['fit_rms_ms']} ms); {vars(args)}\n\n{table}")
    plotted = plot(rows, os.path.join(args.out, "sim.png"))
    print(table)
    print("plot:", os.path.join(args.out, "sim.png") if plotted else "skipped (no matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
