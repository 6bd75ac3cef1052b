"""Drive sglang-atom's admission through SGLang's Scheduler code on 4 gloo ranks (CPU).

The launcher part parses real ServerArgs with --backend atom (installing the hooks and
publishing the config to the environment, as `sglang.launch_server` does), then spawns 4
processes. Each loads plugins the way SGLang's scheduler processes do, builds a real `Scheduler`
object without a model (only the attributes the prefill path reads) and SGLang's TP
`GroupCoordinator` on gloo, runs the hooked `Scheduler.init_schedule_policy` and then, every
pass, the hooked `Scheduler.get_new_batch_prefill` followed by SGLang's per-pass DP sync
(`prepare_mlp_sync_batch_raw`), which carries the admission state. Workloads are random per
rank; the last rank never gets a request. Prints one JSON line: every rank's decision sequence,
admitted counts, and the all_gathers per pass (admission must add none to SGLang's one).

With `tbo` as the fourth argument the server also has `--enable-two-batch-overlap`: each pass
then hands SGLang's sync the batch it would run (the admitted prefill, else a decode of the
running requests, else nothing and an idle batch), and every rank records whether the hooked
sync left its batch split, so the test can check that admission and TBO together still give
every rank the same split decision.

usage: python admission_lockstep.py MODEL_DIR PASSES SEED [tbo]
"""

import json
import os
import random
import sys
import tempfile
import time
from types import SimpleNamespace

import torch.multiprocessing as mp

WORLD = 4


def local_batch(prefill, running_reqs: int):
    """The ScheduleBatch fields SGLang's DP sync reads: the admitted prefill, else a decode."""
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    if prefill is not None:
        lens = [len(r.origin_input_ids) for r in prefill.reqs]
        return SimpleNamespace(
            forward_mode=ForwardMode.EXTEND, extend_num_tokens=sum(lens), extend_lens=lens,
            extend_logprob_start_lens=lens, return_logprob=False, batch_size=lambda: len(lens),
            input_embeds=None, prefix_lens=[0] * len(lens), spec_info=None, is_extend_in_batch=True)
    if running_reqs:
        return SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=lambda: running_reqs,
                               extend_lens=None, spec_info=None, is_extend_in_batch=False)
    return None


