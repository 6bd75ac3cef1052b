"""Fit the admission simulator to served GPU runs, then compare policies on the best fits.

    python3 benchmarks/sim_refit.py --out DIR --ab A.json [B.json ...] --dp 2 \
        --fit plain=4096,plain_chunk16k=8192 --compare-budget 8192 [--frontend-ms 0,2,3,4,5]

The fit targets are plain SGLang's timed runs in the `admission_ab.py` results (warm-up
repeats left out): input tok/s per rank, mean TTFT less `--client-ms`, and mean TPOT, for each
named config at its per-rank prefill budget. A grid over the step model (`c0`, `k`, decode graph
speedup, MAX_LEN-aligned prefill passes on) and the front end's service time per request is
scored by the root mean square of the relative errors. The best `--top` fits then run no policy
and atom at fill 0 and fill 0.7 at `--compare-budget`, for the ratios the GPU measured.
Writes DIR/refit.json and DIR/refit.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sglang_atom.admission.policy import PolicyParams  # noqa: E402
from sglang_atom.admission.simulator import WORKLOADS, AtomPolicy, NoPolicy, StepModel, simulate  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402

METRICS = ("input_tok_s_per_rank", "ttft_mean_ms", "tpot_mean_ms")


def targets(paths: list[str], budgets: dict[str, int], dp: int, client_ms: float) -> dict:
    """Per config: its budget, the load it ran under and the mean of each fitted metric."""
    runs = [r for p in paths for r in json.load(open(p))["runs"] if r.get("repeat", -1) >= 0]
    out = {}
    for name, budget in budgets.items():
        mine = [r for r in runs if r["config"] == name and not r.get("failed")]
        if not mine:
            raise SystemExit(f"no timed runs of config {name!r} in {', '.join(paths)}")
        conc = mine[0]["concurrency"]
        out[name] = {"budget": budget, "workload": mine[0]["workload"], "runs": len(mine),
                     "concurrency_per_rank": conc // dp,
                     "requests_per_client": max(1, mine[0]["completed"] // conc),
                     "input_tok_s_per_rank": statistics.mean(r["input_tok_s"] for r in mine) / dp,
                     "ttft_mean_ms": statistics.mean(r["mean_ttft_ms"] for r in mine) - client_ms,
                     "tpot_mean_ms": statistics.mean(r["mean_tpot_ms"] for r in mine)}
    return out


def run(policy, model: StepModel, frontend_ms: float, dp: int, target: dict, budget: int) -> dict:
    return simulate(policy, dp, WORKLOADS[target["workload"]], model,
                    concurrency_per_rank=target["concurrency_per_rank"],
                    requests_per_client=target["requests_per_client"], budget=budget,
                    frontend_ms=frontend_ms)


def score(model: StepModel, frontend_ms: float, dp: int, tgts: dict) -> tuple[float, dict]:
    errors, sims = [], {}
    for name, t in tgts.items():
        sim = run(NoPolicy(), model, frontend_ms, dp, t, t["budget"])
        sims[name] = {m: sim[m] for m in METRICS}
        errors += [(sim[m] - t[m]) / t[m] for m in METRICS]
    return (sum(e * e for e in errors) / len(errors)) ** 0.5, sims


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--ab", nargs="+", required=True, help="admission_ab.py result files")
    ap.add_argument("--dp", type=int, required=True)
    ap.add_argument("--fit", required=True, help="config=per-rank budget,... (plain SGLang configs)")
    ap.add_argument("--compare-budget", type=int, required=True)
    ap.add_argument("--client-ms", type=float, default=40.0,
                    help="the client's own share of its TTFT (frontend_probe.py on 1xH200: 25-60 ms)")
    ap.add_argument("--c0-ms", default="2,3,4,5,6")
    ap.add_argument("--k-ms", default="0.0005,0.001,0.0015,0.002,0.003")
    ap.add_argument("--decode-speedup", default="1,1.5,2")
    ap.add_argument("--frontend-ms", default="0,2,3,4,5")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args(argv)
    budgets = {k: int(v) for k, v in (item.split("=") for item in args.fit.split(","))}
    tgts = targets(args.ab, budgets, args.dp, args.client_ms)
    grid = []
    for c0, k, speedup, fe in itertools.product(floats(args.c0_ms), floats(args.k_ms),
                                                floats(args.decode_speedup), floats(args.frontend_ms)):
        model = StepModel(c0, k, graph_decode_speedup=speedup, max_len_aligned_prefill=True)
        rms, sims = score(model, fe, args.dp, tgts)
        grid.append({"c0_ms": c0, "k_ms": k, "decode_speedup": speedup, "frontend_ms": fe,
                     "rms_rel_error": round(rms, 4), "sim": sims})
    grid.sort(key=lambda g: g["rms_rel_error"])
    any_target = next(iter(tgts.values()))
    best = []
    for g in grid[:args.top]:
        model = StepModel(g["c0_ms"], g["k_ms"], graph_decode_speedup=g["decode_speedup"],
                          max_len_aligned_prefill=True)
        rows = {}
        for label, policy in (("none", NoPolicy()), ("atom_fill0", AtomPolicy(PolicyParams(target_fill=0.0))),
                              ("atom_fill07", AtomPolicy(PolicyParams(target_fill=0.7)))):
            sim = run(policy, model, g["frontend_ms"], args.dp, any_target, args.compare_budget)
            rows[label] = {**{m: sim[m] for m in METRICS}, "fill_wait_holds": sim["reasons"].get("fill_wait", 0)}
        n, f0, f7 = rows["none"], rows["atom_fill0"], rows["atom_fill07"]
        best.append({**{k: g[k] for k in ("c0_ms", "k_ms", "decode_speedup", "frontend_ms", "rms_rel_error")},
                     "policies": rows,
                     "fill07_over_fill0": round(f7["input_tok_s_per_rank"] / f0["input_tok_s_per_rank"], 3),
                     "fill0_over_none": round(f0["input_tok_s_per_rank"] / n["input_tok_s_per_rank"], 3),
                     "fill0_ttft_over_none": round(f0["ttft_mean_ms"] / n["ttft_mean_ms"], 2)})
    os.makedirs(args.out, exist_ok=True)
    record_json(os.path.join(args.out, "refit.json"),
                {**provenance(), "targets": tgts, "best": best, "grid": grid})
    lines = ["| c0 ms | k ms | decode speedup | front end ms | rms rel. error | fill 0.7 / fill 0 | "
             "fill 0 / none | fill 0 TTFT / none | fill_wait holds at 0.7 |", "|" + "---|" * 9]
    lines += [f"| {b['c0_ms']} | {b['k_ms']} | {b['decode_speedup']} | {b['frontend_ms']} | {b['rms_rel_error']} | "
              f"{b['fill07_over_fill0']} | {b['fill0_over_none']} | {b['fill0_ttft_over_none']} | "
              f"{b['policies']['atom_fill07']['fill_wait_holds']} |" for b in best]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "refit.md"), "w") as f:
        f.write(f"Targets: {json.dumps(tgts)}\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
