"""Several `--backend atom` servers behind sglang-router (DP-aware) on one machine.

    python3 benchmarks/router_cluster.py --out DIR [--servers 2 --tp 2 --dp 2] [--requests 512]

Server i runs on GPUs [i*tp, (i+1)*tp) (modulo --gpus: on a machine with fewer GPUs than
servers x tp the servers share them, e.g. two DP2 servers on 2xH200) with `--tp TP --dp DP
--enable-dp-attention --backend atom`; the router runs `--dp-aware --policy round_robin` over
them (it reads each server's dp_size and pins every request to a rank by adding
`data_parallel_rank`, which SGLang 0.5.17's /generate honours only through `--backend atom`'s
alias for `routed_dp_rank`). Load goes through the router to /generate with the same client as
the other benchmarks. Requests per (server, DP rank) are counted from each server's "Prefill
batch, #new-seq" log lines. Writes DIR/router.json (command, machine, date, distribution, client
metrics) and the logs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_smoke import BASE_FLAGS  # noqa: E402
from serving import (  # noqa: E402
    SERVER_PORT_STRIDE, WORKLOADS, Server, load, provenance, record_json, shared_mem_fractions, summarize,
    wait_http)

NEW_SEQ = re.compile(r"DP(\d+) TP\d+\] Prefill batch, #new-seq: (\d+)")


def server_port(router_port: int, i: int) -> int:
    return router_port + SERVER_PORT_STRIDE * (i + 1)


def server_gpus(i: int, tp: int, gpus: int) -> str:
    """CUDA_VISIBLE_DEVICES of server i: the next tp GPUs, wrapping round on a smaller machine."""
    return ",".join(str((i * tp + g) % gpus) for g in range(tp))


def admitted_per_rank(log_path: str) -> dict[int, int]:
    counts = collections.Counter()
    with open(log_path) as f:
        for line in f:
            m = NEW_SEQ.search(line)
            if m:
                counts[int(m.group(1))] += int(m.group(2))
    return dict(sorted(counts.items()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="models/qwen3-moe-tiny")
    ap.add_argument("--servers", type=int, default=2)
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--gpus", type=int, default=0,
                    help="GPUs on the machine (default servers x tp); with fewer, the servers "
                         "share them, start one after another and hold about --shared-mem-fraction "
                         "of each GPU's memory each")
    ap.add_argument("--shared-mem-fraction", type=float, default=0.4)
    args = ap.parse_args()
    gpus_total = args.gpus or args.servers * args.tp
    if gpus_total < args.tp:
        ap.error(f"--gpus {gpus_total} is fewer than --tp {args.tp}")
    shared = gpus_total < args.servers * args.tp
    if shared and gpus_total % args.tp:
        ap.error(f"--gpus {gpus_total} is not a multiple of --tp {args.tp}, so the servers would "
                 "share GPUs unevenly")
    groups = gpus_total // args.tp  # server i runs on GPU group i % groups
    fractions = []
    if shared:
        try:
            fractions = shared_mem_fractions(-(-args.servers // groups), args.shared_mem_fraction)
        except ValueError as exc:
            ap.error(f"{exc}: lower --shared-mem-fraction")
    os.makedirs(args.out, exist_ok=True)
    result = {**provenance(), "gpus": gpus_total, "shared_gpus": shared}
    servers = []
    for i in range(args.servers):
        server_args = ["--model-path", args.model, "--tp", str(args.tp), "--dp", str(args.dp),
                       "--enable-dp-attention", "--backend", "atom", *BASE_FLAGS]
        if shared:  # started one after another, see shared_mem_fractions
            server_args += ["--mem-fraction-static", str(fractions[i // groups])]
        servers.append(Server(server_args, os.path.join(args.out, f"server{i}.log"),
                              port=server_port(args.port, i),
                              env={"CUDA_VISIBLE_DEVICES": server_gpus(i, args.tp, gpus_total)}))
    router_log = open(os.path.join(args.out, "router.log"), "w")
    router = None
    try:
        waiting = []
        for s in servers:
            s.__enter__()
            waiting.append(s)
            if shared:  # see --mem-fraction-static above
                print(f"{s.url} ready after {s.wait_ready():.0f} s", flush=True)
                waiting.clear()
        for s in waiting:
            print(f"{s.url} ready after {s.wait_ready():.0f} s", flush=True)
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
               "--port", str(args.port), "--policy", "round_robin", "--dp-aware",
               "--worker-urls", *[s.url for s in servers]]
        router_log.write("$ " + " ".join(cmd) + "\n")
        router_log.flush()
        router = subprocess.Popen(cmd, stdout=router_log, stderr=subprocess.STDOUT, start_new_session=True)
        router_url = f"http://127.0.0.1:{args.port}"
        wait_http(router_url + "/health", router, 120, "router")
        result["server_info_dp_size"] = [
            json.loads(s.get("/server_info")).get("dp_size") for s in servers]
        work = WORKLOADS["short"]
        _, warm_s = load(router_url, work.requests(args.concurrency, seed=1), args.concurrency)
        before = [admitted_per_rank(s.log_path) for s in servers]
        records, secs = load(router_url, work.requests(args.requests, seed=2), args.concurrency,
                             progress="through router")
        after = [admitted_per_rank(s.log_path) for s in servers]
        result["client"] = summarize(records, secs, args.servers * args.tp, args.concurrency)
        result["admitted_per_server_rank"] = {
            f"server{i}": {f"dp{r}": after[i].get(r, 0) - before[i].get(r, 0) for r in range(args.dp)}
            for i in range(args.servers)}
    finally:
        if router is not None and router.poll() is None:
            router.terminate()
            router.wait(timeout=30)
        router_log.close()
        for s in reversed(servers):
            s.__exit__(None, None, None)
    record_json(os.path.join(args.out, "router.json"), result)
    print(result["admitted_per_server_rank"], result["client"]["completed"], "completed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
