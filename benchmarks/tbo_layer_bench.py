"""MoE-layer microbenchmark of two-batch overlap over all_gather/reduce_scatter.

    python3 benchmarks/tbo_layer_bench.py --gpus 4 --out DIR            # one process per GPU
    python3 benchmarks/tbo_layer_bench.py --gpus 2 --device cpu --quick  # gloo, to check it runs

Per rank, T tokens per forward go through L layers of: attention on local rows (the QKV and
output projections; with --attention sdpa also causal attention over the rank's tokens, see
StandInOps), all_gather of the rows, experts on all gathered rows, reduce_scatter back.
--experts picks what runs the experts (each rank holding 1/world of every expert's intermediate
dim, as SGLang's TP-sharded MoE does):

  dense   a dense GEMM pair with the FLOPs of the top-k routed experts (no shared expert)
  fused   SGLang's Triton fused MoE, the served CUDA kernel: a router GEMM and top-k on the
          gathered rows, DeepSeek's shared expert fused as one more expert on every row, kernel
          configs per --moe-configs (CUDA only)
  fused-fp8  the same on a block-FP8 checkpoint, as DeepSeek-V3 and Qwen3 release theirs (128 x
          128 weight blocks, activations quantized per token in groups of 128): the experts
          through fused_experts' block-FP8 kernel, and the attention projections through SGLang's
          block-FP8 linear (its own dispatch: DeepGEMM where deep_gemm imports, else Triton; the
          row's `projections` names it). The router and attention core stay bf16, and so do the
          collectives, which move the hidden states (CUDA only)
It times, with CUDA events on rank 0 (median of --iters):

  compute     both micro-batches' compute, no collectives
  comm        both micro-batches' all_gather + reduce_scatter, no compute
  serial      the whole batch, collectives waited for in place (no overlap)
  overlapped  two micro-batches through sglang_atom.tbo.overlap (the production executor)
  plain       the whole batch with plain SGLang's collectives (`SglangSumLenComm`: two
              all-reduces of every rank's rows), what a server without TBO runs; plain_comm
              is those collectives alone (default NCCL only)

and reports speedup = serial / overlapped and overlap efficiency = (compute + comm -
overlapped) / min(compute, comm), the share of the shorter side that was hidden. Both rise when
comm itself gets slower (fewer NCCL CTAs), so every row also has vs_nccl_serial: the serial time
of the same cell over the default NCCL communicator divided by this row's overlapped time, the
gain over not overlapping at all with NCCL's own settings. vs_plain = plain / overlapped is the
gain over what SGLang itself runs: all_gather + reduce_scatter move half the bytes of its two
all-reduces, and the overlap hides part of the rest.

--comm picks the transports to compare: `nccl` (c10d async collectives, `tbo.overlap.OverlapComm`)
and `copy-engine` (symmetric memory and copy engines, `tbo.copy_engine.CopyEngineComm`). Before
timing, each transport's overlapped output is checked against the serial whole-batch output on
uneven rows per rank (every rank's data differs, so a mix-up of ranks or micro-batches shows);
a mismatch stops the run.
Writes DIR/tbo_layer.json (command, machine, date, rows).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from moe_tune import FP8_BLOCK, expert_weights, publish_server_args, quantize_fp8_blocks  # noqa: E402
from serving import MOE_CONFIGS_HELP, moe_configs_env, provenance, record_json  # noqa: E402
from sglang_atom.tbo.overlap import (  # noqa: E402
    RowsAndBuffers, make_transport, micro_batch_program, nccl_group, run_interleaved)
from sglang_atom.tbo.split import micro_batch_rows  # noqa: E402

SHAPES = {
    # name (a directory under models/): hidden, moe_intermediate, top_k, routed and shared
    # experts, attention heads x head_dim, kv heads
    "deepseek-v3-width": dict(hidden=7168, inter=2048, top_k=8, experts=256, shared=1,
                              q_dim=128 * 128, kv_dim=2 * 512),
    "qwen3-235b-width": dict(hidden=4096, inter=1536, top_k=8, experts=128, shared=0,
                             q_dim=64 * 128, kv_dim=2 * 4 * 128),
}


class DenseExperts:
    """A dense GEMM pair with the FLOPs of the top-k routed experts' share on this rank."""

    kind, weights, sglang_kernel = "dense", "bf16", False

    def __init__(self, shape, world, device, dtype):
        inner = max(1, shape["top_k"] * shape["inter"] // world)
        g = torch.Generator(device="cpu").manual_seed(0)
        rnd = lambda *s: (torch.randn(*s, generator=g) / s[0] ** 0.5).to(device, dtype)  # noqa: E731
        self.w_up = rnd(shape["hidden"], 2 * inner)
        self.w_down = rnd(inner, shape["hidden"])

    def __call__(self, gathered):
        gate, up = (gathered @ self.w_up).chunk(2, dim=-1)
        return (torch.nn.functional.silu(gate) * up) @ self.w_down


class FusedExperts:
    """SGLang's Triton fused MoE over this rank's shard of every expert. Routing comes from a
    router GEMM on each row, so a row goes to the same experts whichever micro-batch carries it
    (the overlapped-vs-serial check relies on that), spread over all experts as a real model's."""

    kind, weights, sglang_kernel = "fused", "bf16", True  # sglang_kernel: SGLang's Triton MoE, CUDA only

    def __init__(self, shape, world, device, dtype):
        from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig

        h, inner, total = shape["hidden"], max(1, shape["inter"] // world), shape["experts"] + shape["shared"]
        g = torch.Generator(device=device).manual_seed(0)  # the same weights on every rank
        self.w_router = torch.randn(h, shape["experts"], generator=g, device=device, dtype=dtype) / h ** 0.5
        self.w1, self.w2, self.quant = expert_weights(total, inner, h, device, self.weights, seed=1)
        self.top_k, self.shared, self.routed = shape["top_k"], shape["shared"], shape["experts"]
        # In place, as SGLang's MoE layers call it: the output overwrites the gathered rows, which
        # the executor does not read again. (Out of place, SGLang allocates the output in its TP
        # group's symmetric memory pool, which needs SGLang's parallel state.)
        self.runner = MoeRunnerConfig(num_experts=total, num_local_experts=total, inplace=True)

    def __call__(self, gathered):
        from sglang.srt.layers.moe.moe_runner.triton_utils import fused_experts
        from sglang.srt.layers.moe.topk import StandardTopKOutput

        logits = gathered @ self.w_router
        weights, ids = torch.softmax(logits.float(), dim=-1).topk(self.top_k, dim=-1)
        ids = ids.to(torch.int32)
        if self.shared:  # SGLang's shared-expert fusion: one more expert, weight 1, on every row
            rows = gathered.shape[0]
            ids = torch.cat([ids, torch.full((rows, 1), self.routed, device=ids.device, dtype=ids.dtype)], 1)
            weights = torch.cat([weights, torch.ones(rows, 1, device=ids.device)], 1)
        return fused_experts(gathered, self.w1, self.w2, StandardTopKOutput(weights, ids, logits), self.runner,
                             **self.quant)


class Fp8FusedExperts(FusedExperts):
    """FusedExperts on 128 x 128 block-FP8 weights; StandInOps then runs its projections in FP8 too."""

    kind, weights = "fused-fp8", "fp8"


EXPERTS = {cls.kind: cls for cls in (DenseExperts, FusedExperts, Fp8FusedExperts)}  # --experts: name -> class


def projection(w: torch.Tensor, weights: str):
    """(x -> x @ w, the kernel's name): a plain matmul, or for 'fp8' w as 128 x 128 FP8 blocks
    through the block-FP8 linear SGLang's dispatch picks for a served FP8 checkpoint."""
    if weights != "fp8":
        return (lambda x: x @ w), "matmul"
    from sglang.srt.layers.quantization.fp8_utils import dispatch_w8a8_block_fp8_linear

    q, scale = quantize_fp8_blocks(w.t().contiguous())  # SGLang keeps linear weights as [out, in]
    kernel = dispatch_w8a8_block_fp8_linear()

    def fp8_linear(x):
        return kernel(input=x.contiguous(), weight=q, block_size=[FP8_BLOCK, FP8_BLOCK], weight_scale=scale)

    return fp8_linear, kernel.__name__


class SglangSumLenComm(RowsAndBuffers):
    """Plain SGLang 0.5.17's MoE collectives in a SUM_LEN pass, as the baseline a server without
    TBO runs: every extend pass that no prefill CUDA graph covers (DeepSeek's MLA models always,
    any model served eager or past the graph sizes). The gather zero-fills a buffer of every rank's
    rows, copies this rank's rows into its slot and all-reduces it
    (`layers/dp_attention.py` `_dp_gather_via_all_reduce`); the MoE layer all-reduces its partial
    sums itself (the communicator's `should_use_reduce_scatter` is false for SUM_LEN without EP);
    `dp_scatter` copies this rank's rows out. A ring all-reduce is a reduce_scatter followed by an
    all_gather, so these two move twice the bytes of one all_gather plus one reduce_scatter.
    Synchronous in SGLang; here issue/wait are called back to back, which is the same."""

    def __init__(self, group, hidden: int, dtype: torch.dtype, device):
        super().__init__(hidden, dtype, device, dist.get_world_size(group), dist.get_rank(group))
        self.group = group
        self._pending: dict[tuple[str, int], tuple[object, torch.Tensor]] = {}

    def _slot(self, mb: int) -> slice:
        start = sum(self.rows[mb][: self.rank])
        return slice(start, start + self.rows[mb][self.rank])

    def issue_gather(self, mb: int, local: torch.Tensor) -> None:
        out = self._buffer("gathered", mb, sum(self.rows[mb]))
        out.zero_()
        out[self._slot(mb)].copy_(local)
        self._pending[("gather", mb)] = (dist.all_reduce(out, group=self.group, async_op=True), out)

    def wait_gather(self, mb: int) -> torch.Tensor:
        work, out = self._pending.pop(("gather", mb))
        work.wait()
        return out

    def issue_scatter(self, mb: int, partial: torch.Tensor) -> None:
        self._pending[("scatter", mb)] = (dist.all_reduce(partial, group=self.group, async_op=True), partial)

    def wait_scatter(self, mb: int) -> torch.Tensor:
        work, summed = self._pending.pop(("scatter", mb))
        work.wait()
        out = self._buffer("scattered", mb, self.rows[mb][self.rank])
        return out.copy_(summed[self._slot(mb)])


HEAD_DIM = 128


class StandInOps:
    """Compute of one layer: the real model's attention projections, with `attention_core` also
    causal attention over them, and `experts` (DenseExperts or FusedExperts, shared by the
    instances of one cell).

    The attention core treats each rank's tokens as one sequence, as a token-level split of one
    long prompt: q_dim / 128 heads of 128, the queries serving as keys and values (the FLOPs and
    memory traffic of real attention, not its numbers), and micro-batch 1 attending to micro-batch
    0's keys of the same layer as its prefix, as the cut sequence's second half does when served."""

    def __init__(self, shape, rank, tokens, device, dtype, experts, attention_core=False):
        h = shape["hidden"]
        g = torch.Generator(device="cpu").manual_seed(0)
        rnd = lambda *s: (torch.randn(*s, generator=g) / s[0] ** 0.5).to(device, dtype)  # noqa: E731
        self.qkv_proj, self.projections = projection(rnd(h, shape["q_dim"] + shape["kv_dim"]), experts.weights)
        self.o_proj, _ = projection(rnd(shape["q_dim"], h), experts.weights)
        self.expert_fn = experts
        g.manual_seed(1000 + rank)  # rows differ per rank
        self.x = {mb: rnd(t, h) for mb, t in enumerate(tokens)}
        self.q_dim = shape["q_dim"]
        self.heads = max(1, self.q_dim // HEAD_DIM)
        self.attention_core = attention_core
        self.prefix = None  # (layer, keys) of micro-batch 0, for micro-batch 1's attention

    def attention(self, mb, layer):
        q = self.qkv_proj(self.x[mb])[:, : self.q_dim]
        if self.attention_core:
            q = self.attend(mb, layer, q)
        return self.o_proj(q)

    def attend(self, mb, layer, q):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.attention.bias import causal_lower_right
        from torch.nn.functional import scaled_dot_product_attention as sdpa

        rows = q.shape[0]
        heads = q.view(1, rows, self.heads, self.q_dim // self.heads).transpose(1, 2)  # [1, heads, rows, dim]
        keys = heads
        if mb == 1 and self.prefix is not None:
            prefix_layer, prefix = self.prefix
            assert prefix_layer == layer, "micro-batch 0's attention must run first in each layer"
            keys = torch.cat([prefix, heads], dim=2)
        if mb == 0:
            self.prefix = (layer, heads)
        if rows == 0:
            return q
        # On CUDA a fused kernel or an error, never PyTorch's unfused fallback, which materializes
        # every score (the first GPU run, which allowed it, spent 160-220 ms a layer on attention)
        fused = sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]) if q.is_cuda else nullcontext()
        with fused:
            if keys.shape[2] == rows:
                out = sdpa(heads, keys, keys, is_causal=True)
            else:  # queries at the end of the keys: the causal diagonal at the bottom right
                out = sdpa(heads, keys, keys, attn_mask=causal_lower_right(rows, keys.shape[2]))
        return out.transpose(1, 2).reshape(rows, self.q_dim)

    def experts(self, mb, layer, gathered):
        return self.expert_fn(gathered)

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


def check(comm_kind, group, shape, world, rank, device, dtype, layers, experts, attention_core):
    """Overlapped two micro-batches must give the serial whole batch's output, on rows that
    differ in number and content per rank (pad rows included); over c10d, so must the plain-SGLang
    baseline (`SglangSumLenComm`)."""
    tokens = [96 - 13 * r for r in range(world)]
    halves = micro_batch_rows(tokens)  # the token-even rule the serving path uses
    split = StandInOps(shape, rank, [halves[0][rank], halves[1][rank]], device, dtype, experts, attention_core)
    whole = StandInOps(shape, rank, [tokens[rank]], device, dtype, experts, attention_core)
    whole.x[0] = torch.cat([split.x[0], split.x[1]]).clone()
    comm, whole_comm = (make_transport(comm_kind, group, shape["hidden"], dtype, device) for _ in range(2))
    for mb in (0, 1):
        comm.set_rows(mb, halves[mb])
    whole_comm.set_rows(0, tokens)
    runs = {comm_kind: (split, [micro_batch_program(mb, layers, split, comm) for mb in (0, 1)])}
    if comm_kind == "nccl":
        plain = StandInOps(shape, rank, [tokens[rank]], device, dtype, experts, attention_core)
        plain.x[0] = whole.x[0].clone()
        plain_comm = SglangSumLenComm(group, shape["hidden"], dtype, device)
        plain_comm.set_rows(0, tokens)
        runs["plain SGLang"] = (plain, [micro_batch_program(0, layers, plain, plain_comm)])
    run_interleaved([micro_batch_program(0, layers, whole, whole_comm)])
    want = whole.x[0].float()
    for label, (ops, programs) in runs.items():
        run_interleaved(programs)
        got = torch.cat([ops.x[mb] for mb in sorted(ops.x)]).float()
        err = ((got - want).abs().max() / want.abs().max()).item()
        if not err < 2e-2:
            raise RuntimeError(f"{label} on rank {rank}: output differs from the serial whole batch "
                               f"(max relative error {err:.3g})")
        if rank == 0:
            print(f"check {label} {shape['name']} {experts.kind} experts: max relative error "
                  f"{err:.2g}", flush=True)


def measure(comm_kind, group, shape, world, rank, tokens, layers, device, dtype, args, experts,
            with_plain=False):
    """One cell's times; with_plain adds the plain-SGLang baseline over the same group."""
    kind = experts.kind
    halves = [tokens // 2, tokens - tokens // 2]
    core = args.attention == "sdpa"
    ops = StandInOps(shape, rank, halves, device, dtype, experts, core)
    whole = StandInOps(shape, rank, [tokens], device, dtype, experts, core)
    comm = make_transport(comm_kind, group, shape["hidden"], dtype, device)
    for mb, t in enumerate(halves):
        comm.set_rows(mb, [t] * world)
    whole_comm = make_transport(comm_kind, group, shape["hidden"], dtype, device)
    whole_comm.set_rows(0, [tokens] * world)
    # random, not zeros: GEMMs on zeros can run faster than on real data
    gathered = {mb: torch.randn(t * world, shape["hidden"], device=device, dtype=dtype)
                for mb, t in enumerate(halves)}
    rows_in = {mb: torch.empty_like(g) for mb, g in gathered.items()}

    def compute_only():
        for layer in range(layers):
            for mb in (0, 1):
                ops.attention(mb, layer)
                # fresh rows each call, as the all_gather writes them in a layer: fused experts
                # overwrite their input, and fed their own output again they ran far faster than
                # on real rows (1xH200, 2026-11-23: about 9.6 ms for two calls the tuner times at
                # 17.5 ms)
                ops.experts(mb, layer, rows_in[mb].copy_(gathered[mb]))

    def comm_only():
        for _ in range(layers):
            for mb in (0, 1):
                comm.issue_gather(mb, ops.x[mb])
                comm.wait_gather(mb)
                comm.issue_scatter(mb, gathered[mb])
                comm.wait_scatter(mb)

    def serial():
        run_interleaved([micro_batch_program(0, layers, whole, whole_comm)])

    def overlapped():
        run_interleaved([micro_batch_program(mb, layers, ops, comm) for mb in (0, 1)])

    cases = [("compute", compute_only), ("comm", comm_only), ("serial", serial), ("overlapped", overlapped)]
    if with_plain:
        plain = StandInOps(shape, rank, [tokens], device, dtype, experts, core)
        plain_comm = SglangSumLenComm(group, shape["hidden"], dtype, device)
        plain_comm.set_rows(0, [tokens] * world)
        # zeros: summed in place on every call, random rows would overflow to inf (NCCL's speed
        # does not depend on the values; the GEMMs', which this does not time, might)
        whole_rows = torch.zeros(tokens * world, shape["hidden"], device=device, dtype=dtype)

        def plain_serial():
            run_interleaved([micro_batch_program(0, layers, plain, plain_comm)])

        def plain_comm_only():
            for _ in range(layers):
                plain_comm.issue_gather(0, plain.x[0])
                plain_comm.wait_gather(0)
                plain_comm.issue_scatter(0, whole_rows)
                plain_comm.wait_scatter(0)

        cases += [("plain", plain_serial), ("plain_comm", plain_comm_only)]
    t = {k: timed(f, device, args.iters) for k, f in cases}
    if args.profile and device.type == "cuda":
        for label, fn in (("overlapped", overlapped), ("serial", serial)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            if rank == 0:
                prof.export_chrome_trace(os.path.join(
                    args.profile, f"trace_{comm_kind}_{shape['name']}_{kind}_{tokens}_{label}.json"))
    return {"comm": comm_kind, "shape": shape["name"], "experts": kind, "attention": args.attention,
            "projections": ops.projections, "tokens_per_rank": tokens,
            "layers": layers, "world": world, "comm_priority": args.comm_priority, **derived(t)}


TIMES = ("compute", "comm", "serial", "overlapped", "plain", "plain_comm")  # plain*: optional


def derived(t: dict) -> dict:
    """Times in ms of compute, comm, serial, overlapped (and plain, plain_comm) -> the row's numbers."""
    hidden = t["compute"] + t["comm"] - t["overlapped"]
    return {**{f"{k}_ms": round(v, 3) for k, v in t.items()},
            "comm_share": round(t["comm"] / (t["comm"] + t["compute"]), 3),
            "speedup": round(t["serial"] / t["overlapped"], 3),
            "overlap_efficiency": round(hidden / min(t["compute"], t["comm"]), 3),
            **({"vs_plain": round(t["plain"] / t["overlapped"], 3)} if "plain" in t else {})}


def marginal(rows: list[dict]) -> list[dict]:
    """Per added layer, from the fewest and the most layers of each cell: the steady state, without
    the first all_gather and the last reduce_scatter, which no compute can hide."""
    out = []
    cell_of = lambda r: (r["comm"], r["shape"], r.get("experts", "dense"), r["tokens_per_rank"])  # noqa: E731
    for cell in sorted({cell_of(r) for r in rows}):
        runs = sorted((r for r in rows if cell_of(r) == cell), key=lambda r: r["layers"])
        lo, hi = runs[0], runs[-1]
        if hi["layers"] == lo["layers"]:
            continue
        n = hi["layers"] - lo["layers"]
        t = {k: (hi[f"{k}_ms"] - lo[f"{k}_ms"]) / n for k in TIMES if f"{k}_ms" in lo and f"{k}_ms" in hi}
        out.append({"comm": cell[0], "shape": cell[1], "experts": cell[2], "tokens_per_rank": cell[3],
                    "layers": f"per layer, {lo['layers']}->{hi['layers']}", **derived(t)})
    return out


def against_baselines(rows: list[dict]) -> list[dict]:
    """Each row with vs_nccl_serial = serial time of the same (shape, experts, tokens, layers) over
    the default NCCL communicator / this row's overlapped time, and vs_plain = that cell's plain
    SGLang time / this row's overlapped time (rows of other transports have no plain time of
    their own); rows without such baselines as they are."""
    cell_of = lambda r: (r["shape"], r.get("experts", "dense"), r["tokens_per_rank"], r["layers"])  # noqa: E731
    default = {cell_of(r): r for r in rows if r["comm"] == "nccl"}
    out = []
    for r in rows:
        base = default.get(cell_of(r))
        if base:
            r = {**r, "vs_nccl_serial": round(base["serial_ms"] / r["overlapped_ms"], 3)}
            if "plain_ms" in base:
                r["vs_plain"] = round(base["plain_ms"] / r["overlapped_ms"], 3)
        out.append(r)
    return out


def init_rank(rank: int, world: int, device_kind: str, init_file: str) -> tuple[torch.device, torch.dtype]:
    """Join the process group of a spawned rank: NCCL and bf16 on its own GPU, or gloo and fp32
    on the CPU. Returns the rank's device and dtype."""
    cuda = device_kind == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}",
                            rank=rank, world_size=world, **({"device_id": device} if cuda else {}))
    return device, torch.bfloat16 if cuda else torch.float32


def worker(rank, world, args, init_file, queue):
    cuda = args.device == "cuda"
    device, dtype = init_rank(rank, world, args.device, init_file)
    group = dist.group.WORLD
    if cuda and args.comm_priority == "high":
        # NCCL's kernels on a high-priority stream get SMs as soon as a GEMM wave retires,
        # instead of queueing behind every CTA of the GEMM that is running.
        group = nccl_group(list(range(world)), high_priority=True)
    if cuda and args.prior_symm_alloc:
        # What SGLang 0.5.17's custom all-reduce v2 does at start-up, before any TBO forward: a
        # symmetric allocation on another group of the same ranks (empty_strided_p2p with the
        # group's name, rendezvous, barrier). Reproduces that state for the copy-engine transport.
        from torch._C._distributed_c10d import _SymmetricMemory

        other = dist.new_group(list(range(world)), backend="gloo")
        prior = _SymmetricMemory.empty_strided_p2p((1 << 20,), [1], torch.uint8, device, other.group_name)
        _SymmetricMemory.rendezvous(prior)
        torch.cuda.synchronize()
        dist.barrier(group=other)
    # (label, transport, CTA limit, group): NCCL once per --nccl-max-ctas value; a limit > 0 is
    # the serving path's --atom-tbo-nccl-max-ctas, a communicator of its own
    transports = []
    for comm_kind in args.comm.split(","):
        limits = [int(n) for n in args.nccl_max_ctas.split(",")] if comm_kind == "nccl" and cuda else [0]
        for n in limits:
            transports.append((comm_kind if n == 0 else f"{comm_kind}-ctas{n}", comm_kind, n,
                               group if n == 0 else nccl_group(
                                   list(range(world)), n, args.comm_priority == "high")))
    kinds = args.experts.split(",")
    if any(EXPERTS[k].sglang_kernel for k in kinds):
        # SGLang's kernel-config lookup reads the process's published server args, as in a server
        publish_server_args(os.path.join(REPO, "models", args.shapes.split(",")[0]))
    rows = []
    for label, comm_kind, max_ctas, comm_group in transports:
        for name in args.shapes.split(","):
            shape = dict(args.shape_table[name], name=name)
            for kind in kinds:
                experts = EXPERTS[kind](shape, world, device, dtype)
                check(comm_kind, comm_group, shape, world, rank, device, dtype, 2, experts,
                      args.attention == "sdpa")
                for tokens in [int(t) for t in args.tokens.split(",")]:
                    for layers in [int(n) for n in args.layers.split(",")]:
                        row = measure(comm_kind, comm_group, shape, world, rank, tokens, layers, device,
                                      dtype, args, experts, with_plain=label == "nccl")
                        rows.append(row | {"comm": label, "nccl_max_ctas": max_ctas})
                        if rank == 0:
                            print(json.dumps(rows[-1]), flush=True)
                del experts  # the next kind's weights (GBs at DeepSeek-V3 widths) take their place
    if rank == 0:
        queue.put(rows)
    dist.destroy_process_group()


def rank0_rows(queue, procs, poll_s: float = 5.0) -> list[dict]:
    """Rank 0's rows; if a rank dies first (its traceback is on stderr), stop every rank and
    raise, instead of waiting on the queue while the others block in a collective."""
    import queue as queue_module

    while True:
        try:
            return queue.get(timeout=poll_s)
        except queue_module.Empty:
            dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise SystemExit(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} "
                                 "before the results were in (its traceback is above)")


def run_ranks(target, world: int, args, prefix: str) -> list[dict]:
    """Spawn `world` ranks of target(rank, world, args, init_file, queue) and return the rows
    rank 0 puts on the queue (a rank that dies stops the run, `rank0_rows`)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = tempfile.mktemp(prefix=prefix)
    procs = [ctx.Process(target=target, args=(r, world, args, init_file, queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        rows = rank0_rows(queue, procs)
        for p in procs:
            p.join(timeout=60)
    finally:
        if os.path.exists(init_file):  # gloo's file store outlives ranks that exit without teardown
            os.remove(init_file)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=4, help="ranks (one GPU each on CUDA)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--shapes", default="deepseek-v3-width,qwen3-235b-width")
    ap.add_argument("--tokens", default="4096,8192,16384", help="tokens per rank per forward")
    ap.add_argument("--layers", default="4,12",
                    help="layer counts; with two, also the per-layer marginal (steady state) numbers")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--experts", default="dense",
                    help="comma list of what runs the experts: dense (a GEMM pair of the routed "
                         "experts' FLOPs), fused (SGLang's Triton fused MoE, CUDA only), fused-fp8 (the "
                         "same with block-FP8 weights, and FP8 attention projections; CUDA only)")
    ap.add_argument("--moe-configs", default="sglang", help="with --experts fused: " + MOE_CONFIGS_HELP)
    ap.add_argument("--attention", choices=("projections", "sdpa"), default="projections",
                    help="attention compute on local rows: the QKV and output projections only, or "
                         "also causal attention over each rank's tokens (PyTorch SDPA; micro-batch 1 "
                         "attends to micro-batch 0 as its prefix, as a cut sequence's second half does)")
    ap.add_argument("--comm", default="nccl,copy-engine",
                    help="transports to compare: nccl, copy-engine (CUDA only)")
    ap.add_argument("--comm-priority", choices=("default", "high"), default="default",
                    help="priority of the NCCL stream the collectives run on")
    ap.add_argument("--nccl-max-ctas", default="0",
                    help="comma list; NCCL runs once per value, on a communicator limited to that many "
                         "CTAs (0: the default communicator, NCCL's choice)")
    ap.add_argument("--profile", default="", help="write rank 0's chrome traces of one overlapped "
                    "and one serial forward per cell into this folder")
    ap.add_argument("--prior-symm-alloc", action="store_true",
                    help="first make a symmetric allocation on another group of the same ranks, as "
                         "SGLang's custom all-reduce does (diagnoses the copy-engine serving stop)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    # travels in args: spawned workers re-import this module and would see the full SHAPES
    args.shape_table = {name: dict(SHAPES[name]) for name in args.shapes.split(",")}
    if args.quick:
        for s in args.shape_table.values():
            s.update(hidden=64, inter=32, q_dim=64, kv_dim=16)
        args.tokens, args.layers, args.iters = "16,32", "2,3", 3
    if args.device == "cpu":
        args.comm = "nccl"  # the c10d transport runs on gloo there; copy engines need CUDA
    unknown = set(args.experts.split(",")) - set(EXPERTS)
    if unknown:
        ap.error(f"--experts: unknown {sorted(unknown)}; choose from {', '.join(EXPERTS)}")
    if any(EXPERTS[k].sglang_kernel for k in args.experts.split(",")) and args.device != "cuda":
        ap.error("--experts fused and fused-fp8 run SGLang's Triton kernels: use --device cuda, or "
                 "--experts dense on CPU")
    os.environ.update(moe_configs_env(args.moe_configs))  # inherited by the spawned ranks
    rows = run_ranks(worker, args.gpus, args, "tbo_bench_")
    rows, per_layer = against_baselines(rows), against_baselines(marginal(rows))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        record_json(os.path.join(args.out, "tbo_layer.json"),
                    {**provenance(), "moe_configs": args.moe_configs, "rows": rows, "per_layer": per_layer,
                     "env": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TORCH_NCCL_"))}})
    print(f"{'comm':12} {'shape':20} {'experts':7} {'T/rank':>7} {'layers':>18} {'compute':>8} {'comm':>7} "
          f"{'serial':>7} {'overlap':>8} {'speedup':>7} {'eff':>5} {'vs nccl serial':>14} {'plain':>7} "
          f"{'vs plain':>8}")
    for r in rows + per_layer:
        print(f"{r['comm']:12} {r['shape']:20} {r['experts']:7} {r['tokens_per_rank']:>7} {r['layers']:>18} "
              f"{r['compute_ms']:>8} {r['comm_ms']:>7} "
              f"{r['serial_ms']:>7} {r['overlapped_ms']:>8} {r['speedup']:>7} {r['overlap_efficiency']:>5} "
              f"{r.get('vs_nccl_serial', '-'):>14} {r.get('plain_ms', '-'):>7} {r.get('vs_plain', '-'):>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
