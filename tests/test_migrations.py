"""Migrations: empty -> head equals schema.py, downgrades, data survival, concurrency, snapshots."""

from __future__ import annotations

import asyncio
import difflib
import re
import sys
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Computed, Index, MetaData, String, inspect, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore import AsyncStore, InvalidParameter, SchemaOutOfDate, bulk, migrate, schema
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine, engine_state
from tests.helpers import count_rows, make_experiment, make_span, needs_server, new_trace_id
from tests.schema_snapshots import UPDATE_COMMAND, dump, snapshot_path

# --- comparing a database with schema.py ---------------------------------------------------


def _compare_type(ctx: Any, inspected: Any, metadata_col: Any, inspected_type: Any, metadata_type: Any) -> bool | None:
    # MySQL stores FLOAT(53) as DOUBLE: the same type, reported as a difference by Alembic.
    if ctx.dialect.name in ("mysql", "mariadb") and type(inspected_type).__name__ == "DOUBLE":
        return not (getattr(metadata_type, "precision", None) == 53)
    return None  # Alembic's own comparison


def _equivalent(diff: Any, dialect: str) -> bool:
    """A reported difference that is only the database's spelling of the same thing."""
    if isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version":
        return True
    if isinstance(diff, list) and len(diff) == 1 and diff[0][0] == "modify_default" and dialect in ("mysql", "mariadb"):
        # MySQL keeps BOOLEAN DEFAULT false as TINYINT(1) DEFAULT 0.
        inspected, wanted = diff[0][5], diff[0][6]
        return str(getattr(wanted, "arg", "")) == "false" and str(inspected.arg.text).strip("'") == "0"
    return False


def _row_order(diff: Any, target: MetaData, row_ordered: set[str]) -> bool:
    """A difference that is a row-ordered table's MySQL layout (schema.ROW_ID): the
    ROW_ID column, and the table's own key as the unique index ``<table>_pk``."""
    if not isinstance(diff, tuple):
        return False
    if diff[0] == "remove_column" and diff[2] in row_ordered:
        return bool(diff[3].name == schema.ROW_ID)
    if diff[0] == "remove_index" and diff[1].table.name in row_ordered:
        index, table = diff[1], target.tables[diff[1].table.name]
        return bool(
            index.unique and index.name == f"{table.name}_pk"
            and [c.name for c in index.columns] == [c.name for c in table.primary_key.columns]
        )
    return False


def differences(conn: Connection, target: MetaData) -> list[str]:
    """Every way the database differs from ``target`` (empty when they agree).

    Alembic's autogenerate comparison covers tables, columns, types, nullability, server
    defaults, indexes, unique constraints and foreign keys; primary keys and computed
    columns it does not compare, so they are checked here from the inspector.
    """
    # (A callable compare_server_default trips over computed columns in Alembic 1.18+,
    # so server defaults use Alembic's comparison and _equivalent filters the result.)
    ctx = MigrationContext.configure(conn, opts={"compare_type": _compare_type, "compare_server_default": True})
    row_ordered = set(schema.ROW_ORDERED) if schema.has_row_order(conn.dialect) else set()
    found = [
        repr(diff) for diff in compare_metadata(ctx, target)
        if not _equivalent(diff, conn.dialect.name) and not _row_order(diff, target, row_ordered)
    ]
    inspector = inspect(conn)
    for table in target.tables.values():
        if not inspector.has_table(table.name):
            continue  # reported by Alembic already
        pk = inspector.get_pk_constraint(table.name)["constrained_columns"]
        want = [schema.ROW_ID] if table.name in row_ordered else [c.name for c in table.primary_key.columns]
        if pk != want:
            found.append(f"{table.name}: primary key {pk} != {want}")
        db_fks = {
            (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]),
             (fk.get("options", {}).get("ondelete") or "NO ACTION").upper())
            for fk in inspector.get_foreign_keys(table.name)
        }
        meta_fks = {
            (tuple(c.name for c in fk.columns), fk.referred_table.name, tuple(e.column.name for e in fk.elements),
             (fk.ondelete or "NO ACTION").upper())
            for fk in table.foreign_key_constraints
        }
        if db_fks != meta_fks:
            found.append(f"{table.name}: foreign keys {sorted(db_fks)} != {sorted(meta_fks)}")
        db_columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        for column in table.columns:
            computed = column.computed
            reflected = db_columns.get(column.name, {}).get("computed")
            want = None if computed is None else (_expression(str(computed.sqltext)), bool(computed.persisted))
            got = None if reflected is None else (_expression(str(reflected["sqltext"])), bool(reflected.get("persisted")))
            if want != got:
                found.append(f"{table.name}.{column.name}: computed {got} != {want}")
    return found


