"""Pure tier: the DP admission simulator (runs the production policy)."""

import json

from sglang_atom.admission.policy import PolicyParams
from sglang_atom.admission.simulator import (
    WORKLOADS, AtomPolicy, NoPolicy, SGLangDelayer, StepModel, fit_step_model, main, simulate,
)

MODEL = StepModel(c0_ms=10.0, k_ms=0.003)


def test_step_model_fit_matches_the_probes_it_was_fitted_to():
    model, rms = fit_step_model()
    assert model.c0_ms > 0 and model.k_ms > 0
    assert rms < 10.0  # ms; the two 4096-token prefill probes disagree by ~19 ms between them
    # a prefill pass costs more than a decode pass, and a rank's prefill slows everyone's pass
    assert model.step_ms([4096, 4096], True) > model.step_ms([64, 64], False)
    assert model.step_ms([4096, 64, 64, 64], True) > model.step_ms([64] * 4, False)


def test_every_request_completes_and_metrics_are_sane():
    for policy in (NoPolicy(), SGLangDelayer(), AtomPolicy(PolicyParams())):
        r = simulate(policy, 4, WORKLOADS["1k1k"], MODEL, concurrency_per_rank=8, requests_per_client=2)
        assert r["requests"] == 4 * 8 * 2
        assert r["input_tok_s_per_rank"] > 0 and r["ttft_p99_ms"] >= r["ttft_p50_ms"] > 0
        assert r["ttft_mean_ms"] > 0
        assert 0.0 <= r["padding_ratio_mean"] < 1.0 and 0.0 <= r["eager_pass_share"] <= 1.0


def test_tpot_of_a_lone_request_is_the_decode_step():
    one = WORKLOADS["short"].__class__("one", 100, 5, range_ratio=1.0)  # 100 in, 5 out, no spread
    r = simulate(NoPolicy(), 1, one, MODEL, concurrency_per_rank=1, requests_per_client=1)
    # prefill gives the first token; four decode passes of one row each follow
    assert r["ttft_mean_ms"] == round(MODEL.step_ms([100], True), 1)
    assert r["tpot_mean_ms"] == round(MODEL.step_ms([1], False), 2)


def test_no_policy_never_holds_and_policies_that_hold_cut_mixed_passes():
    none = simulate(NoPolicy(), 8, WORKLOADS["1k1k"], MODEL, concurrency_per_rank=16, requests_per_client=2)
    atom = simulate(AtomPolicy(PolicyParams()), 8, WORKLOADS["1k1k"], MODEL, concurrency_per_rank=16,
                    requests_per_client=2)
    assert none["held_passes"] == 0
    assert atom["held_passes"] > 0
    assert atom["eager_pass_share"] < none["eager_pass_share"]
    assert atom["padding_ratio_mean"] < none["padding_ratio_mean"]


def test_poisson_arrivals_complete():
    r = simulate(AtomPolicy(PolicyParams()), 4, WORKLOADS["8k1k"], MODEL, concurrency_per_rank=4,
                 requests_per_client=2, arrival="poisson", rate_per_rank_s=2.0)
    assert r["requests"] == 4 * 4 * 2


def test_cli_writes_table_json_and_plot(tmp_path):
    assert main(["--out", str(tmp_path), "--dp", "4,8", "--workloads", "1k1k",
                 "--concurrency-per-rank", "8", "--requests-per-client", "1"]) == 0
    rows = json.loads((tmp_path / "sim.json").read_text())["rows"]
    assert {(r["dp"], r["policy"]) for r in rows} == {(d, p) for d in (4, 8)
                                                     for p in ("none", "sglang_delayer", "atom")}
    assert "| 1k1k | 8 | atom |" in (tmp_path / "sim.md").read_text()
    assert (tmp_path / "sim.png").stat().st_size > 10_000


def test_max_len_gather_charges_pad_rows_only_in_extend_passes_without_a_decoding_rank():
    padded = StepModel(c0_ms=10.0, k_ms=0.003, max_len_aligned_prefill=True)
    # one rank prefills 2048, the others idle: SGLang pads all four to 2048 for the experts
    assert padded.step_ms([2048, 0, 0, 0], True, any_decode=False) == MODEL.step_ms([2048] * 4, True)
    assert padded.step_ms([2048, 0, 0, 0], True, any_decode=False) > MODEL.step_ms([2048, 0, 0, 0], True)
    # a decoding rank votes the prefill graph off: SUM_LEN, as without the flag
    assert padded.step_ms([2048, 16, 16, 16], True, any_decode=True) == MODEL.step_ms([2048, 16, 16, 16], True)
    # balanced passes have nothing to pad, and decode passes are untouched
    assert padded.step_ms([2048] * 4, True, any_decode=False) == MODEL.step_ms([2048] * 4, True)
    assert padded.step_ms([16, 8, 0, 0], False, any_decode=True) == MODEL.step_ms([16, 8, 0, 0], False)


