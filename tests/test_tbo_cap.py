"""tbo_cap.py: the per-layer ceiling of two-batch overlap from a compute run and a comm run."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import tbo_cap  # noqa: E402


def layer(shape, tokens, serial=None, comm=None, experts=None, transport="nccl"):
    row = {"shape": shape, "tokens_per_rank": tokens, "comm": transport, "serial_ms": serial, "comm_ms": comm}
    return row | ({"experts": experts} if experts else {})


def test_the_cap_hides_all_comm_of_the_matching_cell_only():
    compute = [layer("ds", 8192, serial=26.7, experts="fused"), layer("ds", 8192, serial=21.8, experts="dense"),
               layer("q", 8192, serial=11.5, experts="fused"), layer("q", 4096, serial=6.0, experts="fused")]
    comm = [layer("ds", 8192, comm=2.4), layer("ds", 8192, comm=9.9, transport="copy-engine"),
            layer("q", 8192, comm=1.4)]
    rows = tbo_cap.caps(compute, comm, "fused")
    assert [(r["shape"], r["tokens_per_rank"]) for r in rows] == [("ds", 8192), ("q", 8192)]
    assert rows[0]["share"] == round(2.4 / (2.4 + 26.7), 3) and rows[0]["cap"] == round((2.4 + 26.7) / 26.7, 3)
    # rows written before --experts existed are the dense stand-in
    old = [layer("ds", 8192, serial=15.4)]
    assert tbo_cap.caps(old, comm, "dense")[0]["layer_ms"] == 15.4 and not tbo_cap.caps(old, comm, "fused")


def test_comm_scale_projects_another_dp_size():
    rows = tbo_cap.caps([layer("ds", 8192, serial=26.7, experts="fused")], [layer("ds", 8192, comm=2.4)],
                        "fused", comm_scale=7 / 3)
    assert rows[0]["comm_ms"] == round(2.4 * 7 / 3, 3) and rows[0]["cap"] > 1.2


def test_files_without_a_common_cell_are_refused(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"per_layer": [layer("ds", 8192, serial=26.7, experts="fused")]}))
    b.write_text(json.dumps({"per_layer": [layer("q", 8192, comm=1.4)]}))
    with pytest.raises(SystemExit, match="no \\(shape, tokens\\) has both"):
        tbo_cap.main(["--compute", str(a), "--comm", str(b)])


def test_expert_ms_swaps_the_world1_expert_call_for_the_dp_one():
    compute = [layer("ds", 8192, serial=26.7, experts="fused"), layer("q", 8192, serial=11.5, experts="fused")]
    comm = [layer("ds", 8192, comm=2.4), layer("q", 8192, comm=1.4)]
    swaps = tbo_cap.expert_swaps(["q=4.7:7.44"])
    rows = tbo_cap.caps(compute, comm, "fused", expert_ms=swaps)
    assert rows[0]["layer_ms"] == 26.7 and "expert_swap_ms" not in rows[0]  # no swap for ds
    assert rows[1]["layer_ms"] == round(11.5 - 4.7 + 7.44, 3) and rows[1]["expert_swap_ms"] == [4.7, 7.44]
    assert rows[1]["share"] == round(1.4 / (1.4 + 11.5 - 4.7 + 7.44), 3)
    with pytest.raises(SystemExit, match="SHAPE=FROM_MS:TO_MS"):
        tbo_cap.expert_swaps(["q=4.7"])


def test_the_cap_against_plain_sglang_uses_its_measured_comm_or_says_it_is_estimated():
    compute = [layer("ds", 8192, serial=26.7, experts="fused"), layer("q", 8192, serial=11.5, experts="fused")]
    comm = [layer("ds", 8192, comm=2.4) | {"plain_comm_ms": 4.5}, layer("q", 8192, comm=1.4)]
    measured_only = tbo_cap.caps(compute, comm, "fused")
    assert measured_only[0]["plain_comm"] == "measured" and measured_only[0]["cap_vs_plain"] == round(31.2 / 26.7, 3)
    assert "cap_vs_plain" not in measured_only[1]  # no plain time and no factor: no guess
    rows = tbo_cap.caps(compute, comm, "fused", comm_scale=2.0, plain_comm_factor=2.0)
    assert rows[0]["plain_comm_ms"] == 9.0 and rows[0]["plain_comm"] == "measured"  # measured wins
    assert rows[1]["plain_comm_ms"] == 5.6 and rows[1]["plain_comm"] == "estimated: 2.0 x comm"
    assert rows[1]["cap_vs_plain"] == round((11.5 + 5.6) / 11.5, 3) > rows[1]["cap"]


def test_shapes_keeps_only_the_named_shapes_in_the_written_file(tmp_path):
    """Qwen3-235B's FP8 experts cannot run at TP8 (1536 / 8 = 192 is not whole 128-blocks), so
    its DP8 FP8 row would be the unswapped world-1 layer: --shapes leaves it out."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"per_layer": [layer("ds", 8192, serial=21.2, experts="fused-fp8"),
                                           layer("q", 8192, serial=9.0, experts="fused-fp8")]}))
    b.write_text(json.dumps({"per_layer": [layer("ds", 8192, comm=2.4), layer("q", 8192, comm=1.4)]}))
    assert tbo_cap.main(["--compute", str(a), "--comm", str(b), "--experts", "fused-fp8", "--shapes", "ds",
                         "--label", "x", "--out", str(tmp_path)]) == 0
    assert [r["shape"] for r in json.loads((tmp_path / "tbo_cap_x.json").read_text())["rows"]] == ["ds"]
    with pytest.raises(SystemExit, match="no \\(shape, tokens\\) has both"):
        tbo_cap.main(["--compute", str(a), "--comm", str(b), "--experts", "fused-fp8", "--shapes", "other"])