def _expression(sql: str) -> str:
    return re.sub(r"[\s`\"()]", "", sql).lower()


def _mutations() -> dict[str, MetaData]:
    """Copies of schema.py each with one deliberate difference the comparison must catch."""

    def copy() -> MetaData:
        target = MetaData(naming_convention=schema.NAMING_CONVENTION)
        for table in schema.metadata.sorted_tables:
            table.to_metadata(target)
        return target

    out: dict[str, MetaData] = {}
    m = copy()
    m.tables["runs"].c.name.nullable = False
    out["nullability"] = m
    m = copy()
    m.tables["params"].c.value.type = String(4000)
    out["type"] = m
    m = copy()
    jobs = m.tables["jobs"]
    jobs.indexes.discard(next(i for i in jobs.indexes if i.name == "index_jobs_creation_time_id"))
    out["index"] = m
    m = copy()
    Index("index_extra", m.tables["tags"].c.value)
    out["extra index"] = m
    m = copy()
    fk = next(iter(m.tables["params"].foreign_key_constraints))
    fk.ondelete = "SET NULL"
    out["foreign key ondelete"] = m
    m = copy()
    m.tables["spans"].c.duration_ns.computed = Computed("end_time_unix_nano + start_time_unix_nano", persisted=True)
    out["computed"] = m
    m = copy()
    m.tables["tags"].c.value.primary_key = True
    m.tables["tags"].primary_key._reload([m.tables["tags"].c.key, m.tables["tags"].c.value])
    out["primary key"] = m
    m = copy()
    m.tables["metrics"].c.step.server_default = None
    out["server default"] = m
    m = copy()
    m.remove(m.tables["trace_metrics"])
    out["missing table"] = m
    return out


async def _differences(engine: AsyncEngine, target: MetaData = schema.metadata) -> list[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: differences(c, target))


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


@pytest.fixture
async def engine(db_uri: str) -> Any:
    made = create_engine(StoreConfig.load(db_uri))
    yield made
    await made.dispose()


async def test_empty_to_head_is_schema_py_and_round_trips(engine: AsyncEngine) -> None:
    assert await migrate.current_revision(engine) is None
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == migrate.head_revision()
    assert await _differences(engine) == []
    # The comparison is not blind: each deliberate difference is reported.
    for what, mutated in _mutations().items():
        assert await _differences(engine, mutated), f"a difference in {what} went unnoticed"
    await migrate.downgrade(engine, "base")
    assert await _tables(engine) == {"alembic_version"}
    assert await migrate.current_revision(engine) is None
    await migrate.upgrade(engine)
    await migrate.downgrade(engine, "base")
    await migrate.upgrade(engine)
    assert await _differences(engine) == []


async def test_every_table_has_a_primary_key(engine: AsyncEngine) -> None:
    """Galera replicates rows by their primary key (a table without one cannot be
    written consistently on a cluster): the migrated schema gives every table one."""
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        keys = await conn.run_sync(
            lambda c: {t: inspect(c).get_pk_constraint(t)["constrained_columns"] for t in inspect(c).get_table_names()}
        )
    assert "spans" in keys and "alembic_version" in keys
    assert [table for table, columns in keys.items() if not columns] == []


async def test_each_revision_downgrades_one_step(engine: AsyncEngine) -> None:
    revisions = [r for r in _revision_line()]
    for rev in revisions:
        await migrate.upgrade(engine, rev)
        assert await migrate.current_revision(engine) == rev
    for previous in reversed([None, *revisions[:-1]]):
        await migrate.downgrade(engine, previous or "base")
        assert await migrate.current_revision(engine) == previous
    with pytest.raises(InvalidParameter, match="nope.*known revisions: 0001_initial"):
        await migrate.upgrade(engine, "nope")


def _revision_line() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def test_revision_history_is_one_line() -> None:
    line = _revision_line()
    assert line[0] == "0001_initial" and line[-1] == migrate.head_revision()
    assert len(set(line)) == len(line)


