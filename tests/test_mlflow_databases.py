"""Databases that MLflow manages, made by the real ``mlflow`` package (the ``mlflow``
extra): what asyncstore says of them and that it leaves them as they are."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore, JobStatus, Metric, Param, RunTag, SchemaOutOfDate, ViewType, migrate
from asyncstore.bench.database import ScratchDatabase
from asyncstore.bench.mlflow_peer import MlflowPeer
from asyncstore.config import Backend, StoreConfig
from asyncstore.engines import create_engine
from asyncstore.rules import FLOAT_MAX
from tests import dbadmin
from tests.test_cli import InProcess

MLFLOW_HEAD = "dc11669786a5"
"""The Alembic head of MLflow 3.17 (the ``mlflow`` extra pins 3.17.2)."""


def _mlflow_creates(uri: str, backend: str) -> None:
    """Create and migrate MLflow's schema in ``uri`` with MLflow's own store, as an
    MLflow server does on first use."""
    scratch = ScratchDatabase(backend=Backend(backend), url=make_url(uri), name=make_url(uri).database or "")
    peer = MlflowPeer(scratch)

    async def create() -> None:
        await peer.open()
        await peer.close()

    asyncio.run(create())


@pytest.fixture
def mlflow_uri(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database that MLflow created and migrated (MySQL: the server's default
    collation, as MLflow's databases have it)."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = dbadmin.create_database(backend, f"asyncstore_test_{uuid.uuid4().hex[:12]}", server_collation=True)
    try:
        _mlflow_creates(uri, backend)
        yield uri
    finally:
        if backend != "sqlite":
            dbadmin.drop_database(backend, uri)


def _mlflow_store(uri: str, backend: str) -> Any:
    """MLflow 3.17's own ``SqlAlchemyStore`` on ``uri`` (through its sync driver)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    scratch = ScratchDatabase(backend=Backend(backend), url=make_url(uri), name=make_url(uri).database or "")
    return SqlAlchemyStore(scratch.sync_uri(), "mlartifacts")


def _revision(uri: str) -> str:
    async def read() -> str | None:
        engine = create_engine(StoreConfig.load(uri))
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return str(asyncio.run(read()))


