"""Serving A/B matrix: server configs x workloads x concurrency sweep, on servers it starts.

    python3 benchmarks/admission_ab.py --scenario admission-dp4 --out DIR
    python3 benchmarks/admission_ab.py --out DIR --tp 4 --dp 4 \
        --configs plain,delayer,atom --workloads short,8k1k --concurrency 64,128,256 --repeats 2

A named --scenario fills the matrix (SCENARIOS below); explicit flags override it. Configs:
plain SGLang, SGLang's PrefillDelayer, `--backend atom` variants, and DeepEP EP mode with TBO.

For each server config it starts the server, warms it up with one short wave per cell and then
--warmup-repeats full repeats of every cell (left out of the results; the repeats are kept in
ab.json as warm-up), runs every workload x concurrency x repeat with the same client and
requests, scrapes sglang-atom's metrics around each run, and stops the server. `--calibrate`
adds step-time probes (prefill TTFT by size, decode ITL by batch) on the first config, for the
simulator's step-time model.
Writes DIR/ab.json (command, machine, date, every run), one server log per config, and the
report (DIR/report/summary.md and plots). A config whose server does not start or dies during
its runs is recorded with the end of its log (its finished rows kept) and the matrix goes on.
Stops starting new work once --deadline-s has passed so the run ends inside the device's limit.
The client is a closed loop (--concurrency clients, each sending its next request when the last
finishes); --request-rate R makes it an open loop of Poisson arrivals at R requests/s with at
most --concurrency in flight, where TTFT is not tied to throughput by Little's law.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_smoke import BASE_FLAGS  # noqa: E402
import report  # noqa: E402
from serving import (  # noqa: E402
    MOE_CONFIGS_HELP, SERVER_PORT_STRIDE, WORKLOADS, Server, Workload, load, model_config, moe_configs_env,
    provenance, record_json, scrape, shared_mem_fractions, summarize)

CONFIGS = {
    "plain": [],
    "delayer": ["--enable-prefill-delayer"],
    # plain SGLang at --backend atom's per-rank prefill budget (8192 tokens, SGLang's default
    # --chunked-prefill-size undivided), at DP2 and DP4: SGLang divides the flag by dp, atom does
    # not. They separate what the budget gives any config from what admission gives.
    "plain_chunk16k": ["--chunked-prefill-size", "16384"],
    "plain_chunk32k": ["--chunked-prefill-size", "32768"],
    "atom": ["--backend", "atom"],
    # the two atom configs measured at DP2 on 2026-11-23 (8192 tokens per rank, when SGLang still
    # divided the flag under atom and the fill default was 0.7), spelled so they rerun as measured
    "atom_chunk16k": ["--backend", "atom", "--chunked-prefill-size", "16384",
                      "--atom-prefill-tokens-per-rank", "8192", "--atom-admission-target-fill", "0.7"],
    # alignment holds only, in effect, as the default 0 now is on prompts of 800+ tokens
    "atom_chunk16k_fill001": ["--backend", "atom", "--chunked-prefill-size", "16384",
                              "--atom-prefill-tokens-per-rank", "8192",
                              "--atom-admission-target-fill", "0.01"],
    "atom_fill02": ["--backend", "atom", "--atom-admission-target-fill", "0.2"],
    # the chunked-hold limit spelled out: 2 is the default since 2026-11-22's 4xH200 run, 0 the
    # default before it (a chunk in progress fires prefill on every rank)
    "atom_chunk2": ["--backend", "atom", "--atom-admission-chunked-max-hold-passes", "2"],
    "atom_chunk0": ["--backend", "atom", "--atom-admission-chunked-max-hold-passes", "0"],
    # admission plus two-batch overlap of prefill over all_gather/reduce_scatter
    "atom_tbo": ["--backend", "atom", "--enable-two-batch-overlap"],
    # admission with every SUM_LEN pass's rows moved by all_gatherv + reduce_scatterv
    # (--atom-dp-gatherv; off by default until measured, NOTES-tbo.md, twenty-second session)
    "atom_gatherv": ["--backend", "atom", "--atom-dp-gatherv", "1"],
    # sglang-atom's observer without admission (at atom's per-rank budget): the padding baseline
    "observe": ["--backend", "atom", "--atom-admission", "off"],
    # DeepEP expert parallelism with SGLang's own two-batch overlap. SGLang 0.5.17 runs unquantized
    # (bf16) experts behind DeepEP only through DeepGEMM's runner (ep_moe/layer.py), in either mode.
    "deepep_tbo": ["--moe-a2a-backend", "deepep", "--moe-runner-backend", "deep_gemm",
                   "--enable-two-batch-overlap"],
    # the same with DeepEP built without NVSHMEM (intranode normal kernels only); SGLang then
    # turns CUDA graphs off, since normal mode cannot be captured
    "deepep_tbo_normal": ["--moe-a2a-backend", "deepep", "--deepep-mode", "normal",
                          "--moe-runner-backend", "deep_gemm", "--enable-two-batch-overlap"],
    # DeepEP EP mode without TBO: what SGLang 0.5.17 can serve for Qwen3-MoE (see known_broken)
    "deepep_normal": ["--moe-a2a-backend", "deepep", "--deepep-mode", "normal",
                      "--moe-runner-backend", "deep_gemm"],
}

def uses_deepep(config: str) -> bool:
    return "deepep" in CONFIGS[config]


# Python packages a DeepEP config's server needs beyond SGLang: checked before starting it.
DEEPEP_PACKAGES = ("deep_ep", "deep_gemm")

# Why SGLang 0.5.17 itself cannot serve DeepEP with its TBO for Qwen3-MoE (such a config is
# recorded with this, not started).
QWEN3_DEEPEP_TBO_BROKEN = (
    "SGLang 0.5.17's Qwen3-MoE TBO layer ops (qwen3_moe.py op_gate) route no tokens on a padded "
    "IDLE batch while DeepEP dispatches its padded rows, so a rank that idles during decode "
    "crashes (DeepEP: 'is_token_in_rank.size(0) == x.size(0)', seen on 2xH200, 2026-11-22); "
    "DeepSeek's op_gate got the fix upstream (sgl-project/sglang#27510). Use deepep_normal.")


def known_broken(config: str, model_dir: str) -> str | None:
    if (uses_deepep(config) and "--enable-two-batch-overlap" in CONFIGS[config]
            and "Qwen3MoeForCausalLM" in model_config(model_dir)["architectures"]):
        return QWEN3_DEEPEP_TBO_BROKEN
    return None


def server_labels(configs: list[str]) -> list[str]:
    """One label per server: a config listed again (e.g. plain first and last, to see drift
    over the matrix) gets `name_2`, `name_3`; its rows keep the config name for the report."""
    seen: dict[str, int] = {}
    labels = []
    for name in configs:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return labels


def missing_packages(config: str) -> list[str]:
    needed = DEEPEP_PACKAGES if uses_deepep(config) else ()
    return [m for m in needed if importlib.util.find_spec(m) is None]


# The DeepSeek-V3-width scenarios run the kernel configs tuned for its bf16 experts
# (benchmarks/moe_configs): SGLang 0.5.17 has none for them, while the real model (FP8) has its own.
SCENARIOS = {
    # Interleaved: sequential servers confounded config with order and session (see run_interleaved)
    "admission-dp4": dict(model="models/qwen3-moe-tiny", tp=4, dp=4, workloads="short,8k1k",
                          configs="plain,plain_chunk32k,atom,delayer", concurrency="64,128,256",
                          repeats=3, cuda_graph=True, interleave=True, shared_mem_fraction=0.2),
    # Triton MLA at 128 heads keeps a float32 split-KV buffer per decode batch: graphs up to bs 512
    # asked for 32 GiB and eager passes for 2-4 GiB beyond a default-sized pool (4xH200,
    # 2026-11-22); c256 at DP4 is 64 requests per rank. Three servers of 0.2 leave each ~15 GB
    # for those buffers and activations, so the delayer (0.95-0.96x plain at c64/c128 there on
    # 2026-11-22) gives its place to plain at atom's budget; `--configs delayer` runs it alone.
    "admission-dp4-dsv3": dict(model="models/deepseek-v3-width", tp=4, dp=4, workloads="short,8k1k",
                               configs="plain,plain_chunk32k,atom", concurrency="64,128,256", repeats=2,
                               cuda_graph=True, interleave=True, shared_mem_fraction=0.2,
                               extra="--cuda-graph-max-bs 128", moe_configs="shipped"),
    "inferencex-dp4": dict(model="models/qwen3-moe-tiny", tp=4, dp=4, workloads="1k1k,8k1k",
                           configs="plain,delayer,atom,atom_tbo,deepep_normal",
                           concurrency="64,128,256,512", repeats=2, cuda_graph=True),
    # DeepEP with SGLang's own TBO runs for DeepSeek architectures only (known_broken)
    # (flashinfer: --backend atom refuses DeepSeek TBO on triton, whose MLA ignores the MHA switch)
    "inferencex-dp4-dsv3": dict(model="models/deepseek-v3-width", tp=4, dp=4, workloads="1k1k,8k1k",
                                configs="plain,atom,atom_tbo,deepep_tbo_normal",
                                concurrency="64,128,256", repeats=2, cuda_graph=True,
                                extra="--attention-backend flashinfer", moe_configs="shipped"),
    "inferencex-dp8": dict(model="models/qwen3-moe-tiny", tp=8, dp=8, workloads="1k1k,8k1k",
                           configs="plain,delayer,atom,atom_tbo", concurrency="64,128,256,512", repeats=2,
                           cuda_graph=True),
}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def series_delta(before: dict, after: dict, prefix: str, label: str = "") -> float:
    """How much the series whose names start with `prefix` and whose labels contain `label`
    grew, summed, between two scrapes."""
    def total(d):
        return sum(v for k, v in d.items() if k.startswith(prefix) and label in k)
    return total(after) - total(before)


def histogram_mean(before: dict, after: dict, name: str, label: str = "") -> float | None:
    """Mean of a histogram's observations between two scrapes, over all its label sets or only
    those whose labels contain `label` (e.g. 'pass="decode"')."""
    n = series_delta(before, after, name + "_count", label)
    return round(series_delta(before, after, name + "_sum", label) / n, 6) if n > 0 else None


def histogram_above(before: dict, after: dict, name: str, le: str) -> int | None:
    """Observations of a histogram between two scrapes that were larger than its bucket `le`
    (as Prometheus prints it, e.g. '0.1'); None when it has none (or no such histogram)."""
    n = series_delta(before, after, name + "_count")
    return round(n - series_delta(before, after, name + "_bucket", f'le="{le}"')) if n > 0 else None


PADDING = "sglang:atom_gathered_rows_padding_ratio"
PASS_INTERVAL = "sglang:atom_pass_interval_seconds"
STALL_SECONDS = "0.1"  # a bucket bound of PASS_INTERVAL: a pass interval above it is a stall


def counter_delta(before: dict, after: dict, name: str, by: tuple[str, ...] = ("decision", "reason")) -> dict:
    """How much counter `name` grew between two scrapes, summed per value of its labels `by`
    (joined with ':'), over every other label; only the ones that grew."""
    out = {}
    for key, value in after.items():
        if key.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
            group = ":".join(str(labels.get(b)) for b in by)
            out[group] = out.get(group, 0.0) + value - before.get(key, 0.0)
    return {k: round(v, 6) for k, v in out.items() if v}


# SGLang's own per-pass GPU time (CUDA events around each forward, by category: decode, extend,
# idle) and its pass counts (decode/prefill, with or without a CUDA graph). The simulator's step
# model needs what a pass costs in served traffic; probes alone did not tell (NOTES-admission).
FORWARD_SECONDS = "sglang:forward_execution_seconds_total"
FORWARD_PASSES = "sglang:cuda_graph_passes_total"
# tokens by mode (prefill_compute, decode, ...) and by how many DP ranks prefilled in that pass:
# how aligned prefill was, for plain SGLang too (sglang-atom's own metrics exist only with atom)
COOPERATION_TOKENS = "sglang:dp_cooperation_realtime_tokens_total"
SERVER_ENV = {"SGLANG_ENABLE_METRICS_DEVICE_TIMER": "1"}


def calibrate(url: str, dp: int) -> dict:
    """Step-time probes: prefill TTFT with one request of N tokens per rank; decode ITL at B per rank."""
    probes = {"prefill_ttft_ms": {}, "decode_itl_ms": {}}
    for n in (1024, 1024, 4096, 8192):  # the first probe pays one-time kernel compiles
        reqs = Workload("p", n, 1, 1.0, 1.0).requests(dp, seed=n)
        records, _ = load(url, reqs, dp)
        probes["prefill_ttft_ms"][n] = round(1000 * sum(r.ttft for r in records) / len(records), 2)
    for b in (1, 16, 64):
        reqs = Workload("d", 16, 96, 1.0, 1.0).requests(b * dp, seed=b)
        records, secs = load(url, reqs, b * dp)
        probes["decode_itl_ms"][b] = summarize(records, secs, dp, b * dp)["p50_itl_ms"]
    return probes


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), help="a named matrix (flags override)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="models/qwen3-moe-tiny")
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--dp", type=int, default=4)
    ap.add_argument("--configs", default="plain,delayer,atom")
    ap.add_argument("--workloads", default="short")
    ap.add_argument("--concurrency", default="64,128,256")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup-repeats", type=int, default=1,
                    help="full repeats of every cell run first on every server (rotated like the "
                         "timed ones), recorded in ab.json as warm-up and left out of the results: "
                         "on 2xH200 a fresh server's first minute of load ran up to 1.6x slower "
                         "than later repeats, far beyond the short warm-up wave")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--min-requests", type=int, default=256)
    ap.add_argument("--request-rate", type=float, default=None,
                    help="open loop: Poisson arrivals at this many requests/s per server, at most "
                         "--concurrency in flight (default: closed loop, --concurrency clients)")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--extra", default="", help="extra server flags for every config")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="keep SGLang's CUDA graphs on (the default flags turn them off)")
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=False,
                    help="start every config's server at once on the same GPUs and run each cell on "
                         "all of them in rotated order, so config and time are not confounded "
                         "(--no-interleave: one server after another)")
    ap.add_argument("--moe-configs", default="sglang", help=MOE_CONFIGS_HELP)
    ap.add_argument("--shared-mem-fraction", type=float, default=0.25,
                    help="with --interleave: the share of GPU memory each server holds (weights + "
                         "KV pool); --mem-fraction-static in --extra is refused with it")
    scenario = ap.parse_known_args(argv)[0].scenario
    if scenario:
        ap.set_defaults(**SCENARIOS[scenario])
    return ap.parse_args(argv)


def log_tail(path: str, chars: int = 3000) -> str:
    """The end of a server's log; a server refused before it started (its port taken) has none."""
    if not os.path.exists(path):
        return "(no server log: the server was not started)"
    with open(path) as f:
        return f.read()[-chars:]


