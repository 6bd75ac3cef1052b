"""benchmarks/report.py on synthetic result files: aggregation, baseline ratio, CLI outputs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import report  # noqa: E402

# (config, concurrency) -> per-repeat (input_tok_s, padding_ratio_mean); other metrics derive from it.
# Means are exact in binary floating point so the checks can use ==.
VALUES = {
    ("plain", 64): [(1000, None), (1200, None)],
    ("plain", 128): [(2000, None), (2400, None)],
    ("atom", 64): [(1500, 0.25), (1800, 0.75)],
    ("atom", 128): [(2600, 0.5), (2900, None)],  # one null padding among real values
}


def row(config, conc, repeat, inp, pad):
    return {"config": config, "workload": "short", "concurrency": conc, "repeat": repeat,
            "n_gpus": 2, "input_tok_s": inp, "output_tok_s": inp / 10,
            "total_tok_s_per_gpu": inp * 1.1 / 2, "output_tok_s_per_user": conc / 4 + repeat,
            "mean_ttft_ms": 100 + repeat * 50, "p50_ttft_ms": 90, "p99_ttft_ms": 400 + repeat * 100,
            "mean_tpot_ms": 20, "p99_itl_ms": 40, "mean_e2e_ms": 1000,
            "completed": 64, "failed": 1 if (config, conc, repeat) == ("atom", 128, 1) else 0,
            "padding_ratio_mean": pad}


def write_results(tmp_path, drop=()):
    """Repeat 0 and repeat 1 in two files, as two admission_ab.py runs would produce."""
    paths = []
    for repeat in (0, 1):
        runs = [row(c, n, repeat, *vals[repeat]) for (c, n), vals in VALUES.items() if (c, n) not in drop]
        data = {"command": f"python3 benchmarks/admission_ab.py --run {repeat}",
                "machine": "GPU 0: NVIDIA H200 (UUID: GPU-a)\nGPU 1: NVIDIA H200 (UUID: GPU-b)",
                "date": f"2026-11-2{repeat}T00:00:00+00:00", "runs": runs, "skipped": []}
        p = tmp_path / f"ab{repeat}.json"
        p.write_text(json.dumps(data))
        paths.append(str(p))
    return paths


def table_row(md, config, conc):
    """Cells of the markdown table row for (config, concurrency)."""
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0].split(" ")[0] == config and cells[1] == str(conc):
            return cells
    raise AssertionError(f"no row for {config} c{conc} in:\n{md}")


def test_aggregate_means_min_max_and_repeats(tmp_path):
    rows, metas = report.load_runs(write_results(tmp_path))
    assert len(rows) == 8 and [m["date"][:10] for m in metas] == ["2026-11-20", "2026-11-21"]
    agg = {(a["config"], a["concurrency"]): a for a in report.aggregate(rows)}
    assert len(agg) == 4 and all(a["repeats"] == 2 and a["workload"] == "short" for a in agg.values())
    a = agg["atom", 64]
    assert (a["input_tok_s"], a["input_tok_s_min"], a["input_tok_s_max"]) == (1650, 1500, 1800)
    assert (a["output_tok_s"], a["output_tok_s_min"], a["output_tok_s_max"]) == (165, 150, 180)
    assert a["output_tok_s_per_user"] == 16.5 and a["mean_ttft_ms"] == 125 and a["p99_ttft_ms"] == 450
    assert a["mean_tpot_ms"] == 20 and a["total_tok_s_per_gpu"] == pytest.approx(907.5)
    assert (a["padding_ratio_mean"], a["padding_ratio_mean_min"], a["padding_ratio_mean_max"]) == (0.5, 0.25, 0.75)
    # the null padding is ignored, not counted as zero
    b = agg["atom", 128]
    assert (b["padding_ratio_mean"], b["padding_ratio_mean_min"], b["padding_ratio_mean_max"]) == (0.5, 0.5, 0.5)
    assert b["failed"] == 1 and agg["atom", 64]["failed"] == 0
    assert agg["plain", 128]["input_tok_s"] == 2200 and agg["plain", 64]["padding_ratio_mean"] is None


def test_markdown_baseline_ratio_and_sources(tmp_path):
    rows, metas = report.load_runs(write_results(tmp_path))
    md = report.markdown(report.aggregate(rows), metas, baseline="plain")
    assert "2x NVIDIA H200" in md and "--run 0" in md and "--run 1" in md
    assert "## short" in md and "x plain" in md
    atom64 = table_row(md, "atom", 64)
    assert atom64[-1] == "1.50x" and atom64[3] == "1,650 [1,500-1,800]" and atom64[2] == "2"
    assert table_row(md, "atom", 128)[-1] == "1.25x"  # mean 2750 vs plain's 2200
    assert table_row(md, "atom", 128)[0] == "atom (1 failed)"
    assert table_row(md, "plain", 64)[-1] == "1.00x" and table_row(md, "plain", 64)[10] == "-"
    assert table_row(md, "atom", 64)[10] == "0.500 [0.250-0.750]"


def test_missing_baseline_leaves_ratio_blank(tmp_path):
    # no plain run at c128: atom c128 has nothing to compare to, c64 still does
    rows, metas = report.load_runs(write_results(tmp_path, drop={("plain", 128)}))
    agg = report.aggregate(rows)
    md = report.markdown(agg, metas, baseline="plain")
    assert table_row(md, "atom", 64)[-1] == "1.50x"
    assert table_row(md, "atom", 128)[-1] == ""
    # a baseline config that was never run: every ratio blank
    md = report.markdown(agg, metas, baseline="delayer")
    assert "x delayer" in md
    assert all(table_row(md, c, n)[-1] == "" for c, n in [("atom", 64), ("atom", 128), ("plain", 64)])


def test_cli_writes_summary_and_plots(tmp_path, capsys):
    out = tmp_path / "report"
    assert report.main([*write_results(tmp_path), "--out", str(out), "--baseline", "plain"]) == 0
    summary = (out / "summary.md").read_text()
    assert "1.50x" in summary and summary == capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["short_tput_vs_concurrency.png", "short_tput_vs_interactivity.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
        assert f"({p.name})" in summary  # linked from the summary


def test_named_scenarios_fill_the_matrix_and_flags_override():
    import admission_ab

    args = admission_ab.parse_args(["--scenario", "inferencex-dp4", "--out", "x", "--repeats", "1"])
    assert (args.tp, args.dp, args.workloads, args.cuda_graph) == (4, 4, "1k1k,8k1k", True)
    assert args.configs.split(",") == ["plain", "delayer", "atom", "atom_tbo", "deepep_normal"]
    assert args.repeats == 1  # explicit flag wins over the scenario
    for spec in admission_ab.SCENARIOS.values():
        assert set(spec["configs"].split(",")) <= set(admission_ab.CONFIGS)
        assert set(spec["workloads"].split(",")) <= set(admission_ab.WORKLOADS)


def test_a_config_whose_packages_are_missing_is_reported_not_started(tmp_path, monkeypatch):
    import json

    import admission_ab

    # a machine with DeepGEMM but without DeepEP (as CI: SGLang 0.5.17 depends on sgl-deep-gemm);
    # the harness must say so, not crash in a server start or leave the config out silently
    monkeypatch.setattr(admission_ab.importlib.util, "find_spec",
                        lambda name: None if name == "deep_ep" else "a module spec")
    assert admission_ab.missing_packages("deepep_tbo") == ["deep_ep"]
    assert admission_ab.missing_packages("deepep_normal") == ["deep_ep"]  # every DeepEP config
    assert admission_ab.missing_packages("plain") == []
    monkeypatch.setattr(admission_ab, "Server", None)  # any server start would raise
    monkeypatch.setattr("sys.argv", ["admission_ab.py", "--configs", "deepep_tbo,deepep_tbo", "--out",
                                     str(tmp_path)])
    assert admission_ab.main() == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    assert result["runs"] == []
    # a config listed twice is two servers, each with its own label
    assert sorted(result["failed_configs"]) == ["deepep_tbo", "deepep_tbo_2"]
    assert result["failed_configs"]["deepep_tbo"].startswith("needs deep_ep, not importable by")


def test_a_config_listed_again_gets_its_own_server_label():
    import admission_ab

    assert admission_ab.server_labels(["plain", "atom", "plain", "plain"]) == [
        "plain", "atom", "plain_2", "plain_3"]


def test_padding_mean_overall_and_per_pass_kind():
    import admission_ab

    name = admission_ab.PADDING
    before = {f'{name}_sum{{pass="extend"}}': 1.0, f'{name}_count{{pass="extend"}}': 10.0}
    after = {f'{name}_sum{{pass="extend"}}': 3.0, f'{name}_count{{pass="extend"}}': 20.0,
             f'{name}_sum{{pass="decode"}}': 0.5, f'{name}_count{{pass="decode"}}': 10.0}
    assert admission_ab.histogram_mean(before, after, name, 'pass="extend"') == 0.2
    assert admission_ab.histogram_mean(before, after, name, 'pass="decode"') == 0.05
    assert admission_ab.histogram_mean(before, after, name) == 0.125  # 2.5 over 20 passes
    assert admission_ab.histogram_mean(after, after, name) is None  # no passes in between


def test_stalled_passes_are_the_intervals_above_the_stall_bucket():
    import admission_ab

    name = admission_ab.PASS_INTERVAL
    before = {f'{name}_bucket{{le="0.05"}}': 90.0, f'{name}_bucket{{le="0.1"}}': 95.0,
              f'{name}_count': 100.0, f'{name}_sum': 1.0}
    after = {f'{name}_bucket{{le="0.05"}}': 1080.0, f'{name}_bucket{{le="0.1"}}': 1090.0,
             f'{name}_count': 1100.0, f'{name}_sum': 9.0}
    # 1000 intervals in the run: 995 at most 0.1 s apart, 5 stalls
    assert admission_ab.histogram_above(before, after, name, admission_ab.STALL_SECONDS) == 5
    assert admission_ab.histogram_above(before, after, name, "0.05") == 10
    assert admission_ab.histogram_above(after, after, name, "0.1") is None  # no passes
    assert admission_ab.histogram_above({}, {}, name, "0.1") is None  # a server without the series
    assert admission_ab._ms(admission_ab.histogram_mean(before, after, name)) == 8.0


def test_a_server_dying_mid_matrix_is_recorded_and_the_matrix_goes_on(tmp_path, monkeypatch):
    import json
    import urllib.error

    import admission_ab
    from serving import Record

    class FakeServer:
        """'plain' dies after its warm-up (its /metrics refused); 'atom' answers."""
        url = "http://127.0.0.1:9"

        def __init__(self, args, log_path, port=30000, env=None):
            self.dies = "atom" not in args
            with open(log_path, "w") as f:
                f.write("Scheduler hit an exception: ...\n" if self.dies else "ok\n")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait_ready(self):
            return 1.0

        def get(self, path):
            if self.dies:
                raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
            return ""

    def fake_load(url, reqs, concurrency, progress="", request_rate=None, seed=0):
        return [Record(input_len=len(ids), output_len=n, ttft=0.1, e2e=0.5) for ids, n in reqs], 1.0

    monkeypatch.setattr(admission_ab, "Server", FakeServer)
    monkeypatch.setattr(admission_ab, "load", fake_load)
    assert admission_ab.main(["--configs", "plain,atom", "--concurrency", "4", "--repeats", "1",
                              "--warmup-repeats", "0",
                              "--min-requests", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "ab.json").read_text())
    assert list(result["failed_configs"]) == ["plain"]
    assert "URLError" in result["failed_configs"]["plain"]
    assert "Scheduler hit an exception" in result["failed_configs"]["plain"]
    assert [(r["config"], r["completed"]) for r in result["runs"]] == [("atom", 16)]  # 4 per client


def test_configs_sglang_cannot_serve_for_an_architecture_are_not_started(tmp_path, monkeypatch):
    import json

    import admission_ab

    assert "sgl-project/sglang#27510" in admission_ab.known_broken("deepep_tbo_normal",
                                                                   "models/qwen3-moe-tiny")
    assert admission_ab.known_broken("deepep_tbo_normal", "models/deepseek-v3-width") is None
    assert admission_ab.known_broken("deepep_normal", "models/qwen3-moe-tiny") is None
    monkeypatch.setattr(admission_ab, "missing_packages", lambda config: [])
    monkeypatch.setattr(admission_ab, "Server", None)  # any server start would raise
    assert admission_ab.main(["--configs", "deepep_tbo", "--model", "models/qwen3-moe-tiny",
                              "--out", str(tmp_path)]) == 0
    failed = json.loads((tmp_path / "ab.json").read_text())["failed_configs"]
    assert "Use deepep_normal" in failed["deepep_tbo"]


def test_paired_ratios_pair_repeats_within_one_result_file(tmp_path):
    rows, metas = report.load_runs(write_results(tmp_path))
    pairs = report.paired_ratios(rows, "plain")
    # atom r0 1500 / plain r0 1000, atom r1 1800 / plain r1 1200: both 1.5
    assert pairs["short", "atom", 64] == [1.5, 1.5]
    assert pairs["short", "atom", 128] == [1.3, 2900 / 2400]
    assert ("short", "plain", 64) not in pairs
    md = report.markdown(report.aggregate(rows), metas, "plain", pairs=pairs)
    assert table_row(md, "atom", 64)[-2] == "1.50"
    assert table_row(md, "atom", 128)[-2] == "1.25 [1.21-1.30]"
    # a baseline repeat in another file is not a pair (runs of different calls are not matched)
    plain_elsewhere = [r for r in rows if r["config"] == "plain"]
    for r in plain_elsewhere:
        r["_source"] = 7
    assert report.paired_ratios(rows, "plain") == {}


def test_place_in_the_rotation_is_reported_for_interleaved_runs(tmp_path):
    runs = []
    # two cells; whichever server runs first in a cell is 10% faster than the other
    for conc, first in ((64, "plain"), (128, "atom")):
        for repeat in (0, 1):
            order = [first, "atom" if first == "plain" else "plain"]
            if repeat:
                order.reverse()
            for slot, config in enumerate(order):
                runs.append({**row(config, conc, repeat, 1100 if slot == 0 else 1000, None), "slot": slot})
    path = tmp_path / "ab.json"
    path.write_text(json.dumps({"runs": runs, "machine": "", "date": "", "command": ""}))
    rows, metas = report.load_runs([str(path)])
    slots = report.slot_effects(rows)
    assert slots["plain"] == {0: pytest.approx(1100 / 1050), 1: pytest.approx(1000 / 1050)}
    md = report.markdown(report.aggregate(rows), metas, "plain", slots=slots)
    assert "| plain | 1.048 | 0.952 |" in md and "## Place in the rotation" in md
    # a run without a throughput (all its requests failed) is left out, not divided by
    rows.append({**rows[0], "input_tok_s": None, "slot": 1})
    assert report.slot_effects(rows) == slots
    # files without slots (sequential runs) get no such section
    assert report.slot_effects(report.load_runs(write_results(tmp_path))[0]) == {}


def test_sources_say_how_requests_arrived(tmp_path):
    closed = write_results(tmp_path)[0]
    path = tmp_path / "poisson.json"
    path.write_text(json.dumps({"runs": [{**row("plain", 64, 0, 1000, None), "request_rate": 12.5}],
                                "machine": "", "date": "", "command": "x --request-rate 12.5"}))
    rows, metas = report.load_runs([closed, str(path)])
    md = report.markdown(report.aggregate(rows), metas, "plain")
    assert "  - arrivals: closed loop" in md
    assert "  - arrivals: open loop, Poisson 12.5 requests/s, concurrency = the most in flight" in md


def test_repeat_drift_includes_warmups_and_warns_past_ten_percent(tmp_path):
    runs = [{**row("plain", 64, -1, 500, None), "warmup": True},
            row("plain", 64, 0, 900, None), row("plain", 64, 1, 1100, None),
            {**row("atom", 64, -1, 700, None), "warmup": True},
            row("atom", 64, 0, 990, None), row("atom", 64, 1, 1010, None)]
    path = tmp_path / "ab.json"
    path.write_text(json.dumps({"runs": runs, "machine": "", "date": "", "command": ""}))
    rows, metas = report.load_runs([str(path)])
    drift = report.repeat_drift(rows)
    # relative to the mean of the timed repeats only (1000 for both)
    assert drift["plain"] == {-1: 0.5, 0: 0.9, 1: 1.1}
    assert drift["atom"] == {-1: 0.7, 0: 0.99, 1: 1.01}
    timed = report.timed(rows)
    assert [r["repeat"] for r in timed] == [0, 1, 0, 1]
    assert report.aggregate(timed)[0]["input_tok_s"] == 1000
    md = report.markdown(report.aggregate(timed), metas, "plain", drift=drift)
    assert "| plain | 0.500 | 0.900 | 1.100 |" in md
    # plain's timed repeats spread 0.2 > 0.1: warned; atom's 0.02: not named
    assert "**Drift:** the timed repeats of plain differ" in md
    flat = report.markdown(report.aggregate(timed), metas, "plain",
                           drift={"atom": drift["atom"]})
    assert "**Drift:**" not in flat
