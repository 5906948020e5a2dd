"""store.runs.search on every backend, including a brute-force property test."""

from __future__ import annotations

import asyncio
import math
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncstore import AsyncStore, InvalidParameter
from asyncstore.entities import Metric, Param, RunStatus, RunTag, ViewType


async def test_search_filters_and_default_order(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    other = await store.experiments.create("other")
    a = await store.runs.create(exp_id, run_name="a", start_time=100, user_id="ann")
    b = await store.runs.create(exp_id, run_name="b", start_time=300)
    c = await store.runs.create(exp_id, run_name="c", start_time=200)
    await store.runs.create(other, run_name="d", start_time=400)  # another experiment: never returned
    await store.runs.log_batch(a.run_id, metrics=[Metric("acc", 0.9, 1, 0)], params=[Param("model", "cnn")])
    await store.runs.log_batch(b.run_id, metrics=[Metric("acc", 0.5, 1, 0)], params=[Param("model", "RNN")],
                               tags=[RunTag("team", "x")])
    await store.runs.log_batch(c.run_id, metrics=[Metric("acc", math.nan, 1, 0)])
    await store.runs.update(c.run_id, status=RunStatus.FINISHED, end_time=250)

    async def names(filter_string: str = "", ids: Any = (exp_id,), **kw: Any) -> list[str | None]:
        page = await store.runs.search(ids, filter_string, **kw)
        return [r.info.run_name for r in page]

    assert await names() == ["b", "c", "a"]  # start_time DESC
    assert await names(ids=[exp_id, other]) == ["d", "b", "c", "a"]
    assert await names(ids=exp_id) == ["b", "c", "a"]
    assert await names("metrics.acc > 0.6") == ["a"]
    assert await names("metrics.acc != 0.5") == ["c", "a"]  # NaN differs from every number
    assert await names("metrics.acc <= 0.9") == ["b", "a"]  # NaN matches no ordering comparison
    assert await names("metrics.missing > 0") == []
    assert await names("params.model = 'cnn'") == ["a"]
    assert await names("params.model LIKE 'r%'") == []
    assert await names("params.model ILIKE 'r%'") == ["b"]
    assert await names("params.model IS NULL") == ["c"]
    assert await names("tags.team IS NOT NULL and params.model != 'cnn'") == ["b"]
    assert await names("attributes.status = 'FINISHED'") == ["c"]
    assert await names("status IN ('RUNNING', 'KILLED')") == ["b", "a"]
    assert await names("run_name NOT IN ('a', 'b')") == ["c"]
    assert await names("attributes.run_id = '%s'" % b.run_id) == ["b"]
    assert await names("start_time >= 200 AND start_time < 300") == ["c"]
    assert await names("end_time > 0") == ["c"]
    assert await names("user_id = 'ann'") == ["a"]
    assert await names("artifact_uri LIKE '%" + a.run_id + "%'") == ["a"]
    assert await names("tags.`mlflow.runName` = 'b'") == ["b"]
    run = (await store.runs.search([exp_id], "params.model = 'cnn'")).items[0]
    assert run.data.metrics == {"acc": 0.9} and run.data.params == {"model": "cnn"}


async def test_search_order_by_puts_nan_and_missing_last(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    values = {"r1": 3.0, "r2": math.nan, "r3": None, "r4": 1.0, "r5": -math.inf}
    for i, (name, value) in enumerate(values.items()):
        run = await store.runs.create(exp_id, run_name=name, start_time=i)
        if value is not None:
            await store.runs.log_metric(run.run_id, "m", value, timestamp=1)
            await store.runs.log_param(run.run_id, "p", name[::-1])

    async def order(*items: str) -> list[str | None]:
        return [r.info.run_name for r in await store.runs.search([exp_id], order_by=list(items))]

    assert await order("metrics.m") == ["r5", "r4", "r1", "r2", "r3"]
    assert await order("metrics.m DESC") == ["r1", "r4", "r5", "r2", "r3"]
    assert await order("params.p DESC") == ["r5", "r4", "r2", "r1", "r3"]
    assert await order("attributes.start_time") == ["r1", "r2", "r3", "r4", "r5"]
    assert await order("run_name DESC") == ["r5", "r4", "r3", "r2", "r1"]
    assert await order("end_time") == ["r5", "r4", "r3", "r2", "r1"]  # all NULL: start_time DESC breaks ties


async def test_search_paging_and_views(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    ids = []
    for i in range(7):
        run = await store.runs.create(exp_id, start_time=1000)  # equal start times: run_id breaks ties
        ids.append(run.run_id)
    await store.runs.delete(ids[0])
    seen: list[str] = []
    token = None
    while True:
        page = await store.runs.search([exp_id], max_results=4, page_token=token)
        seen += [r.run_id for r in page]
        token = page.next_page_token
        if token is None:
            break
    assert seen == sorted(ids[1:])
    deleted = await store.runs.search([exp_id], view=ViewType.DELETED_ONLY)
    assert [r.run_id for r in deleted] == [ids[0]]
    assert len(await store.runs.search([exp_id], view=ViewType.ALL)) == 7
    first = await store.runs.search([exp_id], max_results=2)
    with pytest.raises(InvalidParameter, match="different query"):
        await store.runs.search([exp_id], "status = 'RUNNING'", max_results=2, page_token=first.next_page_token)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"filter_string": "metrics.acc LIKE '1'"}, "comparator LIKE is not allowed on metric 'acc'"),
        ({"filter_string": "params.p > 'x'"}, "allowed: =, !=, LIKE, ILIKE, IS NULL, IS NOT NULL"),
        ({"filter_string": "attributes.color = 'red'"}, "unknown attribute key 'color'"),
        ({"filter_string": "metrics.acc > 1 OR metrics.acc < 0"}, "OR is not supported"),
        ({"filter_string": "metrics.acc > 1; DELETE FROM runs"}, "unexpected character ';'"),
        ({"order_by": ["metrics.acc SIDEWAYS"]}, "expected ASC, DESC"),
        ({"order_by": ["bogus.x"]}, "unknown entity type 'bogus'"),
        ({"max_results": 50001}, "between 1 and 50000"),
        ({"max_results": 0}, "between 1 and 50000"),
        ({"view": "EVERYTHING"}, "view"),
        ({"page_token": "garbage"}, "invalid page_token"),
        ({"filter_string": "start_time > 99999999999999999999"}, "64-bit"),
    ],
)
async def test_search_errors(store: AsyncStore, kwargs: dict[str, Any], fragment: str) -> None:
    exp_id = await store.experiments.create("e")
    with pytest.raises(InvalidParameter, match=re.escape(fragment)):
        await store.runs.search([exp_id], **kwargs)


