"""Plain SGLang's two all-reduces against TBO's all_gather + reduce_scatter, as NCCL runs them.

    python3 benchmarks/comm_probe.py --gpus 2 --hidden 7168 --rows-per-rank 4096,8192 --out DIR
    python3 benchmarks/comm_probe.py --gpus 2 --device cpu --hidden 64 --rows-per-rank 8  # gloo

Per size, with G = world x rows gathered rows of `hidden` bf16 values: all_reduce of G rows (a
SUM_LEN pass runs two per MoE layer: the gather and the MoE's own), all_gather of rows -> G and
reduce_scatter of G -> rows (TBO's transport for the whole batch). Median ms over --iters, timed
with CUDA events on rank 0 after a barrier. ratio = 2 x all_reduce / (all_gather + reduce_scatter):
what plain SGLang pays per layer against TBO's collectives. By ring bytes it is 2 (a ring
all-reduce is a reduce_scatter plus an all_gather of the same buffer).
Writes DIR/comm_probe.json (command, machine, date, rows).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402
from tbo_layer_bench import init_rank, run_ranks, timed  # noqa: E402


def worker(rank, world, args, init_file, queue):
    device, dtype = init_rank(rank, world, args.device, init_file)
    rows_out = []
    for rows in [int(r) for r in args.rows_per_rank.split(",")]:
        # zeros: summed in place again and again; NCCL's speed does not depend on the values
        gathered = torch.zeros(world * rows, args.hidden, device=device, dtype=dtype)
        local = torch.zeros(rows, args.hidden, device=device, dtype=dtype)
        t = {
            "all_reduce": timed(lambda: dist.all_reduce(gathered), device, args.iters),
            "all_gather": timed(lambda: dist.all_gather_into_tensor(gathered, local), device, args.iters),
            "reduce_scatter": timed(lambda: dist.reduce_scatter_tensor(local, gathered), device, args.iters),
        }
        mb = world * rows * args.hidden * gathered.element_size() / 1e6
        rows_out.append({"world": world, "rows_per_rank": rows, "hidden": args.hidden, "gathered_mb": round(mb, 1),
                         **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                         "ratio": round(2 * t["all_reduce"] / (t["all_gather"] + t["reduce_scatter"]), 3)})
    if rank == 0:
        queue.put(rows_out)
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2, help="ranks (one GPU each on CUDA)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--rows-per-rank", default="4096,8192,16384")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    rows = run_ranks(worker, args.gpus, args, "comm_probe_")
    print(f"{'world':>5} {'rows/rank':>9} {'MB':>7} {'all_reduce':>10} {'all_gather':>10} {'reduce_scatter':>14} {'ratio':>6}")
    for r in rows:
        print(f"{r['world']:>5} {r['rows_per_rank']:>9} {r['gathered_mb']:>7} {r['all_reduce_ms']:>10} "
              f"{r['all_gather_ms']:>10} {r['reduce_scatter_ms']:>14} {r['ratio']:>6}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        record_json(os.path.join(args.out, "comm_probe.json"), {**provenance(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