# What a server that does not start, or dies mid-matrix, raises here (seen on 2xH200: DeepEP
# with TBO crashed on a padded idle batch and the next /metrics scrape was refused).
SERVER_FAILURES = (OSError, http.client.HTTPException, RuntimeError, TimeoutError)


def rotation(items: list, k: int) -> list:
    """`items` starting at position k (mod len): the server order of an interleaved A/B's k-th cell."""
    k %= len(items)
    return items[k:] + items[:k]


def cells(args) -> list[tuple[str, int, int]]:
    """(workload, concurrency, repeat) in the order they run; warm-up repeats are -1, -2, ..."""
    return [(w, int(c), rep) for w in args.workloads.split(",") for c in args.concurrency.split(",")
            for rep in range(-args.warmup_repeats, args.repeats)]


def base_flags(args) -> list[str]:
    """The server flags every config of a run shares; each config adds CONFIGS[name]."""
    return ["--model-path", args.model, "--tp", str(args.tp), "--dp", str(args.dp),
            "--enable-dp-attention", "--enable-metrics",
            *[f for f in BASE_FLAGS if not (args.cuda_graph and f == "--disable-cuda-graph")],
            *args.extra.split()]


def start(args, name: str, label: str, base: list[str], stack: contextlib.ExitStack,
          port: int = 30000, mem_fraction: float | None = None) -> tuple[Server, float]:
    """Start one config's server (stopped when `stack` closes), warm it up; return it and its
    start-up seconds."""
    flags = base + CONFIGS[name] + (["--mem-fraction-static", str(mem_fraction)] if mem_fraction else [])
    server = stack.enter_context(Server(flags, os.path.join(args.out, f"server_{label}.log"), port=port,
                                        env=args.server_env))
    startup = server.wait_ready()
    # Warm-up: one wave per workload and concurrency, so the batch shapes the runs hit are
    # compiled before timing (Triton kernels compile per shape bucket; a warm-up at the top
    # concurrency alone left multi-second stalls in the lower ones).
    warm_s = 0.0
    for wname in args.workloads.split(","):
        for conc in (int(c) for c in args.concurrency.split(",")):
            _, secs = load(server.url, warmup_requests(WORKLOADS[wname], conc), conc)
            warm_s += secs
    print(f"   {label} ready {startup:.0f} s, warm-up {warm_s:.0f} s", flush=True)
    return server, startup


