"""admission_ab --interleave (every config's server at once, cells in rotated order), the padding
row share, and servers sharing one machine (memory fractions, stopping one leaves the others)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import admission_ab  # noqa: E402
import serving  # noqa: E402
from serving import Record  # noqa: E402


def test_rotation_puts_every_server_first_in_turn():
    assert [admission_ab.rotation(["a", "b", "c"], k) for k in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_shared_mem_fractions_give_each_server_the_same_share_of_the_whole_gpu():
    fractions = serving.shared_mem_fractions(3, 0.25)
    assert fractions == [0.25, 0.333, 0.5]
    free = 1.0
    for f in fractions:  # SGLang takes its fraction of what is free when the server starts
        assert f * free == pytest.approx(0.25, abs=1e-3)
        free -= f * free
    with pytest.raises(ValueError, match="do not fit"):
        serving.shared_mem_fractions(4, 0.25)


def test_padding_row_share_counts_rows_not_passes():
    name = admission_ab.ROWS
    before = {f'{name}{{pass="extend",rows="real"}}': 100.0,
              f'{name}{{pass="extend",rows="padding"}}': 50.0}
    after = {f'{name}{{pass="extend",rows="real"}}': 1100.0,
             f'{name}{{pass="extend",rows="padding"}}': 150.0,
             f'{name}{{pass="decode",rows="real"}}': 200.0,
             f'{name}{{pass="decode",rows="padding"}}': 200.0}
    assert admission_ab.padding_row_share(before, after, "extend") == pytest.approx(100 / 1100)
    assert admission_ab.padding_row_share(before, after, "decode") == 0.5
    assert admission_ab.padding_row_share(before, after) == pytest.approx(300 / 1500)
    assert admission_ab.padding_row_share(after, after) is None  # no passes in between


def test_counter_delta_sums_label_sets_per_group():
    name = admission_ab.FORWARD_SECONDS
    before = {f'{name}{{category="decode",dp_rank="0",tp_rank="0"}}': 1.0}
    after = {f'{name}{{category="decode",dp_rank="0",tp_rank="0"}}': 3.5,
             f'{name}{{category="extend",dp_rank="0",tp_rank="0"}}': 0.25,
             f'{name}{{category="decode",dp_rank="1",tp_rank="1"}}': 2.0,
             f'{name}{{category="idle",dp_rank="1",tp_rank="1"}}': 0.0,
             f'{name}_created{{category="decode",dp_rank="0",tp_rank="0"}}': 1.7e9}
    assert admission_ab.counter_delta(before, after, name, ("dp_rank", "category")) == {
        "0:decode": 2.5, "0:extend": 0.25, "1:decode": 2.0}
    assert admission_ab.counter_delta(before, after, name, ("category",)) == {"decode": 4.5, "extend": 0.25}


class FakeServer:
    """Records when it starts and stops; 'delayer' dies at its second timed run."""
    events: list = []
    envs: list = []
    flags: list = []

    def __init__(self, args, log_path, port=30000, env=None):
        self.args, self.port, self.url, self.env = args, port, f"http://127.0.0.1:{port}", env
        self.name = ("atom" if "atom" in args else
                     "delayer" if "--enable-prefill-delayer" in args else "plain")
        self.gets = 0
        with open(log_path, "w") as f:
            f.write(f"{self.name} log\n")

    def __enter__(self):
        FakeServer.events.append(("start", self.name))
        FakeServer.envs.append(self.env)
        FakeServer.flags.append(self.args)
        return self

    def __exit__(self, *exc):
        FakeServer.events.append(("stop", self.name))
        return False

    def wait_ready(self):
        if self.name == "atom" and "--atom-admission" in self.args:  # the 'observe' config
            raise TimeoutError("server did not answer in time")
        return 1.0

    def get(self, path):
        self.gets += 1
        if self.name == "delayer" and self.gets > 2:
            raise ConnectionRefusedError(111, "Connection refused")
        return ""


@pytest.fixture
def fake_servers(monkeypatch):
    FakeServer.events, FakeServer.envs, FakeServer.flags = [], [], []
    urls = []

    def fake_load(url, reqs, concurrency, progress="", request_rate=None, seed=0):
        urls.append(url)
        return [Record(input_len=len(ids), output_len=n, ttft=0.1, e2e=0.5) for ids, n in reqs], 1.0

    monkeypatch.setattr(admission_ab, "Server", FakeServer)
    monkeypatch.setattr(admission_ab, "load", fake_load)
    return urls


def test_interleaved_servers_run_side_by_side_and_take_turns(tmp_path, fake_servers):
    assert admission_ab.main(["--interleave", "--configs", "plain,atom,delayer", "--concurrency", "4",
                              "--repeats", "3", "--warmup-repeats", "0", "--min-requests", "4",
                              "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    # all three up before any is stopped
    assert FakeServer.events[:3] == [("start", "plain"), ("start", "atom"), ("start", "delayer")]
    assert {e for e in FakeServer.events[3:]} == {("stop", "plain"), ("stop", "atom"), ("stop", "delayer")}
    # each cell in rotated order; delayer's second run fails, it is recorded and the others go on
    assert [(r["config"], r["repeat"], r["slot"]) for r in result["runs"]] == [
        ("plain", 0, 0), ("atom", 0, 1), ("delayer", 0, 2),
        ("atom", 1, 0),
        ("plain", 1, 2),  # delayer, slot 1, failed here
        ("plain", 2, 1), ("atom", 2, 2)]  # rotation 2 starts with delayer, now out
    assert "ConnectionRefusedError" in result["failed_configs"]["delayer"]
    assert "delayer log" in result["failed_configs"]["delayer"]
    assert result["interleaved"] is True
    # every server gets SGLang's device timer switched on; these fakes serve no per-pass GPU times
    assert FakeServer.envs == [{"SGLANG_ENABLE_METRICS_DEVICE_TIMER": "1"}] * 3
    assert all(r["gpu_forward_s"] == r["tokens_by_prefill_ranks"] == {} for r in result["runs"])
    # distinct ports, spaced for SGLang's port blocks
    assert sorted(set(fake_servers)) == ["http://127.0.0.1:30000", "http://127.0.0.1:30100",
                                          "http://127.0.0.1:30200"]
    # memory split so all three fit: a quarter of the GPU each, of what is free at each start
    assert [f[f.index("--mem-fraction-static") + 1] for f in FakeServer.flags] == ["0.25", "0.333", "0.5"]


def test_warmup_repeats_run_first_rotated_and_are_marked(tmp_path, fake_servers, capsys):
    assert admission_ab.main(["--interleave", "--configs", "plain,atom", "--concurrency", "4",
                              "--repeats", "2", "--min-requests", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    # the default: one full warm-up repeat of the cell on every server, before the timed ones
    assert [(r["config"], r["repeat"], r["slot"], r.get("warmup", False)) for r in result["runs"]] == [
        ("plain", -1, 0, True), ("atom", -1, 1, True),
        ("atom", 0, 0, False), ("plain", 0, 1, False),
        ("plain", 1, 0, False), ("atom", 1, 1, False)]
    out = capsys.readouterr().out
    assert "plain short c4 w1:" in out and "atom short c4 r1:" in out
    # the report's results hold the two timed repeats only; the warm-up shows in the drift table
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert [line.split("|")[3].strip() for line in summary.splitlines()
            if line.startswith("| plain | 4 |")] == ["2"]
    assert "| config | w1 | r0 | r1 |" in summary


def test_a_server_that_fails_to_start_is_stopped_before_the_others_run(tmp_path, fake_servers):
    assert admission_ab.main(["--interleave", "--configs", "observe,plain", "--concurrency", "4",
                              "--warmup-repeats", "0",
                              "--repeats", "1", "--min-requests", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    assert FakeServer.events == [("start", "atom"), ("stop", "atom"), ("start", "plain"), ("stop", "plain")]
    assert "TimeoutError" in result["failed_configs"]["observe"]
    assert [r["config"] for r in result["runs"]] == ["plain"]


def test_interleave_refuses_a_fixed_memory_fraction(tmp_path, fake_servers):
    with pytest.raises(SystemExit, match="--shared-mem-fraction"):
        admission_ab.main(["--interleave", "--extra", "--mem-fraction-static 0.7",
                           "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="lower --shared-mem-fraction"):
        admission_ab.main(["--interleave", "--configs", "plain,atom,delayer,observe",
                           "--out", str(tmp_path)])  # 4 x 0.25 is the whole GPU
    assert FakeServer.events == []


# A launcher whose scheduler left its process group (as a crashed launcher's children can be
# left behind): the stray keeps the launcher's session, which only the pkill reaches.
LAUNCHER_WITH_STRAY = """
import os, subprocess, sys, time
stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sglang::stray"],
                         preexec_fn=lambda: os.setpgid(0, 0))
