"""Benchmark rig, never for serving: a DP-attention server at --dp 1 on one GPU.

SGLang 0.5.17 will not run DP attention at one rank: its argument resolution turns
`--enable-dp-attention` off at `--dp 1` (`_data_parallelism_defaults`, arg_groups/overrides.py),
every MLP-sync pass asserts `dp_size > 1` (`require_mlp_tp_gather`, utils/common.py), and its
gathered table of one row aliases the fallback row it then writes (`MLPSyncBatchInfo.all_gather`,
managers/scheduler_components/dp_attn.py).
sglang-atom's `tbo_active` follows SGLang and says no at one rank. With those four patched, a
`--tp 1 --dp 1 --enable-dp-attention --enable-two-batch-overlap --backend atom` server splits
its prefill passes as at DP2 and above, while every collective moves nothing: what it measures
is the split's own cost (two child batches prepared on the host, twice the launches, half-size
GEMMs, the cut half's prefix attention), on the one GPU most sessions get.

Python imports `sitecustomize` at start in every process whose PYTHONPATH names this folder,
including the processes SGLang spawns (they inherit the environment);
`benchmarks/tbo_serving.py --world1` puts it there. It shadows any other `sitecustomize` further
down the path. The patches apply when each module loads, before anything imports the patched
names, and each process writes one stderr line per patch it applied, so a server log shows the
rig was there.
"""

import importlib.abc
import importlib.machinery
import sys

BANNER = "sglang-atom world1 rig (benchmark only):"


def _keep_dp_attention(module) -> None:
    original = module._data_parallelism_defaults

    def _data_parallelism_defaults(view):
        return {} if view.dp_size == 1 else original(view)

    passes = module.POST_PROCESS_PASSES
    passes[passes.index(original)] = _data_parallelism_defaults  # registered at import
    module._data_parallelism_defaults = _data_parallelism_defaults  # and called by name
    print(f"{BANNER} DP attention kept at --dp 1", file=sys.stderr, flush=True)


def _gather_at_one_rank(module) -> None:
    original = module.require_mlp_tp_gather

    def require_mlp_tp_gather(server_args):
        from sglang.srt.runtime_context import get_parallel

        parallel = get_parallel()
        if parallel.enable_dp_attention and parallel.dp_size == 1:
            return True  # what dp > 1 answers without a dense TP group; a gather of one is a copy
        return original(server_args)

    module.require_mlp_tp_gather = require_mlp_tp_gather
    print(f"{BANNER} MLP gather at --dp 1", file=sys.stderr, flush=True)


def _fallback_row_apart(module) -> None:
    info = module.MLPSyncBatchInfo
    original = info._get_fallback_tensor

    def _get_fallback_tensor(self, device, *args, **kwargs):
        row = original(self, device, *args, **kwargs)
        if self.dp_size * self.tp_size * self.cp_size != 1:
            return row
        # At one rank `all_gather` builds its gathered table as `row.expand(1, 1, w).contiguous()`,
        # which for a contiguous row is the row itself, and then writes the row into that table:
        # PyTorch refuses the overlapping write. A strided copy makes `contiguous()` copy.
        return row.repeat_interleave(2)[::2]

    info._get_fallback_tensor = _get_fallback_tensor
    print(f"{BANNER} MLP-sync table apart from its fallback row at --dp 1", file=sys.stderr, flush=True)


def _tbo_at_one_rank(module) -> None:
    def tbo_active(cfg, setup):
        return cfg.enabled and setup.two_batch_overlap and setup.dp_attention

    module.tbo_active = tbo_active
    print(f"{BANNER} two-batch overlap at --dp 1", file=sys.stderr, flush=True)


PATCHES = {
    "sglang.srt.arg_groups.overrides": _keep_dp_attention,
    "sglang.srt.utils.common": _gather_at_one_rank,
    "sglang.srt.managers.scheduler_components.dp_attn": _fallback_row_apart,
    "sglang_atom.validation": _tbo_at_one_rank,
}


class _PatchAfterLoad(importlib.abc.MetaPathFinder):
    """Finds the modules of PATCHES as Python would, and patches each right after it runs."""

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterLoad())
