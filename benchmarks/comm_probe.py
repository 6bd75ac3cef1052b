"""Plain SGLang's two all-reduces against all_gather + reduce_scatter, as NCCL runs them.

    python3 benchmarks/comm_probe.py --gpus 2 --hidden 7168 --rows-per-rank 4096,8192 --out DIR
    python3 benchmarks/comm_probe.py --gpus 4 --rows-per-rank 8192 --skews 0,0.25,0.5 --out DIR
    python3 benchmarks/comm_probe.py --gpus 2 --device cpu --hidden 64 --rows-per-rank 8  # gloo

Per size and skew, rank r holds rows x (1 - skew x r / (world - 1)) rows of `hidden` bf16
values (skew 0: all equal), S in all, at most M on one rank. Times, median ms over --iters with
CUDA events on rank 0 after a barrier:
  all_reduce                    of S rows: a SUM_LEN pass runs two per MoE layer (the gather
                                and the experts' own), what plain SGLang runs in prefill
  all_gather, reduce_scatter    of every rank's rows padded to M (world x M rows): a MAX_LEN
                                pass, and TBO's transport
  all_gatherv, reduce_scatterv  of the S real rows: `--atom-dp-gatherv` in a SUM_LEN pass. With
                                unequal rows SGLang's pynccl issues them as one NCCL group of a
                                broadcast (gather) or a reduce (combine) per rank, done here the
                                same way through c10d's coalescing; with equal rows NCCL's own
                                all_gather / reduce_scatter, the columns above
ratio = 2 x all_reduce / (all_gatherv + reduce_scatterv): what plain SGLang pays per layer
against `--atom-dp-gatherv`. By ring bytes it is 2 (a ring all-reduce is a reduce_scatter plus an
all_gather of the same buffer). max_len_ratio = 2 x all_reduce / (all_gather + reduce_scatter).

Host cost (`--host-iters`, at the first --rows-per-rank, equal rows): microseconds of host time
per collective when a micro-batch's all_gather and reduce_scatter are issued and waited on as
the TBO transport does, with no profiler attached (under torch.profiler c10d's calls showed about
150 us each, 32 of them in an 8-layer split pass). `c10d`: `async_op=True` on the NCCL group,
then `work.wait()` (OverlapComm). `pynccl`: SGLang's PyNcclCommunicator, whose calls take the
current stream, issued on a side stream with an event back to the compute stream (CUDA only).
Writes DIR/comm_probe.json (command, machine, date, rows, host_us).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402
from tbo_layer_bench import init_rank, run_ranks, timed  # noqa: E402


def rank_rows(rows: int, world: int, skew: float) -> list[int]:
    """Rows on each rank: `rows` on rank 0 down to rows x (1 - skew) on the last, linearly."""
    return [round(rows * (1 - skew * r / max(world - 1, 1))) for r in range(world)]


def starts(sizes: list[int]) -> list[int]:
    """Where each rank's rows begin in the rank-major buffer of all of them."""
    return [sum(sizes[:r]) for r in range(len(sizes))]


def _group_device(device):
    """The device c10d groups the coalesced ops on: NCCL only. Gloo has no coalescing, so there
    the ops run one by one (same rows moved; CPU times mean nothing here anyway)."""
    return device if device.type == "cuda" else None


def gatherv(buf, sizes, device) -> None:
    """Every rank's rows into `buf` (rank-major, each rank's own rows already in its slot), as
    SGLang's pynccl all_gatherv issues them for unequal rows: one group of broadcasts."""
    with dist._coalescing_manager(device=_group_device(device)):
        for r, (start, n) in enumerate(zip(starts(sizes), sizes)):
            dist.broadcast(buf[start:start + n], src=r)


def reduce_scatterv(buf, sizes, device) -> None:
    """Each rank's slot of `buf` summed over the ranks, in place on that rank, as SGLang's pynccl
    reduce_scatterv issues it for unequal rows: one group of reduces."""
    with dist._coalescing_manager(device=_group_device(device)):
        for r, (start, n) in enumerate(zip(starts(sizes), sizes)):
            dist.reduce(buf[start:start + n], dst=r)


