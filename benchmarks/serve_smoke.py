"""GPU smoke run: `--backend atom` serves the tiny Qwen3-MoE with DP attention and answers
100 concurrent /generate requests; the active-features line must be in the server log.

    python3 benchmarks/serve_smoke.py --out DIR [--tp 2 --dp 2] [--model models/qwen3-moe-tiny]

Writes DIR/smoke.json (command, machine, date, results) and DIR/smoke_server.log.
Exit status 0 only when every request was answered and the log line is present.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import WORKLOADS, Server, load, provenance, record_json, scrape, summarize  # noqa: E402

# Flags seen working on the project's GPU machines with dummy weights (shared/device/README.md).
BASE_FLAGS = ["--load-format", "dummy", "--skip-tokenizer-init", "--attention-backend", "triton",
              "--sampling-backend", "pytorch", "--grammar-backend", "none", "--disable-cuda-graph"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="models/qwen3-moe-tiny")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    server_args = ["--model-path", args.model, "--tp", str(args.tp), "--dp", str(args.dp),
                   "--enable-dp-attention", "--backend", "atom", "--enable-metrics", *BASE_FLAGS]
    log_path = os.path.join(args.out, "smoke_server.log")
    result = {**provenance(), "server_args": server_args}
    work = WORKLOADS["short"]
    with Server(server_args, log_path) as server:
        result["startup_s"] = round(server.wait_ready(), 1)
        print(f"server ready after {result['startup_s']} s", flush=True)
        warm = work.requests(args.dp, seed=1)
        records, secs = load(server.url, warm, args.dp)
        result["warmup_s"] = round(secs, 1)
        print(f"warm-up done in {secs:.1f} s", flush=True)
        reqs = work.requests(args.requests, seed=2)
        records, secs = load(server.url, reqs, args.requests, progress="smoke")
        result["concurrent_100"] = summarize(records, secs, args.tp, args.requests)
        result["atom_metrics"] = scrape(server.get("/metrics"))
    with open(log_path) as f:
        lines = [line.rstrip() for line in f if "sglang-atom active" in line]
    result["active_line"] = lines
    answered = result["concurrent_100"]["completed"]
    result["ok"] = answered == args.requests and len(lines) == 1
    record_json(os.path.join(args.out, "smoke.json"), result)
    print(f"answered {answered}/{args.requests}; active line: {lines}")
    print(f"input tok/s {result['concurrent_100']['input_tok_s']}, mean TTFT "
          f"{result['concurrent_100']['mean_ttft_ms']} ms; ok={result['ok']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