# Enough decode steps to run every decode batch size a wave reaches (all its requests decode
# together once prefilled); the full 1024 of 8k/1k would make warm-up cost as much as a cell.
WARMUP_MAX_OUTPUT = 32


def warmup_requests(workload: Workload, conc: int) -> list[tuple[list[int], int]]:
    """One wave of `conc` requests with the workload's prompt lengths and at most
    WARMUP_MAX_OUTPUT output tokens each (ids other than any timed repeat's)."""
    return [(ids, min(n_out, WARMUP_MAX_OUTPUT)) for ids, n_out in workload.requests(conc, seed=99 + conc)]


ROWS = "sglang:atom_gathered_rows_total"


def padding_row_share(before: dict, after: dict, pass_kind: str = "") -> float | None:
    """Share of the gathered rows between two scrapes that were padding, over all passes or one
    kind ('extend', 'decode'): the issue's "padding of gathered rows", where the histogram's
    mean weighs a pass of three rows as much as a full one."""
    def delta(rows: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items()
                   if k.startswith(ROWS + "{") and f'rows="{rows}"' in k and f'pass="{pass_kind}' in k)
    padding, real = delta("padding"), delta("real")
    return round(padding / (padding + real), 6) if padding + real > 0 else None


def run_cell(args, server: Server, name: str, label: str, startup: float, cell: tuple[str, int, int],
             result: dict, slot: int | None = None) -> None:
    """One timed run of one server, recorded as a row of ab.json."""
    wname, conc, rep = cell
    n = max(args.min_requests, args.requests_per_client * conc)
    # Fresh requests per repeat (a repeat of the same token ids would hit the radix cache and
    # skip most of its prefill), the same for every config.
    reqs = WORKLOADS[wname].requests(n, seed=1000 * conc + rep)
    before = scrape(server.get("/metrics"), "sglang:")
    records, secs = load(server.url, reqs, conc, request_rate=args.request_rate, seed=1000 * conc + rep)
    after = scrape(server.get("/metrics"), "sglang:")
    row = {"config": name, "server": label, "workload": wname, "concurrency": conc, "repeat": rep,
           "requests": n, "startup_s": round(startup, 1),
           "request_rate": args.request_rate,  # None: closed loop
           **summarize(records, secs, args.tp, conc, closed_loop=args.request_rate is None),
           "padding_ratio_mean": histogram_mean(before, after, PADDING),
           # where the padding is: passes where some rank prefills, or none
           "padding_ratio_mean_extend": histogram_mean(before, after, PADDING, 'pass="extend"'),
           "padding_ratio_mean_decode": histogram_mean(before, after, PADDING, 'pass="decode"'),
           "padding_row_share": padding_row_share(before, after),
           "padding_row_share_extend": padding_row_share(before, after, "extend"),
           "padding_row_share_decode": padding_row_share(before, after, "decode"),
           "decisions": counter_delta(before, after, "sglang:atom_admission_decisions_total"),
           # scheduler cadence (atom configs only): mean interval between passes, and stalls
           "pass_interval_mean_ms": _ms(histogram_mean(before, after, PASS_INTERVAL)),
           "stalled_passes": histogram_above(before, after, PASS_INTERVAL, STALL_SECONDS),
           # per DP rank ("dp_rank:category", "dp_rank:mode"), every config
           "gpu_forward_s": counter_delta(before, after, FORWARD_SECONDS, ("dp_rank", "category")),
           "forward_passes": counter_delta(before, after, FORWARD_PASSES, ("dp_rank", "mode")),
           "tokens_by_prefill_ranks": counter_delta(before, after, COOPERATION_TOKENS,
                                                    ("dp_rank", "mode", "num_prefill_ranks"))}
    if slot is not None:
        row["slot"] = slot  # its place in the cell's server order (interleaved A/B)
    if rep < 0:
        row["warmup"] = True  # kept to show drift; report.py leaves it out of the results
    result["runs"].append(row)
    record_json(os.path.join(args.out, "ab.json"), result)
    print(f"   {label} {wname} c{conc} {report.repeat_label(rep)}: in {row['input_tok_s']:.0f} tok/s "
          f"(steady {row['steady_input_tok_s']:.0f}), out {row['output_tok_s']:.0f} tok/s, "
          f"TTFT {row['mean_ttft_ms']:.0f} ms, pad rows {row['padding_row_share']}, "
          f"passes > {STALL_SECONDS} s apart {row['stalled_passes']}, {secs:.1f} s",
          flush=True)