def worker(rank, server_args, init_file, passes, seed, with_tbo, out_queue):
    import logging

    import torch.distributed as dist

    from sglang.srt.plugins import load_plugins

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # as SGLang's scheduler does

    load_plugins()  # as run_scheduler_process does: SGLANG_ATOM_BACKEND=atom installs the hooks
    from sglang.srt.distributed import parallel_state
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.managers.scheduler_components.dp_attn import prepare_mlp_sync_batch_raw
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.runtime_context import publish

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    publish(server_args, role="scheduler")
    # SGLang's own TP group object on gloo; its NCCL-only communicators are off on CPU.
    parallel_state._TP = parallel_state.GroupCoordinator(
        group_ranks=[list(range(WORLD))], local_rank=rank, torch_distributed_backend="gloo",
        use_pynccl=False, use_pymscclpp=False, use_custom_allreduce=False,
        use_torch_symm_mem_all_reduce=False, use_hpu_communicator=False,
        use_xpu_communicator=False, use_npu_communicator=False, group_name="tp")
    tp_group = parallel_state.get_tp_group()
    if with_tbo:  # what SGLang's model runner does at start; the TBO preparer reads these flags
        from sglang.srt.layers.moe.utils import initialize_moe_config

        initialize_moe_config(server_args)
    all_gathers = [0]
    real_all_gather = dist.all_gather_into_tensor

    def counted_all_gather(*args, **kwargs):
        all_gathers[0] += 1
        return real_all_gather(*args, **kwargs)

    dist.all_gather_into_tensor = counted_all_gather

    sched = Scheduler.__new__(Scheduler)
    sched.server_args = server_args
    sched.ps = SimpleNamespace(tp_rank=rank, tp_size=WORLD, attn_dp_size=WORLD, attn_tp_rank=0)
    sched.tp_cpu_group = tp_group.cpu_group
    sched.schedule_policy = "fcfs"
    sched.tree_cache = None
    sched.enable_hierarchical_cache = False
    sched.enable_priority_scheduling = False
    sched.schedule_low_priority_values_first = False
    sched.chunked_prefill_size = 2048
    sched.max_prefill_tokens = 16384
    sched.chunked_req = None
    sched.waiting_queue = []
    usage = SimpleNamespace(value=0.1)
    sched.pool_stats_observer = SimpleNamespace(
        get_pool_stats=lambda: SimpleNamespace(get_max_pool_usage=lambda: usage.value))
    sched.init_schedule_policy()  # hooked: attaches the admission controller
    assert sched._atom_admission is not None, "admission controller was not attached"

    admitted = []

    def prefill_raw(prefill_delayer_single_pass, running_batch):
        """Stands in for SGLang's batch builder: admit waiting requests up to the budget."""
        budget, batch = sched.chunked_prefill_size, []
        while sched.waiting_queue and budget >= len(sched.waiting_queue[0].origin_input_ids):
            req = sched.waiting_queue.pop(0)
            budget -= len(req.origin_input_ids)
            batch.append(req)
        if not batch and sched.waiting_queue:  # the head is larger than a chunk: take it whole
            batch.append(sched.waiting_queue.pop(0))
        # a fire on "nothing pending" admits nothing this rank did not report at the last sync
        if sched._atom_admission.last_decision.reason == "nothing_pending":
            assert all(req.rid in sched._atom_admission.reported for req in batch), "unreported admitted"
        running_batch.reqs.extend(batch)
        admitted.append(len(batch))
        return (SimpleNamespace(reqs=batch) if batch else None), running_batch

    sched._get_new_batch_prefill_raw = prefill_raw
    rng = random.Random(seed * 100 + rank)
    running = SimpleNamespace(reqs=[SimpleNamespace() for _ in range(rng.randint(0, 8))])
    decisions, fired, gathers_per_pass, splits = [], 0, [], []
    for step in range(passes):
        if rank != WORLD - 1 and rng.random() < 0.3:  # the last rank never gets a request
            for _ in range(rng.randint(1, 3)):
                sched.waiting_queue.append(SimpleNamespace(
                    rid=f"{rank}-{step}-{len(sched.waiting_queue)}",
                    origin_input_ids=[0] * rng.randint(50, 3000),
                    time_stats=SimpleNamespace(wait_queue_entry_time=time.perf_counter()),
                    prefix_indices=[]))
        running.reqs = [r for r in running.reqs if rng.random() > 0.05]  # decodes finish
        usage.value = rng.random() * 0.95
        before = all_gathers[0]
        plan = sched.get_new_batch_prefill(running)  # hooked: decide + maybe prefill
        d = sched._atom_admission.last_decision
        decisions.append([int(d.fire), d.reason])
        fired += int(plan.batch_to_run is not None)
        # SGLang's per-pass DP sync (hooked: carries this rank's admission state to all ranks)
        synced = prepare_mlp_sync_batch_raw(
            local_batch(plan.batch_to_run, len(running.reqs)) if with_tbo else None,
            model_runner=SimpleNamespace(prefill_cuda_graph_runner=None), dp_size=WORLD,
            attn_tp_size=1, attn_cp_size=1, tp_group=tp_group,
            get_idle_batch=lambda: SimpleNamespace(forward_mode=ForwardMode.IDLE),
            disable_cuda_graph=True, require_mlp_tp_gather=True, disable_overlap_schedule=False,
            offload_tags=set())
        gathers_per_pass.append(all_gathers[0] - before)
        splits.append(None if synced is None else
                      [synced.tbo_split_seq_index is not None, synced.forward_mode.name,
                       list(synced.global_num_tokens)])
    out_queue.put((rank, decisions, sum(admitted), len(sched.waiting_queue), fired,
                   sorted(set(gathers_per_pass)), splits, sched._atom_admission.params.tbo_enabled))
    dist.destroy_process_group()


def main():
    model, passes, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with_tbo = sys.argv[4:] == ["tbo"]
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.server_args import prepare_server_args

    server_args = prepare_server_args([
        "--model-path", model, "--device", "cpu", "--tp", str(WORLD), "--dp", str(WORLD),
        "--enable-dp-attention", "--load-format", "dummy", "--skip-tokenizer-init",
        "--backend", "atom", "--atom-admission-max-wait-ms", "100000",
        *(["--enable-two-batch-overlap", "--atom-tbo-min-tokens", "1024"] if with_tbo else []),
    ])
    assert os.environ["SGLANG_ATOM_BACKEND"] == "atom"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = tempfile.mktemp(prefix="atom_gloo_")
    procs = [ctx.Process(target=worker, args=(r, server_args, init_file, passes, seed, with_tbo, queue))
             for r in range(WORLD)]
    for p in procs:
        p.start()
    results = {}
    deadline = time.time() + 240
    while len(results) < WORLD and time.time() < deadline:
        try:
            rank, decisions, admitted, left, fired, gathers, splits, tbo_aware = queue.get(timeout=5)
            results[rank] = dict(decisions=decisions, admitted=admitted, left=left, fired=fired,
                                 all_gathers_per_pass=gathers, splits=splits, tbo_aware=tbo_aware)
        except Exception:
            if any(p.exitcode not in (None, 0) for p in procs):
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    if os.path.exists(init_file):  # gloo's file store outlives ranks that exit without teardown
        os.remove(init_file)
    print(json.dumps({"ranks": results, "exitcodes": [p.exitcode for p in procs]}), flush=True)


if __name__ == "__main__":
    main()
