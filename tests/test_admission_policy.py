"""Pure tier: the admission decision over plain numbers (no SGLang, no GPU)."""

from hypothesis import given, settings, strategies as st

from sglang_atom.admission.policy import (
    FIRE_CHUNKED, FIRE_FILL, FIRE_KV_PRESSURE, FIRE_MAX_HOLD, FIRE_MAX_WAIT, FIRE_NO_DECODE,
    FIRE_NOTHING_PENDING, FIRE_REASONS, FIRE_STALL, FIRE_TBO_READY, HOLD_ALIGN, HOLD_FILL,
    HOLD_REASONS, EpisodeState, PolicyParams, RankState, decide, padding_ratio,
)

# The fill rule is off by default (target_fill 0); these tests turn it on to exercise it.
P = PolicyParams(target_fill=0.7)


def rank(waiting=0, pending=0, running=10, kv=100, chunked=0, age=0, budget=8192):
    return RankState(waiting, pending, running, kv, chunked, age, budget)


def test_nothing_pending_fires_and_resets():
    d, s = decide([rank(), rank()], EpisodeState(5, 2, 100), P)
    assert (d.fire, d.reason) == (True, FIRE_NOTHING_PENDING)
    assert s == EpisodeState()


def test_no_decode_anywhere_fires_even_when_unaligned():
    d, _ = decide([rank(1, 10, running=0), rank(running=0)], EpisodeState(), P)
    assert (d.fire, d.reason) == (True, FIRE_NO_DECODE)


def test_alignment_holds_when_only_some_ranks_can_prefill():
    d, s = decide([rank(1, 500), rank()], EpisodeState(), P)
    assert (d.fire, d.reason) == (False, HOLD_ALIGN)
    assert s.held_passes == 1


def test_alignment_off_goes_to_fill_rule():
    params = PolicyParams(align=False, target_fill=0.7)
    d, _ = decide([rank(1, 500), rank()], EpisodeState(), params)
    assert (d.fire, d.reason) == (False, HOLD_FILL)


def test_fill_target_fires_when_pending_reaches_fraction_of_budget():
    ranks = [rank(3, 6000, budget=8192), rank(2, 6000, budget=8192)]  # 12000 >= 0.7 * 16384
    assert decide(ranks, EpisodeState(), P)[0].reason == FIRE_FILL
    ranks = [rank(3, 5000, budget=8192), rank(2, 5000, budget=8192)]  # 10000 < 11469
    assert decide(ranks, EpisodeState(), P)[0].reason == HOLD_FILL


def test_default_fires_as_soon_as_every_rank_can_prefill():
    default = PolicyParams()
    assert default.target_fill == 0
    assert decide([rank(1, 1), rank(1, 1)], EpisodeState(), default)[0].reason == FIRE_FILL
    assert decide([rank(1, 500), rank()], EpisodeState(), default)[0].reason == HOLD_ALIGN


def test_kv_pressure_fires():
    d, _ = decide([rank(1, 10, kv=950), rank()], EpisodeState(), P)
    assert d.reason == FIRE_KV_PRESSURE


def test_max_wait_fires():
    d, _ = decide([rank(1, 10, age=1000), rank()], EpisodeState(), P)
    assert d.reason == FIRE_MAX_WAIT


def test_max_hold_fires():
    d, _ = decide([rank(1, 10), rank()], EpisodeState(held_passes=32, last_pending=0), P)
    assert d.reason == FIRE_MAX_HOLD


def test_chunked_continuation_is_held_at_most_its_limit():
    ranks = [rank(0, 3000, chunked=1), rank(1, 100)]
    never_held = PolicyParams(chunked_max_hold_passes=0, target_fill=0.7)
    assert decide(ranks, EpisodeState(), never_held)[0].reason == FIRE_CHUNKED
    assert not decide(ranks, EpisodeState(held_passes=1, last_pending=0), P)[0].fire  # default 2
    assert decide(ranks, EpisodeState(held_passes=2, last_pending=0), P)[0].reason == FIRE_CHUNKED
    params = PolicyParams(chunked_max_hold_passes=4, target_fill=0.7)
    assert not decide(ranks, EpisodeState(held_passes=3, last_pending=0), params)[0].fire
    assert decide(ranks, EpisodeState(held_passes=4, last_pending=0), params)[0].reason == FIRE_CHUNKED