def test_an_mlflow_database_is_served_as_it_is_and_never_migrated(
    backend: str, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db check` and `db current` say it is an MLflow database that asyncstore serves;
    a store opens on it (with upgrade=True too) without touching its schema; `db
    upgrade` and `db downgrade` refuse it in one line. MLflow's own store, which
    accepts nothing but its head, still opens it afterwards."""
    cmd = InProcess(capsys)
    note = f"is an MLflow database at revision {MLFLOW_HEAD} (MLflow 3.17): asyncstore serves it as it is"
    check = cmd("db", "check", mlflow_uri)
    assert check.returncode == 0 and note in check.stdout, check
    assert note in cmd("db", "current", mlflow_uri).stdout

    async def open_store(upgrade: bool) -> str:
        async with AsyncStore.open(mlflow_uri, upgrade=upgrade) as store:
            return (await store.experiments.get("0")).name

    assert asyncio.run(open_store(False)) == asyncio.run(open_store(True)) == "Default"
    for argv in (("db", "upgrade", mlflow_uri), ("db", "downgrade", mlflow_uri, "base")):
        refused = cmd(*argv)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused
        assert "an MLflow database" in refused.stderr and "whose schema only MLflow migrates" in refused.stderr
    assert _revision(mlflow_uri) == MLFLOW_HEAD
    _mlflow_creates(mlflow_uri, backend)


def test_an_mlflow_database_that_lacks_a_column_names_it_and_mlflow_s_upgrade(
    backend: str, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An MLflow database without a column asyncstore uses (an older MLflow's) is not
    served: opening it and `db check` name the column, the MLflow releases asyncstore
    serves and `mlflow db upgrade`."""

    async def drop_column() -> None:
        engine = create_engine(StoreConfig.load(mlflow_uri))
        try:
            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE jobs DROP COLUMN token_hash"))
        finally:
            await engine.dispose()

    asyncio.run(drop_column())
    wanted = ["lacks jobs.token_hash, which asyncstore uses", "MLflow 3.17", "run `mlflow db upgrade "]

    async def open_store() -> None:
        async with AsyncStore.open(mlflow_uri):
            pass

    with pytest.raises(SchemaOutOfDate) as raised:
        asyncio.run(open_store())
    assert all(w in str(raised.value) for w in wanted), raised.value
    check = InProcess(capsys)("db", "check", mlflow_uri)
    assert check.returncode == 1 and all(w in check.stdout for w in wanted), check
    assert "asyncstore db upgrade" not in check.stdout


def test_asyncstore_s_indexes_are_added_to_an_mlflow_database_only_when_asked(
    backend: str, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promise: `db check` names the indexes of asyncstore's schema an MLflow database
    lacks and the command that adds them; `db upgrade --indexes` adds exactly those,
    named asyncstore_*, and nothing else (MLflow's revision and its own indexes stay,
    a second run adds none); the store and MLflow's own store still work on it; `db
    downgrade --indexes` drops them again, and only them."""
    cmd = InProcess(capsys)
    check = cmd("db", "check", mlflow_uri)
    assert check.returncode == 0 and "index_jobs_claim_order" in check.stdout, check
    assert "`asyncstore db upgrade --indexes " in check.stdout

    async def indexes() -> dict[str, set[str]]:
        engine = create_engine(StoreConfig.load(mlflow_uri))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda c: {t: {str(i["name"]) for i in inspect(c).get_indexes(t)} for t in inspect(c).get_table_names()}
                )
        finally:
            await engine.dispose()

    before = asyncio.run(indexes())
    added = cmd("db", "upgrade", "--indexes", mlflow_uri)
    assert added.returncode == 0, added
    after = asyncio.run(indexes())
    new = {(t, n) for t in after for n in after[t] - before.get(t, set())}
    assert new and all(n.startswith("asyncstore_") for _, n in new), new
    assert ("jobs", "asyncstore_index_jobs_claim_order") in new
    # MLflow's own indexes stay; MySQL itself drops the index it made for a foreign key
    # when another one starts with the same columns.
    replaced = {"experiment_tags": {"experiment_id"}, "runs": {"experiment_id"}} if backend == "mysql" else {}
    assert {t: before[t] - after[t] for t in before if before[t] - after[t]} == replaced
    assert f"added {len(new)} index(es)" in added.stdout and "lacks" not in added.stdout, added
    assert cmd("db", "upgrade", "--indexes", mlflow_uri).stdout.startswith("added 0 index(es)")
    assert _revision(mlflow_uri) == MLFLOW_HEAD

    async def use() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            job = await store.jobs.create("j", {})
            assert [j.job_id for j in await store.jobs.claim(["j"])] == [job.job_id]

    asyncio.run(use())
    _mlflow_creates(mlflow_uri, backend)  # MLflow's store opens it as it is
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        assert ml.create_experiment("after indexes")
    finally:
        ml.engine.dispose()

    dropped = cmd("db", "downgrade", "--indexes", mlflow_uri)
    assert dropped.returncode == 0 and f"dropped {len(new)} index(es)" in dropped.stdout, dropped
    assert asyncio.run(indexes()) == before
    for argv, message in (
        (("db", "downgrade", mlflow_uri), "needs a REVISION"),
        (("db", "downgrade", "--indexes", mlflow_uri, "base"), "takes no REVISION"),
        (("db", "upgrade", "--indexes", "--revision", "0001_initial", mlflow_uri), "takes no --revision"),
    ):
        refused = cmd(*argv)
        assert refused.returncode == 2 and message in refused.stderr, refused


def test_indexes_are_refused_on_an_asyncstore_database(db_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Promise: `db upgrade --indexes` on asyncstore's own database changes nothing and
    says that its indexes come from its migrations."""
    cmd = InProcess(capsys)
    assert cmd("db", "upgrade", db_uri).returncode == 0
    refused = cmd("db", "upgrade", "--indexes", db_uri)
    assert refused.returncode == 2 and "only in an MLflow database" in refused.stderr, refused


_ODD_VALUES = [1.5, float("nan"), float("inf"), float("-inf"), -0.25]


def test_mlflow_writes_and_asyncstore_reads_equal(backend: str, mlflow_uri: str) -> None:
    """Experiments, runs, params, metrics (NaN, ±inf, several steps), tags and a
    deleted run, written by MLflow's store, read through asyncstore as MLflow reads them."""
    from mlflow.entities import Metric as MMetric
    from mlflow.entities import Param as MParam
    from mlflow.entities import RunTag as MRunTag
    from mlflow.entities import ViewType as MViewType

    ml = _mlflow_store(mlflow_uri, backend)
    exp_id = ml.create_experiment("written by mlflow", tags=[])
    ml.set_experiment_tag(exp_id, __import__("mlflow").entities.ExperimentTag("team", "ml"))
    run = ml.create_run(exp_id, user_id="ann", start_time=1000, tags=[MRunTag("t", "v")], run_name="r")
    run_id = run.info.run_id
    metrics = [MMetric("m", v, 2000 + i, i) for i, v in enumerate(_ODD_VALUES)]
    ml.log_batch(run_id, metrics=metrics, params=[MParam("p", "1")], tags=[MRunTag("u", "w")])
    ml.update_run_info(run_id, __import__("mlflow").entities.RunStatus.from_string("FINISHED"), 3000, None)
    gone = ml.create_run(exp_id, user_id="bob", start_time=1100, tags=[], run_name="gone").info.run_id
    ml.delete_run(gone)
    expected_run = ml.get_run(run_id)
    expected_history = ml.get_metric_history(run_id, "m")
    expected_ids = [r.info.run_id for r in ml.search_runs([exp_id], "", MViewType.ALL)]
    ml.engine.dispose()

    async def read() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            exp = await store.experiments.get_by_name("written by mlflow")
            assert (exp.experiment_id, exp.tags) == (exp_id, {"team": "ml"})
            got = await store.runs.get(run_id)
            assert (got.info.run_name, got.info.user_id, got.info.status.value, got.info.end_time) == (
                "r", "ann", "FINISHED", 3000,
            )
            assert got.data.params == expected_run.data.params
            assert got.data.tags == expected_run.data.tags
            assert _same_floats(got.data.metrics, expected_run.data.metrics)
            history = await store.runs.get_metric_history(run_id, "m")
            assert [(m.step, m.timestamp) for m in history] == [(m.step, m.timestamp) for m in expected_history]
            # The values logged; MLflow's own store reads ±inf back as the ±FLOAT_MAX it stores.
            assert _same_floats({str(m.step): m.value for m in history}, _by_step(_ODD_VALUES))
            assert _same_floats(
                {str(m.step): m.value for m in expected_history}, _by_step(map(_as_mlflow_reads, _ODD_VALUES))
            )
            page = await store.runs.search([exp_id], view=ViewType.ALL)
            assert [r.info.run_id for r in page.items] == expected_ids
            assert (await store.runs.get(gone)).info.lifecycle_stage.value == "deleted"

    asyncio.run(read())


def test_asyncstore_writes_and_mlflow_reads_equal(backend: str, mlflow_uri: str) -> None:
    """What asyncstore writes into an MLflow database (a run created without a user,
    NaN and ±inf metrics, params, tags, a finished status) is what MLflow's store reads."""
    from mlflow.entities import ViewType as MViewType

    async def write() -> tuple[str, str]:
        async with AsyncStore.open(mlflow_uri) as store:
            exp_id = await store.experiments.create("written by asyncstore", tags={"team": "async"})
            run = await store.runs.create(exp_id, run_name="a", start_time=1000, tags={"t": "v"})
            await store.runs.log_batch(
                run.run_id,
                metrics=[Metric("m", v, 2000 + i, i) for i, v in enumerate(_ODD_VALUES)],
                params=[Param("p", "1")],
                tags=[RunTag("u", "w")],
            )
            await store.runs.update(run.run_id, status="FINISHED", end_time=3000)
            return exp_id, run.run_id

    exp_id, run_id = asyncio.run(write())
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        exp = ml.get_experiment_by_name("written by asyncstore")
        assert (exp.experiment_id, exp.tags) == (exp_id, {"team": "async"})
        got = ml.get_run(run_id)
        assert (got.info.run_name, got.info.user_id, got.info.status, got.info.end_time) == (
            "a", "unknown", "FINISHED", 3000,
        )
        assert got.data.params == {"p": "1"}
        assert got.data.tags == {"t": "v", "u": "w", "mlflow.runName": "a"}
        assert _same_floats(got.data.metrics, {"m": _ODD_VALUES[-1]})
        history = ml.get_metric_history(run_id, "m")
        assert [(m.step, m.timestamp) for m in history] == [(i, 2000 + i) for i in range(len(_ODD_VALUES))]
        assert _same_floats({str(m.step): m.value for m in history}, _by_step(map(_as_mlflow_reads, _ODD_VALUES)))
        assert [r.info.run_id for r in ml.search_runs([exp_id], "", MViewType.ALL)] == [run_id]
    finally:
        ml.engine.dispose()


def _as_mlflow_reads(value: float) -> float:
    """What MLflow's store reads back of a logged ``value``: ±inf is stored as ±FLOAT_MAX."""
    return math.copysign(FLOAT_MAX, value) if math.isinf(value) else value


def _by_step(values: Iterable[float]) -> dict[str, float]:
    return {str(step): value for step, value in enumerate(values)}


def _same_floats(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def _mlflow_jobs(uri: str, backend: str) -> Any:
    from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore

    scratch = ScratchDatabase(backend=Backend(backend), url=make_url(uri), name=make_url(uri).database or "")
    return SqlAlchemyJobStore(scratch.sync_uri())


def test_jobs_both_ways(backend: str, mlflow_uri: str) -> None:
    """A job MLflow created (next_attempt_at NULL) is read, claimed and finished
    through asyncstore, and MLflow reads the result; a job asyncstore created is one
    MLflow's job store reads."""
    from mlflow.entities._job_status import JobStatus as MlflowJobStatus

    ml = _mlflow_jobs(mlflow_uri, backend)
    made_by_mlflow = ml.create_job("tests.train", '{"n": 1}', timeout=30.0, creator="ann")

    async def work() -> str:
        async with AsyncStore.open(mlflow_uri) as store:
            job = await store.jobs.get(made_by_mlflow.job_id)
            assert (job.job_name, job.params, job.timeout, job.status.name, job.next_attempt_at) == (
                "tests.train", {"n": 1}, 30.0, "PENDING", None,
            )
            listed = [j.job_id async for j in store.jobs.list("tests.train")]
            assert listed == [made_by_mlflow.job_id]
            claimed = await store.jobs.claim(["tests.train"], limit=5)
            assert [j.job_id for j in claimed] == [made_by_mlflow.job_id]
            await store.jobs.finish(made_by_mlflow.job_id, '{"ok": true}')
            return (await store.jobs.create("tests.eval", {"k": "v"}, timeout=5)).job_id

    made_by_asyncstore = asyncio.run(work())
    try:
        done = ml.get_job(made_by_mlflow.job_id)
        assert (done.status, done.result, done.creator) == (MlflowJobStatus.SUCCEEDED, '{"ok": true}', "ann")
        new = ml.get_job(made_by_asyncstore)
        assert (new.job_name, json.loads(new.params), new.timeout, new.status, new.retry_count, new.workspace) == (
            "tests.eval", {"k": "v"}, 5.0, MlflowJobStatus.PENDING, 0, "default",
        )
    finally:
        ml.engine.dispose()


def test_a_worker_runs_mlflows_jobs_on_its_tables(backend: str, mlflow_uri: str) -> None:
    """asyncstore's Worker drains jobs MLflow created, on MLflow's own jobs table (no
    column added): MLflow reads each outcome (result, retries, failure), and a stale
    lease token is refused there too."""
    from mlflow.entities._job_status import JobStatus as MlflowJobStatus

    from asyncstore import InvalidState
    from asyncstore.worker import Worker

    ml = _mlflow_jobs(mlflow_uri, backend)
    ok = [ml.create_job("tests.ok", json.dumps({"n": n})) for n in range(20)]
    bad = ml.create_job("tests.bad", "{}")

    async def ok_handler(params: dict[str, Any], ctx: Any) -> Any:
        return {"double": params["n"] * 2}

    async def bad_handler(params: dict[str, Any], ctx: Any) -> Any:
        raise ValueError(f"attempt {ctx.attempt}")

    async def work() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            worker = Worker(
                store, {"tests.ok": ok_handler, "tests.bad": bad_handler}, concurrency=4, poll_interval=0.01,
                max_poll_interval=0.05, max_retries=1, backoff_base=0, backoff_jitter=0,
            )
            task = asyncio.create_task(worker.run())
            for _ in range(600):
                counts = await store.jobs.count_by_status()
                if counts[JobStatus.PENDING] == 0 and counts[JobStatus.RUNNING] == 0:
                    break
                await asyncio.sleep(0.05)
            worker.stop()
            await asyncio.wait_for(task, 60)
            assert worker.counts["succeeded"] == 20 and worker.counts["failed"] == 1
            # Fencing on MLflow's rows: a claim's token, then a newer claim, refuses the old one.
            stale_job = await store.jobs.create("tests.fence", {})
            [first] = await store.jobs.claim(["tests.fence"], lease_seconds=0.05)
            await asyncio.sleep(0.15)
            await store.jobs.requeue_expired(backoff_base=0)
            [second] = await store.jobs.claim(["tests.fence"])
            assert first.job_id == second.job_id == stale_job.job_id and second.lease_token != first.lease_token
            with pytest.raises(InvalidState, match="claimed again"):
                await store.jobs.finish(first.job_id, "late", token=first.lease_token)
            await store.jobs.finish(second.job_id, "on time", token=second.lease_token)

    asyncio.run(work())
    try:
        for job in ok:
            done = ml.get_job(job.job_id)
            assert done.status == MlflowJobStatus.SUCCEEDED
            assert json.loads(done.result) == {"double": json.loads(job.params)["n"] * 2}
        failed = ml.get_job(bad.job_id)
        assert (failed.status, failed.retry_count, failed.result) == (MlflowJobStatus.FAILED, 1, "ValueError: attempt 2")
        fenced = [j for j in ml.list_jobs(job_name="tests.fence")]
        assert [(j.status, j.result) for j in fenced] == [(MlflowJobStatus.SUCCEEDED, "on time")]
    finally:
        ml.engine.dispose()


def test_trace_links_both_ways(backend: str, mlflow_uri: str) -> None:
    """A trace asyncstore links to a run is found by MLflow's search_traces on that
    run; a link MLflow made is read through asyncstore."""

    async def link() -> tuple[str, str, str]:
        async with AsyncStore.open(mlflow_uri) as store:
            run = await store.runs.create("0", run_name="linked")
            a = (await store.traces.start("0", timestamp_ms=1000)).trace_id
            b = (await store.traces.start("0", timestamp_ms=2000)).trace_id
            await store.traces.link_to_run([a], run.run_id)
            return run.run_id, a, b

    run_id, a, b = asyncio.run(link())
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        found, _ = ml.search_traces(["0"], filter_string=f"run_id = '{run_id}'")
        assert [t.trace_id for t in found] == [a]
        ml.link_traces_to_run([b], run_id)
    finally:
        ml.engine.dispose()

    async def read() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            assert sorted(await store.traces.linked_trace_ids(run_id)) == sorted([a, b])
            assert await store.traces.linked_run_ids(b) == [run_id]

    asyncio.run(read())


def test_both_stores_write_the_same_run_and_trace_at_once(backend: str, mlflow_uri: str) -> None:
    """Promise: MLflow's store (in a thread, as a tracking server's handlers run) and
    asyncstore write to the same run and the same trace at the same time: metrics of one
    key at interleaved steps, params and tags of their own, spans of the same trace and
    tags on it. Afterwards each store reads the union, and the latest metric is the one
    at the highest step, whoever wrote it."""
    import threading

    from mlflow.entities import Metric as MMetric
    from mlflow.entities import Param as MParam
    from mlflow.entities import RunTag as MRunTag

    from tests.helpers import make_span, new_trace_id
    from tests.test_mlflow_traces import _mlflow_spans

    rounds = 20
    ml = _mlflow_store(mlflow_uri, backend)
    exp_id = ml.create_experiment("shared")
    run_id = ml.create_run(exp_id, user_id="ann", start_time=1000, tags=[], run_name="shared").info.run_id
    trace_id = new_trace_id()
    mlflow_spans = _mlflow_spans(trace_id)
    failures: list[BaseException] = []
    spans_of: dict[str, tuple[float, float]] = {}  # who -> (first write began, last write ended)

    def mlflow_writes() -> None:
        began = time.monotonic()
        try:
            for i in range(rounds):
                ml.log_batch(
                    run_id, metrics=[MMetric("loss", float(i), 5000 + i, 2 * i)],
                    params=[MParam(f"ml_p{i}", str(i))], tags=[MRunTag(f"ml_t{i}", "x")],
                )
                if i == 0:
                    ml.log_spans(exp_id, mlflow_spans)
                else:
                    ml.set_trace_tag(trace_id, f"ml_tag{i}", "y")
        except BaseException as exc:  # reported by the test thread below
            failures.append(exc)
        spans_of["mlflow"] = (began, time.monotonic())

    async def asyncstore_writes() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            began = time.monotonic()
            for i in range(rounds):
                await store.runs.log_batch(
                    run_id, metrics=[Metric("loss", float(100 + i), 6000 + i, 2 * i + 1)],
                    params=[Param(f"as_p{i}", str(i))], tags=[RunTag(f"as_t{i}", "z")],
                )
                await store.spans.log_spans(exp_id, [make_span(trace_id, name=f"as{i}")])
                await asyncio.sleep(0)
            spans_of["asyncstore"] = (began, time.monotonic())

    worker = threading.Thread(target=mlflow_writes)
    worker.start()
    asyncio.run(asyncstore_writes())
    worker.join(120)
    assert not worker.is_alive() and not failures, failures
    (a0, a1), (b0, b1) = spans_of["mlflow"], spans_of["asyncstore"]
    assert a0 < b1 and b0 < a1, spans_of  # the two stores' writes did overlap in time

    params = {f"ml_p{i}": str(i) for i in range(rounds)} | {f"as_p{i}": str(i) for i in range(rounds)}
    tags = {f"ml_t{i}": "x" for i in range(rounds)} | {f"as_t{i}": "z" for i in range(rounds)}
    trace_tags = {f"ml_tag{i}": "y" for i in range(1, rounds)}
    span_names = {"agent", "llm"} | {f"as{i}" for i in range(rounds)}
    last = {"loss": float(100 + rounds - 1)}  # step 2 * rounds - 1, asyncstore's
    try:
        run = ml.get_run(run_id)
        assert run.data.params == params
        assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == tags
        assert run.data.metrics == last
        assert len(ml.get_metric_history(run_id, "loss")) == 2 * rounds
        trace = ml.get_trace(trace_id)
        assert {k: trace.info.tags[k] for k in trace_tags} == trace_tags
        assert {s.name for s in trace.data.spans} == span_names
    finally:
        ml.engine.dispose()

    async def read() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            got = await store.runs.get(run_id)
            assert got.data.params == params
            assert {k: v for k, v in got.data.tags.items() if not k.startswith("mlflow.")} == tags
            assert got.data.metrics == last
            assert len((await store.runs.get_metric_history(run_id, "loss")).items) == 2 * rounds
            trace = await store.traces.get(trace_id)
            assert {k: trace.info.tags[k] for k in trace_tags} == trace_tags
            assert {s.name for s in trace.spans} == span_names

    asyncio.run(read())


def test_an_experiment_name_longer_than_mlflow_s_column(backend: str, mlflow_uri: str) -> None:
    """Promise: in an MLflow database (``experiments.name`` VARCHAR(256)), a 300-character
    name is INVALID_PARAMETER on PostgreSQL and MySQL, which enforce the size, and
    nothing is written; SQLite stores it, and MLflow reads it back."""
    from asyncstore import InvalidParameter

    name = "n" * 300

    async def create() -> str | None:
        async with AsyncStore.open(mlflow_uri) as store:
            try:
                return await store.experiments.create(name)
            except InvalidParameter as exc:
                assert "rejected a value" in str(exc), exc
                page = await store.experiments.search(ViewType.ALL, max_results=100)
                assert [e.name for e in page.items] == ["Default"]
                return None

    created = asyncio.run(create())
    if backend == "sqlite":
        ml = _mlflow_store(mlflow_uri, backend)
        try:
            assert ml.get_experiment(str(created)).name == name
        finally:
            ml.engine.dispose()
    else:
        assert created is None
