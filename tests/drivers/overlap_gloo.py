"""Two-batch overlap executor on 4 gloo ranks: stage order, collective order and numerics.

Each rank holds two micro-batches with its own row counts (rank 3 has none, rank 2 none in the
second). Layers: "attention" tanh(x @ A) on local rows, experts relu(g @ W1) @ W2 TP-sharded
over the 4 ranks (each holds a quarter of the intermediate dimension, so reduce_scatter sums
the partials), residual add. The overlapped run must equal a plain per-rank computation with
full weights. Prints one JSON line per rank.

usage: python overlap_gloo.py SEED
"""

import json
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sglang_atom.tbo.overlap import OverlapComm, micro_batch_program, run_interleaved

WORLD, HIDDEN, INTER, LAYERS = 4, 16, 32, 3
ROWS = {0: [5, 12, 7, 0], 1: [9, 3, 0, 0]}  # micro-batch -> rows on each rank


def weights(seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(HIDDEN, HIDDEN, generator=g, dtype=torch.float64) / 4,
             torch.randn(HIDDEN, INTER, generator=g, dtype=torch.float64) / 4,
             torch.randn(INTER, HIDDEN, generator=g, dtype=torch.float64) / 4) for _ in range(LAYERS)]


EVENTS = []  # this rank's compute and collective events, in program order


class LoggedComm(OverlapComm):
    def issue_gather(self, mb, local):
        EVENTS.append(f"{mb}:gather>")
        super().issue_gather(mb, local)

    def wait_gather(self, mb):
        EVENTS.append(f"{mb}:gather<")
        return super().wait_gather(mb)

    def issue_scatter(self, mb, partial):
        EVENTS.append(f"{mb}:scatter>")
        super().issue_scatter(mb, partial)

    def wait_scatter(self, mb):
        EVENTS.append(f"{mb}:scatter<")
        return super().wait_scatter(mb)


class Ops:
    def __init__(self, rank, seed):
        self.w = weights(seed)
        shard = slice(rank * INTER // WORLD, (rank + 1) * INTER // WORLD)
        self.w1 = [w1[:, shard] for _, w1, _ in self.w]
        self.w2 = [w2[shard, :] for _, _, w2 in self.w]
        g = torch.Generator().manual_seed(seed * 10 + rank)
        self.x = {mb: torch.randn(ROWS[mb][rank], HIDDEN, generator=g, dtype=torch.float64) for mb in ROWS}
        self.start = {mb: x.clone() for mb, x in self.x.items()}
        self.expert_rows = set()  # (micro-batch, rows the experts got)

    def attention(self, mb, layer):
        EVENTS.append(f"{mb}:attn")
        return torch.tanh(self.x[mb] @ self.w[layer][0])

    def experts(self, mb, layer, gathered):
        EVENTS.append(f"{mb}:experts")
        self.expert_rows.add((mb, gathered.shape[0]))
        return torch.relu(gathered @ self.w1[layer]) @ self.w2[layer]

    def combine(self, mb, layer, local):
        self.x[mb] = self.x[mb] + local

    def reference(self, mb):
        x = self.start[mb]
        for a, w1, w2 in self.w:
            x = x + torch.relu(torch.tanh(x @ a) @ w1) @ w2
        return x


def worker(rank, init_file, seed, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    ops = Ops(rank, seed)
    comm = LoggedComm(dist.group.WORLD, HIDDEN, torch.float64, "cpu")
    for mb, rows in ROWS.items():
        comm.set_rows(mb, rows)
    trace, ok = [], []
    for forward in range(2):  # the second forward must reuse the persistent buffers
        buffers = {k: v.data_ptr() for k, v in comm._buffers.items()}
        ops.start = {mb: x.clone() for mb, x in ops.x.items()}
        run_interleaved([micro_batch_program(mb, LAYERS, ops, comm) for mb in ROWS], trace.append)
        ok.append({mb: bool(torch.allclose(ops.x[mb], ops.reference(mb), atol=1e-10)) for mb in ROWS})
    reused = bool(buffers) and all(comm._buffers[k].data_ptr() == p for k, p in buffers.items())
    queue.put({"rank": rank, "trace": trace, "matches_reference": ok,
               "buffers_reused": reused, "events": EVENTS,
               "expert_rows": sorted(ops.expert_rows), "rows_out": {mb: list(ops.x[mb].shape) for mb in ROWS}})
    dist.destroy_process_group()


def main():
    seed = int(sys.argv[1])
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = tempfile.mktemp(prefix="atom_overlap_")
    procs = [ctx.Process(target=worker, args=(r, init_file, seed, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in range(WORLD)]
    for p in procs:
        p.join(timeout=30)
    for r in sorted(results, key=lambda r: r["rank"]):
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
