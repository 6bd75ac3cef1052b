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
    s = trace_summary.summarize(trace_summary.load(str(path)))
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
    return {"ph": "X", "cat": "python_function", "name": name, "ts": ts, "dur": dur,
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
    s = trace_summary.python_summary(trace_summary.load_python(str(path)))
    inclusive = {r["function"]: r["ms"] for r in s["inclusive"]}
    own = {r["function"]: r["ms"] for r in s["self"]}
    assert inclusive["scheduler.py(10): run_batch"] == 1.0
    assert inclusive["overlap.py(9): step"] == 0.6  # the outer call only
    # the two tolist calls on different tensors are one function (addresses dropped)
    assert inclusive["<built-in method tolist of Tensor object>"] == 0.35
    assert own == {"scheduler.py(10): run_batch": 0.1, "tbo.py(5): prepare": 0.05,
                   "<built-in method tolist of Tensor object>": 0.35, "overlap.py(9): step": 0.5}
    assert [r["function"] for r in s["self"]][0] == "overlap.py(9): step"