# Rows for every table at revision 0001_initial, in foreign-key order.
ROWS_AT_0001: list[tuple[str, dict[str, Any]]] = [
    ("experiments", {"experiment_id": 7, "name": "exp", "artifact_location": "s3://b/7", "lifecycle_stage": "active",
                     "creation_time": 1700000000000, "last_update_time": 1700000000001}),
    ("experiment_tags", {"key": "team", "value": "ml \u2603", "experiment_id": 7}),
    ("runs", {"run_uuid": "a" * 32, "name": "r", "source_type": "LOCAL", "source_name": "s", "entry_point_name": "e",
              "user_id": "u", "status": "FINISHED", "start_time": 1, "end_time": 2, "deleted_time": None,
              "source_version": "v", "lifecycle_stage": "active", "artifact_uri": "file:///a", "experiment_id": 7}),
    ("tags", {"key": "k", "value": "v", "run_uuid": "a" * 32}),
    ("params", {"key": "lr", "value": "0.01", "run_uuid": "a" * 32}),
    ("metrics", {"key": "loss", "value": 0.5, "timestamp": 10, "step": 3, "is_nan": False, "run_uuid": "a" * 32}),
    ("latest_metrics", {"key": "loss", "value": 0.5, "timestamp": 10, "step": 3, "is_nan": False,
                        "run_uuid": "a" * 32}),
    ("trace_info", {"request_id": "tr-" + "b" * 32, "experiment_id": 7, "timestamp_ms": 5, "execution_time_ms": 6,
                    "status": "OK", "client_request_id": "c", "request_preview": "q", "response_preview": "a"}),
    ("trace_tags", {"key": "k", "value": "v", "request_id": "tr-" + "b" * 32}),
    ("trace_request_metadata", {"key": "k", "value": "v", "request_id": "tr-" + "b" * 32}),
    ("trace_metrics", {"key": "tokens", "value": 12.0, "request_id": "tr-" + "b" * 32}),
    ("spans", {"trace_id": "tr-" + "b" * 32, "experiment_id": 7, "span_id": "c" * 16, "parent_span_id": None,
               "name": "root", "type": "LLM", "status": "OK", "start_time_unix_nano": 100,
               "end_time_unix_nano": 350, "content": "{}"}),
    ("jobs", {"id": "00000000-0000-0000-0000-000000000001", "creation_time": 1, "job_name": "f", "params": "{}",
              "timeout": 1.5, "status": 0, "result": None, "retry_count": 2, "last_update_time": 3}),
]


