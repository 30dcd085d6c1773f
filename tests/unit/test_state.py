"""JobStore: legal transitions only, conditional updates, durable across reopen."""

import sqlite3
import threading

import pytest

from raycluster.errors import IllegalTransition, JobNotFound
from raycluster.store.jobs import JobStore
from raycluster.store.lifecycle import LEGAL_TRANSITIONS, Cause, JobState, is_legal


@pytest.fixture
def store(tmp_path):
    s = JobStore(tmp_path / "jobs.db")
    yield s
    s.close()


def _new(store, **kw):
    return store.insert(name="j", spec={"name": "j"}, priority=kw.get("priority", 50), tenant=kw.get("tenant"),
                        idempotency_key=kw.get("key"))


def test_wal_mode(store):
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_happy_path_and_audit(store):
    j = _new(store)
    assert j.state == JobState.PENDING
    store.transition(j.id, JobState.PENDING, JobState.PLACING, cause=Cause.ADMITTED, attempt=1)
    store.transition(j.id, JobState.PLACING, JobState.RUNNING, cause=Cause.PLACED, attempt_started_at=1.0)
    done = store.transition(j.id, JobState.RUNNING, JobState.SUCCEEDED, cause=Cause.FINISHED, result={"loss": 0.1}, finished_at=2.0)
    assert done.result == {"loss": 0.1} and done.attempt == 1
    assert [t["to"] for t in store.transitions(j.id)] == ["PENDING", "PLACING", "RUNNING", "SUCCEEDED"]
    assert [t["cause"] for t in store.transitions(j.id)] == ["submitted", "admitted", "placed", "finished"]
    assert done.cause == Cause.FINISHED and done.to_dict()["cause"] == "finished"


@pytest.mark.parametrize("src", list(JobState))
@pytest.mark.parametrize("dst", list(JobState))
def test_transition_table_is_enforced(src, dst):
    assert is_legal(src, dst) == (dst in LEGAL_TRANSITIONS[src])
    if src.terminal:
        assert not is_legal(src, dst)


def test_illegal_edge_rejected(store):
    j = _new(store)
    with pytest.raises(IllegalTransition):
        store.transition(j.id, JobState.PENDING, JobState.SUCCEEDED, cause=Cause.FINISHED)
    assert store.get(j.id).state == JobState.PENDING


def test_conditional_update_loses_race(store):
    j = _new(store)
    store.transition(j.id, JobState.PENDING, JobState.CANCELLED, cause=Cause.CANCELLED)
    with pytest.raises(IllegalTransition, match="is CANCELLED"):
        store.transition(j.id, JobState.PENDING, JobState.PLACING, cause=Cause.ADMITTED)
    assert store.get(j.id).state == JobState.CANCELLED
    assert len(store.transitions(j.id)) == 2  # no audit row for the lost race