def test_the_front_end_delays_each_request_by_its_own_draw():
    one = WORKLOADS["short"].__class__("one", 100, 2, range_ratio=1.0)  # 100 in, 2 out
    prefill = MODEL.step_ms([100], True)
    # one client: each request reaches an idle scheduler after its delay and is prefilled alone
    r = simulate(NoPolicy(), 1, one, MODEL, concurrency_per_rank=1, requests_per_client=400, frontend_ms=50.0)
    assert abs(r["ttft_mean_ms"] - (50.0 + prefill)) < 0.12 * 50.0
    assert r["ttft_p99_ms"] > 150.0 + prefill > r["ttft_p50_ms"] > prefill  # exponential: long tail
    # a wave sent at once no longer shares one prefill pass ...
    wave = simulate(NoPolicy(), 1, one, MODEL, concurrency_per_rank=3, requests_per_client=1, frontend_ms=50.0)
    assert wave["ttft_p50_ms"] > MODEL.step_ms([300], True)
    # ... as it does without the stage
    assert simulate(NoPolicy(), 1, one, MODEL, concurrency_per_rank=3, requests_per_client=1)[
        "ttft_mean_ms"] == round(MODEL.step_ms([300], True), 1)


def test_refit_score_is_zero_at_the_model_that_made_the_targets_and_grows_away_from_it():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import sim_refit

    truth = StepModel(c0_ms=4.0, k_ms=0.001)
    load = {"budget": 4096, "workload": "short", "concurrency_per_rank": 4, "requests_per_client": 2}
    made = sim_refit.run(NoPolicy(), truth, 0.0, 2, load, 4096)
    targets = {"plain": {**load, **{m: made[m] for m in sim_refit.METRICS}}}
    assert sim_refit.score(truth, 0.0, 2, targets)[0] == 0.0
    slower = sim_refit.score(StepModel(c0_ms=8.0, k_ms=0.001), 0.0, 2, targets)[0]
    much_slower = sim_refit.score(StepModel(c0_ms=16.0, k_ms=0.002), 0.0, 2, targets)[0]
    assert 0.05 < slower < much_slower


def test_refit_scores_a_grid_against_served_runs_and_compares_policies(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import sim_refit

    def served(config, tok_s, ttft, tpot, repeat=0):
        return {"config": config, "repeat": repeat, "workload": "short", "concurrency": 8,
                "completed": 16, "input_tok_s": tok_s, "mean_ttft_ms": ttft, "mean_tpot_ms": tpot}

    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps({"runs": [served("plain", 1e9, 1e9, 1e9, repeat=-1),  # warm-up: ignored
                                       served("plain", 100000.0, 90.0, 8.0), served("plain", 120000.0, 110.0, 10.0),
                                       served("atom", 5.0, 5.0, 5.0)]}))
    assert sim_refit.main(["--out", str(tmp_path / "out"), "--ab", str(ab), "--dp", "2", "--fit", "plain=4096",
                           "--compare-budget", "4096", "--client-ms", "40", "--c0-ms", "5", "--k-ms", "0.001",
                           "--decode-speedup", "1", "--frontend-ms", "0,50", "--top", "2"]) == 0
    out = json.loads((tmp_path / "out" / "refit.json").read_text())
    t = out["targets"]["plain"]
    assert (t["runs"], t["concurrency_per_rank"], t["requests_per_client"]) == (2, 4, 2)
    assert (t["input_tok_s_per_rank"], t["ttft_mean_ms"], t["tpot_mean_ms"]) == (55000.0, 60.0, 9.0)
    assert sorted(g["frontend_ms"] for g in out["grid"]) == [0.0, 50.0]
    assert out["grid"][0]["rms_rel_error"] <= out["grid"][1]["rms_rel_error"]
    assert set(out["best"][0]["policies"]) == {"none", "atom_fill0", "atom_fill07"}
    assert "| 5.0 | 0.001 | 1.0 |" in (tmp_path / "out" / "refit.md").read_text()
