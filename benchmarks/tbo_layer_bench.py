"""MoE-layer microbenchmark of two-batch overlap over all_gather/reduce_scatter.

    python3 benchmarks/tbo_layer_bench.py --gpus 4 --out DIR            # NCCL, one process per GPU
    python3 benchmarks/tbo_layer_bench.py --gpus 2 --device cpu --quick  # gloo, to check it runs

Per rank, T tokens per forward go through L layers of: attention stand-in on local rows (QKV and
output projections), all_gather of the rows, expert stand-in on all gathered rows (a dense GEMM
pair with the FLOPs of top-k routed experts TP-sharded over the ranks), reduce_scatter back.
It times, with CUDA events on rank 0 (median of --iters):

  compute     both micro-batches' compute, no collectives
  comm        both micro-batches' all_gather + reduce_scatter, no compute
  serial      the whole batch, collectives waited for in place (no overlap)
  overlapped  two micro-batches through sglang_atom.tbo.overlap (the production executor)

and reports speedup = serial / overlapped and overlap efficiency = (compute + comm -
overlapped) / min(compute, comm), the share of the shorter side that was hidden.
Writes DIR/tbo_layer.json (command, machine, date, rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402
from sglang_atom.tbo.overlap import OverlapComm, micro_batch_program, run_interleaved  # noqa: E402

SHAPES = {
    # name: hidden, moe_intermediate, top_k, attention heads x head_dim, kv heads
    "deepseek-v3-width": dict(hidden=7168, inter=2048, top_k=8, q_dim=128 * 128, kv_dim=2 * 512),
    "qwen3-235b-width": dict(hidden=4096, inter=1536, top_k=8, q_dim=64 * 128, kv_dim=2 * 4 * 128),
}


class StandInOps:
    """Compute of one layer with the FLOPs of the real model's attention projections and experts."""

    def __init__(self, shape, world, tokens, device, dtype):
        h, i, k = shape["hidden"], shape["inter"], shape["top_k"]
        inner = max(1, k * i // world)  # each rank holds 1/world of every expert's intermediate dim
        g = torch.Generator(device="cpu").manual_seed(0)
        rnd = lambda *s: (torch.randn(*s, generator=g) / s[0] ** 0.5).to(device, dtype)  # noqa: E731
        self.w_qkv = rnd(h, shape["q_dim"] + shape["kv_dim"])
        self.w_o = rnd(shape["q_dim"], h)
        self.w_up = rnd(h, 2 * inner)
        self.w_down = rnd(inner, h)
        self.x = {mb: rnd(t, h) for mb, t in enumerate(tokens)}
        self.q_dim = shape["q_dim"]

    def attention(self, mb, layer):
        qkv = self.x[mb] @ self.w_qkv
        return qkv[:, : self.q_dim] @ self.w_o

    def experts(self, mb, layer, gathered):
        gate, up = (gathered @ self.w_up).chunk(2, dim=-1)
        return (torch.nn.functional.silu(gate) * up) @ self.w_down

    def combine(self, mb, layer, local):
        self.x[mb] = self.x[mb] + local


def timed(fn, device, iters):
    """Median ms of fn() over iters, after warm-up; device events on CUDA, wall clock on CPU."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            dist.barrier()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            dist.barrier()
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def worker(rank, world, args, init_file, queue):
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world, **({"device_id": device} if cuda else {}))
    group = dist.group.WORLD
    if cuda and args.comm_priority == "high":
        # NCCL's kernels on a high-priority stream get SMs as soon as a GEMM wave retires,
        # instead of queueing behind every CTA of the GEMM that is running.
        opts = dist.ProcessGroupNCCL.Options(is_high_priority_stream=True)
        group = dist.new_group(list(range(world)), backend="nccl", pg_options=opts)
    rows = []
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        for tokens in [int(t) for t in args.tokens.split(",")]:
            halves = [tokens // 2, tokens - tokens // 2]
            ops = StandInOps(shape, world, halves, device, dtype)
            whole = StandInOps(shape, world, [tokens], device, dtype)
            comm = OverlapComm(group, shape["hidden"], dtype, device)
            for mb, t in enumerate(halves):
                comm.set_rows(mb, [t] * world)
            whole_comm = OverlapComm(group, shape["hidden"], dtype, device)
            whole_comm.set_rows(0, [tokens] * world)
            # random, not zeros: GEMMs on zeros can run faster than on real data
            gathered = {mb: torch.randn(t * world, shape["hidden"], device=device, dtype=dtype)
                        for mb, t in enumerate(halves)}

            def compute_only():
                for layer in range(args.layers):
                    for mb in (0, 1):
                        ops.attention(mb, layer)
                        ops.experts(mb, layer, gathered[mb])

            def comm_only():
                for _ in range(args.layers):
                    for mb in (0, 1):
                        comm.issue_gather(mb, ops.x[mb])
                        comm.wait_gather(mb)
                        comm.issue_scatter(mb, gathered[mb])
                        comm.wait_scatter(mb)

            def serial():
                run_interleaved([micro_batch_program(0, args.layers, whole, whole_comm)])

            def overlapped():
                run_interleaved([micro_batch_program(mb, args.layers, ops, comm) for mb in (0, 1)])

            t = {k: timed(f, device, args.iters) for k, f in
                 (("compute", compute_only), ("comm", comm_only), ("serial", serial), ("overlapped", overlapped))}
            hidden = t["compute"] + t["comm"] - t["overlapped"]
            rows.append({
                "shape": name, "tokens_per_rank": tokens, "layers": args.layers, "world": world,
                "comm_priority": args.comm_priority,
                **{f"{k}_ms": round(v, 3) for k, v in t.items()},
                "comm_share": round(t["comm"] / (t["comm"] + t["compute"]), 3),
                "speedup": round(t["serial"] / t["overlapped"], 3),
                "overlap_efficiency": round(hidden / min(t["compute"], t["comm"]), 3),
            })
            if rank == 0:
                print(json.dumps(rows[-1]), flush=True)
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=4, help="ranks (one GPU each on CUDA)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--shapes", default="deepseek-v3-width,qwen3-235b-width")
    ap.add_argument("--tokens", default="4096,8192,16384", help="tokens per rank per forward")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--comm-priority", choices=("default", "high"), default="default",
                    help="priority of the NCCL stream the collectives run on")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.quick:
        for s in SHAPES.values():
            s.update(hidden=64, inter=32, q_dim=64, kv_dim=16)
        args.tokens, args.layers, args.iters = "16,32", 2, 3
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = tempfile.mktemp(prefix="tbo_bench_")
    procs = [ctx.Process(target=worker, args=(r, args.gpus, args, init_file, queue)) for r in range(args.gpus)]
    for p in procs:
        p.start()
    rows = queue.get(timeout=3600)
    for p in procs:
        p.join(timeout=60)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        record_json(os.path.join(args.out, "tbo_layer.json"), {**provenance(), "rows": rows})
    print(f"{'shape':20} {'T/rank':>7} {'compute':>8} {'comm':>7} {'serial':>7} {'overlap':>8} {'speedup':>7} {'eff':>5}")
    for r in rows:
        print(f"{r['shape']:20} {r['tokens_per_rank']:>7} {r['compute_ms']:>8} {r['comm_ms']:>7} "
              f"{r['serial_ms']:>7} {r['overlapped_ms']:>8} {r['speedup']:>7} {r['overlap_efficiency']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
