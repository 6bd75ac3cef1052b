"""Tune SGLang's Triton fused-MoE kernel configs for the shipped bf16 benchmark models.

    python3 benchmarks/moe_tune.py --shapes 257:512,256:512,257:1024 --out DIR
    python3 benchmarks/moe_tune.py --dtype fp8 --no-search --shapes 257:512 --batch-sizes 32768 --out DIR

SGLang 0.5.17 looks up a tuned kernel config per (experts E, intermediate size per rank N, GPU,
Triton version) and falls back to an untuned default when it has none. It ships none for bf16
experts at E=256/257 (DeepSeek-V3 widths without FP8), so our DeepSeek-V3-width servers ran the
fallback. This script times SGLang's own `fused_experts` (both GEMMs, with
`override_config`, replayed as a CUDA graph) over a search space at each batch size M against
SGLang's own choice (its shipped file, or its default), on uniform random routing with
--topk experts per row (with E = 257, the fused shared expert, the last one, is added to every
row as SGLang does), and writes:

  DIR/configs/triton_<version>/<SGLang's file name>   the best config per M, SGLang's format, on top
                                                      of SGLang's own table of that name if it has one
  DIR/moe_tune.json                                   per shape and M: SGLang's choice vs best time

--dtype fp8 runs the experts as a block-FP8 checkpoint stores them (DeepSeek-V3's: 128 x 128
weight blocks with a float32 scale each, activations quantized per token in groups of 128), the
call SGLang's MoE layer makes for such a model; --no-search times SGLang's own choice only (what
a server runs) and writes no config.

Give servers the result with `SGLANG_MOE_CONFIG_DIR` pointing at a directory built by
`serving.moe_config_dir` (SGLang's own configs with these on top), as `admission_ab.py
--moe-configs` does. Stops tuning new shapes once --deadline-s has passed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402

FP8_BLOCK = 128  # the weight block (and activation group) of DeepSeek-V3's and Qwen3's FP8 checkpoints
BATCH_SIZES = [1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
SMALL_M = 256  # at or below: the small-tile search space


def search_space(m: int, narrow: bool = False) -> list[dict]:
    """Kernel configs to try at batch size m: small tiles for decode-sized M, large for prefill.
    `narrow` keeps the neighbourhood of what won over the full space at E=257, N=512 on H200
    (2026-11-23), at about 40% of the compile time."""
    if m <= SMALL_M:
        tiles = itertools.product([16, 32, 64], [32, 64, 128], [64, 128] if narrow else [64, 128, 256], [1])
        launch = [(4, 3), (4, 4)] if narrow else [(4, 3), (4, 4), (4, 5)]
    else:
        tiles = itertools.product([64, 128], [64, 128, 256], [64] if narrow else [64, 128], [16])
        launch = [(4, 3), (8, 3), (8, 4)] if narrow else [(4, 3), (4, 4), (8, 3), (8, 4)]
    return [dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=gm,
                 num_warps=w, num_stages=s)
            for (bm, bn, bk, gm), (w, s) in itertools.product(list(tiles), launch)]


def best_config(timings: list[tuple[dict, float]]) -> tuple[dict, float]:
    """The fastest (config, seconds) of those that ran."""
    return min(timings, key=lambda cs: cs[1])


def write_config_table(out_dir: str, triton_version: str, file_name: str, table: dict[int, dict]) -> str:
    """Write {M: config} where SGLang's get_moe_configs looks under SGLANG_MOE_CONFIG_DIR."""
    folder = os.path.join(out_dir, "configs", "triton_" + triton_version.replace(".", "_"))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, file_name)
    with open(path, "w") as f:
        json.dump({str(m): table[m] for m in sorted(table)}, f, indent=2)
    return path


def stock_table(file_name: str, triton_version: str) -> tuple[str | None, dict[int, dict]]:
    """SGLang's own table of that name, as SGLang 0.5.17 finds it without SGLANG_MOE_CONFIG_DIR
    (its current Triton version's folder, else the newest other version that has the file):
    (path or None, {M: config})."""
    from serving import sglang_moe_configs

    root = sglang_moe_configs()
    versions = sorted((d.removeprefix("triton_").replace("_", ".") for d in os.listdir(root)
                       if d.startswith("triton_")),
                      key=lambda v: (v != triton_version, [-int(x) for x in v.split(".")]))
    for version in versions:
        path = os.path.join(root, "triton_" + version.replace(".", "_"), file_name)
        if os.path.exists(path):
            with open(path) as f:
                return path, {int(m): c for m, c in json.load(f).items()}
    return None, {}


def config_file_name(experts: int, inter: int, dtype: str) -> str:
    """The file name SGLang looks up for this shape's kernel configs on this GPU."""
    from sglang.srt.layers.moe.moe_runner.triton_utils import get_config_file_name

    if dtype == "fp8":
        return get_config_file_name(experts, inter, "fp8_w8a8", [FP8_BLOCK, FP8_BLOCK])
    return get_config_file_name(experts, inter, None)


