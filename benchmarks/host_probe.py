"""Where a scheduler process may run on this machine, and what that does to its host time.

    python3 benchmarks/host_probe.py --out DIR                 # on a GPU machine
    python3 benchmarks/host_probe.py --device cpu --ops 2000   # the same loop on CPU tensors

A served prefill pass is launch-bound on the host whenever the GPU keeps up (twentieth session:
rank 1's host ran 1.3-1.5x slower than rank 0's at DP2). This probe separates the machine from
SGLang:
1. facts: the CPUs this process may use, psutil's logical and physical counts (what SGLang's
   binding divides), the NUMA nodes with their CPUs, each GPU's NUMA node, `nvidia-smi topo -m`;
2. SGLang's own binding (`SGLANG_SET_CPU_AFFINITY=1` calls `set_gpu_proc_affinity` in every
   scheduler): called in a child process per tp size and gpu_id, then the CPUs it got, or the
   error it raised;
3. host time of a launch-bound loop (small ops, no syncs) in processes pinned to each CPU set,
   alone and two at once (as two DP ranks' schedulers), in microseconds per op, with how long the
   device took to drain after the host finished (near zero: the loop measured the host) and the
   time the hypervisor stole from those CPUs meanwhile (/proc/stat; zero on bare metal).
Writes DIR/host_probe.json (command, machine, date).
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serving import provenance, record_json  # noqa: E402


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def steal_ms(cpus: list[int]) -> float:
    """Time the hypervisor has kept these CPUs from this guest since boot (/proc/stat's steal
    column, in USER_HZ ticks of 10 ms): a vCPU that was ready to run while the host ran
    something else. Zero on bare metal."""
    wanted, total = {f"cpu{c}" for c in cpus}, 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted and len(fields) > 8:
                total += int(fields[8])
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def numa_nodes() -> dict[int, list[int]]:
    nodes = {}
    for path in sorted(glob.glob("/sys/devices/system/node/node[0-9]*/cpulist")):
        nodes[int(path.split("/node")[-1].split("/")[0])] = parse_cpulist(_read(path))
    return nodes


def thread_siblings(cpu: int) -> list[int]:
    return parse_cpulist(_read(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
                         or str(cpu))


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"


def gpu_numa_nodes() -> list[dict]:
    out = _run(["nvidia-smi", "--query-gpu=index,pci.bus_id", "--format=csv,noheader"])
    gpus = []
    for line in out.splitlines():
        if "," not in line:
            continue
        index, bus = (s.strip() for s in line.split(","))
        bus = bus.lower()[-12:]  # nvidia-smi pads the domain to 8 digits, sysfs to 4
        gpus.append({"gpu": int(index), "bus_id": bus,
                     "numa_node": _read(f"/sys/bus/pci/devices/{bus}/numa_node")})
    return gpus


def machine_facts() -> dict:
    import psutil

    allowed = sorted(os.sched_getaffinity(0))
    return {
        "allowed_cpus": allowed,
        "os_cpu_count": os.cpu_count(),
        "psutil_logical": psutil.cpu_count(),
        "psutil_physical": psutil.cpu_count(logical=False),
        "cgroup_cpus": _read("/sys/fs/cgroup/cpuset.cpus.effective"),
        "cgroup_cpu_max": _read("/sys/fs/cgroup/cpu.max"),
        "numa_nodes": {n: [c for c in cpus if c in allowed] for n, cpus in numa_nodes().items()},
        "gpus": gpu_numa_nodes(),
        "load_avg": os.getloadavg(),
        "nvidia_smi_topo": _run(["nvidia-smi", "topo", "-m"]),
        "lscpu": _run(["lscpu"]),
    }


def _sglang_binding(tp: int, gpu_id: int, queue) -> None:
    try:
        from sglang.srt.utils.common import set_gpu_proc_affinity

        set_gpu_proc_affinity(1, tp, 1, gpu_id)
        queue.put({"cpus": sorted(os.sched_getaffinity(0))})
    except Exception as exc:  # the error is the finding
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def sglang_bindings(tp_sizes: list[int]) -> list[dict]:
    """What `SGLANG_SET_CPU_AFFINITY=1` does to a scheduler of each (tp, gpu_id) on this machine."""
    ctx = mp.get_context("spawn")
    rows = []
    for tp in tp_sizes:
        for gpu_id in range(tp):
            queue = ctx.Queue()
            p = ctx.Process(target=_sglang_binding, args=(tp, gpu_id, queue))
            p.start()
            p.join(timeout=120)
            rows.append({"tp": tp, "gpu_id": gpu_id,
                         **(queue.get() if not queue.empty() else {"error": f"exit {p.exitcode}"})})
    return rows


def _launch_loop(cpus, device: str, ops: int, repeats: int, barrier, queue) -> None:
    import torch

    if cpus:
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(1)  # as one scheduler's host thread, not an intra-op pool
    dev = torch.device(device)
    x = torch.randn(16, 256, device=dev)
    w = torch.randn(256, 256, device=dev)

    def step():  # four small ops, as a layer's host side is mostly launches of small ones
        y = x @ w
        y.add_(1.0)
        y.mul_(0.5)
        x.copy_(y)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    steps = ops // 4
    for _ in range(200):
        step()
    sync()
    barrier.wait()
    mine = sorted(os.sched_getaffinity(0))
    steal0, wall0 = steal_ms(mine), time.perf_counter()
    host_us, drain_us = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        host_us.append((t1 - t0) * 1e6 / (4 * steps))
        drain_us.append((t2 - t1) * 1e6)
    queue.put({"cpus": mine, "host_us_per_op": sorted(host_us),
               "timed_ms": round((time.perf_counter() - wall0) * 1e3, 1),
               "steal_ms": steal_ms(mine) - steal0,
               "median_host_us_per_op": round(sorted(host_us)[len(host_us) // 2], 3),
               "max_drain_us": round(max(drain_us), 1)})


def time_sets(sets: list[list[int]], device: str, ops: int, repeats: int) -> list[dict]:
    """Run the loop in one pinned process per set, all at once (a barrier starts their timing
    together); one result per set, in order."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(sets))
    queues = [ctx.Queue() for _ in sets]
    procs = [ctx.Process(target=_launch_loop, args=(s, device, ops, repeats, barrier, q))
             for s, q in zip(sets, queues)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for q in queues]
    for p in procs:
        p.join(timeout=60)
    return results