async def test_search_with_quotes_and_wildcards_in_values(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    run = await store.runs.create(exp_id, run_name="x")
    await store.runs.log_batch(run.run_id, params=[Param("q", "it's 100% [sure]*?")])
    for text in ["params.q = 'it''s 100% [sure]*?'", "params.q LIKE '%100\\% [s%'", "params.q LIKE '%]*?'",
                 "params.q ILIKE 'IT_S%'"]:
        assert [r.run_id for r in await store.runs.search([exp_id], text)] == [run.run_id], text
    assert list(await store.runs.search([exp_id], "params.q LIKE '%100\\%x%'")) == []


# --- property: search == brute force over the same runs ---------------------------------

METRIC_VALUES = [-1.0, 0.0, 0.5, 1.0, 2.0, math.nan, math.inf, -math.inf]
STRINGS = ["a", "A", "ab", "Ab", "b", "a_b", "%", "ba"]
PATTERNS = ["a", "a%", "%b", "_", "A%", "%", "a_b", "%a%", "b_"]
STATUSES = [s.value for s in RunStatus]


@dataclass
class FakeRun:
    run_id: str = ""
    run_name: str = ""
    status: str = "RUNNING"
    start_time: int = 0
    end_time: int | None = None
    user_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def _like(value: str, pattern: str, insensitive: bool) -> bool:
    regex = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    if insensitive:
        value, regex = value.lower(), regex.lower()
    return re.fullmatch(regex, value, re.S) is not None


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


def _matches(run: FakeRun, clause: tuple[str, str, str, Any]) -> bool:
    entity, key, op, value = clause
    if entity == "metric":
        if key not in run.metrics:
            return False
        got = run.metrics[key]
        if math.isnan(got):
            return op == "!="
        return _OPS[op](got, value)
    if entity in ("param", "tag"):
        items = run.params if entity == "param" else run.tags
        if op == "IS NULL":
            return key not in items
        if op == "IS NOT NULL":
            return key in items
        if key not in items:
            return False
        return _compare_string(items[key], op, value)
    got_attr = getattr(run, key)
    if got_attr is None:
        return False
    if isinstance(got_attr, int):
        return _OPS[op](got_attr, value)
    return _compare_string(got_attr, op, value)


def _compare_string(got: str, op: str, value: Any) -> bool:
    if op in ("LIKE", "ILIKE"):
        return _like(got, value, op == "ILIKE")
    if op == "IN":
        return got in value
    if op == "NOT IN":
        return got not in value
    return _OPS[op](got, value)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@st.composite
def clauses(draw: st.DrawFn) -> tuple[str, tuple[str, str, str, Any]]:
    kind = draw(st.sampled_from(["metric", "metric", "param", "tag", "status", "run_name", "start_time", "end_time", "user_id"]))
    if kind == "metric":
        key, op = draw(st.sampled_from(["m0", "m1"])), draw(st.sampled_from(list(_OPS)))
        value = draw(st.sampled_from([-1, 0, 0.5, 1, 2]))
        return f"metrics.{key} {op} {value}", ("metric", key, op, float(value))
    if kind in ("param", "tag"):
        key = draw(st.sampled_from(["k0", "k1"]))
        op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE", "IS NULL", "IS NOT NULL"]))
        prefix = "params" if kind == "param" else "tags"
        if op.startswith("IS"):
            return f"{prefix}.{key} {op}", (kind, key, op, None)
        value = draw(st.sampled_from(PATTERNS if "LIKE" in op else STRINGS))
        return f"{prefix}.`{key}` {op.lower()} {_quote(value)}", (kind, key, op, value)
    if kind in ("start_time", "end_time"):
        op, value = draw(st.sampled_from(list(_OPS))), draw(st.sampled_from([1000, 1500, 2000, 2500, 3000]))
        return f"attributes.{kind} {op} {value}", ("attribute", kind, op, value)
    op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE", "IN", "NOT IN"]))
    pool = STATUSES if kind == "status" else STRINGS
    if op in ("IN", "NOT IN"):
        values = tuple(draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3)))
        return f"{kind} {op} ({', '.join(_quote(v) for v in values)})", ("attribute", kind, op, values)
    value = draw(st.sampled_from(PATTERNS if "LIKE" in op else pool))
    return f"attributes.{kind} {op} {_quote(value)}", ("attribute", kind, op, value)


