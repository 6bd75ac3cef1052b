"""Tune SGLang's Triton fused-MoE kernel configs for the shipped bf16 benchmark models.

    python3 benchmarks/moe_tune.py --shapes 257:512,256:512,257:1024 --out DIR

SGLang 0.5.17 looks up a tuned kernel config per (experts E, intermediate size per rank N, GPU,
Triton version) and falls back to an untuned default when it has none. It ships none for bf16
experts at E=256/257 (DeepSeek-V3 widths without FP8), so our DeepSeek-V3-width servers ran the
fallback. This script times SGLang's own `fused_experts` (both GEMMs, with
`override_config`, replayed as a CUDA graph) over a search space at each batch size M against
SGLang's own choice (its shipped file, or its default), on uniform random routing with
--topk experts per row (with E = 257, the fused shared expert, the last one, is added to every
row as SGLang does), and writes:

  DIR/configs/triton_<version>/<SGLang's file name>   the best config per M, SGLang's format
  DIR/moe_tune.json                                   per shape and M: SGLang's choice vs best time

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


def time_fused_moe(experts: int, inter: int, hidden: int, topk: int, m: int, config: dict | None,
                   iters: int) -> float:
    """Seconds per call of SGLang's fused_experts at batch m, with `config` (None: SGLang's choice)."""
    import torch
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
    from sglang.srt.layers.moe.moe_runner.triton_utils import fused_experts, override_config
    from sglang.srt.layers.moe.topk import StandardTopKOutput

    dev = torch.device("cuda")
    w1, w2 = _weights(experts, inter, hidden)
    x = torch.randn(m, hidden, device=dev, dtype=torch.bfloat16)
    weights, ids = routing(m, experts, topk, dev)
    topk_output = StandardTopKOutput(weights, ids, None)
    # in place, as SGLang's MoE layers call it (the output overwrites x; timing does not care)
    runner = MoeRunnerConfig(num_experts=experts, num_local_experts=experts, inplace=True)

    def call():
        return fused_experts(x, w1, w2, topk_output, runner)

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


def _weights(experts: int, inter: int, hidden: int):
    """One pair of expert weights per shape, kept while that shape is tuned (they are large)."""
    import torch

    key = (experts, inter, hidden)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        torch.cuda.empty_cache()
        dev = torch.device("cuda")
        _WEIGHTS[key] = (torch.randn(experts, 2 * inter, hidden, device=dev, dtype=torch.bfloat16) * 0.02,
                         torch.randn(experts, hidden, inter, device=dev, dtype=torch.bfloat16) * 0.02)
    return _WEIGHTS[key]


def iters_for(m: int) -> int:
    return 50 if m <= SMALL_M else (20 if m <= 4096 else 8)


def tune_shape(experts: int, inter: int, hidden: int, topk: int, batch_sizes: list[int], narrow: bool) -> dict:
    rows = []
    for m in batch_sizes:
        it = iters_for(m)
        sglang_s = time_fused_moe(experts, inter, hidden, topk, m, None, it)
        timings = []
        for cfg in search_space(m, narrow):
            try:
                timings.append((cfg, time_fused_moe(experts, inter, hidden, topk, m, cfg, it)))
            except Exception as exc:  # a config over the GPU's shared memory: skip it
                if "OutOfResources" not in type(exc).__name__ and "out of resource" not in str(exc):
                    raise
        cfg, best_s = best_config(timings)
        rows.append(dict(m=m, sglang_ms=sglang_s * 1e3, best_ms=best_s * 1e3,
                         speedup=sglang_s / best_s, config=cfg, configs_tried=len(timings)))
        print(f"E={experts} N={inter} M={m}: SGLang's config {sglang_s * 1e3:.3f} ms, best {best_s * 1e3:.3f} ms "
              f"({sglang_s / best_s:.2f}x) {cfg}", flush=True)
    return dict(experts=experts, inter=inter, hidden=hidden, topk=topk, narrow=narrow, rows=rows)


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
    ap.add_argument("--model", default="models/deepseek-v3-width",
                    help="a model directory for the server args SGLang's kernel code reads")
    ap.add_argument("--deadline-s", type=float, default=540)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import triton
    from sglang.srt.layers.moe.moe_runner.triton_utils import get_config_file_name

    publish_server_args(args.model)
    t0 = time.time()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    result = dict(provenance(), triton=triton.__version__, timing="cuda_graph_replay", shapes=[], skipped=[])
    for experts, inter in (map(int, s.split(":")) for s in args.shapes.split(",")):
        if time.time() - t0 > args.deadline_s:
            result["skipped"].append(dict(experts=experts, inter=inter, why="deadline"))
            continue
        shape = tune_shape(experts, inter, args.hidden, args.topk, batch_sizes, args.narrow)
        name = get_config_file_name(experts, inter, None)
        shape["file"] = write_config_table(args.out, triton.__version__, name,
                                           {r["m"]: r["config"] for r in shape["rows"]})
        result["shapes"].append(shape)
        record_json(os.path.join(args.out, "moe_tune.json"), result)
    result["seconds"] = time.time() - t0
    record_json(os.path.join(args.out, "moe_tune.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
