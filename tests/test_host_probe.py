"""benchmarks/host_probe.py: the cpulist parser, which CPU sets it times, and SGLang's real
binding function called in a child process on this machine."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import host_probe  # noqa: E402


def test_parse_cpulist():
    assert host_probe.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert host_probe.parse_cpulist("5") == [5]
    assert host_probe.parse_cpulist("") == []


def test_cpu_sets_names_numa_nodes_sglang_ranks_and_distinct_cores(monkeypatch):
    # 8 CPUs, hyperthreads paired as (c, c + 4), two NUMA nodes: {0,1,4,5} and {2,3,6,7}
    monkeypatch.setattr(host_probe, "thread_siblings", lambda c: sorted({c % 4, c % 4 + 4}))
    facts = {"allowed_cpus": list(range(8)), "numa_nodes": {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}}
    bindings = [{"tp": 2, "gpu_id": 0, "cpus": [0, 1, 4, 5]},
                {"tp": 2, "gpu_id": 1, "error": "OSError: [Errno 22] Invalid argument"}]
    sets = host_probe.cpu_sets(facts, bindings)
    assert sets == {"allowed": list(range(8)), "numa0": [0, 1, 4, 5], "numa1": [2, 3, 6, 7],
                    "sglang_tp2_gpu0": [0, 1, 4, 5],  # a binding that raised is not timed
                    "core_a": [0], "core_b": [1], "core_a_sibling": [4]}


def test_cpu_sets_single_node_without_hyperthreads(monkeypatch):
    monkeypatch.setattr(host_probe, "thread_siblings", lambda c: [c])
    sets = host_probe.cpu_sets({"allowed_cpus": [3], "numa_nodes": {0: [3]}}, [])
    assert sets == {"allowed": [3], "core_a": [3]}


def test_sglang_binding_runs_sglangs_own_function():
    rows = host_probe.sglang_bindings([1])
    assert rows == [{"tp": 1, "gpu_id": 0, "cpus": rows[0].get("cpus")}], rows
    # tp 1 binds all of the machine's physical cores (and their siblings): on a machine that is
    # not a slice of a larger host, that is every CPU this process may use
    assert set(rows[0]["cpus"]) <= set(range(os.cpu_count()))


def test_launch_loop_times_two_pinned_processes_together():
    cpu = sorted(os.sched_getaffinity(0))[0]
    a, b = host_probe.time_sets([[cpu], []], "cpu", ops=400, repeats=2)
    assert a["cpus"] == [cpu] and len(b["cpus"]) == len(os.sched_getaffinity(0))
    for r in (a, b):
        assert len(r["host_us_per_op"]) == 2 and r["median_host_us_per_op"] > 0


def test_pair_scan_reports_each_partner_against_its_time_alone():
    allowed = sorted(os.sched_getaffinity(0))[:2]
    rows = host_probe.pair_scan(allowed, "cpu", ops=400, repeats=2)
    assert [r["cpus"] for r in rows] == [[allowed[0], c] for c in allowed[1:]]
    for r in rows:
        assert all(s > 0 for s in r["slowdown"]) and len(r["us_per_op"]) == 2


def test_steal_is_read_per_cpu_from_proc_stat():
    cpus = sorted(os.sched_getaffinity(0))
    per_cpu = [host_probe.steal_ms([c]) for c in cpus]
    assert all(s >= 0 for s in per_cpu)
    assert host_probe.steal_ms(cpus) >= max(per_cpu)
    assert host_probe.steal_ms([]) == 0