def record_failure(args, result: dict, label: str, exc: BaseException) -> None:
    """Keep a failed server's reason and the end of its log; the matrix goes on."""
    tail = log_tail(os.path.join(args.out, f"server_{label}.log"))
    result.setdefault("failed_configs", {})[label] = f"{type(exc).__name__}: {exc}\n{tail}"
    record_json(os.path.join(args.out, "ab.json"), result)
    print(f"   {label} failed: {type(exc).__name__}: {exc}", flush=True)


def past_deadline(args, t0: float, result: dict, what: str) -> bool:
    """Whether --deadline-s has passed; if so `what` (a server, or server/cell) is recorded as
    skipped."""
    if time.time() - t0 <= args.deadline_s:
        return False
    result["skipped"].append(what)
    return True


def cell_name(label: str, cell: tuple[str, int, int]) -> str:
    return f"{label}/{cell[0]}/c{cell[1]}/{report.repeat_label(cell[2])}"


def maybe_calibrate(args, server: Server, name: str, result: dict) -> None:
    if args.calibrate and "calibration" not in result:
        result["calibration"] = {"config": name, **calibrate(server.url, args.dp)}
        print(f"   calibration {result['calibration']}", flush=True)


def run_sequential(args, servers: list[tuple[str, str]], base: list[str], t0: float,
                   result: dict) -> None:
    """One server at a time: start, warm up, every cell, stop."""
    for name, label in servers:
        if past_deadline(args, t0, result, label):
            continue
        print(f"== {label}: starting ({time.time() - t0:.0f} s elapsed)", flush=True)
        try:
            with contextlib.ExitStack() as stack:
                server, startup = start(args, name, label, base, stack)
                maybe_calibrate(args, server, name, result)
                for cell in cells(args):
                    if not past_deadline(args, t0, result, cell_name(label, cell)):
                        run_cell(args, server, name, label, startup, cell, result)
        except SERVER_FAILURES as exc:
            record_failure(args, result, label, exc)


