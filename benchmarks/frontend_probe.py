"""Where a request's latency goes outside the scheduler: client, HTTP, tokenizer manager.

    python3 benchmarks/frontend_probe.py --out DIR [--tp 1 --dp 1] [--workloads short,small]
        [--concurrency 128] [--client-processes 1,4] [--repeats 2] [--cuda-graph]

Starts one plain SGLang server (dummy weights, `--enable-metrics`), warms it up, then runs every
(repeat, workload, client processes) cell in turn, interleaving the client-process counts so
drift hits them alike. Per cell it records the client's metrics (`serving.summarize`), SGLang's
own latency histograms over the cell (TTFT as the tokenizer manager sees it, queue time in the
scheduler, per-stage latencies) and the CPU share of every server process and of the client
processes. A client TTFT far above SGLang's, or a client process near a full core, means the
benchmark measures its client; a tokenizer manager near a full core means the server's front
end is the limit. Writes DIR/probe.json and prints one line per cell.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from admission_ab import histogram_mean, warmup_requests  # noqa: E402
from serve_smoke import BASE_FLAGS  # noqa: E402
from serving import (  # noqa: E402
    WORKLOADS, Server, Workload, load, load_measured, provenance, record_json, scrape, summarize,
)

# `small` pushes more requests per second through one GPU than `short`, at the same 64 outputs.
PROBE_WORKLOADS = {**WORKLOADS, "small": Workload("small", 600, 64, input_ratio=1 / 3, output_ratio=1.0)}
HISTOGRAMS = {
    "server_ttft_ms": "sglang:time_to_first_token_seconds",
    "server_e2e_ms": "sglang:e2e_request_latency_seconds",
    "server_itl_ms": "sglang:inter_token_latency_seconds",
    "queue_ms": "sglang:queue_time_seconds",
}
STAGES = "sglang:per_stage_req_latency_seconds"


def server_cpu_seconds(server: Server) -> dict[str, float]:
    """CPU seconds so far of the server's processes, by role: the launcher process serves HTTP
    and runs the tokenizer manager; SGLang names its other processes `sglang::<role>`."""
    import psutil

    main = psutil.Process(server.proc.pid)
    out = {}
    for proc in [main, *main.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        role = ("main (HTTP + tokenizer manager)" if proc.pid == main.pid
                else cmd[0].split()[0] if cmd and cmd[0].startswith("sglang::") else proc.name())
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def stage_means(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per SGLang request stage over the cell."""
    stages = {m.group(1) for k in after if k.startswith(STAGES) for m in [re.search(r'stage="([^"]+)"', k)] if m}
    out = {}
    for stage in sorted(stages):
        mean = histogram_mean(before, after, STAGES, f'stage="{stage}"')
        if mean is not None:
            out[stage] = round(mean * 1000, 2)
    return out


def run_cell(server: Server, workload: str, concurrency: int, processes: int, repeat: int,
             requests_per_client: int, n_gpus: int) -> dict:
    reqs = PROBE_WORKLOADS[workload].requests(concurrency * requests_per_client, seed=1000 * repeat + 7)
    before, cpu_before = scrape(server.get("/metrics"), "sglang:"), server_cpu_seconds(server)
    records, secs, client_cpu = load_measured(server.url, reqs, concurrency, processes=processes)
    after, cpu_after = scrape(server.get("/metrics"), "sglang:"), server_cpu_seconds(server)
    run = {"workload": workload, "client_processes": processes, "repeat": repeat,
           **summarize(records, secs, n_gpus, concurrency)}
    run["requests_per_s"] = round(run["completed"] / secs, 1)
    for key, name in HISTOGRAMS.items():
        mean = histogram_mean(before, after, name)
        run[key] = None if mean is None else round(mean * 1000, 2)
    run["stage_ms"] = stage_means(before, after)
    # share of one core over the cell; above 1.0 means several threads
    run["cpu_share"] = {role: round((cpu_after[role] - cpu_before.get(role, 0.0)) / secs, 2)
                        for role in cpu_after}
    run["cpu_share"]["client (all processes)"] = round(client_cpu / secs, 2)
    run["cpu_share"]["client (per process)"] = round(client_cpu / secs / processes, 2)
    return run


def line(run: dict) -> str:
    cpu = run["cpu_share"]
    return (f"{run['workload']:>6} procs={run['client_processes']} r{run['repeat']}: "
            f"{run['requests_per_s']:.0f} req/s, in {run['input_tok_s'] / 1000:.0f}k tok/s, "
            f"TTFT client {run['mean_ttft_ms']:.0f} ms / server {run['server_ttft_ms']} ms / queue "
            f"{run['queue_ms']} ms, TPOT {run['mean_tpot_ms']:.1f} ms; CPU client/proc "
            f"{cpu['client (per process)']}, main {cpu.get('main (HTTP + tokenizer manager)')}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="models/qwen3-moe-tiny")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--workloads", default="short,small")
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--client-processes", default="1,4")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--requests-per-client", type=int, default=16)
    ap.add_argument("--cuda-graph", action="store_true", help="keep SGLang's CUDA graphs on")
    ap.add_argument("--extra", default="", help="extra server flags")
    args = ap.parse_args(argv)
    for w in args.workloads.split(","):
        if w not in PROBE_WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(PROBE_WORKLOADS)}")
    os.makedirs(args.out, exist_ok=True)
    flags = ["--model-path", args.model, "--tp", str(args.tp), "--dp", str(args.dp), "--enable-metrics",
             *(["--enable-dp-attention"] if args.dp > 1 else []),
             *[f for f in BASE_FLAGS if not (args.cuda_graph and f == "--disable-cuda-graph")],
             *args.extra.split()]
    procs = [int(p) for p in args.client_processes.split(",")]
    t0 = time.time()
    result = {**provenance(), "server_args": flags, "runs": []}
    with Server(flags, os.path.join(args.out, "server.log")) as server:
        result["startup_s"] = round(server.wait_ready(), 1)
        print(f"server ready after {result['startup_s']} s", flush=True)
        for w in args.workloads.split(","):  # compile the shapes, then one discarded cell each
            load(server.url, warmup_requests(PROBE_WORKLOADS[w], args.concurrency), args.concurrency)
            run_cell(server, w, args.concurrency, 1, -1, args.requests_per_client, args.tp)
        for repeat in range(args.repeats):
            for w in args.workloads.split(","):
                for p in procs if repeat % 2 == 0 else procs[::-1]:
                    run = run_cell(server, w, args.concurrency, p, repeat, args.requests_per_client, args.tp)
                    result["runs"].append(run)
                    print(line(run), flush=True)
                    record_json(os.path.join(args.out, "probe.json"), result)
    result["elapsed_s"] = round(time.time() - t0, 1)
    record_json(os.path.join(args.out, "probe.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