def test_concurrent_writers_exactly_one_wins(store):
    j = _new(store)
    wins, losses = [], []

    def go():
        try:
            store.transition(j.id, JobState.PENDING, JobState.PLACING, cause=Cause.ADMITTED)
            wins.append(1)
        except IllegalTransition:
            losses.append(1)

    threads = [threading.Thread(target=go) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1 and len(losses) == 7


def test_durable_across_reopen_and_second_connection(tmp_path):
    s = JobStore(tmp_path / "jobs.db")
    j = _new(s)
    s.transition(j.id, JobState.PENDING, JobState.PLACING, cause=Cause.ADMITTED, attempt=1)
    s.close()
    s2 = JobStore(tmp_path / "jobs.db")
    assert s2.get(j.id).state == JobState.PLACING and s2.get(j.id).attempt == 1
    raw = sqlite3.connect(tmp_path / "jobs.db")
    assert raw.execute("SELECT state FROM jobs WHERE id=?", (j.id,)).fetchone()[0] == "PLACING"
    raw.close()
    s2.close()


def test_idempotency_key_unique(store):
    a = _new(store, key="k1")
    assert store.find_by_idempotency_key("k1").id == a.id
    with pytest.raises(sqlite3.IntegrityError):
        _new(store, key="k1")
    assert len(store.list()) == 1


def test_list_filters_and_pagination(store):
    ids = [_new(store, tenant="t1" if i % 2 else "t2").id for i in range(5)]
    store.transition(ids[0], JobState.PENDING, JobState.CANCELLED, cause=Cause.CANCELLED)
    assert len(store.list([JobState.PENDING])) == 4
    assert len(store.list(tenant="t1")) == 2
    page = store.list(limit=2, offset=2)
    assert [r.id for r in page] == [r.id for r in store.list()][2:4]


def test_metrics_history_and_last(store):
    j = _new(store)
    store.record_metrics([(j.id, 1, 1.0, 10, {"loss": 2.0}), (j.id, 1, 2.0, 20, {"loss": 1.0, "acc": 0.5})])
    hist = store.metrics_history(j.id)
    assert [h["step"] for h in hist] == [10, 20] and hist[-1]["loss"] == 1.0
    assert store.get(j.id).last_metrics == {"loss": 1.0, "acc": 0.5, "step": 20}


def test_unknown_job(store):
    with pytest.raises(JobNotFound):
        store.get("job-nope")


def test_schema_comes_from_the_record_and_old_databases_are_migrated(tmp_path):
    """A jobs.db written before causes/waiting existed (and, here, without last_metrics) gains the new
    columns, keeps its rows, and the table's columns are exactly the record's fields."""
    from raycluster.store.jobs import JOBS, JobRecord

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, priority INTEGER NOT NULL,
            tenant TEXT, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
            system_restarts INTEGER NOT NULL DEFAULT 0, user_retries INTEGER NOT NULL DEFAULT 0,
            submitted_at REAL NOT NULL, started_at REAL, attempt_started_at REAL, finished_at REAL,
            updated_at REAL NOT NULL, queued_at REAL NOT NULL, error TEXT, reason TEXT, result TEXT,
            idempotency_key TEXT UNIQUE);
        CREATE TABLE transitions (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, src TEXT,
            dst TEXT NOT NULL, ts REAL NOT NULL, reason TEXT);
        INSERT INTO jobs (id, name, spec, priority, state, submitted_at, updated_at, queued_at)
            VALUES ('job-old', 'old', '{"name": "old"}', 7, 'PENDING', 1.0, 1.0, 1.0);
        INSERT INTO transitions (job_id, src, dst, ts, reason) VALUES ('job-old', NULL, 'PENDING', 1.0, 'submitted');
    """)
    conn.commit()
    conn.close()
    s = JobStore(path)
    old = s.get("job-old")
    assert (old.priority, old.cause, old.waiting, old.placement_timeouts, old.last_metrics) == (7, None, None, 0, {})
    cols = [r[1] for r in s._conn.execute("PRAGMA table_info(jobs)")]
    assert sorted(cols) == sorted(JobRecord.model_fields) == sorted(c.name for c in JOBS.columns)
    s.transition("job-old", JobState.PENDING, JobState.CANCELLED, cause=Cause.CANCELLED, reason="bye")
    assert [t["cause"] for t in s.transitions("job-old")] == [None, "cancelled"]
    s.set_waiting({"job-old": "never"})  # only PENDING jobs get a waiting reason
    assert s.get("job-old").waiting is None
    assert s.get("job-old").rev == 1  # the old row had version 0; its transition gave it the next
    s.close()


def test_row_versions_give_the_rows_changed_since_a_read(store):
    """Every insert and transition gives the row a new table-wide version; ``changed_since`` answers
    exactly the rows written after a version, oldest first; metric reports and waiting reasons do
    not count as changes (the control loop does not act on them)."""
    assert store.max_rev() == 0 and store.changed_since(0) == ([], 0)
    a, b = _new(store), _new(store)
    assert (a.rev, b.rev) == (1, 2) and store.get(a.id).rev == 1
    seen = store.max_rev()
    assert seen == 2 and store.changed_since(seen) == ([], 2)
    store.transition(a.id, JobState.PENDING, JobState.PLACING, cause=Cause.ADMITTED)
    store.set_waiting({b.id: "waiting for capacity"})
    store.record_metrics([(a.id, 1, 1.0, 3, {"loss": 1.0})])
    recs, rev = store.changed_since(seen)
    assert [(r.id, r.state, r.rev) for r in recs] == [(a.id, JobState.PLACING, 3)] and rev == 3
    c = _new(store)
    store.transition(b.id, JobState.PENDING, JobState.CANCELLED, cause=Cause.CANCELLED)
    recs, rev = store.changed_since(rev)
    assert [r.id for r in recs] == [c.id, b.id] and rev == 5
    with pytest.raises(IllegalTransition):  # a refused transition changes nothing
        store.transition(b.id, JobState.PENDING, JobState.PLACING, cause=Cause.ADMITTED)
    assert store.changed_since(rev) == ([], rev)


def test_api_job_model_is_the_record_plus_transitions_and_cost():
    from raycluster.api.models import Job
    from raycluster.store.jobs import JobRecord

    # (the fields computed when answering: the audit trail, the cost from the ledger, a sweep's summary)
    assert set(Job.model_fields) - set(JobRecord.model_fields) == {"transitions", "cost_usd", "sweep", "ranks"}


def _rental(store, rid="r1"):
    from raycluster.store.rentals import RentalRecord

    store.insert(RentalRecord(id=rid, request_id=f"q-{rid}", market="local", node_type="t4", kind="spot",
                              gpu_type="T4", usd_per_hour=0.16, created_at=1.0))
    return rid


@pytest.mark.parametrize("path,ends", [
    (["running", "releasing", "released"], "released"),   # rented, given back
    (["released"], "released"),                           # the market refused the rent
    (["running", "released"], "released"),                # preempted / lost: we did not ask
    (["running", "requested"], "running"),                # never back to requested
    (["released", "running"], "released"),                # released is the end
    (["running", "releasing", "running"], "releasing"),   # a release is never undone
])
def test_rental_states_move_only_along_legal_transitions(tmp_path, path, ends):
    from raycluster.store.rentals import RentalStore

    store = RentalStore(tmp_path / "rentals.db")
    rid = _rental(store)
    for dst in path:
        if dst == "requested":
            with pytest.raises(ValueError):  # nothing may move to requested
                store.transition(rid, dst)
        else:
            store.transition(rid, dst)
    assert store.get(rid).state.value == ends


def test_a_rentals_state_is_never_set_around_its_transitions(tmp_path):
    from raycluster.store.rentals import RentalState, RentalStore

    store = RentalStore(tmp_path / "rentals.db")
    rid = _rental(store)
    with pytest.raises(ValueError, match="transition"):
        store.update(rid, state=RentalState.RELEASED)
    assert store.get(rid).state == RentalState.REQUESTED
    assert store.transition(rid, RentalState.RELEASED, only_from=(RentalState.RUNNING,)) is None  # not running
    assert store.transition(rid, RentalState.RUNNING, running_at=2.0).running_at == 2.0