def pair_scan(allowed: list[int], device: str, ops: int, repeats: int) -> list[dict]:
    """The first allowed CPU together with each other one: the slowdown of each against its own
    time alone. A pair far slower than the rest shares a physical core."""
    alone = {c: time_sets([[c]], device, ops, repeats)[0]["median_host_us_per_op"] for c in allowed}
    first, rows = allowed[0], []
    for other in allowed[1:]:
        a, b = time_sets([[first], [other]], device, ops, repeats)
        rows.append({"cpus": [first, other],
                     "us_per_op": [a["median_host_us_per_op"], b["median_host_us_per_op"]],
                     "steal_ms": [a["steal_ms"], b["steal_ms"]],
                     "slowdown": [round(a["median_host_us_per_op"] / alone[first], 3),
                                  round(b["median_host_us_per_op"] / alone[other], 3)]})
    return rows


def cpu_sets(facts: dict, bindings: list[dict]) -> dict[str, list[int]]:
    """The CPU sets worth timing: everything allowed, each NUMA node's allowed CPUs, the sets
    SGLang's binding gives tp 2's two ranks, one core, another physical core and the first
    core's hyperthread sibling."""
    allowed = facts["allowed_cpus"]
    sets = {"allowed": allowed}
    nodes = {n: cpus for n, cpus in facts["numa_nodes"].items() if cpus}
    if len(nodes) > 1:
        sets.update({f"numa{n}": cpus for n, cpus in nodes.items()})
    for b in bindings:
        if b["tp"] == 2 and b.get("cpus"):
            sets[f"sglang_tp2_gpu{b['gpu_id']}"] = b["cpus"]
    first = allowed[0]
    siblings = [c for c in thread_siblings(first) if c != first and c in allowed]
    taken = {first, *siblings}
    other = next((c for c in allowed if c not in taken and not set(thread_siblings(c)) & taken), None)
    sets["core_a"] = [first]
    if other is not None:
        sets["core_b"] = [other]
    if siblings:
        sets["core_a_sibling"] = [siblings[0]]
    return sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--ops", type=int, default=20000, help="ops per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tp-sizes", default="1,2,4,8", help="SGLang bindings to try")
    ap.add_argument("--scan", action="store_true",
                    help="also time the first allowed CPU together with each other one, to find "
                         "CPUs that share a physical core a virtual machine does not show")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)

    facts = machine_facts()
    print(f"allowed CPUs {len(facts['allowed_cpus'])} of psutil's {facts['psutil_logical']} logical / "
          f"{facts['psutil_physical']} physical; NUMA {facts['numa_nodes']}; GPUs {facts['gpus']}")
    bindings = sglang_bindings([int(t) for t in args.tp_sizes.split(",")])
    for b in bindings:
        print(f"SGLang binding tp {b['tp']} gpu_id {b['gpu_id']}: {b.get('cpus', b.get('error'))}")
    sets = cpu_sets(facts, bindings)
    alone = {name: time_sets([cpus], args.device, args.ops, args.repeats)[0]
             for name, cpus in sets.items()}
    pairs = [p for p in (("sglang_tp2_gpu0", "sglang_tp2_gpu1"), ("core_a", "core_b"),
                         ("core_a", "core_a_sibling"), ("allowed", "allowed")) if set(p) <= set(sets)]
    together = [{"sets": list(p), "results": time_sets([sets[n] for n in p], args.device, args.ops,
                                                       args.repeats)} for p in pairs]
    scan = pair_scan(facts["allowed_cpus"], args.device, args.ops, args.repeats) if args.scan else []
    print(f"{'set':>22} {'cpus':>5} {'us/op alone':>11} {'steal ms':>8} {'of ms':>7}")
    for name, r in alone.items():
        print(f"{name:>22} {len(r['cpus']):>5} {r['median_host_us_per_op']:>11.3f} "
              f"{r['steal_ms']:>8.0f} {r['timed_ms']:>7.0f}")
    for t in together:
        a, b = t["results"]
        print(f"together {t['sets'][0]} + {t['sets'][1]}: {a['median_host_us_per_op']:.3f} and "
              f"{b['median_host_us_per_op']:.3f} us/op (steal {a['steal_ms']:.0f} and "
              f"{b['steal_ms']:.0f} ms of {a['timed_ms']:.0f})")
    for r in scan:
        print(f"scan: cpu {r['cpus'][0]} with cpu {r['cpus'][1]}: {r['slowdown'][0]:.2f}x and "
              f"{r['slowdown'][1]:.2f}x their times alone (steal {r['steal_ms'][0]:.0f} and "
              f"{r['steal_ms'][1]:.0f} ms)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        record_json(os.path.join(args.out, "host_probe.json"),
                    {**provenance(), "device": args.device, "ops": args.ops, "repeats": args.repeats,
                     "facts": facts, "sglang_bindings": bindings, "sets": sets, "alone": alone,
                     "together": together, "scan": scan})
    return 0


if __name__ == "__main__":
    sys.exit(main())