ORDER_KEYS = ["metrics.m0", "metrics.m1", "params.k0", "tags.k1", "start_time", "end_time", "run_name", "status", "user_id"]


def _sort(runs: list[FakeRun], order_by: list[str]) -> list[FakeRun]:
    """MLflow's order: each key with missing (and NaN) last, then start_time DESC, run_id."""
    passes: list[tuple[Callable[[FakeRun], Any], bool]] = []
    for item in order_by:
        name, _, direction = item.partition(" ")
        desc = direction == "DESC"
        entity, _, key = name.rpartition(".")

        def get(run: FakeRun, entity: str = entity, key: str = key) -> Any:
            if entity == "metrics":
                return run.metrics.get(key)
            if entity == "params":
                return run.params.get(key)
            if entity == "tags":
                return run.tags.get(key)
            return getattr(run, key)

        def rank(run: FakeRun, get: Callable[[FakeRun], Any] = get) -> int:
            value = get(run)
            if value is None:
                return 2
            return 1 if isinstance(value, float) and math.isnan(value) else 0

        def plain(run: FakeRun, get: Callable[[FakeRun], Any] = get, rank: Callable[[FakeRun], int] = rank) -> Any:
            return (0, get(run)) if rank(run) == 0 else (1,)

        passes += [(rank, False), (plain, desc)]
    passes += [(lambda r: r.start_time, True), (lambda r: r.run_id, False)]
    result = list(runs)
    for key, reverse in reversed(passes):
        result.sort(key=key, reverse=reverse)
    return result


async def _populate(store: AsyncStore, seed: int) -> tuple[str, list[FakeRun]]:
    rng = random.Random(seed)
    exp_id = await store.experiments.create("prop")
    fakes: list[FakeRun] = []
    for _ in range(30):
        fake = FakeRun(
            run_name=rng.choice(STRINGS), status=rng.choice(STATUSES), start_time=rng.choice([1000, 2000, 3000]),
            end_time=rng.choice([None, 1500, 2500]), user_id=rng.choice([None, "a", "A", "b"]),
        )
        run = await store.runs.create(exp_id, run_name=fake.run_name, start_time=fake.start_time, user_id=fake.user_id)
        fake.run_id = run.run_id
        fake.user_id = fake.user_id or "unknown"  # MLflow's user for a run created without one
        await store.runs.update(run.run_id, status=fake.status, end_time=fake.end_time)
        fake.metrics = {k: rng.choice(METRIC_VALUES) for k in ("m0", "m1") if rng.random() < 0.7}
        fake.params = {k: rng.choice(STRINGS) for k in ("k0", "k1") if rng.random() < 0.7}
        fake.tags = {k: rng.choice(STRINGS) for k in ("k0", "k1") if rng.random() < 0.7}
        await store.runs.log_batch(
            run.run_id,
            metrics=[Metric(k, v, 1, 0) for k, v in fake.metrics.items()],
            params=[Param(k, v) for k, v in fake.params.items()],
            tags=[RunTag(k, v) for k, v in fake.tags.items()],
        )
        fakes.append(fake)
    return exp_id, fakes


_populated: dict[str, tuple[str, list[FakeRun]]] = {}


