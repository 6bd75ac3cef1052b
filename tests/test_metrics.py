"""sglang-atom's Prometheus series as prometheus_client (SGLang's metrics library) exports them."""

import pytest
from prometheus_client import generate_latest

from sglang_atom.admission.policy import Decision
from sglang_atom.metrics import AtomMetrics


@pytest.fixture(scope="module")
def exported():
    m = AtomMetrics.create()  # registers in the process-wide registry, once per test session
    m.decision(Decision(fire=False, reason="align"))
    m.decision(Decision(fire=True, reason="fill"))
    m.hold_ended(passes=3, seconds=0.02)
    m.gathered_rows([1024, 512], extend=True)  # ratio 0.25: 512 padding rows of 2048
    m.gathered_rows([30, 34], extend=False)  # ratio 0.059: 4 padding rows of 68
    m.gathered_rows([0, 0], extend=False)  # an all-idle pass adds nothing but a zero ratio
    m.tbo_prefill(True)
    m.tbo_prefill(False)
    m.tbo_prefill(True)
    m.pass_interval(0.004)
    m.pass_interval(0.3)  # a stall
    return generate_latest().decode()


@pytest.mark.parametrize("line", [
    'sglang:atom_admission_decisions_total{decision="hold",reason="align"} 1.0',
    'sglang:atom_admission_decisions_total{decision="fire",reason="fill"} 1.0',
    "sglang:atom_admission_held_passes_sum 3.0",
    'sglang:atom_admission_held_seconds_bucket{le="0.025"} 1.0',
    'sglang:atom_gathered_rows_padding_ratio_bucket{le="0.2",pass="extend"} 0.0',
    'sglang:atom_gathered_rows_padding_ratio_bucket{le="0.3",pass="extend"} 1.0',
    'sglang:atom_gathered_rows_padding_ratio_bucket{le="0.05",pass="decode"} 1.0',
    'sglang:atom_gathered_rows_padding_ratio_bucket{le="0.1",pass="decode"} 2.0',
    'sglang:atom_gathered_rows_total{pass="extend",rows="real"} 1536.0',
    'sglang:atom_gathered_rows_total{pass="extend",rows="padding"} 512.0',
    'sglang:atom_gathered_rows_total{pass="decode",rows="real"} 64.0',
    'sglang:atom_gathered_rows_total{pass="decode",rows="padding"} 4.0',
    'sglang:atom_tbo_prefill_passes_total{split="yes"} 2.0',
    'sglang:atom_tbo_prefill_passes_total{split="no"} 1.0',
    'sglang:atom_pass_interval_seconds_bucket{le="0.005"} 1.0',
    'sglang:atom_pass_interval_seconds_bucket{le="0.25"} 1.0',
    'sglang:atom_pass_interval_seconds_bucket{le="0.5"} 2.0',
])
def test_series_are_exported(exported, line):
    assert line in exported
