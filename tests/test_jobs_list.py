"""Job queue: list() filters, params matching and keyset paging, on every backend."""

from __future__ import annotations

import pytest

from asyncstore import AsyncStore, InvalidParameter
from asyncstore.entities import JobStatus, NewJob
from asyncstore.jobs.sql import json_equal, params_match


async def _ids(store: AsyncStore, **filters: object) -> list[str]:
    return [job.job_id async for job in store.jobs.list(**filters)]  # type: ignore[arg-type]


async def test_list_filters_by_name_status_and_time(store: AsyncStore) -> None:
    a1 = await store.jobs.create("a", {"i": 1})
    b1 = await store.jobs.create("b", {"i": 2})
    a2 = await store.jobs.create("a", {"i": 3})
    await store.jobs.start(a2.job_id)
    assert await _ids(store) == [a1.job_id, b1.job_id, a2.job_id]
    assert await _ids(store, job_name="a") == [a1.job_id, a2.job_id]
    assert await _ids(store, statuses=[JobStatus.RUNNING]) == [a2.job_id]
    assert await _ids(store, statuses="PENDING") == [a1.job_id, b1.job_id]
    assert await _ids(store, statuses=["running", JobStatus.PENDING], job_name="a") == [a1.job_id, a2.job_id]
    later = [j.job_id for j in (a1, b1, a2) if j.creation_time >= b1.creation_time]
    assert b1.job_id in later and await _ids(store, begin_timestamp=b1.creation_time) == later
    assert await _ids(store, end_timestamp=a1.creation_time - 1) == []
    assert await _ids(store, begin_timestamp=a1.creation_time, end_timestamp=a2.creation_time) == [
        a1.job_id, b1.job_id, a2.job_id,
    ]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ({"model": "gpt"}, ["s1", "s2"]),
        ({"model": "gpt", "lr": 0.1}, ["s1"]),
        ({"lr": 0.1}, ["s1", "s3"]),
        ({"epochs": 10}, ["s2"]),
        ({"epochs": 10.0}, ["s2"]),  # JSON numbers compare by value
        ({"flag": True}, ["s3"]),
        ({"flag": 1}, []),  # a boolean is not a number
        ({"epochs": True}, []),
        ({"opt": None}, ["s2"]),  # a null value, not a missing key
        ({"missing": None}, []),
        ({"tags": ["x", "y"]}, ["s1"]),
        ({"tags": ["x"]}, []),  # lists compare whole, not by containment
        ({"tags": "x"}, []),  # a scalar never matches inside a list
        ({"cfg": {"a": 1, "b": [2]}}, ["s3"]),
        ({"cfg": {"a": 1}}, []),  # dicts compare whole
        ({"name": "é😀"}, ["s2"]),
        ({"name": "É😀"}, []),  # case-sensitive
        ({"a.b": "dotted"}, ["s3"]),
        ({'we"ird\\': "key"}, ["s1"]),
        ({"big": 2**70}, ["s1"]),
        ({}, ["s1", "s2", "s3"]),
    ],
)
async def test_list_params_match_exactly_on_every_backend(
    store: AsyncStore, wanted: dict, expected: list[str]
) -> None:
    await store.jobs.create_many(
        [
            NewJob("j", {"id": "s1", "model": "gpt", "lr": 0.1, "tags": ["x", "y"], 'we"ird\\': "key", "big": 2**70}),
            NewJob("j", {"id": "s2", "model": "gpt", "epochs": 10, "opt": None, "name": "é😀"}),
            NewJob("j", {"id": "s3", "lr": 0.1, "flag": True, "cfg": {"b": [2], "a": 1}, "a.b": "dotted"}),
        ]
    )
    found = [job.params["id"] async for job in store.jobs.list(params=wanted)]
    assert found == expected


async def test_list_pages_by_keyset_without_repeats_or_gaps(store: AsyncStore) -> None:
    first = await store.jobs.create_many([NewJob("p", {"i": i}) for i in range(23)])
    seen: list[str] = []
    async for job in store.jobs.list(page_size=5):
        seen.append(job.job_id)
        if len(seen) == 7:  # jobs created while iterating come after, exactly once
            await store.jobs.create_many([NewJob("p", {"i": 100 + i}) for i in range(3)])
    assert seen[:23] == [j.job_id for j in first]
    assert len(seen) == len(set(seen)) == 26


async def test_list_params_filter_across_pages(store: AsyncStore) -> None:
    await store.jobs.create_many([NewJob("p", {"even": i % 2 == 0, "i": i}) for i in range(40)])
    found = [job.params["i"] async for job in store.jobs.list(params={"even": True}, page_size=3)]
    assert found == list(range(0, 40, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"job_name": ""}, "job_name"),
        ({"statuses": ["DONE"]}, "status 'DONE' is not valid: expected one of PENDING, RUNNING"),
        ({"statuses": [7]}, "status 7"),
        ({"statuses": []}, "statuses is empty"),
        ({"begin_timestamp": -1}, "begin_timestamp -1"),
        ({"end_timestamp": "now"}, "end_timestamp 'now'"),
        ({"begin_timestamp": 10, "end_timestamp": 5}, "begin_timestamp 10 is after end_timestamp 5"),
        ({"params": ["a"]}, "params must be a dict"),
        ({"params": {"a": object()}}, "JSON-serialisable"),
        ({"page_size": 0}, "page_size 0"),
    ],
)
async def test_list_checks_its_filters_when_called(store: AsyncStore, kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidParameter, match=match):
        store.jobs.list(**kwargs)  # raised at the call, before any iteration


def test_json_equal_is_json_semantics() -> None:
    assert json_equal(1, 1.0) and json_equal([1, {"a": None}], [1.0, {"a": None}])
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal("1", 1)
    assert not json_equal([1, 2], [2, 1]) and not json_equal({"a": 1}, {"a": 1, "b": 2})
    assert params_match({"a": 1, "b": "x"}, {"a": 1.0}) and not params_match({"a": 1}, {"b": None})
