"""The admission glue's rule that a fire admits only what the decision saw (integration tier:
imports SGLang's scheduler types)."""

from types import SimpleNamespace

from sglang_atom.integration import admission


def test_a_fire_admits_only_requests_reported_at_the_last_sync():
    reqs = {rid: SimpleNamespace(rid=rid) for rid in "abcd"}
    scheduler = SimpleNamespace(waiting_queue=[reqs["a"], reqs["c"], reqs["b"], reqs["d"]])
    controller = SimpleNamespace(reported={"a", "b"})
    seen = []

    def sglang_prefill(sched, running_batch):
        seen.extend(r.rid for r in sched.waiting_queue)
        sched.waiting_queue = [r for r in sched.waiting_queue if r.rid != "a"]  # admits "a" only
        return "plan"

    assert admission._prefill_reported(controller, sglang_prefill, scheduler, None) == "plan"
    assert seen == ["a", "b"]
    # "b" was left by SGLang; "c" and "d" arrived after the sync and keep their order
    assert [r.rid for r in scheduler.waiting_queue] == ["b", "c", "d"]


def test_everything_reported_passes_the_queue_through_untouched():
    queue = [SimpleNamespace(rid="a")]
    scheduler = SimpleNamespace(waiting_queue=queue)
    admission._prefill_reported(SimpleNamespace(reported={"a"}), lambda s, rb: None, scheduler, None)
    assert scheduler.waiting_queue is queue