async def _snapshot(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    async with engine.connect() as conn:
        out = {}
        for name, row in ROWS_AT_0001:
            table = schema.metadata.tables[name]
            columns = [table.c[c] for c in row] + ([table.c.duration_ns] if name == "spans" else [])
            rows = (await conn.execute(select(*columns))).mappings().all()
            out[name] = [dict(r) for r in rows]
        return out


async def test_rows_written_at_first_revision_survive_upgrade(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine, "0001_initial")
    async with engine.begin() as conn:
        for name, row in ROWS_AT_0001:
            columns = [c for c in row]  # the 0001 columns only
            await conn.execute(insert(schema.metadata.tables[name].c[columns[0]].table).values(row))
    before = await _snapshot(engine)
    assert before["spans"][0]["duration_ns"] == 250
    await migrate.upgrade(engine)
    assert await _snapshot(engine) == before
    async with engine.connect() as conn:
        added = (await conn.execute(select(schema.jobs.c.lease_expires_at, schema.jobs.c.next_attempt_at))).one()
    assert tuple(added) == (None, 0)


async def test_four_processes_migrate_an_empty_database_once(db_uri: str, engine: AsyncEngine) -> None:
    async def one() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asyncstore.cli", "-v", "db", "upgrade", db_uri,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        return int(proc.returncode or 0), err.decode()

    results = await asyncio.gather(*(one() for _ in range(4)))
    assert [code for code, _ in results] == [0, 0, 0, 0], [err for _, err in results]
    applied = [line for _, err in results for line in err.splitlines() if "Running upgrade" in line]
    assert len(applied) == len(_revision_line()), applied  # each revision ran once, in one process
    async with engine.connect() as conn:
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    assert versions == [migrate.head_revision()]


@needs_server
async def test_an_opener_that_finds_an_upgrade_half_way_waits_for_it_instead_of_refusing(
    db_uri: str, engine: AsyncEngine
) -> None:
    """On MySQL/MariaDB each revision's DDL shows as it lands (and on PostgreSQL each
    revision commits on its own), so a process starting while another upgrades can find
    the schema between revisions: it waits for the upgrade's lock and opens the database
    at head, instead of raising SCHEMA_OUT_OF_DATE. (SQLite's whole upgrade is one
    transaction: never seen half-way.)"""
    backend = engine_state(engine).backend
    await migrate.upgrade(engine, _revision_line()[1])  # as if an upgrade were half-way
    async with engine.connect() as conn:
        galera = await migrate._lock(conn, backend)  # ...and still running
        try:
            opening = asyncio.create_task(_open_and_close(db_uri))
            await asyncio.sleep(1.0)
            assert not opening.done()
            await conn.run_sync(lambda c: command.upgrade(migrate.alembic_config(c), "head"))
            await conn.commit()
        finally:
            await migrate._unlock(conn, backend, galera)
    assert await asyncio.wait_for(opening, timeout=60) == migrate.head_revision()
    # With no upgrade running, an out-of-date database is refused as before.
    await migrate.downgrade(engine, _revision_line()[1])
    with pytest.raises(SchemaOutOfDate, match="asyncstore db upgrade"):
        await _open_and_close(db_uri)


async def _open_and_close(uri: str) -> str | None:
    async with AsyncStore.open(uri) as store:
        return await migrate.current_revision(store.engine)


async def test_schema_snapshot_matches_committed_file(backend: str, engine: AsyncEngine, db_uri: str) -> None:
    await migrate.upgrade(engine)
    fresh = await dump(db_uri)
    path = snapshot_path(backend)
    committed = path.read_text() if path.exists() else ""
    if fresh != committed:
        diff = "".join(difflib.unified_diff(
            committed.splitlines(keepends=True), fresh.splitlines(keepends=True),
            fromfile=f"committed {path.name}", tofile="migrated database",
        ))
        pytest.fail(
            f"the migrated {backend} schema differs from {path}:\n{diff}\n"
            f"If the change is intended, regenerate the snapshots with: {UPDATE_COMMAND}"
        )


async def test_0003_moves_the_trace_name_session_tokens_and_cost_into_columns_and_back(
    engine: AsyncEngine, db_uri: str
) -> None:
    """Promise: as MLflow's own migration does, upgrading to 0003 moves the tag
    mlflow.traceName and the metadata mlflow.trace.session / tokenUsage / cost out of
    their rows into trace_info's columns (a count that is not a number is dropped); the
    store reads them back as the same tag and metadata; a downgrade puts rows back."""
    await migrate.upgrade(engine, "0002_job_queue")
    tid, other = "tr-" + "d" * 32, "tr-" + "e" * 32
    async with engine.begin() as conn:
        await conn.execute(insert(schema.experiments).values(experiment_id=1, name="e"))
        await conn.execute(
            insert(schema.trace_info),
            [{"request_id": t, "experiment_id": 1, "timestamp_ms": 1, "status": "OK"} for t in (tid, other)],
        )
        await conn.execute(insert(schema.trace_tags), [
            {"request_id": tid, "key": "mlflow.traceName", "value": "chat"},
            {"request_id": tid, "key": "keep", "value": "me"},
        ])
        await conn.execute(insert(schema.trace_request_metadata), [
            {"request_id": tid, "key": "mlflow.trace.session", "value": "s-1"},
            {"request_id": tid, "key": "mlflow.trace.tokenUsage",
             "value": '{"input_tokens": 3, "output_tokens": "x", "total_tokens": 7}'},
            {"request_id": tid, "key": "mlflow.trace.cost", "value": '{"total_cost": 0.25}'},
            {"request_id": other, "key": "mlflow.trace.tokenUsage", "value": "not json"},
        ])
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        info = schema.trace_info.c
        columns = (await conn.execute(
            select(info.trace_name, info.session_id, info.input_tokens, info.output_tokens, info.total_tokens,
                   info.total_cost).where(info.request_id == tid)
        )).one()
        assert tuple(columns) == ("chat", "s-1", 3, None, 7, 0.25)
        left = (await conn.execute(select(schema.trace_tags.c.key))).scalars().all()
        assert left == ["keep"]
        assert (await conn.execute(select(schema.trace_request_metadata.c.key))).scalars().all() == []
    async with AsyncStore.open(db_uri) as store:
        read = await store.traces.get_info(tid)
    assert read.tags == {"mlflow.traceName": "chat", "keep": "me"}
    assert read.metadata == {
        "mlflow.trace.session": "s-1",
        "mlflow.trace.tokenUsage": '{"input_tokens": 3, "total_tokens": 7}',
        "mlflow.trace.cost": '{"total_cost": 0.25}',
    }
    await migrate.downgrade(engine, "0002_job_queue")
    async with engine.connect() as conn:
        tags = dict((await conn.execute(select(schema.trace_tags.c.key, schema.trace_tags.c.value))).all())
        meta = dict((await conn.execute(
            select(schema.trace_request_metadata.c.key, schema.trace_request_metadata.c.value)
        )).all())
    assert tags == {"mlflow.traceName": "chat", "keep": "me"}
    assert meta == {
        "mlflow.trace.session": "s-1",
        "mlflow.trace.tokenUsage": '{"input_tokens": 3, "total_tokens": 7}',
        "mlflow.trace.cost": '{"total_cost": 0.25}',
    }


async def test_0006_keys_mysql_spans_by_an_invisible_row_id(backend: str, engine: AsyncEngine, db_uri: str) -> None:
    """On MySQL/MariaDB spans are stored in arrival order under an invisible row id that
    ``SELECT *`` does not see, and ``(trace_id, span_id)`` stays unique (a re-sent span
    replaces its row, whether by upsert or by LOAD DATA); elsewhere nothing changes.
    Downgrading restores the table's own key, rows kept."""
    await migrate.upgrade(engine)
    async with AsyncStore.open(db_uri) as store:
        experiment = await make_experiment(store)
        tid = new_trace_id()
        first = [make_span(tid, f"{i:016x}", name="first") for i in range(1, 4)]
        await store.spans.log_spans(experiment, first)
        loaded = [make_span(new_trace_id(), f"{i:016x}") for i in range(1, 2 * bulk.BULK_MIN)]
        await store.spans.log_spans(experiment, loaded)  # the load path where the server has one
        await store.spans.log_spans(experiment, [make_span(tid, f"{1:016x}", name="again")])  # the upsert
        again = make_span(tid, f"{2:016x}", name="again")
        await store.spans.log_spans(experiment, [*loaded[: bulk.BULK_MIN], again])  # the load, a re-sent span
        names = [s.name for s in await store.spans.get_spans(tid)]
        assert sorted(names) == ["again", "again", "first"]
        assert await count_rows(store, schema.spans) == 3 + len(loaded)
    async with engine.connect() as conn:
        star = list((await conn.execute(text("SELECT * FROM spans LIMIT 1"))).keys())
        pk = await conn.run_sync(lambda c: inspect(c).get_pk_constraint("spans")["constrained_columns"])
        if backend == "mysql":
            untouched = (await conn.execute(text(
                f"SELECT {schema.ROW_ID} FROM spans WHERE trace_id = :tid AND span_id = :sid"
            ), {"tid": tid, "sid": f"{3:016x}"})).scalar()
            low = (await conn.execute(text(
                f"SELECT MIN({schema.ROW_ID}) FROM spans WHERE trace_id <> :tid"
            ), {"tid": tid})).scalar()
    assert star == [c.name for c in schema.spans.columns]  # the row id is invisible
    if backend == "mysql":
        assert pk == [schema.ROW_ID]
        # Rows in arrival order: a span of the first call (never sent again) before all of the second's.
        assert untouched < low
    else:
        assert pk == ["trace_id", "span_id"]
    await migrate.downgrade(engine, "0005_spans_redundant_index")
    async with engine.connect() as conn:
        pk = await conn.run_sync(lambda c: inspect(c).get_pk_constraint("spans")["constrained_columns"])
        columns = await conn.run_sync(lambda c: [col["name"] for col in inspect(c).get_columns("spans")])
        count = (await conn.execute(text("SELECT COUNT(*) FROM spans"))).scalar()
    assert pk == ["trace_id", "span_id"] and schema.ROW_ID not in columns and count == 3 + len(loaded)
    await migrate.upgrade(engine)
    assert await _differences(engine) == []
