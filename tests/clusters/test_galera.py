"""A 3-node MariaDB Galera cluster (``scripts/clusters/galera.sh``), each client writing
through a different node.

Galera certifies a transaction at COMMIT against those the other nodes committed
meanwhile; the loser's COMMIT fails with a deadlock error and nothing of it took effect.
These tests make such conflicts on purpose (the same runs, traces and jobs through three
nodes) and check that none reaches a caller, that no write is lost or doubled, and that
the migration lock holds across nodes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from asyncstore import AsyncStore, migrate
from asyncstore.entities import JobStatus, NewJob
from asyncstore.schema import metrics as metrics_table
from asyncstore.schema import spans as spans_table
from tests.clusters import galera_client as client
from tests.helpers import count_rows

CLIENT = Path(__file__).with_name("galera_client.py")
WORKER = Path(__file__).parents[1] / "jobs_worker.py"
TIMEOUT = 300.0  # seconds; a stuck process fails the test instead of hanging it

pytestmark = pytest.mark.slow


async def _run_all(*commands: tuple[str, ...]) -> list[str]:
    """Run the commands as processes at once; each one's standard output, once all ended
    (a failure is reported with its standard error, after every process has ended)."""

    async def one(args: tuple[str, ...]) -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        return proc.returncode, stdout.decode(), stderr.decode()

    results = await asyncio.gather(*(one(args) for args in commands))
    failed = [err[-3000:] for code, out, err in results if code != 0 or "failed" in err]
    assert failed == [], failed
    return [out for _, out, _ in results]


async def test_four_processes_migrating_through_different_nodes_migrate_once(galera_db: list[str]) -> None:
    outputs = await _run_all(*((str(CLIENT), "migrate", galera_db[i % 3]) for i in range(4)))
    applied = sorted(int(out.split()[1]) for out in outputs)
    revisions = len(list(ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()))
    assert applied == [0, 0, 0, revisions], outputs
    async with AsyncStore.open(galera_db[2]) as store:
        async with store.uow.transaction(write=False) as conn:
            assert await migrate.current_revision(store.engine) == migrate.head_revision()
            # The lock (a table while held) is gone.
            assert (await conn.exec_driver_sql(f"SHOW TABLES LIKE '{migrate.GALERA_LOCK_TABLE}'")).all() == []


async def test_four_processes_writing_the_same_runs_and_traces_through_three_nodes(galera_db: list[str]) -> None:
    async with AsyncStore.open(galera_db[0]) as store:
        exp = await store.experiments.create("galera")
        runs = [(await store.runs.create(exp)).info.run_id for _ in range(3)]
        traces = [f"tr-{i:032x}" for i in range(1, 4)]
    writers = 4
    outputs = await _run_all(*(
        (str(CLIENT), "write", galera_db[i % 3], str(i), ",".join(runs), str(exp), ",".join(traces))
        for i in range(writers)
    ))
    calls = client.ROUNDS * (len(runs) + len(traces))
    assert outputs == [f"ok {calls} calls, 0 failed\n"] * writers, outputs
    async with AsyncStore.open(galera_db[1]) as store:  # read through another node
        for run_id in runs:
            assert await count_rows(store, metrics_table, metrics_table.c.run_uuid == run_id) == (
                writers * client.ROUNDS * client.METRICS_PER_CALL
            )
            latest = (await store.runs.get(run_id)).data.metrics
            logged = [m for i in range(writers) for r in range(client.ROUNDS) for m in client.metrics(i, r)]
            expected = {}
            for m in sorted(logged, key=lambda m: (m.step, m.timestamp, m.value)):
                expected[m.key] = m.value  # MLflow's latest: the largest (step, timestamp, value)
            assert latest == expected
        for trace_id in traces:
            assert await count_rows(store, spans_table, spans_table.c.trace_id == trace_id) == (
                writers * client.ROUNDS * client.SPANS_PER_CALL
            )
            info = await store.traces.get_info(trace_id)
            sent = [s for i in range(writers) for r in range(client.ROUNDS) for s in client.spans(i, r, trace_id)]
            start_ms = min(s.start_time_unix_nano for s in sent) // 1_000_000
            end_ms = max(s.end_time_unix_nano or 0 for s in sent) // 1_000_000
            assert (info.timestamp_ms, info.execution_time_ms) == (start_ms, end_ms - start_ms)


async def test_eight_workers_on_three_nodes_drain_2000_jobs_each_exactly_once(
    galera_db: list[str], tmp_path: Path
) -> None:
    async with AsyncStore.open(galera_db[0]) as store:
        ids = {job.job_id for job in await store.jobs.create_many([NewJob("drain", {"i": i}) for i in range(2000)])}
    outs = {f"worker-{n}": tmp_path / f"worker-{n}.ids" for n in range(8)}
    await _run_all(*(
        (str(WORKER), galera_db[n % 3], name, str(out), "drain", "--limit", "5")
        for n, (name, out) in enumerate(outs.items())
    ))
    claimed = {name: out.read_text().split() for name, out in outs.items()}
    every = [job_id for mine in claimed.values() for job_id in mine]
    assert len(every) == len(ids) and set(every) == ids  # each job handed out once, none lost
    async with AsyncStore.open(galera_db[2]) as store:
        counts = await store.jobs.count_by_status("drain")
        results = {job.job_id: job.result async for job in store.jobs.list("drain")}
    assert counts[JobStatus.SUCCEEDED] == len(ids) and sum(counts.values()) == len(ids)
    assert all(results[job_id] == name for name, mine in claimed.items() for job_id in mine)
    assert len([name for name, mine in claimed.items() if mine]) > 3  # spread over the nodes