def publish_server_args(model: str, device: str = "cuda") -> None:
    """SGLang 0.5.17's kernel-config lookup reads the process's published server args (its
    deterministic-inference flag), as in a server process; publish those of a plain server."""
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import prepare_server_args

    publish(prepare_server_args(["--model-path", model, "--device", device]), role="test")


def routing(m: int, experts: int, topk: int, device):
    """Uniform random top-k over the routed experts; with an odd expert count (DeepSeek's fused
    shared expert) the last expert is added to every row."""
    import torch

    routed = experts - (experts % 2)
    ids = torch.rand(m, routed, device=device).topk(topk, dim=1).indices.to(torch.int32)
    weights = torch.rand(m, topk, device=device, dtype=torch.float32)
    if routed != experts:
        ids = torch.cat([ids, torch.full((m, 1), routed, device=device, dtype=torch.int32)], dim=1)
        weights = torch.cat([weights, torch.ones(m, 1, device=device)], dim=1)
    return weights / weights.sum(dim=1, keepdim=True), ids


def quantize_fp8_blocks(w):
    """A [n, k] weight as a block-FP8 checkpoint stores it: float8_e4m3fn values and one float32
    scale per 128 x 128 block (SGLang's `weight_scale_inv`), with w close to values x scale."""
    import torch

    n, k = w.shape
    if n % FP8_BLOCK or k % FP8_BLOCK:
        raise ValueError(f"FP8 weight blocks are {FP8_BLOCK} x {FP8_BLOCK}: a {n} x {k} weight does not "
                         f"divide into them (SGLang refuses such a shard too)")
    blocks = w.float().view(n // FP8_BLOCK, FP8_BLOCK, k // FP8_BLOCK, FP8_BLOCK)
    scale = (blocks.abs().amax(dim=(1, 3)) / torch.finfo(torch.float8_e4m3fn).max).clamp(
        min=torch.finfo(torch.float32).tiny)
    return (blocks / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(n, k), scale


def expert_weights(experts: int, inter: int, hidden: int, device, dtype: str = "bf16",
                   std: float | None = None, seed: int = 0):
    """(w1 [E, 2N, H], w2 [E, H, N], the matching fused_experts keyword arguments): random normal
    with standard deviation `std` (None: one over the square root of the fan-in), from a generator
    seeded on `device` (the same weights on every rank); 'fp8' stores them in 128 x 128 blocks
    (`quantize_fp8_blocks`, one expert at a time to bound the float32 temporaries) and asks
    fused_experts for its block-FP8 kernel."""
    import torch

    if dtype not in ("bf16", "fp8"):
        raise ValueError(f"expert weights: bf16 or fp8, not {dtype!r}")
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = ((2 * inter, hidden), (hidden, inter))  # (rows, fan-in) of w1 and w2, per expert
    if dtype == "bf16":
        w1, w2 = (torch.randn(experts, rows, cols, generator=g, device=device, dtype=torch.bfloat16)
                  * (std or cols ** -0.5) for rows, cols in shapes)
        return w1, w2, {}
    pairs = []
    for rows, cols in shapes:
        w = torch.empty(experts, rows, cols, device=device, dtype=torch.float8_e4m3fn)
        scale = torch.empty(experts, rows // FP8_BLOCK, cols // FP8_BLOCK, device=device)
        for e in range(experts):
            w[e], scale[e] = quantize_fp8_blocks(torch.randn(rows, cols, generator=g, device=device)
                                                 * (std or cols ** -0.5))
        pairs.append((w, scale))
    (w1, s1), (w2, s2) = pairs
    return w1, w2, dict(use_fp8_w8a8=True, w1_scale=s1, w2_scale=s2, block_shape=[FP8_BLOCK, FP8_BLOCK])


def time_fused_moe(experts: int, inter: int, hidden: int, topk: int, m: int, config: dict | None,
                   iters: int, dtype: str = "bf16") -> float:
    """Seconds per call of SGLang's fused_experts at batch m, with `config` (None: SGLang's choice)."""
    import torch
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_experts, override_config
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    dev = torch.device("cuda")
    w1, w2, quant = _weights(experts, inter, hidden, dtype)
    x = torch.randn(m, hidden, device=dev, dtype=torch.bfloat16)
    weights, ids = routing(m, experts, topk, dev)
    topk_output = StandardTopKOutput(weights, ids, None)
    # in place, as SGLang's MoE layers call it (the output overwrites x; timing does not care)
    runner = MoeRunnerConfig(num_experts=experts, num_local_experts=experts, inplace=True)

    def call():
        return fused_experts(x, w1, w2, topk_output, runner, **quant)

    with override_config(config):
        call()  # compiles the kernels, which a graph capture cannot
        torch.cuda.synchronize()
        # Replayed as a CUDA graph, as SGLang runs decode: a Python loop of calls is bound by the
        # host's launches (about 0.3 ms a call on H200), which hides any kernel faster than that.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / iters


_WEIGHTS: dict = {}


def _weights(experts: int, inter: int, hidden: int, dtype: str):
    """One set of expert weights per shape, kept while that shape is tuned (they are large)."""
    import torch

    key = (experts, inter, hidden, dtype)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        torch.cuda.empty_cache()
        # std 0.02: the values every tuning run since 2026-11-23 used
        _WEIGHTS[key] = expert_weights(experts, inter, hidden, torch.device("cuda"), dtype, std=0.02)
    return _WEIGHTS[key]


def iters_for(m: int) -> int:
    return 50 if m <= SMALL_M else (20 if m <= 4096 else 8)


def tune_shape(experts: int, inter: int, hidden: int, topk: int, batch_sizes: list[int], narrow: bool,
               dtype: str = "bf16", search: bool = True) -> dict:
    rows = []
    for m in batch_sizes:
        it = iters_for(m)
        sglang_s = time_fused_moe(experts, inter, hidden, topk, m, None, it, dtype)
        if not search:
            rows.append(dict(m=m, sglang_ms=sglang_s * 1e3))
            print(f"E={experts} N={inter} M={m} {dtype}: SGLang's config {sglang_s * 1e3:.3f} ms", flush=True)
            continue
        timings = []
        # block FP8 reads one weight scale per 128 columns of K, so a K tile must not straddle blocks
        for cfg in [c for c in search_space(m, narrow) if dtype != "fp8" or FP8_BLOCK % c["BLOCK_SIZE_K"] == 0]:
            try:
                timings.append((cfg, time_fused_moe(experts, inter, hidden, topk, m, cfg, it, dtype)))
            except Exception as exc:  # a config over the GPU's shared memory: skip it
                if "OutOfResources" not in type(exc).__name__ and "out of resource" not in str(exc):
                    raise
        cfg, best_s = best_config(timings)
        rows.append(dict(m=m, sglang_ms=sglang_s * 1e3, best_ms=best_s * 1e3,
                         speedup=sglang_s / best_s, config=cfg, configs_tried=len(timings)))
        print(f"E={experts} N={inter} M={m}: SGLang's config {sglang_s * 1e3:.3f} ms, best {best_s * 1e3:.3f} ms "
              f"({sglang_s / best_s:.2f}x) {cfg}", flush=True)
    return dict(experts=experts, inter=inter, hidden=hidden, topk=topk, dtype=dtype, narrow=narrow,
                search=search, rows=rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="257:512",
                    help="comma-separated E:N, SGLang's file-name keys: experts (257 = DeepSeek's 256 "
                         "routed + the fused shared expert) and intermediate size per rank (2048 / TP "
                         "for DeepSeek-V3 widths), tuned in this order")
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--topk", type=int, default=8, help="routed experts per row (without the shared one)")
    ap.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    ap.add_argument("--narrow", action="store_true", help="the narrower search space (see search_space)")
    ap.add_argument("--dtype", choices=("bf16", "fp8"), default="bf16",
                    help="expert weights: bf16, or 128 x 128 block FP8 as DeepSeek-V3's checkpoint")
    ap.add_argument("--no-search", dest="search", action="store_false",
                    help="time SGLang's own config choice only (what a server runs); write no config")
    ap.add_argument("--model", default="models/deepseek-v3-width",
                    help="a model directory for the server args SGLang's kernel code reads")
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import triton

    publish_server_args(args.model)
    os.makedirs(args.out, exist_ok=True)  # with --no-search no config table creates it
    t0 = time.time()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    result = dict(provenance(), triton=triton.__version__, timing="cuda_graph_replay", shapes=[], skipped=[])
    for experts, inter in (map(int, s.split(":")) for s in args.shapes.split(",")):
        if time.time() - t0 > args.deadline_s:
            result["skipped"].append(dict(experts=experts, inter=inter, why="deadline"))
            continue
        shape = tune_shape(experts, inter, args.hidden, args.topk, batch_sizes, args.narrow, args.dtype,
                           args.search)
        if args.search:
            # SGLang picks the entry nearest a batch's M, and our file replaces its own: keep its
            # entries for the M not tuned here
            name = config_file_name(experts, inter, args.dtype)
            shape["stock_file"], table = stock_table(name, triton.__version__)
            table.update({r["m"]: r["config"] for r in shape["rows"]})
            shape["file"] = write_config_table(args.out, triton.__version__, name, table)
        result["shapes"].append(shape)
        record_json(os.path.join(args.out, "moe_tune.json"), result)
    result["seconds"] = time.time() - t0
    record_json(os.path.join(args.out, "moe_tune.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