def check_variable_collectives(rank, world, device, dtype) -> None:
    """The grouped collectives move the right rows before anything is timed with them."""
    sizes = rank_rows(4, world, 0.5)
    mine = slice(starts(sizes)[rank], starts(sizes)[rank] + sizes[rank])
    buf = torch.zeros(sum(sizes), 2, device=device, dtype=dtype)
    buf[mine] = rank + 1
    gatherv(buf, sizes, device)
    want = torch.cat([torch.full((n, 2), r + 1.0) for r, n in enumerate(sizes)]).to(device, dtype)
    if not torch.equal(buf, want):
        raise RuntimeError(f"grouped broadcasts gathered {buf.tolist()}, not {want.tolist()}")
    buf.fill_(rank + 1)
    reduce_scatterv(buf, sizes, device)
    if not torch.all(buf[mine] == world * (world + 1) / 2):
        raise RuntimeError(f"grouped reduces left {buf[mine].tolist()} on rank {rank}")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_us(pair, device, iters: int) -> float:
    """Host microseconds per collective of `pair()`, which issues and waits one all_gather and
    one reduce_scatter. On CUDA both return once the work is queued, so this is the calls' own
    cost, not the transfer; on gloo the transfer is included."""
    for _ in range(3):
        pair()
    _sync(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        pair()
    elapsed = time.perf_counter() - start
    _sync(device)
    return elapsed / (2 * iters) * 1e6


def c10d_pair(gathered, local):
    def pair():
        dist.all_gather_into_tensor(gathered, local, async_op=True).wait()
        dist.reduce_scatter_tensor(local, gathered, async_op=True).wait()
    return pair


def pynccl_pair(gathered, local, device):
    """The same pair through SGLang's PyNcclCommunicator on a side stream (it is built on a gloo
    group of the same ranks, as SGLang builds it; every rank must call this together)."""
    from sglang.srt.distributed.device_communicators.pynccl import PyNcclCommunicator

    comm = PyNcclCommunicator(dist.new_group(backend="gloo"), device)
    comm.disabled = False  # SGLang switches it on per use (`change_state`)
    compute, side, done = torch.cuda.current_stream(device), torch.cuda.Stream(device), torch.cuda.Event()

    def pair():
        for op, out, inp in ((comm.all_gather, gathered, local), (comm.reduce_scatter, local, gathered)):
            side.wait_stream(compute)
            with torch.cuda.stream(side):
                op(out, inp)
            done.record(side)
            compute.wait_event(done)
    return pair


def host_costs(rows: int, world: int, args, device, dtype) -> dict:
    local = torch.zeros(rows, args.hidden, device=device, dtype=dtype)
    gathered = torch.zeros(world * rows, args.hidden, device=device, dtype=dtype)
    out = {"rows_per_rank": rows, "iters": args.host_iters,
           "c10d": round(host_us(c10d_pair(gathered, local), device, args.host_iters), 1)}
    if device.type != "cuda":
        out["pynccl"], out["pynccl_skipped"] = None, "gloo: pynccl is NCCL only"
    elif world == 1:
        out["pynccl"], out["pynccl_skipped"] = None, "world 1: SGLang builds no pynccl communicator"
    else:
        out["pynccl"] = round(host_us(pynccl_pair(gathered, local, device), device, args.host_iters), 1)
    return out


def worker(rank, world, args, init_file, queue):
    device, dtype = init_rank(rank, world, args.device, init_file)
    check_variable_collectives(rank, world, device, dtype)
    row_counts = [int(r) for r in args.rows_per_rank.split(",")]
    host = host_costs(row_counts[0], world, args, device, dtype) if args.host_iters > 0 else None
    rows_out = []
    for rows in row_counts:
        for skew in [float(x) for x in args.skews.split(",")]:
            sizes = rank_rows(rows, world, skew)
            total, most = sum(sizes), max(sizes)
            # zeros: summed in place again and again; NCCL's speed does not depend on the values
            summed = torch.zeros(total, args.hidden, device=device, dtype=dtype)
            padded = torch.zeros(world * most, args.hidden, device=device, dtype=dtype)
            local = torch.zeros(most, args.hidden, device=device, dtype=dtype)
            t = {"all_reduce": timed(lambda: dist.all_reduce(summed), device, args.iters),
                 "all_gather": timed(lambda: dist.all_gather_into_tensor(padded, local), device, args.iters),
                 "reduce_scatter": timed(lambda: dist.reduce_scatter_tensor(local, padded), device, args.iters)}
            if len(set(sizes)) == 1:
                t["all_gatherv"], t["reduce_scatterv"] = t["all_gather"], t["reduce_scatter"]
            else:
                t["all_gatherv"] = timed(lambda: gatherv(summed, sizes, device), device, args.iters)
                t["reduce_scatterv"] = timed(lambda: reduce_scatterv(summed, sizes, device), device,
                                             args.iters)
            mb = total * args.hidden * summed.element_size() / 1e6
            rows_out.append({
                "world": world, "rows_per_rank": rows, "skew": skew, "rank_rows": sizes,
                "hidden": args.hidden, "gathered_mb": round(mb, 1),
                **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                "ratio": round(2 * t["all_reduce"] / (t["all_gatherv"] + t["reduce_scatterv"]), 3),
                "max_len_ratio": round(2 * t["all_reduce"] / (t["all_gather"] + t["reduce_scatter"]), 3)})
    if rank == 0:
        queue.put((rows_out, host))
    dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2, help="ranks (one GPU each on CUDA)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--rows-per-rank", default="4096,8192,16384", help="rows on rank 0")
    ap.add_argument("--skews", default="0",
                    help="comma list: rank r holds rows x (1 - skew x r / (world - 1)) rows")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--host-iters", type=int, default=50,
                    help="all_gather + reduce_scatter pairs timed on the host per API (0: skip)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    rows, host = run_ranks(worker, args.gpus, args, "comm_probe_")
    print(f"{'world':>5} {'rows':>6} {'skew':>5} {'MB':>7} {'all_reduce':>10} {'all_gather':>10} "
          f"{'reduce_scatter':>14} {'gatherv':>8} {'scatterv':>8} {'ratio':>6} {'max_len':>7}")
    for r in rows:
        print(f"{r['world']:>5} {r['rows_per_rank']:>6} {r['skew']:>5} {r['gathered_mb']:>7} "
              f"{r['all_reduce_ms']:>10} {r['all_gather_ms']:>10} {r['reduce_scatter_ms']:>14} "
              f"{r['all_gatherv_ms']:>8} {r['reduce_scatterv_ms']:>8} {r['ratio']:>6} {r['max_len_ratio']:>7}")
    if host:
        print(f"host us per collective at {host['rows_per_rank']} rows per rank (issue + wait, rank 0): "
              f"c10d {host['c10d']}, pynccl {host.get('pynccl_skipped') or host['pynccl']}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        record_json(os.path.join(args.out, "comm_probe.json"), {**provenance(), "rows": rows, "host_us": host})
    return 0


if __name__ == "__main__":
    sys.exit(main())
