"""Pure tier: token-level even split and the all-ranks-agree rule."""

from hypothesis import given, settings, strategies as st

import pytest

from sglang_atom.tbo.split import (SPLIT_MIN_EXPERT_FLOP, agree_split, auto_min_tokens,
                                    micro_batch_rows, seq_cut, split_even)


def test_single_sequence_is_cut_in_the_middle():
    s = split_even([100], [7])
    assert [(g.seq, g.prefix_len, g.extend_len, g.offset) for g in s.first] == [(0, 7, 50, 0)]
    assert [(g.seq, g.prefix_len, g.extend_len, g.offset) for g in s.second] == [(0, 57, 50, 50)]


def test_cut_on_a_sequence_boundary_cuts_nothing():
    s = split_even([25, 25, 40, 10], [0, 5, 0, 0])
    assert [(g.seq, g.prefix_len, g.extend_len) for g in s.first] == [(0, 0, 25), (1, 5, 25)]
    assert [(g.seq, g.prefix_len, g.extend_len) for g in s.second] == [(2, 0, 40), (3, 0, 10)]
    assert s.cut_token == 50


def test_uneven_lengths_are_token_even():
    s = split_even([10, 20, 30, 40], [0, 0, 0, 0])
    assert (s.first_tokens, s.second_tokens) == (50, 50)
    cut = [g for g in s.second if g.offset > 0]
    assert [(g.seq, g.prefix_len, g.extend_len) for g in cut] == [(2, 20, 10)]


def test_agree_split():
    assert agree_split([8192, 0, 3000, 9000], 2048)  # an idle rank joins with empty halves
    assert agree_split([2048, 1000], 2048)  # the largest rank decides
    assert not agree_split([1000, 1000], 2048)
    assert not agree_split([0, 0], 2)
    assert not agree_split([], 2)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)), min_size=1, max_size=40))
def test_split_properties(seqs):
    extend = [e for e, _ in seqs]
    prefix = [p for _, p in seqs]
    s = split_even(extend, prefix)
    # halves differ by at most one token
    assert abs(s.first_tokens - s.second_tokens) <= 1
    assert s.first_tokens == s.cut_token
    # every token lands exactly once, and positions are consistent per sequence
    covered = {i: [] for i in range(len(seqs))}
    for g in s.first + s.second:
        covered[g.seq].append(g)
    for i, (e, p) in enumerate(seqs):
        parts = sorted(covered[i], key=lambda g: g.offset)
        assert sum(g.extend_len for g in parts) == e
        pos = 0
        for g in parts:
            assert g.offset == pos
            assert g.prefix_len == p + g.offset  # absolute start, rebased prefix
            pos += g.extend_len
        assert len(parts) <= 2
    # at most one sequence is cut, and order is preserved (first half then second half)
    flat = [g.seq for g in s.first] + [g.seq for g in s.second]
    assert flat == sorted(flat)
    assert len(flat) - len(set(flat)) <= 1


def test_seq_cut_in_sglang_terms():
    assert seq_cut([100]) == (0, True)  # one sequence, cut in the middle
    assert seq_cut([25, 25, 40, 10]) == (2, False)  # boundary before sequence 2
    assert seq_cut([10, 20, 30, 40]) == (2, True)
    assert seq_cut([1]) == (0, False)  # the first micro-batch is empty
    assert seq_cut([]) == (0, False)


def test_micro_batch_rows():
    assert micro_batch_rows([8192, 0, 3001]) == ([4096, 0, 1500], [4096, 0, 1501])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40))
def test_seq_cut_matches_split_even(extend):
    """SGLang builds its children from (k, inside); they must be exactly split_even's halves."""
    s = split_even(extend, [0] * len(extend))
    k, inside = seq_cut(extend)
    first_seqs = list(range(k + 1 if inside else k))
    second_seqs = list(range(k, len(extend)))
    assert [g.seq for g in s.first] == first_seqs
    assert [g.seq for g in s.second] == second_seqs
    assert inside == any(g.offset > 0 for g in s.second)
    # SGLang's child A takes tokens [0, total // 2) whether or not a sequence is cut
    assert s.first_tokens == sum(extend) // 2 == micro_batch_rows([sum(extend)])[0][0]


def test_auto_min_tokens_is_where_the_expert_work_reaches_the_threshold():
    # Qwen3-30B-A3B / the tiny config, Qwen3-235B, DeepSeek-V3 (8 routed + 1 shared expert)
    assert [auto_min_tokens(2048, 768, 8), auto_min_tokens(4096, 1536, 8),
            auto_min_tokens(7168, 2048, 9)] == [26624, 7168, 3072]


@given(hidden=st.integers(64, 16384), inter=st.integers(64, 8192), k=st.integers(1, 16))
@settings(max_examples=200, deadline=None)
def test_auto_min_tokens_is_the_smallest_multiple_of_1024_reaching_the_threshold(hidden, inter, k):
    n = auto_min_tokens(hidden, inter, k)
    assert n % 1024 == 0 and n >= 1024
    flop = 6 * hidden * inter * k
    assert n * flop >= SPLIT_MIN_EXPERT_FLOP
    assert n == 1024 or (n - 1024) * flop < SPLIT_MIN_EXPERT_FLOP


def test_auto_min_tokens_refuses_empty_widths():
    with pytest.raises(ValueError, match="need positive widths"):
        auto_min_tokens(4096, 0, 8)
