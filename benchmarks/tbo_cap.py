"""The most two-batch overlap can gain per MoE layer, from two layer-benchmark results.

    python3 benchmarks/tbo_cap.py --compute WORLD1/tbo_layer.json --comm DP4/tbo_layer.json \
        [--experts fused] [--comm-scale 2.333 --label DP8] [--expert-ms SHAPE=FROM:TO ...]
        [--plain-comm-factor 2] [--shapes NAME,...] [--out DIR]

Overlap hides the all_gather/reduce_scatter behind the other micro-batch's compute, so a layer
can at best shrink from compute + comm to compute. For each shape and tokens per rank found in
both files, from their per-layer (steady state) rows:

  layer  serial_ms of the --compute file's rows with --experts (one batch, collectives in place)
  comm   comm_ms of the --comm file's default-NCCL rows (the collectives of both micro-batches)
  share  comm x scale / (comm x scale + layer)
  cap    1 / (1 - share), the speedup over the same layer without overlap if every collective
         were hidden and splitting cost nothing
  cap_vs_plain  (layer + plain comm x scale) / layer, the same against plain SGLang, whose
         server without TBO runs two all-reduces of every rank's rows per MoE layer where TBO
         runs an all_gather and a reduce_scatter (`tbo_layer_bench.SglangSumLenComm`): the
         --comm file's plain_comm_ms where it has one, else --plain-comm-factor x comm
         (estimated, and said so in the row)

The --compute file may come from one GPU: at world 1 and T tokens a rank does the FLOPs a DP rank
does at T tokens per rank, and its comm_ms is only NCCL's launch cost, so the layer's own time
stands in for compute. --comm-scale projects the comm to another DP size: a rank receives
dp - 1 ranks' rows, so DP8 moves 7/3 of DP4's bytes (the same NVLink bandwidth per GPU assumed).
The world-1 layer runs its experts as one call of T rows over the whole intermediate dim, where a
DP-w rank runs w x T rows over 1/w of it: the same FLOPs at another kernel efficiency.
--expert-ms SHAPE=FROM:TO swaps that call's time (FROM, world 1) for the DP-w call's (TO), both
from `moe_tune.py`, in that shape's layer time.
Writes DIR/tbo_cap.json, or DIR/tbo_cap_LABEL.json, (command, inputs, rows) when --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402


def per_layer(path: str) -> list[dict]:
    with open(path) as f:
        return json.load(f)["per_layer"]


def caps(compute_rows: list[dict], comm_rows: list[dict], experts: str, comm_scale: float = 1.0,
         expert_ms: dict[str, tuple[float, float]] | None = None,
         plain_comm_factor: float | None = None) -> list[dict]:
    """One row per (shape, tokens) present in both: layer ms, comm ms, share and cap, and the cap
    against plain SGLang where its comm is measured or `plain_comm_factor` estimates it.
    `expert_ms`: shape -> (world-1 expert call ms, DP-w expert call ms) swapped in the layer."""
    comm = {(r["shape"], r["tokens_per_rank"]): r for r in comm_rows if r["comm"] == "nccl"}
    out = []
    for r in compute_rows:
        key = (r["shape"], r["tokens_per_rank"])
        if r.get("experts", "dense") != experts or r["comm"] != "nccl" or key not in comm:
            continue
        swap = (expert_ms or {}).get(key[0])
        layer = r["serial_ms"] - swap[0] + swap[1] if swap else r["serial_ms"]
        moved = comm[key]["comm_ms"] * comm_scale
        share = moved / (moved + layer)
        row = {"shape": key[0], "tokens_per_rank": key[1], "layer_ms": round(layer, 3),
               "comm_ms": round(moved, 3), "share": round(share, 3), "cap": round(1 / (1 - share), 3),
               **({"expert_swap_ms": list(swap)} if swap else {})}
        if "plain_comm_ms" in comm[key]:
            plain, source = comm[key]["plain_comm_ms"] * comm_scale, "measured"
        elif plain_comm_factor:
            plain, source = moved * plain_comm_factor, f"estimated: {plain_comm_factor} x comm"
        else:
            plain = None
        if plain is not None:
            row |= {"plain_comm_ms": round(plain, 3), "plain_comm": source,
                    "cap_vs_plain": round((layer + plain) / layer, 3)}
        out.append(row)
    return out


def expert_swaps(items: list[str]) -> dict[str, tuple[float, float]]:
    """['SHAPE=FROM:TO', ...] -> {SHAPE: (FROM, TO)}."""
    out = {}
    for item in items:
        try:
            shape, times = item.split("=")
            before, after = (float(x) for x in times.split(":"))
        except ValueError:
            raise SystemExit(f"--expert-ms takes SHAPE=FROM_MS:TO_MS, got {item!r}") from None
        out[shape] = (before, after)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compute", required=True, help="tbo_layer.json whose layer time is used")
    ap.add_argument("--comm", required=True, help="tbo_layer.json of a multi-GPU run whose comm time is used")
    ap.add_argument("--experts", default="fused", help="the --compute file's expert kind to read")
    ap.add_argument("--comm-scale", type=float, default=1.0, help="multiply the comm time (another DP size)")
    ap.add_argument("--expert-ms", action="append", default=[], metavar="SHAPE=FROM:TO",
                    help="swap the world-1 expert call (FROM ms) for the DP-w one (TO ms) in SHAPE's layer")
    ap.add_argument("--plain-comm-factor", type=float, default=None,
                    help="where the --comm file has no plain_comm_ms (runs before 2026-11-24), estimate "
                         "plain SGLang's two all-reduces per layer as this many times the all_gather + "
                         "reduce_scatter time (2 for ring all-reduces, each a reduce_scatter plus an "
                         "all_gather of every rank's rows)")
    ap.add_argument("--shapes", default="", help="comma list: only these shapes (default: every shape in both files)")
    ap.add_argument("--label", default="", help="a name for the projection, printed and recorded")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    swaps = expert_swaps(args.expert_ms)
    rows = caps(per_layer(args.compute), per_layer(args.comm), args.experts, args.comm_scale, swaps,
                args.plain_comm_factor)
    if args.shapes:
        rows = [r for r in rows if r["shape"] in args.shapes.split(",")]
    if not rows:
        raise SystemExit(f"no (shape, tokens) has both --experts {args.experts} rows in {args.compute} "
                         f"and NCCL rows in {args.comm}")
    print(f"{args.label or 'as measured'}: comm x {args.comm_scale}")
    print(f"{'shape':20} {'T/rank':>7} {'layer ms':>9} {'comm ms':>8} {'share':>6} {'cap':>6} "
          f"{'plain comm ms':>13} {'cap vs plain':>12}")
    for r in rows:
        print(f"{r['shape']:20} {r['tokens_per_rank']:>7} {r['layer_ms']:>9} {r['comm_ms']:>8} "
              f"{r['share']:>6} {r['cap']:>6} {r.get('plain_comm_ms', '-'):>13} {r.get('cap_vs_plain', '-'):>12}"
              f"{'  (' + r['plain_comm'] + ')' if r.get('plain_comm', 'measured') != 'measured' else ''}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        name = f"tbo_cap_{args.label}.json" if args.label else "tbo_cap.json"
        record_json(os.path.join(args.out, name),
                    {**provenance(), "compute": args.compute, "comm": args.comm, "experts": args.experts,
                     "comm_scale": args.comm_scale, "expert_ms": swaps,
                     "plain_comm_factor": args.plain_comm_factor, "label": args.label, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