def run_interleaved(args, servers: list[tuple[str, str]], base: list[str], t0: float,
                    result: dict) -> None:
    """Every server at once on the same GPUs (started one after another, each holding about
    --shared-mem-fraction of the memory), then each cell on every server in a rotated order.
    Sequential servers confound config with time: on 4xH200 the same config moved 10-20%
    between sessions and with its place in the order, as much as the effects measured."""
    try:
        fractions = shared_mem_fractions(len(servers), args.shared_mem_fraction)
    except ValueError as exc:
        raise SystemExit(f"{exc}: lower --shared-mem-fraction or run fewer configs") from None
    live = []
    with contextlib.ExitStack() as stack:
        for i, (name, label) in enumerate(servers):
            if past_deadline(args, t0, result, label):
                continue
            print(f"== {label}: starting ({time.time() - t0:.0f} s elapsed)", flush=True)
            try:
                with contextlib.ExitStack() as own:  # a server that fails to start stops at once
                    live.append((name, label, *start(args, name, label, base, own,
                                                     port=30000 + SERVER_PORT_STRIDE * i,
                                                     mem_fraction=fractions[i])))
                    stack.enter_context(own.pop_all())  # the others run until the matrix ends
            except SERVER_FAILURES as exc:
                record_failure(args, result, label, exc)
        if live:
            maybe_calibrate(args, live[0][2], live[0][0], result)
        for k, cell in enumerate(cells(args)):
            for slot, (name, label, server, startup) in enumerate(rotation(live, k)):
                if (label in result.get("failed_configs", {})
                        or past_deadline(args, t0, result, cell_name(label, cell))):
                    continue
                try:
                    run_cell(args, server, name, label, startup, cell, result, slot=slot)
                except SERVER_FAILURES as exc:
                    record_failure(args, result, label, exc)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    result = {**provenance(), "runs": [], "skipped": [], "interleaved": args.interleave,
              "moe_configs": args.moe_configs}
    args.server_env = {**SERVER_ENV, **moe_configs_env(args.moe_configs)}
    base = base_flags(args)
    if args.interleave and "--mem-fraction-static" in base:
        raise SystemExit("--interleave gives each server its share of GPU memory itself: set "
                         "--shared-mem-fraction instead of --mem-fraction-static in --extra")
    configs = args.configs.split(",")
    servers = []
    for name, label in zip(configs, server_labels(configs)):
        missing = missing_packages(name)
        reason = (f"needs {', '.join(missing)}, not importable by {sys.executable}" if missing
                  else known_broken(name, args.model))
        if reason:
            result.setdefault("failed_configs", {})[label] = reason
            print(f"== {label}: not run: {reason}", flush=True)
        else:
            servers.append((name, label))
    (run_interleaved if args.interleave else run_sequential)(args, servers, base, t0, result)
    result["elapsed_s"] = round(time.time() - t0, 1)
    record_json(os.path.join(args.out, "ab.json"), result)
    if result["runs"]:
        report.main([os.path.join(args.out, "ab.json"), "--out", os.path.join(args.out, "report")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
