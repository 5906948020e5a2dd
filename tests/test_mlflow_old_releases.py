"""Databases that older MLflow releases made: the files in ``tests/fixtures/mlflow_old``
(SQLite, made by MLflow's own APIs; see the README there for how to regenerate them),
read through asyncstore and compared with what that MLflow's own reads returned
(``expected-<version>.json``).

MLflow 3.17.0 is the first release whose schema has every column asyncstore uses: its
database is served as it is. MLflow 3.16.0's lacks the jobs' lease columns and the
trace analytics columns: asyncstore refuses it, naming what is missing and MLflow's
upgrade command, and after that command (the ``mlflow`` package's own ``mlflow db
upgrade``) serves it with every row read as MLflow 3.16.0 read it.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from asyncstore import AsyncStore, SchemaOutOfDate, ViewType, migrate
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine
from asyncstore.rules import FLOAT_MAX

FIXTURES = Path(__file__).parent / "fixtures" / "mlflow_old"


def _copy(version: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A scratch copy of the database MLflow ``version`` made, and what it read of it."""
    target = tmp_path / f"mlflow-{version}.db"
    shutil.copyfile(FIXTURES / f"mlflow-{version}.db", target)
    expected = json.loads((FIXTURES / f"expected-{version}.json").read_text())
    assert expected["mlflow_version"] == version
    return f"sqlite:///{target}", expected


def _revision(uri: str) -> str | None:
    async def read() -> str | None:
        engine = create_engine(StoreConfig.load(uri))
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _as_asyncstore_reads(value: float | str) -> float:
    """MLflow reads ±inf back as the ±FLOAT_MAX it stores; asyncstore as ±inf. The
    JSON file writes NaN as the string "NaN"."""
    number = float(value)
    return math.copysign(math.inf, number) if abs(number) == FLOAT_MAX else number


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


async def _assert_reads_as_mlflow_did(store: AsyncStore, expected: dict[str, Any]) -> None:
    want = expected["experiment"]
    exp = await store.experiments.get(want["experiment_id"])
    assert (exp.name, exp.artifact_location, exp.lifecycle_stage.value, exp.creation_time, exp.last_update_time) == (
        want["name"], want["artifact_location"], want["lifecycle_stage"], want["creation_time"],
        want["last_update_time"],
    )
    assert exp.tags == want["tags"]

    for which in ("run", "deleted_run"):
        want = expected[which]
        run = await store.runs.get(want["run_id"])
        info = run.info
        assert (
            info.run_name, str(info.experiment_id), info.user_id, info.status.value, info.start_time, info.end_time,
            info.lifecycle_stage.value, info.artifact_uri,
        ) == (
            want["run_name"], want["experiment_id"], want["user_id"], want["status"], want["start_time"],
            want["end_time"], want["lifecycle_stage"], want["artifact_uri"],
        ), which
        assert run.data.params == want["params"], which
        assert run.data.tags == want["tags"], which
        latest = {k: _as_asyncstore_reads(v) for k, v in want["latest_metrics"].items()}
        assert run.data.metrics.keys() == latest.keys(), which
        assert all(_same(run.data.metrics[k], latest[k]) for k in latest), (which, run.data.metrics, latest)
        for key, points in want["metric_history"].items():
            history = (await store.runs.get_metric_history(want["run_id"], key)).items
            assert [(m.timestamp, m.step) for m in history] == [(p["timestamp"], p["step"]) for p in points], key
            assert all(
                _same(m.value, _as_asyncstore_reads(p["value"])) for m, p in zip(history, points)
            ), (key, history)
    deleted = await store.runs.search([expected["experiment"]["experiment_id"]], view=ViewType.DELETED_ONLY)
    assert [r.run_id for r in deleted.items] == [expected["deleted_run"]["run_id"]]

    want = expected["trace"]
    trace = await store.traces.get(want["trace_id"])
    info = trace.info
    assert (
        info.experiment_id, info.state.value, info.timestamp_ms, info.execution_time_ms, info.request_preview,
        info.response_preview, info.client_request_id,
    ) == (
        want["experiment_id"], want["state"], want["request_time"], want["execution_duration"],
        want["request_preview"], want["response_preview"], want["client_request_id"],
    )
    assert sorted(info.tags) == want["all_tag_keys"]
    assert {k: info.tags[k] for k in want["tags"]} == want["tags"]
    assert sorted(info.metadata) == want["all_request_metadata_keys"]
    assert {k: info.metadata[k] for k in want["request_metadata"]} == want["request_metadata"]

    spans = {s.span_id: s for s in trace.spans}
    assert sorted(spans) == sorted(s["span_id"] for s in want["spans"])
    for w in want["spans"]:
        span = spans[w["span_id"]]
        assert (
            span.name, span.parent_span_id, span.span_type, span.status.value, span.status_message,
            span.start_time_unix_nano, span.end_time_unix_nano,
        ) == (
            w["name"], w["parent_id"], w["span_type"], w["status"], w["status_description"], w["start_time_ns"],
            w["end_time_ns"],
        ), w["name"]
        assert span.attributes.get("mlflow.spanInputs") == w["inputs"], w["name"]
        assert span.attributes.get("mlflow.spanOutputs") == w["outputs"], w["name"]
        assert {k: span.attributes[k] for k in w["attributes"]} == w["attributes"], w["name"]
        assert [(e.name, e.attributes) for e in span.events] == [(e["name"], e["attributes"]) for e in w["events"]]


def test_a_database_of_the_first_supported_release_is_served_as_it_is(tmp_path: Path) -> None:
    """Promise: the database MLflow 3.17.0 made opens as it is (no migration: its
    revision is unchanged) and every row reads as MLflow 3.17.0 read it."""
    uri, expected = _copy("3.17.0", tmp_path)

    async def check() -> None:
        async with AsyncStore.open(uri) as store:
            await _assert_reads_as_mlflow_did(store, expected)

    asyncio.run(check())
    assert _revision(uri) == expected["alembic_revision"]


def test_a_database_of_an_older_release_is_refused_until_mlflow_upgrades_it(tmp_path: Path) -> None:
    """Promise: MLflow 3.16.0's database is refused with SchemaOutOfDate naming its
    revision and release, columns it lacks, the releases served and ``mlflow db
    upgrade URI``, without touching it; after that very command it is served and every
    row reads as MLflow 3.16.0 read it."""
    uri, expected = _copy("3.16.0", tmp_path)
    before = (tmp_path / "mlflow-3.16.0.db").read_bytes()

    async def refused() -> SchemaOutOfDate:
        with pytest.raises(SchemaOutOfDate) as caught:
            async with AsyncStore.open(uri):
                pass
        return caught.value

    message = str(asyncio.run(refused()))
    for part in (
        "b7e2c1a4d9f3", "MLflow 3.16", "jobs.lease_expires_at", "MLflow 3.17 and later", f"mlflow db upgrade {uri}",
    ):
        assert part in message, (part, message)
    assert (tmp_path / "mlflow-3.16.0.db").read_bytes() == before

    upgrade = subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True, timeout=300
    )
    assert upgrade.returncode == 0, upgrade.stderr[-2000:]
    assert _revision(uri) == "dc11669786a5"

    async def served() -> None:
        async with AsyncStore.open(uri) as store:
            await _assert_reads_as_mlflow_did(store, expected)

    asyncio.run(served())
