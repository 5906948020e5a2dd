"""store.runs: create, get, update, delete, logging and metric history on every backend."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from sqlalchemy import func, select

from asyncstore import AsyncStore, InvalidParameter, InvalidState, NotFound
from asyncstore.bulk import BULK_MIN
from asyncstore.entities import LifecycleStage, Metric, Param, RunMetric, RunStatus, RunTag
from asyncstore.schema import metrics as metrics_table
from tests.helpers import count_statements


async def new_run(store: AsyncStore, name: str = "exp") -> tuple[str, str]:
    exp_id = await store.experiments.create(name)
    run = await store.runs.create(exp_id)
    return exp_id, run.run_id


async def test_create_and_get(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    run = await store.runs.create(exp_id, run_name="r1", start_time=123, tags=[RunTag("a", "b")], user_id="ann")
    assert len(run.run_id) == 32 and all(c in "0123456789abcdef" for c in run.run_id)
    info = run.info
    assert (info.experiment_id, info.run_name, info.user_id, info.start_time) == (exp_id, "r1", "ann", 123)
    assert info.status is RunStatus.RUNNING and info.lifecycle_stage is LifecycleStage.ACTIVE
    assert info.artifact_uri == f"mlflow-artifacts:/{exp_id}/{run.run_id}/artifacts"
    assert run.data.tags == {"a": "b", "mlflow.runName": "r1"}
    fetched = await store.runs.get(run.run_id)
    assert fetched == run


async def test_generated_name_and_name_from_tag(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    generated = await store.runs.create(exp_id)
    assert generated.info.run_name and generated.info.run_name.count("-") == 2
    assert generated.info.start_time is not None and generated.info.start_time > 1_600_000_000_000
    tagged = await store.runs.create(exp_id, tags={"mlflow.runName": "from-tag"})
    assert tagged.info.run_name == "from-tag"
    with pytest.raises(InvalidParameter, match="differ"):
        await store.runs.create(exp_id, run_name="a", tags={"mlflow.runName": "b"})


async def test_create_errors(store: AsyncStore) -> None:
    with pytest.raises(NotFound, match="no experiment with id 99"):
        await store.runs.create("99")
    exp_id = await store.experiments.create("e")
    with pytest.raises(InvalidParameter, match="limit is 250"):
        await store.runs.create(exp_id, run_name="r" * 251)
    with pytest.raises(InvalidParameter, match="limit is 8000"):
        await store.runs.create(exp_id, tags={"t": "v" * 8001})
    with pytest.raises(InvalidParameter, match="start_time must be an integer"):
        await store.runs.create(exp_id, start_time="now")  # type: ignore[arg-type]
    await store.experiments.delete(exp_id)
    with pytest.raises(InvalidState, match="restore it"):
        await store.runs.create(exp_id)


async def test_get_missing_and_malformed_run(store: AsyncStore) -> None:
    with pytest.raises(NotFound, match="no run with id"):
        await store.runs.get("0" * 32)
    with pytest.raises(InvalidParameter, match="32 hexadecimal"):
        await store.runs.get("not a run id!")


async def test_update(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    info = await store.runs.update(run_id, status=RunStatus.FINISHED, end_time=999, run_name="renamed")
    assert (info.status, info.end_time, info.run_name) == (RunStatus.FINISHED, 999, "renamed")
    run = await store.runs.get(run_id)
    assert run.info == info and run.data.tags["mlflow.runName"] == "renamed"
    assert (await store.runs.update(run_id, status="KILLED")).status is RunStatus.KILLED
    with pytest.raises(InvalidParameter, match="RUNNING, SCHEDULED, FINISHED, FAILED, KILLED"):
        await store.runs.update(run_id, status="DONE")
    with pytest.raises(NotFound):
        await store.runs.update("a" * 32, status="FAILED")


async def test_set_tag_run_name_renames_run(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    await store.runs.set_tag(run_id, "mlflow.runName", "via-tag")
    assert (await store.runs.get(run_id)).info.run_name == "via-tag"


async def test_delete_restore_and_writes_to_deleted_run(store: AsyncStore) -> None:
    exp_id, run_id = await new_run(store)
    await store.runs.delete(run_id)
    await store.runs.delete(run_id)  # twice is harmless
    info = (await store.runs.get(run_id)).info
    assert info.lifecycle_stage is LifecycleStage.DELETED and info.deleted_time is not None
    for call in (
        store.runs.log_metric(run_id, "m", 1.0),
        store.runs.log_param(run_id, "p", "v"),
        store.runs.set_tag(run_id, "t", "v"),
        store.runs.delete_tag(run_id, "mlflow.runName"),
        store.runs.update(run_id, status="FINISHED"),
        store.runs.log_batch(run_id),
    ):
        with pytest.raises(InvalidState, match="deleted"):
            await call
    await store.runs.restore(run_id)
    assert (await store.runs.get(run_id)).info.deleted_time is None
    await store.runs.log_metric(run_id, "m", 1.0)
    with pytest.raises(NotFound):
        await store.runs.delete("b" * 32)
    # A run of a deleted experiment: writes refused, restore refused until the experiment is back.
    await store.experiments.delete(exp_id)
    with pytest.raises(InvalidState):
        await store.runs.log_metric(run_id, "m", 2.0)
    with pytest.raises(InvalidState, match="restore the experiment"):
        await store.runs.restore(run_id)


async def test_params_are_immutable(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    await store.runs.log_param(run_id, "lr", "0.1")
    await store.runs.log_param(run_id, "lr", "0.1")  # same value: fine
    await store.runs.log_param(run_id, "epochs", 10)  # type: ignore[arg-type]  # numbers become strings
    with pytest.raises(InvalidParameter) as info:
        await store.runs.log_param(run_id, "lr", "0.2")
    assert "'lr'" in str(info.value) and "'0.1'" in str(info.value) and "'0.2'" in str(info.value)
    with pytest.raises(InvalidParameter, match="twice in the batch"):
        await store.runs.log_batch(run_id, params=[Param("x", "1"), Param("x", "2")])
    assert (await store.runs.get(run_id)).data.params == {"lr": "0.1", "epochs": "10"}


async def test_nan_and_infinities_round_trip(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    values = [math.nan, math.inf, -math.inf, 1.5]
    await store.runs.log_batch(run_id, metrics=[Metric(f"m{i}", v, 10, 0) for i, v in enumerate(values)])
    await store.runs.log_batch(run_id, metrics=[Metric("h", v, 10 + i, i) for i, v in enumerate(values)])
    data = (await store.runs.get(run_id)).data
    assert math.isnan(data.metrics["m0"])
    assert (data.metrics["m1"], data.metrics["m2"], data.metrics["m3"]) == (math.inf, -math.inf, 1.5)
    history = await store.runs.get_metric_history(run_id, "h")
    got = [m.value for m in history]
    assert math.isnan(got[0]) and got[1:] == [math.inf, -math.inf, 1.5]


async def test_latest_metric_is_greatest_step_timestamp_value(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    log = store.runs.log_metric
    await log(run_id, "m", 5.0, timestamp=100, step=2)
    await log(run_id, "m", 9.0, timestamp=200, step=1)  # lower step: not latest
    assert (await store.runs.get(run_id)).data.latest_metrics["m"] == Metric("m", 5.0, 100, 2)
    await log(run_id, "m", 1.0, timestamp=101, step=2)  # same step, later timestamp
    assert (await store.runs.get(run_id)).data.metrics["m"] == 1.0
    await log(run_id, "m", 3.0, timestamp=101, step=2)  # same step and time, larger value
    await log(run_id, "m", 2.0, timestamp=101, step=2)
    assert (await store.runs.get(run_id)).data.metrics["m"] == 3.0
    # Within one batch too, whatever the order of the entries.
    await store.runs.log_batch(run_id, metrics=[Metric("b", 1.0, 5, 3), Metric("b", 7.0, 1, 4), Metric("b", 2.0, 9, 4)])
    assert (await store.runs.get(run_id)).data.latest_metrics["b"] == Metric("b", 2.0, 9, 4)


async def test_duplicate_metric_entries_are_harmless(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    entry = Metric("m", 0.5, 10, 1)
    await store.runs.log_batch(run_id, metrics=[entry, entry])
    await store.runs.log_batch(run_id, metrics=[entry])
    assert list(await store.runs.get_metric_history(run_id, "m")) == [entry]


async def test_tags_set_overwrite_delete(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    await store.runs.set_tag(run_id, "t", "1")
    await store.runs.log_batch(run_id, tags=[RunTag("t", "2"), RunTag("u", "3")])
    assert (await store.runs.get(run_id)).data.tags["t"] == "2"
    await store.runs.delete_tag(run_id, "t")
    tags = (await store.runs.get(run_id)).data.tags
    assert "t" not in tags and tags["u"] == "3"
    with pytest.raises(NotFound, match="no tag 't'"):
        await store.runs.delete_tag(run_id, "t")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"metrics": [Metric("m", 1.0, 1, 0)] * 1001}, "at most 1000 metrics"),
        ({"params": [Param(f"p{i}", "v") for i in range(101)]}, "at most 100 params"),
        ({"tags": [RunTag(f"t{i}", "v") for i in range(101)]}, "at most 100 tags"),
        ({"metrics": [Metric("m" * 251, 1.0, 1, 0)]}, "limit is 250"),
        ({"params": [Param("p", "v" * 6001)]}, "limit is 6000"),
        ({"tags": [RunTag("t", "v" * 8001)]}, "limit is 8000"),
        ({"metrics": [Metric("m", "high", 1, 0)]}, "expected a number"),  # type: ignore[arg-type]
        ({"metrics": [Metric("m", 1.0, 1.5, 0)]}, "timestamp of metric 'm' must be an integer"),  # type: ignore[arg-type]
        ({"metrics": [Metric("m", 1.0, 1, None)]}, "step of metric"),  # type: ignore[arg-type]
        ({"metrics": [Metric("bad key!", 1.0, 1, 0)]}, "may contain only"),
        ({"metrics": [Metric("../up", 1.0, 1, 0)]}, "relative path"),
        ({"params": [Param("", "v")]}, "non-empty string"),
        ({"metrics": [("m", 1.0, 1, 0)]}, "Metric objects"),
        ({"tags": {"t": "v"}}, "list of RunTag"),
    ],
)
async def test_log_batch_validation_writes_nothing(store: AsyncStore, kwargs: dict[str, Any], fragment: str) -> None:
    _, run_id = await new_run(store)
    good = {"metrics": [Metric("ok", 1.0, 1, 0)], "params": [Param("ok", "1")], "tags": [RunTag("ok", "1")]}
    good.update(kwargs)
    with pytest.raises(InvalidParameter, match=fragment):
        await store.runs.log_batch(run_id, **good)
    data = (await store.runs.get(run_id)).data
    assert data.metrics == {} and data.params == {} and "ok" not in data.tags


async def test_log_batch_is_all_or_nothing_on_param_conflict(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    await store.runs.log_param(run_id, "p", "1")
    with pytest.raises(InvalidParameter, match="immutable"):
        await store.runs.log_batch(
            run_id, metrics=[Metric("m", 1.0, 1, 0)], params=[Param("p", "2"), Param("q", "3")], tags=[RunTag("t", "x")]
        )
    data = (await store.runs.get(run_id)).data
    assert data.metrics == {} and data.params == {"p": "1"} and "t" not in data.tags


async def test_log_batch_statement_count_does_not_grow_with_batch_size(store: AsyncStore) -> None:
    _, run_id = await new_run(store)

    def batch(n: int, offset: int) -> dict[str, Any]:
        return {
            "metrics": [Metric(f"m{i % 50}", float(i), offset + i, i) for i in range(n)],
            "params": [Param(f"p{offset}_{i}", "v") for i in range(min(n, 100))],
            "tags": [RunTag(f"t{i}", "v") for i in range(min(n, 100))],
        }

    with count_statements(store) as small:
        await store.runs.log_batch(run_id, **batch(2, 0))
    with count_statements(store) as mid:
        await store.runs.log_batch(run_id, **batch(BULK_MIN, 5_000))
    with count_statements(store) as large:
        await store.runs.log_batch(run_id, **batch(800, 10_000))
    # From BULK_MIN metrics on, the servers load the history (SAVEPOINT, COPY or LOAD
    # DATA, RELEASE): a fixed number of statements more, whatever the size.
    assert len(large) == len(mid) <= len(small) + 3
    writes = [s for s in large if not s.lstrip().upper().startswith(("BEGIN", "SAVEPOINT", "RELEASE"))]
    assert len(writes) <= 8
    async with store.uow.transaction(write=False) as conn:
        count = (await conn.execute(select(func.count()).select_from(metrics_table))).scalar_one()
    assert count == 2 + BULK_MIN + 800


async def test_get_reads_in_a_bounded_number_of_queries(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    await store.runs.log_batch(
        run_id,
        metrics=[Metric(f"m{i}", 1.0, 1, 0) for i in range(300)],
        params=[Param(f"p{i}", "v") for i in range(100)],
        tags=[RunTag(f"t{i}", "v") for i in range(100)],
    )
    with count_statements(store) as seen:
        run = await store.runs.get(run_id)
    assert len(run.data.metrics) == 300 and len(run.data.params) == 100 and len(run.data.tags) == 101
    # The run row, then its latest metrics, params and tags in one UNION ALL.
    assert len([s for s in seen if "SELECT" in s.upper()]) == 2


async def test_concurrent_log_batch_to_one_run(store: AsyncStore) -> None:
    """50 tasks log to the same run at once: no deadlock reaches a caller, latest values are right."""
    _, run_id = await new_run(store)
    keys = [f"k{i}" for i in range(20)]

    async def writer(n: int) -> None:
        # Every task touches every key, in a different order, plus its own params and tags.
        order = keys[n % 20 :] + keys[: n % 20]
        await store.runs.log_batch(
            run_id,
            metrics=[Metric(k, float(n), 1000 + n, n % 7) for k in order],
            params=[Param(f"p{n}", str(n)), Param("shared", "same")],
            tags=[RunTag("shared-tag", "x"), RunTag(f"t{n}", "y")],
        )

    await asyncio.gather(*(writer(n) for n in range(50)))
    run = await store.runs.get(run_id)
    # Greatest (step, timestamp, value): step 6 is the largest n % 7, reached by n = 6, 13, ..., 48.
    expected = max(range(50), key=lambda n: (n % 7, 1000 + n, float(n)))
    assert all(run.data.latest_metrics[k] == Metric(k, float(expected), 1000 + expected, expected % 7) for k in keys)
    assert len(run.data.params) == 51 and run.data.params["shared"] == "same"
    assert sum(1 for k in run.data.tags if k.startswith("t")) == 50
    assert len(await store.runs.get_metric_history(run_id, "k0")) == 50


async def test_metric_history_paging(store: AsyncStore) -> None:
    _, run_id = await new_run(store)
    entries = [Metric("m", float(i % 3), 100 - i, i // 2) for i in range(25)]
    await store.runs.log_batch(run_id, metrics=entries)
    await store.runs.log_metric(run_id, "other", 1.0)
    everything = await store.runs.get_metric_history(run_id, "m")
    assert everything.next_page_token is None
    expected = sorted(entries, key=lambda m: (m.step, m.timestamp))
    assert list(everything) == expected
    pages, token = [], None
    while True:
        page = await store.runs.get_metric_history(run_id, "m", max_results=7, page_token=token)
        pages.append(list(page))
        token = page.next_page_token
        if token is None:
            break
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert [m for p in pages for m in p] == expected
    assert list(await store.runs.get_metric_history(run_id, "missing")) == []
    with pytest.raises(NotFound):
        await store.runs.get_metric_history("c" * 32, "m")
    token = (await store.runs.get_metric_history(run_id, "m", max_results=1)).next_page_token
    assert token is not None
    with pytest.raises(InvalidParameter, match="different query"):
        await store.runs.get_metric_history(run_id, "other", max_results=7, page_token=token)
    with pytest.raises(InvalidParameter, match="between 1 and 50000"):
        await store.runs.get_metric_history(run_id, "m", max_results=0)


async def test_metric_history_bulk(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    runs = [await store.runs.create(exp_id) for _ in range(3)]
    for n, run in enumerate(runs):
        await store.runs.log_batch(run.run_id, metrics=[Metric("loss", float(n * 10 + s), 50 - s, s) for s in range(3)])
    got = await store.runs.get_metric_history_bulk([r.run_id for r in runs], "loss")
    expected = sorted(
        (RunMetric(r.run_id, "loss", float(n * 10 + s), 50 - s, s) for n, r in enumerate(runs) for s in range(3)),
        key=lambda m: (m.run_id, m.step),
    )
    assert got == expected
    assert len(await store.runs.get_metric_history_bulk([runs[0].run_id], "loss", max_results=2)) == 2
    with pytest.raises(InvalidParameter, match="at most 100"):
        await store.runs.get_metric_history_bulk(["a" * 32] * 101, "loss")
    with pytest.raises(InvalidParameter, match="non-empty list"):
        await store.runs.get_metric_history_bulk([], "loss")


async def test_latest_metrics_equal_brute_force_over_many_batches(store: AsyncStore) -> None:
    """Batches arriving in any order (older ones after newer ones, NaN and ±inf among the
    values, ties on step and timestamp) leave the greatest (step, timestamp, value) per key."""
    import random

    _, run_id = await new_run(store)
    rng = random.Random(7)
    specials = [math.nan, math.inf, -math.inf, 0.0, -1.5, 2.5]
    logged: list[Metric] = []
    for _ in range(12):
        batch = [
            Metric(f"k{rng.randrange(6)}", rng.choice(specials + [rng.uniform(-5, 5)]), rng.randrange(4), rng.randrange(3))
            for _ in range(rng.randrange(1, 40))
        ]
        await store.runs.log_batch(run_id, metrics=batch)
        logged += batch

    def rank(m: Metric) -> tuple[int, int, float, bool]:
        nan = math.isnan(m.value)  # stored as 0.0 with is_nan set, as MLflow does
        return (m.step, m.timestamp, 0.0 if nan else m.value, nan)

    expected = {}
    for m in logged:
        if m.key not in expected or rank(m) > rank(expected[m.key]):
            expected[m.key] = m
    got = (await store.runs.get(run_id)).data.latest_metrics
    assert sorted(got) == sorted(expected)
    for key, m in expected.items():
        g = got[key]
        assert (g.step, g.timestamp) == (m.step, m.timestamp), key
        assert (math.isnan(g.value) and math.isnan(m.value)) or g.value == m.value, key