async def _search_ids(uri: str, filter_string: str, order_by: list[str]) -> tuple[list[str], list[FakeRun]]:
    async with AsyncStore.open(uri) as store:
        if uri not in _populated:
            _populated[uri] = await _populate(store, seed=7)
        exp_id, fakes = _populated[uri]
        page = await store.runs.search([exp_id], filter_string, order_by=order_by, max_results=1000)
        return [r.run_id for r in page], fakes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(clauses(), max_size=3),
    order_by=st.lists(st.tuples(st.sampled_from(ORDER_KEYS), st.sampled_from(["", " ASC", " DESC"])), max_size=2, unique_by=lambda x: x[0]),
)
def test_search_equals_brute_force(migrated_uri: str, parts: list[tuple[str, Any]], order_by: list[tuple[str, str]]) -> None:
    filter_string = " AND ".join(p[0] for p in parts)
    orders = [key + direction for key, direction in order_by]
    got, fakes = asyncio.run(_search_ids(migrated_uri, filter_string, orders))
    expected = [r.run_id for r in _sort([r for r in fakes if all(_matches(r, p[1]) for p in parts)], orders)]
    assert got == expected, (filter_string, orders)


def _every_single_clause() -> list[tuple[str, tuple[str, str, str, Any]]]:
    found: list[tuple[str, tuple[str, str, str, Any]]] = []
    for key in ("m0", "m1"):
        for op in _OPS:
            for number in (-1, 0, 0.5, 1, 2):
                found.append((f"metrics.{key} {op} {number}", ("metric", key, op, float(number))))
    for prefix, entity in (("params", "param"), ("tags", "tag")):
        for key in ("k0", "k1"):
            found += [(f"{prefix}.{key} {op}", (entity, key, op, None)) for op in ("IS NULL", "IS NOT NULL")]
            for op in ("=", "!="):
                found += [(f"{prefix}.{key} {op} {_quote(v)}", (entity, key, op, v)) for v in STRINGS]
            for op in ("LIKE", "ILIKE"):
                found += [(f"{prefix}.{key} {op} {_quote(v)}", (entity, key, op, v)) for v in PATTERNS]
    for attr, pool in (("status", STATUSES), ("run_name", STRINGS), ("user_id", STRINGS)):
        for op in ("=", "!="):
            found += [(f"{attr} {op} {_quote(v)}", ("attribute", attr, op, v)) for v in pool]
        for op in ("LIKE", "ILIKE"):
            found += [(f"{attr} {op} {_quote(v)}", ("attribute", attr, op, v)) for v in PATTERNS]
        for op in ("IN", "NOT IN"):
            found += [(f"{attr} {op} ({_quote(pool[0])}, {_quote(pool[1])})", ("attribute", attr, op, (pool[0], pool[1])))]
    for attr in ("start_time", "end_time"):
        for op in _OPS:
            found += [(f"{attr} {op} {v}", ("attribute", attr, op, v)) for v in (1000, 1500, 2000, 2500, 3000)]
    return found


async def test_every_single_clause_equals_brute_force(store: AsyncStore) -> None:
    """Exhaustive over the value domains: each single clause selects what Python selects."""
    exp_id, fakes = await _populate(store, seed=11)
    checked = 0
    for text, clause in _every_single_clause():
        page = await store.runs.search([exp_id], text)
        expected = [r.run_id for r in _sort([r for r in fakes if _matches(r, clause)], [])]
        assert [r.run_id for r in page] == expected, text
        checked += bool(expected)
    assert checked > 100  # most clauses select something: the comparison is not vacuous


async def test_search_loads_each_runs_data_across_id_chunks(store: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page larger than one IN list (chunks of 2 here) still gets every run's own data."""
    from asyncstore.tracking import search as runs_search

    monkeypatch.setattr(runs_search, "_IN_CHUNK", dict.fromkeys(runs_search._IN_CHUNK, 2))
    exp_id = await store.experiments.create("chunks")
    expected = {}
    for i in range(5):
        run = await store.runs.create(exp_id, start_time=i)
        await store.runs.log_batch(
            run.run_id, metrics=[Metric("m", float(i), 1, 0), Metric(f"only{i}", -float(i), 2, 3)],
            params=[Param("p", str(i))], tags=[RunTag("t", f"x{i}")],
        )
        expected[run.run_id] = i
    page = await store.runs.search([exp_id], max_results=5)
    assert [expected[r.run_id] for r in page] == [4, 3, 2, 1, 0]
    for run in page:
        i = expected[run.run_id]
        assert run.data.metrics == {"m": float(i), f"only{i}": -float(i)}
        assert run.data.latest_metrics[f"only{i}"] == Metric(f"only{i}", -float(i), 2, 3)
        assert run.data.params == {"p": str(i)} and run.data.tags["t"] == f"x{i}"
