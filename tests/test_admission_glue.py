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


def test_padding_is_recorded_by_pass_kind_and_tbo_splits_only_on_extend():
    class Recorder:
        def __init__(self):
            self.rows, self.splits = [], []

        def gathered_rows(self, num_tokens, extend):
            self.rows.append((num_tokens, extend))

        def tbo_prefill(self, split):
            self.splits.append(split)

        def pass_interval(self, seconds):
            pass

    metrics = Recorder()
    scheduler = SimpleNamespace(_atom_metrics=metrics, _atom_last_pass_at=None,
                                server_args=SimpleNamespace(enable_two_batch_overlap=True))

    def observe(**batch):
        admission.observe_gathered_rows(SimpleNamespace(batch_to_run=SimpleNamespace(**batch)), scheduler)

    observe(global_num_tokens=[2048, 1024], is_extend_in_batch=True, tbo_split_seq_index=0)
    observe(global_num_tokens=[30, 34], is_extend_in_batch=False, tbo_split_seq_index=None)
    admission.observe_gathered_rows(SimpleNamespace(batch_to_run=None), scheduler)  # an idle pass
    assert metrics.rows == [([2048, 1024], True), ([30, 34], False)]
    assert metrics.splits == [True]


def test_late_arrivals_wait_only_after_a_fire_on_nothing_pending():
    """A fire that saw prefill work lets requests that arrived since the sync join the pass; a
    fire on "nothing pending" (a stale view of an idle cluster) keeps them for the next decision."""
    from sglang_atom.admission.policy import FIRE_FILL, FIRE_NOTHING_PENDING, Decision

    def run(reason):
        late = SimpleNamespace(rid="late")
        scheduler = SimpleNamespace(waiting_queue=[late])
        controller = SimpleNamespace(reported=set(), step=lambda: True,
                                     last_decision=Decision(True, reason), running_batch=None)
        scheduler._atom_admission = controller
        seen = []

        def sglang_prefill(sched, running_batch):
            seen.extend(r.rid for r in sched.waiting_queue)
            return SimpleNamespace(running_batch=running_batch)

        admission.around_get_new_batch_prefill(sglang_prefill, scheduler, "running")
        return seen, [r.rid for r in scheduler.waiting_queue]

    assert run(FIRE_FILL) == (["late"], ["late"])  # SGLang saw it (and here left it queued)
    assert run(FIRE_NOTHING_PENDING) == ([], ["late"])  # held back, still queued


def test_pass_intervals_run_between_busy_passes_and_restart_after_idle(monkeypatch):
    clock = iter([10.0, 10.004, 10.010, 11.0, 12.0, 12.003])
    monkeypatch.setattr(admission.time, "monotonic", lambda: next(clock))
    seen = []
    metrics = SimpleNamespace(pass_interval=seen.append, gathered_rows=lambda tokens, extend: None)
    scheduler = SimpleNamespace(_atom_metrics=metrics, _atom_last_pass_at=None,
                                server_args=SimpleNamespace(enable_two_batch_overlap=False))

    def plan(busy):
        batch = SimpleNamespace(is_extend_in_batch=False, global_num_tokens=[4, 4]) if busy else None
        return SimpleNamespace(batch_to_run=batch)

    for busy in (True, True, True, False, True, True):  # an idle scheduler between 10.010 and 12.0
        admission.observe_gathered_rows(plan(busy), scheduler)
    assert [round(x, 6) for x in seen] == [0.004, 0.006, 0.003]
