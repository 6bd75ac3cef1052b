"""benchmarks/trace_summary.py on a hand-built trace: busy time per stream and kind, the
compute stream's idle gaps."""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trace_summary  # noqa: E402


def kernel(name, ts, dur, stream, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"stream": stream}}


EVENTS = [
    kernel("nvjet_sm90_tst_192x192", 0, 400, 7),
    kernel("ncclDevKernel_AllGather_RING_LL", 100, 300, 17),
    kernel("_fwd_kernel_extend", 400, 200, 7),
    # compute stream idle 600-1000 us, waiting on the collective
    kernel("Memcpy DtoD (Device -> Device)", 700, 100, 17, cat="gpu_memcpy"),
    kernel("fused_moe_kernel", 1000, 500, 7),
    kernel("c10d::symmetric_memory::barrier_kernel", 1500, 50, 26),
    kernel("vectorized_elementwise_kernel add", 1500, 30, 7),
    {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5000},  # not GPU: ignored
]


def test_summary_splits_streams_and_kinds_and_finds_the_gap(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": EVENTS}, f)
    s = trace_summary.summarize(trace_summary.gpu_events(trace_summary.read(str(path))))
    assert s["span_ms"] == 1.55
    assert s["compute_stream"] == "7"
    assert s["streams"]["7"] == {"attention": 0.2, "elementwise": 0.03, "gemm": 0.4, "moe": 0.5, "total": 1.13}
    assert s["streams"]["17"] == {"copy": 0.1, "nccl": 0.3, "total": 0.4}
    assert s["streams"]["26"] == {"barrier": 0.05, "total": 0.05}
    assert s["compute_idle_ms"] == 0.4
    assert s["compute_longest_gaps"][0] == {"at_ms": 0.6, "gap_ms": 0.4, "after": "_fwd_kernel_extend"}


def test_empty_trace():
    assert trace_summary.summarize([])["compute_stream"] is None


def py(name, pid, parent, ts, dur):
    return {"ph": "X", "cat": "python_function", "name": name, "ts": ts, "dur": dur, "tid": 1,
            "args": {"Python id": pid, "Python parent id": parent}}


def test_python_summary_gives_inclusive_and_self_time_per_function(tmp_path):
    events = [
        py("scheduler.py(10): run_batch", 1, None, 0, 1000),
        py("tbo.py(5): prepare", 2, 1, 0, 300),
        py("<built-in method tolist of Tensor object at 0x7f00aa>", 3, 2, 10, 250),
        py("overlap.py(9): step", 4, 1, 300, 600),
        py("overlap.py(9): step", 5, 4, 350, 400),  # recursive: counted once inclusively
        py("<built-in method tolist of Tensor object at 0x7f00bb>", 6, 5, 400, 100),
        kernel("fused_moe_kernel", 0, 50, 7),  # GPU event: not Python
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    s = trace_summary.python_summary(trace_summary.read(str(path)))
    inclusive = {r["function"]: r["ms"] for r in s["inclusive"]}
    own = {r["function"]: r["ms"] for r in s["self"]}
    assert inclusive["scheduler.py(10): run_batch"] == 1.0
    assert inclusive["overlap.py(9): step"] == 0.6  # the outer call only
    # the two tolist calls on different tensors are one function (addresses dropped)
    assert inclusive["<built-in method tolist of Tensor object>"] == 0.35
    assert own == {"scheduler.py(10): run_batch": 0.1, "tbo.py(5): prepare": 0.05,
                   "<built-in method tolist of Tensor object>": 0.35, "overlap.py(9): step": 0.5}
    assert [r["function"] for r in s["self"]][0] == "overlap.py(9): step"


def runtime(name, ts, dur, tid=1):
    return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur, "tid": tid, "args": {}}


def launch(ts, corr):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 5,
            "args": {"correlation": corr}}


def launched(name, ts, dur, stream, corr):
    return {**kernel(name, ts, dur, stream), "args": {"stream": stream, "correlation": corr}}


FORWARD = "sglang/srt/model_executor/model_runner.py(1382): forward"


def test_passes_group_kernels_by_the_forward_that_launched_them(tmp_path):
    events = [
        # pass 0: a split prefill; its kernels run after the host has moved on (queued)
        py(FORWARD, 1, None, 0, 1000),
        py("sglang_atom/tbo/overlap.py(188): run_interleaved", 2, 1, 100, 800),
        launch(150, 11), launch(200, 12), launch(250, 13),
        launched("_fwd_kernel", 300, 400, 7, 11),
        launched("ncclDevKernel_AllGather_RING_LL", 400, 100, 9, 12),
        launched("fused_moe_kernel", 900, 300, 7, 13),  # 200 us idle on stream 7 before it
        # the host waits for the GPU: a sync and a DtoH copy inside the pass count, a kernel
        # launch does not, nor does a sync of another thread
        runtime("cudaStreamSynchronize", 20, 60), runtime("cudaMemcpyAsync", 600, 40),
        runtime("cudaStreamSynchronize", 700, 90, tid=2),
        # pass 1: a decode step, launched by a nested forward (a graph runner's) inside the outer one
        py(FORWARD, 3, None, 2000, 500),
        py(FORWARD, 4, 3, 2100, 300),
        launch(2200, 21), runtime("cudaDeviceSynchronize", 2450, 100),  # ends after the pass
        launched("ncclDevKernel_AllReduce_Sum", 2300, 600, 7, 21),
        launch(5000, 31), launched("fused_moe_kernel", 5000, 10, 7, 31),  # outside any forward
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"traceEvents": events}))
    p = trace_summary.passes(trace_summary.read(str(path)))
    assert [(x["split"], x["kernels"], x["host_ms"]) for x in p] == [(True, 3, 1.0), (False, 1, 0.5)]
    assert [x["host_blocked_ms"] for x in p] == [0.1, 0.0]
    assert p[0]["span_ms"] == 0.9 and p[0]["compute_stream"] == "7"
    assert p[0]["streams"]["7"] == {"attention": 0.4, "moe": 0.3, "total": 0.7}
    assert p[0]["streams"]["9"] == {"nccl": 0.1, "total": 0.1}
    assert p[0]["compute_idle_ms"] == 0.2
    assert p[1]["streams"]["7"] == {"nccl": 0.6, "total": 0.6}
    assert trace_summary.pass_line(0, p[0]).startswith(
        "  pass 0 (split): host 1.0 ms (0.1 waiting on the GPU), GPU span 0.9 ms, 3 kernels; "
        "compute stream attention 0.4, moe 0.3")
    # the host returned at 1000 us, its last kernel ended at 1200; the next pass's first kernel
    # started 1100 us after that
    assert (p[0]["gpu_after_host_ms"], p[0]["gpu_wait_before_ms"]) == (0.2, None)
    assert (p[1]["gpu_after_host_ms"], p[1]["gpu_wait_before_ms"]) == (0.4, 1.1)
    assert trace_summary.pass_line(1, p[1]).endswith(
        "GPU ends 0.4 ms after the host, waited 1.1 ms before it")
    by_kind = trace_summary.passes(trace_summary.read(str(path)), kernels="moe")
    assert by_kind[0]["kernels_moe"] == [
        {"name": "fused_moe_kernel", "calls": 1, "mean_us": 300.0, "total_ms": 0.3}]
    assert by_kind[1]["kernels_moe"] == []
    assert "kernels_moe" not in p[0]
