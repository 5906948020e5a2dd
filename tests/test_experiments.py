"""store.experiments on every backend."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from asyncstore import AlreadyExists, AsyncStore, InvalidParameter, InvalidState, NotFound
from asyncstore.entities import ExperimentTag, LifecycleStage, RunStatus, ViewType


async def test_create_get_and_get_by_name(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("first", tags={"team": "nlp", "x": "1"})
    assert exp_id.isdigit()
    exp = await store.experiments.get(exp_id)
    assert exp.name == "first" and exp.experiment_id == exp_id
    assert exp.tags == {"team": "nlp", "x": "1"}
    assert exp.lifecycle_stage is LifecycleStage.ACTIVE
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"
    assert exp.creation_time is not None and exp.creation_time == exp.last_update_time
    assert exp.creation_time > 1_600_000_000_000  # epoch milliseconds
    assert await store.experiments.get_by_name("first") == exp
    assert await store.experiments.get(int(exp_id)) == exp


async def test_create_with_artifact_location_and_tag_objects(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e", tags=[ExperimentTag("k", "v")], artifact_location="s3://b/p")
    exp = await store.experiments.get(exp_id)
    assert exp.artifact_location == "s3://b/p" and exp.tags == {"k": "v"}


async def test_duplicate_name_is_already_exists(store: AsyncStore) -> None:
    await store.experiments.create("dup")
    with pytest.raises(AlreadyExists, match="'dup' exists already"):
        await store.experiments.create("dup")
    assert [e.name for e in await store.experiments.search()] == ["dup"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 501, None, 5])
async def test_bad_name_is_invalid_parameter(store: AsyncStore, name: object) -> None:
    with pytest.raises(InvalidParameter, match="experiment name"):
        await store.experiments.create(name)  # type: ignore[arg-type]


async def test_name_of_500_characters_is_accepted(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("n" * 500)
    assert (await store.experiments.get(exp_id)).name == "n" * 500


async def test_tag_limits(store: AsyncStore) -> None:
    with pytest.raises(InvalidParameter, match="limit is 5000"):
        await store.experiments.create("e", tags={"k": "v" * 5001})
    with pytest.raises(InvalidParameter, match="limit is 250"):
        await store.experiments.create("e", tags={"k" * 251: "v"})
    with pytest.raises(NotFound):  # nothing was written
        await store.experiments.get_by_name("e")


async def test_missing_experiment_is_not_found(store: AsyncStore) -> None:
    with pytest.raises(NotFound, match="no experiment with id 999"):
        await store.experiments.get("999")
    with pytest.raises(NotFound, match="name 'nope'"):
        await store.experiments.get_by_name("nope")
    with pytest.raises(InvalidParameter, match="string of digits"):
        await store.experiments.get("abc")


async def test_rename(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("old")
    other = await store.experiments.create("other")
    before = await store.experiments.get(exp_id)
    await store.experiments.rename(exp_id, "new")
    after = await store.experiments.get(exp_id)
    assert after.name == "new" and after.last_update_time >= before.last_update_time  # type: ignore[operator]
    with pytest.raises(AlreadyExists):
        await store.experiments.rename(other, "new")
    with pytest.raises(NotFound):
        await store.experiments.rename("12345", "x")
    await store.experiments.delete(exp_id)
    with pytest.raises(InvalidState, match="only active experiments"):
        await store.experiments.rename(exp_id, "newer")


async def test_delete_and_restore_cascade_to_runs(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e")
    run = await store.runs.create(exp_id)
    await store.experiments.delete(exp_id)
    exp = await store.experiments.get(exp_id)
    assert exp.lifecycle_stage is LifecycleStage.DELETED
    deleted = await store.runs.get(run.run_id)
    assert deleted.info.lifecycle_stage is LifecycleStage.DELETED and deleted.info.deleted_time is not None
    with pytest.raises(InvalidState, match="is deleted"):
        await store.experiments.delete(exp_id)
    with pytest.raises(InvalidState, match="deleted"):
        await store.runs.create(exp_id)
    with pytest.raises(InvalidState):
        await store.experiments.set_tag(exp_id, "k", "v")
    await store.experiments.restore(exp_id)
    assert (await store.experiments.get(exp_id)).lifecycle_stage is LifecycleStage.ACTIVE
    restored = await store.runs.get(run.run_id)
    assert restored.info.lifecycle_stage is LifecycleStage.ACTIVE and restored.info.deleted_time is None
    assert restored.info.status is RunStatus.RUNNING
    with pytest.raises(InvalidState, match="only deleted experiments can be restored"):
        await store.experiments.restore(exp_id)
    with pytest.raises(NotFound):
        await store.experiments.delete("4242")


async def test_set_and_delete_tag(store: AsyncStore) -> None:
    exp_id = await store.experiments.create("e", tags={"a": "1"})
    await store.experiments.set_tag(exp_id, "a", "2")
    await store.experiments.set_tag(exp_id, "b", "3")
    assert (await store.experiments.get(exp_id)).tags == {"a": "2", "b": "3"}
    await store.experiments.delete_tag(exp_id, "a")
    assert (await store.experiments.get(exp_id)).tags == {"b": "3"}
    with pytest.raises(NotFound, match="no tag 'a'"):
        await store.experiments.delete_tag(exp_id, "a")
    with pytest.raises(InvalidParameter, match="limit is 5000"):
        await store.experiments.set_tag(exp_id, "c", "x" * 5001)
    with pytest.raises(NotFound):
        await store.experiments.set_tag("777", "c", "x")


async def test_search_view_filter_order_and_paging(store: AsyncStore) -> None:
    ids = {}
    for name in ["alpha", "Beta", "gamma", "delta", "alpine"]:
        ids[name] = await store.experiments.create(name, tags={"group": "g1" if name.startswith("a") else "g2"})
    await store.experiments.delete(ids["delta"])

    async def names(**kwargs: object) -> list[str]:
        return [e.name for e in await store.experiments.search(**kwargs)]  # type: ignore[arg-type]

    # Default order: creation_time DESC, then experiment_id: all created in the same
    # millisecond or later, so sort by id for a stable check of the set.
    assert sorted(await names()) == sorted(["alpha", "Beta", "gamma", "alpine"])
    assert await names(view=ViewType.DELETED_ONLY) == ["delta"]
    assert len(await names(view=ViewType.ALL)) == 5
    assert await names(order_by=["name"]) == ["Beta", "alpha", "alpine", "gamma"]
    assert await names(order_by=["name DESC"]) == ["gamma", "alpine", "alpha", "Beta"]
    assert await names(filter_string="name LIKE 'al%'", order_by=["name"]) == ["alpha", "alpine"]
    assert await names(filter_string="name LIKE 'AL%'") == []
    assert await names(filter_string="name ILIKE 'AL%'", order_by=["name"]) == ["alpha", "alpine"]
    assert await names(filter_string="name = 'Beta'") == ["Beta"]
    assert await names(filter_string="name != 'Beta' AND tags.group = 'g2'") == ["gamma"]
    assert await names(filter_string="tags.group LIKE 'g%' and name ILIKE '%TA'", order_by=["name"]) == ["Beta"]
    assert await names(filter_string="creation_time > 0", order_by=["experiment_id"]) == ["alpha", "Beta", "gamma", "alpine"]
    assert await names(filter_string="creation_time < 0") == []

    first = await store.experiments.search(max_results=3, order_by=["name"])
    assert [e.name for e in first] == ["Beta", "alpha", "alpine"] and first.next_page_token
    second = await store.experiments.search(max_results=3, order_by=["name"], page_token=first.next_page_token)
    assert [e.name for e in second] == ["gamma"] and second.next_page_token is None
    assert {e.name: e.tags for e in second} == {"gamma": {"group": "g2"}}


async def test_search_errors(store: AsyncStore) -> None:
    with pytest.raises(InvalidParameter, match="unknown attribute key 'nme'"):
        await store.experiments.search(filter_string="nme = 'x'")
    with pytest.raises(InvalidParameter, match="comparator > is not allowed"):
        await store.experiments.search(filter_string="name > 'x'")
    with pytest.raises(InvalidParameter, match="only in order_by"):
        await store.experiments.search(filter_string="experiment_id = '1'")
    with pytest.raises(InvalidParameter, match="between 1 and 50000"):
        await store.experiments.search(max_results=50001)
    with pytest.raises(InvalidParameter, match="view"):
        await store.experiments.search(view="SOME")  # type: ignore[arg-type]
    page = await store.experiments.search(max_results=1)
    assert page.next_page_token is None
    await store.experiments.create("a")
    await store.experiments.create("b")
    token = (await store.experiments.search(max_results=1)).next_page_token
    assert token is not None
    with pytest.raises(InvalidParameter, match="different query"):
        await store.experiments.search(max_results=1, order_by=["name"], page_token=token)
    with pytest.raises(InvalidParameter, match="invalid page_token"):
        await store.experiments.search(page_token="!!!")


async def test_the_workspace_setting_scopes_creation_lookup_by_name_and_search(db_uri: str) -> None:
    """Promise: a store opened with workspace="team-a" creates experiments (and jobs)
    in that MLflow workspace; get_by_name and search see only its experiments, so one
    name may exist once per workspace; get by id sees every experiment. A bad
    workspace name is refused, naming what is allowed."""
    from asyncstore import ConfigurationError, NotFound
    from asyncstore.schema import experiments, jobs

    async with AsyncStore.open(db_uri) as default, AsyncStore.open(db_uri, workspace="team-a") as team:
        mine = await team.experiments.create("shared-name")
        theirs = await default.experiments.create("shared-name")
        assert mine != theirs
        assert (await team.experiments.get_by_name("shared-name")).experiment_id == mine
        assert (await default.experiments.get_by_name("shared-name")).experiment_id == theirs
        assert [e.experiment_id for e in (await team.experiments.search()).items] == [mine]
        assert (await default.experiments.get(mine)).name == "shared-name"
        job = await team.jobs.create("j", {})

        async def workspaces(conn: Any) -> tuple[Any, ...]:
            exp = (await conn.execute(select(experiments.c.workspace).where(experiments.c.experiment_id == int(mine)))).scalar_one()
            made = (await conn.execute(select(jobs.c.workspace).where(jobs.c.id == job.job_id))).scalar_one()
            return exp, made

        assert await team.uow.run(workspaces, write=False) == ("team-a", "team-a")
        await default.experiments.create("only-default")
        with pytest.raises(NotFound):
            await team.experiments.get_by_name("only-default")
    for bad in ("A", "x", "-a", "a_b", "a" * 64):
        with pytest.raises(ConfigurationError, match="MLflow workspace name"):
            AsyncStore.open(db_uri, workspace=bad)