def test_stall_fires_after_pending_stops_growing():
    ranks = [rank(1, 100), rank()]
    state = EpisodeState()
    reasons = []
    for _ in range(6):
        d, state = decide(ranks, state, P)
        reasons.append(d.reason)
    # first hold starts the count; then 4 passes without growth
    assert reasons == [HOLD_ALIGN] * 4 + [FIRE_STALL, HOLD_ALIGN]


def test_growing_queue_keeps_holding_until_fill():
    state, pending = EpisodeState(), 1000
    for _ in range(5):
        d, state = decide([rank(2, pending), rank(2, pending)], state, P)
        assert d.reason == HOLD_FILL
        pending += 1000
    d, state = decide([rank(2, 6000), rank(2, 6000)], state, P)
    assert d.reason == FIRE_FILL


def test_tbo_ready_fires_before_fill_target():
    params = PolicyParams(tbo_enabled=True, tbo_min_tokens=4096, target_fill=0.7)
    ranks = [rank(2, 4096), rank(3, 5000)]
    assert decide(ranks, EpisodeState(), params)[0].reason == FIRE_TBO_READY
    assert decide(ranks, EpisodeState(), P)[0].reason == HOLD_FILL


def test_row_round_trip():
    r = rank(3, 1234, 7, 555, 1, 42, 8192)
    assert RankState.from_row(r.to_row()) == r


def test_padding_ratio():
    assert padding_ratio([1024] + [16] * 7) == 1 - (1024 + 112) / (8 * 1024)
    assert padding_ratio([0, 0]) == 0.0
    assert padding_ratio([5, 5, 5]) == 0.0


# ---------------------------------------------------------------- properties
rank_states = st.builds(
    RankState,
    waiting_reqs=st.integers(0, 50),
    pending_tokens=st.integers(0, 40000),
    running_reqs=st.integers(0, 300),
    kv_usage_permille=st.integers(0, 1000),
    chunked=st.integers(0, 1),
    oldest_wait_ms=st.integers(0, 5000),
    prefill_budget=st.integers(1, 16384),
)
params_st = st.builds(
    PolicyParams,
    target_fill=st.floats(0.0, 1.0),
    align=st.booleans(),
    max_hold_passes=st.integers(0, 64),
    max_wait_ms=st.integers(1, 5000),
    chunked_max_hold_passes=st.integers(0, 16),
    stall_passes=st.integers(1, 16),
    kv_high=st.floats(0.05, 1.0),
    tbo_enabled=st.booleans(),
    tbo_min_tokens=st.integers(2, 20000),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(rank_states, min_size=1, max_size=8), min_size=1, max_size=80), params_st)
def test_decide_is_a_pure_function_of_the_gathered_table_and_state(passes, params):
    """What lockstep rests on: ranks holding the same gathered table and the same state reach the
    same decision and next state, pass after pass (no hidden inputs such as clocks or globals).
    Separate processes in lockstep: tests/test_sglang_integration.py, run_lockstep."""
    n_ranks = 4
    states = [EpisodeState()] * n_ranks
    for ranks in passes:
        outcomes = [decide(list(ranks), states[i], params) for i in range(n_ranks)]
        assert len(set(outcomes)) == 1
        states = [o[1] for o in outcomes]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(rank_states, min_size=1, max_size=8), min_size=1, max_size=120), params_st)
def test_holds_are_bounded_and_reasons_valid(passes, params):
    state, consecutive = EpisodeState(), 0
    for ranks in passes:
        d, state = decide(ranks, state, params)
        assert d.reason in (FIRE_REASONS if d.fire else HOLD_REASONS)
        consecutive = 0 if d.fire else consecutive + 1
        assert consecutive <= params.max_hold_passes
        assert state.held_passes == consecutive


@settings(max_examples=300, deadline=None)
@given(st.lists(rank_states, min_size=1, max_size=8), params_st, st.integers(0, 100))
def test_never_holds_without_decode_or_past_age_limit(ranks, params, held):
    state = EpisodeState(held_passes=held, last_pending=0)
    d, _ = decide(ranks, state, params)
    if all(r.running_reqs == 0 for r in ranks):
        assert d.fire
    if max(r.oldest_wait_ms for r in ranks) >= params.max_wait_ms:
        assert d.fire
