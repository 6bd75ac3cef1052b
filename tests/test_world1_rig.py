"""Integration tier: the benchmark rig that serves DP attention at one rank (benchmarks/world1).

`tbo_serving.py --world1` measures the two-batch split on one GPU by putting the rig on the
servers' PYTHONPATH. Here the same thing runs against real SGLang 0.5.17 on the CPU: real
ServerArgs with `--tp 1 --dp 1 --enable-dp-attention --enable-two-batch-overlap --backend atom`,
then SGLang's per-pass DP sync (`prepare_mlp_sync_batch_raw`) on a one-rank gloo group, the
path whose one-rank assumptions stopped the first GPU attempts. Without the rig the same
command line is refused, so the rig is what makes it run.
"""

import json
from pathlib import Path

from sglang_helpers import CPU_ARGS, ROOT, last_json, run_python

RIG = str(ROOT / "benchmarks" / "world1")
QWEN_235B = str(ROOT / "models" / "qwen3-235b-width")

ONE_RANK = r"""
import json, sys, tempfile
from types import SimpleNamespace
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.server_args import prepare_server_args
try:
    sa = prepare_server_args(json.loads(sys.argv[1]))
except BaseException as exc:
    print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
import torch.distributed as dist
from sglang.srt.distributed import parallel_state
from sglang.srt.layers.moe.utils import initialize_moe_config
from sglang.srt.managers.scheduler_components.dp_attn import prepare_mlp_sync_batch_raw
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.runtime_context import publish
from sglang.srt.utils import require_mlp_tp_gather
import sglang_atom.validation as validation
from sglang_atom.config import AtomConfig
from sglang_atom.integration.runtime import serving_setup

dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
publish(sa, role="scheduler")
parallel_state._TP = parallel_state.GroupCoordinator(
    group_ranks=[[0]], local_rank=0, torch_distributed_backend="gloo", use_pynccl=False,
    use_pymscclpp=False, use_custom_allreduce=False, use_torch_symm_mem_all_reduce=False,
    use_hpu_communicator=False, use_xpu_communicator=False, use_npu_communicator=False,
    group_name="tp")
initialize_moe_config(sa)  # as the model runner does; SGLang's TBO preparer reads it
lens = [3000, 1096]
batch = SimpleNamespace(
    forward_mode=ForwardMode.EXTEND, extend_num_tokens=sum(lens), extend_lens=lens,
    extend_logprob_start_lens=lens, return_logprob=False, batch_size=lambda: len(lens),
    input_embeds=None, prefix_lens=[0, 0], spec_info=None, is_extend_in_batch=True)
synced = prepare_mlp_sync_batch_raw(
    batch, model_runner=SimpleNamespace(prefill_cuda_graph_runner=None), dp_size=1,
    attn_tp_size=1, attn_cp_size=1, tp_group=parallel_state.get_tp_group(),
    get_idle_batch=lambda: None, disable_cuda_graph=True,
    require_mlp_tp_gather=require_mlp_tp_gather(sa), disable_overlap_schedule=False,
    offload_tags=set())
print(json.dumps({
    "dp_attention": sa.enable_dp_attention,
    "tbo_active": validation.tbo_active(AtomConfig.from_env(), serving_setup(sa, None)),
    "global_num_tokens": list(synced.global_num_tokens),
    "split_seq_index": synced.tbo_split_seq_index,
}))
"""


def argv():
    return ["--model-path", QWEN_235B, *CPU_ARGS, "--tp", "1", "--dp", "1", "--enable-dp-attention",
            "--backend", "atom", "--atom-admission", "off", "--enable-two-batch-overlap",
            "--atom-tbo-min-tokens", "1024"]


def test_rig_serves_the_split_through_sglangs_sync_at_one_rank():
    proc = run_python(ONE_RANK, env={"PYTHONPATH": RIG}, args=(json.dumps(argv()),))
    out = last_json(proc)
    assert "refused" not in out, out
    assert out["dp_attention"] is True and out["tbo_active"] is True
    assert out["global_num_tokens"] == [4096]
    # sglang-atom's token split of one rank's 4096 tokens: the cut lands in the first sequence
    assert out["split_seq_index"] is not None
    assert "world1 rig (benchmark only)" in proc.stderr  # every patched process says so


def test_without_the_rig_sglang_turns_dp_attention_off_at_one_rank():
    out = last_json(run_python(ONE_RANK, args=(json.dumps(argv()),)))
    assert "SGLang turns it off at --dp 1" in out["refused"]


def test_tbo_serving_ties_world1_to_dp1():
    script = str(Path(ROOT) / "benchmarks" / "tbo_serving.py")
    proc = run_python(f"import runpy, sys; sys.argv = {[script, 'perf', '--out', '/tmp/x', '--models', 'm', '--world1']!r}; "
                      f"runpy.run_path({script!r}, run_name='__main__')")
    assert proc.returncode != 0 and "--world1 and --dp 1 go together" in proc.stderr
