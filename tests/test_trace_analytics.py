"""The trace name, session, token usage and cost: kept in trace_info's columns as
MLflow 3.17 keeps them, read back and searched as the tag and metadata they are."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from asyncstore import AsyncStore, InvalidParameter, NotFound
from asyncstore.schema import trace_info, trace_request_metadata, trace_tags
from tests.helpers import make_experiment, new_trace_id

NAME, SESSION, TOKENS, COST = "mlflow.traceName", "mlflow.trace.session", "mlflow.trace.tokenUsage", "mlflow.trace.cost"


async def _columns(store: AsyncStore, trace_id: str) -> tuple[object, ...]:
    c = trace_info.c

    async def read(conn: object) -> tuple[object, ...]:
        row = (await conn.execute(  # type: ignore[attr-defined]
            select(c.trace_name, c.session_id, c.input_tokens, c.output_tokens, c.total_tokens, c.total_cost)
            .where(c.request_id == trace_id)
        )).one()
        keys = (await conn.execute(  # type: ignore[attr-defined]
            select(trace_tags.c.key).where(trace_tags.c.request_id == trace_id)
            .union_all(select(trace_request_metadata.c.key).where(trace_request_metadata.c.request_id == trace_id))
        )).scalars().all()
        return (*row, sorted(keys))

    return await store.uow.run(read, write=False)


async def test_written_to_columns_and_read_back_as_tag_and_metadata(store: AsyncStore) -> None:
    """Promise: given to start, the name, session, token usage and cost are stored in
    their columns only (no tag or metadata row) and read back as given (the JSON as
    MLflow writes it); set_tag, set_metadata and delete_tag change the columns."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    await store.traces.start(
        exp, trace_id=tid, tags={NAME: "chat", "k": "v"},
        metadata={SESSION: "s-1", TOKENS: '{"total_tokens": 7, "input_tokens": 3}', COST: '{"total_cost": 1}'},
    )
    info = await store.traces.get_info(tid)
    assert {k: info.tags[k] for k in (NAME, "k")} == {NAME: "chat", "k": "v"}
    assert {k: info.metadata[k] for k in (SESSION, TOKENS, COST)} == {
        SESSION: "s-1", TOKENS: '{"input_tokens": 3, "total_tokens": 7}', COST: '{"total_cost": 1.0}',
    }
    columns = await _columns(store, tid)
    assert columns[:6] == ("chat", "s-1", 3, None, 7, 1.0)
    assert not {NAME, SESSION, TOKENS, COST} & set(columns[6])  # type: ignore[arg-type]

    await store.traces.set_tag(tid, NAME, "renamed")
    await store.traces.set_metadata(tid, {TOKENS: '{"output_tokens": 2}'})
    assert (await _columns(store, tid))[:6] == ("renamed", "s-1", 3, 2, 7, 1.0)
    await store.traces.delete_tag(tid, NAME)
    info = await store.traces.get_info(tid)
    assert NAME not in info.tags
    assert info.metadata[TOKENS] == '{"input_tokens": 3, "output_tokens": 2, "total_tokens": 7}'
    with pytest.raises(NotFound, match="no tag 'mlflow.traceName'"):
        await store.traces.delete_tag(tid, NAME)


@pytest.mark.parametrize(
    ("tags", "metadata", "message"),
    [
        ({NAME: "x" * 4097}, {}, "at most 4096"),
        ({}, {SESSION: "s" * 251}, "at most 250"),
        ({}, {TOKENS: "[1]"}, "expected a JSON object"),
        ({}, {TOKENS: '{"tokens": 1}'}, "expected a JSON object"),
        ({}, {TOKENS: '{"input_tokens": 1.5}'}, "whole numbers"),
        ({}, {TOKENS: '{"input_tokens": true}'}, "whole numbers"),
        ({}, {COST: '{"total_cost": "1"}'}, "finite numbers"),
        ({}, {COST: '{"total_cost": Infinity}'}, "finite numbers"),
    ],
)
async def test_bad_values_are_refused_and_nothing_is_written(
    store: AsyncStore, tags: dict[str, str], metadata: dict[str, str], message: str
) -> None:
    """Promise: a name or session too long, a token usage or cost that is not a JSON
    object of known keys and numbers is INVALID_PARAMETER saying what is allowed,
    from start, set_tags and set_metadata alike, and writes nothing."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    with pytest.raises(InvalidParameter, match=message):
        await store.traces.start(exp, trace_id=tid, tags={"a": "b", **tags}, metadata={"c": "d", **metadata})
    with pytest.raises(NotFound):
        await store.traces.get_info(tid)
    await store.traces.start(exp, trace_id=tid)
    before = await _columns(store, tid)
    with pytest.raises(InvalidParameter, match=message):
        if tags:
            await store.traces.set_tags(tid, {"a": "b", **tags})
        else:
            await store.traces.set_metadata(tid, {"c": "d", **metadata})
    assert await _columns(store, tid) == before


async def test_search_compares_the_columns(store: AsyncStore) -> None:
    """Promise: tags.mlflow.traceName and metadata.mlflow.trace.session filters compare
    the columns with every string comparator; the token usage and cost compare = and
    != with the JSON that reads back, and refuse other comparators."""
    exp = await make_experiment(store)
    a, b, c = new_trace_id(), new_trace_id(), new_trace_id()
    await store.traces.start(exp, trace_id=a, timestamp_ms=3, tags={NAME: "Chat"},
                             metadata={SESSION: "s-1", TOKENS: '{"input_tokens": 3, "total_tokens": 7}'})
    await store.traces.start(exp, trace_id=b, timestamp_ms=2, tags={NAME: "chat"}, metadata={SESSION: "s-2"})
    await store.traces.start(exp, trace_id=c, timestamp_ms=1)

    async def ids(filter_string: str) -> list[str]:
        return [t.trace_id for t in (await store.traces.search([exp], filter_string)).items]

    assert await ids(f"tags.`{NAME}` = 'chat'") == [b]
    assert await ids(f"tags.`{NAME}` != 'chat'") == [a]
    assert await ids(f"tags.`{NAME}` ILIKE 'ch%'") == [a, b]
    assert await ids(f"metadata.`{SESSION}` LIKE 's-%'") == [a, b]
    assert await ids(f"metadata.`{SESSION}` = 's-2'") == [b]
    assert await ids(f"""metadata.`{TOKENS}` = '{{"input_tokens": 3, "total_tokens": 7}}'""") == [a]
    assert await ids(f"""metadata.`{TOKENS}` = '{{"total_tokens": 7, "input_tokens": 3}}'""") == []
    assert await ids(f"""metadata.`{TOKENS}` != '{{"input_tokens": 3}}'""") == [a]
    with pytest.raises(InvalidParameter, match="LIKE is not allowed on metadata 'mlflow.trace.tokenUsage'; allowed: =, !="):
        await ids(f"metadata.`{TOKENS}` LIKE '%3%'")