print(stray.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that will not reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stopping_one_server_leaves_another_servers_processes(tmp_path):
    """Server.__exit__ stops its launcher and kills stray `sglang::` processes of its own
    session, and of no other."""
    mine = subprocess.Popen([sys.executable, "-c", LAUNCHER_WITH_STRAY, "sglang::mine"],
                            start_new_session=True, stdout=subprocess.PIPE, text=True)
    stray = int(mine.stdout.readline())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sglang::other"],
                             start_new_session=True)
    try:
        assert alive(stray) and os.getpgid(stray) != os.getpgid(mine.pid)
        server = serving.Server([], str(tmp_path / "log"))
        server.proc, server.log = mine, open(tmp_path / "log", "w")
        server.__exit__(None, None, None)
        assert mine.poll() is not None
        deadline = time.time() + 10
        while alive(stray) and time.time() < deadline:
            time.sleep(0.05)
        assert not alive(stray), "the server's stray process survived"
        assert other.poll() is None, "another server's process was killed"
    finally:
        for proc in (other, mine):
            proc.kill()
            proc.wait()
        if alive(stray):
            os.kill(stray, 9)


@pytest.mark.parametrize("mode", ["--interleave", "--no-interleave"])
def test_work_past_the_deadline_is_skipped_by_name(tmp_path, monkeypatch, mode):
    from types import SimpleNamespace

    clock = [0.0]

    def slow_load(url, reqs, concurrency, progress="", request_rate=None, seed=0):  # every wave (warm-up or timed) takes 10 s
        clock[0] += 10.0
        return [Record(input_len=len(ids), output_len=n, ttft=0.1, e2e=0.5) for ids, n in reqs], 10.0

    FakeServer.events = []
    monkeypatch.setattr(admission_ab, "Server", FakeServer)
    monkeypatch.setattr(admission_ab, "load", slow_load)
    monkeypatch.setattr(admission_ab, "time", SimpleNamespace(time=lambda: clock[0]))
    assert admission_ab.main([mode, "--configs", "plain,atom", "--concurrency", "4", "--repeats", "2",
                              "--warmup-repeats", "0",
                              "--min-requests", "4", "--deadline-s", "25", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    done = [(r["config"], r["repeat"]) for r in result["runs"]]
    if mode == "--interleave":
        # warm-ups at 10 and 20 s, plain r0 ends at 30 s: past the deadline from then on
        assert done == [("plain", 0)]
        assert result["skipped"] == ["atom/short/c4/r0", "atom/short/c4/r1", "plain/short/c4/r1"]
    else:
        # plain: warm-up 10 s, r0 20 s, r1 30 s; atom is never started
        assert done == [("plain", 0), ("plain", 1)]
        assert result["skipped"] == ["atom"]


def test_warmup_keeps_the_prompt_lengths_and_caps_the_output():
    """8k/1k warm-up at full output would cost as much as a timed cell."""
    from admission_ab import WARMUP_MAX_OUTPUT, warmup_requests
    from serving import WORKLOADS

    wl = WORKLOADS["8k1k"]
    warm = warmup_requests(wl, 64)
    full = wl.requests(64, seed=99 + 64)
    assert len(warm) == 64
    assert [ids for ids, _ in warm] == [ids for ids, _ in full]  # every prefill shape still runs
    assert all(n == WARMUP_MAX_OUTPUT < full_n for (_, n), (_, full_n) in zip(warm, full))
    # the timed repeats draw other ids (seed 1000 * conc + rep), so warm-up leaves no cache hits
    assert warm[0][0] != wl.requests(1, seed=1000 * 64)[0][0]


def test_request_rate_reaches_the_client_and_the_rows(tmp_path, monkeypatch):
    calls = []

    def fake_load(url, reqs, concurrency, progress="", request_rate=None, seed=0):
        calls.append((len(reqs), concurrency, request_rate, seed))
        return [Record(input_len=len(ids), output_len=n, ttft=0.1, e2e=0.5, sent_at=0.1 * i)
                for i, (ids, n) in enumerate(reqs)], 1.0

    FakeServer.events = []
    monkeypatch.setattr(admission_ab, "Server", FakeServer)
    monkeypatch.setattr(admission_ab, "load", fake_load)
    assert admission_ab.main(["--configs", "plain", "--concurrency", "4", "--repeats", "2", "--min-requests", "8",
                              "--warmup-repeats", "0",
                              "--request-rate", "5", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "ab.json").read_text())["runs"]
    # warm-up stays a closed loop; the timed runs are open loops with a seed per repeat
    assert calls[0][2] is None
    assert [c[2:] for c in calls[1:]] == [(5.0, 4000), (5.0, 4001)]
    assert [r["request_rate"] for r in rows] == [5.0, 5.0]
    assert all(r["steady_input_tok_s"] == 0.0 for r in rows)  # no closed-loop window to speak of
