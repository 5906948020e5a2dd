"""MLflow's search grammar: a corpus of filter and order strings run through MLflow
3.17's own ``search_runs`` / ``search_experiments`` and asyncstore's on the same MLflow
database, which must answer with the same ids in the same order, or both refuse.

Where asyncstore deliberately answers what MLflow refuses (an extension), the case is
listed in ``EXTENSIONS`` with the answer asyncstore must give. Left out of the
corpus: ``LIKE`` patterns with a backslash, which MLflow's own answers differ on by
backend (SQLite has no escape character; asyncstore escapes with a backslash on every
backend), and ``datasets.*`` keys, which asyncstore does not take (it has no
datasets tables).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncstore import AsyncStore, StoreError, ViewType
from asyncstore.errors import ErrorCode
from tests.test_mlflow_databases import _mlflow_store, mlflow_uri  # noqa: F401  (fixture)

_RUNS = [
    # name, user, start, metrics, params, tags, status
    ("alpha", "ann", 100, {"acc": 0.9, "loss": float("nan")}, {"lr": "0.1", "model": "cnn"},
     {"team": "a", "env": "Prod"}, "FINISHED"),
    ("beta", "bob", 200, {"acc": 0.5, "loss": 2.0}, {"lr": "0.01", "model": "rnn"}, {"team": "b"}, "FAILED"),
    ("Gamma", "ann", 300, {"acc": float("inf")}, {"lr": "1e-3"}, {"env": "dev"}, "RUNNING"),
    ("delta_x", "cy", 400, {"acc": float("-inf")}, {"model": "CNN%"}, {"team": "A_b"}, "KILLED"),
]

RUN_FILTERS = [
    "", "metrics.acc > 0.6", "metrics.acc >= 0.5", "metrics.acc != 0.5", "metrics.acc < 0.6",
    "metrics.loss > 1", "metrics.loss != 2", "metrics.acc > 1e300", 'metrics."acc" > 0', "metric.acc > 0",
    "params.lr = '0.1'", "params.lr != '0.1'", "params.model LIKE 'c%'", "params.model ILIKE 'c%'",
    "params.model = 'CNN%'", "params.lr ILIKE '%E-3'", "param.lr = '0.1'", "params.lr IS NULL",
    "tags.team = 'a'", "tags.team ILIKE 'a%'", "tags.env != 'dev'", "tags.env = 'prod'", "tags.team != 'a'",
    "tags.`team` = 'b'", 'tags."team" = \'b\'', "tag.team = 'a'", "tags.team IS NOT NULL",
    "tags.mlflow.runName = 'alpha'", "tags.`mlflow.runName` = 'alpha'",
    "attributes.run_name = 'alpha'", "run_name = 'alpha'", "run_name LIKE '%a'", "run_name ILIKE 'g%'",
    "attributes.status = 'FAILED'", "attribute.status = 'FAILED'", "status != 'FAILED'", 'status = "FAILED"',
    "attributes.status LIKE 'F%'", "attributes.user_id = 'ann'", "user_id ILIKE 'A%'", "user_id != 'ann'",
    "start_time > 150", "start_time != 100", "start_time = 100.0", "end_time < 300", "created < 250",
    "Created > 150", "attributes.start_time >= 200 AND metrics.acc < 1",
    "metrics.acc > 0.6 and params.model = 'cnn'", "attributes.artifact_uri LIKE '%mlartifacts%'",
    "run_id = '{0}'", "run_id IN ('{0}', '{1}')", "run_id NOT IN ('{0}')", "attributes.run_id != '{0}'",
    # refused by both
    "params.model RLIKE '^c'", "params.model IN ('cnn', 'rnn')", "params.model NOT IN ('cnn')",
    "attributes.lifecycle_stage = 'active'", "metrics.acc IS NULL", "end_time IS NULL",
    "metrics.acc > 0.6 OR params.model = 'rnn'", "metrics.acc = inf", "params.lr > '0.05'", "run_name = alpha",
    "metrics.acc >", "nonsense",
]

STRICTER = [
    # MLflow drops a dangling AND; asyncstore refuses a filter that does not parse whole.
    "tags.team = 'a' AND",
]

EXTENSIONS = {
    # MLflow takes IN only for run_id; asyncstore for every string attribute.
    "status IN ('FAILED', 'KILLED')": [3, 1],
    "run_name IN ('alpha')": [0],
}

RUN_ORDERS = [
    ["metrics.acc DESC"], ["metrics.acc"], ["metrics.loss"], ["params.lr"], ["params.model DESC"],
    ["tags.team ASC"], ["tags.team DESC"], ["attributes.start_time"], ["run_name"], ["run_name DESC"],
    ["status"], ["user_id DESC", "start_time"], ["end_time"], ["attributes.run_id"], ["metrics.`acc` DESC"],
    ["created DESC"], ["Created"], ["params.lr ASC", "metrics.acc DESC"],
]

EXPERIMENT_FILTERS = [
    "", "name = 'e1'", "name LIKE 'e%'", "name ILIKE 'E%'", "name != 'e1'", "tags.k = 'v'", "tags.k != 'v'",
    "tags.k LIKE 'v%'", "creation_time > 0", "last_update_time > 0",
    "name = 'e1' AND tags.k = 'v'", "name RLIKE 'e'", "name IN ('e1')", "bogus = 1", "name = e1",
]
EXPERIMENT_EXTENSIONS = {
    # MLflow takes the attributes. prefix in run search only; asyncstore in both.
    "attributes.name = 'e2'": ["e2"],
}
EXPERIMENT_ORDERS = [["name"], ["name DESC"], ["creation_time DESC"], ["last_update_time"], ["experiment_id DESC"]]


@pytest.fixture
def mlflow_runs(backend: str, mlflow_uri: str) -> tuple[str, str, list[str]]:  # noqa: F811
    """An MLflow database with ``_RUNS`` (and experiments e1, e2) written by MLflow."""
    from mlflow.entities import ExperimentTag, Metric, Param, RunStatus, RunTag

    ml = _mlflow_store(mlflow_uri, backend)
    try:
        exp = ml.create_experiment("e1", tags=[ExperimentTag("k", "v")])
        ml.create_experiment("e2", tags=[ExperimentTag("k", "w")])
        ids = []
        for name, user, start, metrics, params, tags, status in _RUNS:
            run = ml.create_run(exp, user, start, [RunTag(k, v) for k, v in tags.items()], name)
            run_id = run.info.run_id
            ml.log_batch(
                run_id, [Metric(k, v, 1, 0) for k, v in metrics.items()], [Param(k, v) for k, v in params.items()], []
            )
            ml.update_run_info(run_id, RunStatus.from_string(status), start + 50, None)
            ids.append(run_id)
    finally:
        ml.engine.dispose()
    return mlflow_uri, exp, ids


def _outcome(call: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        assert exc.error_code == "INVALID_PARAMETER_VALUE", exc
        return "INVALID_PARAMETER"


def test_runs_search_answers_as_mlflow_s(backend: str, mlflow_runs: tuple[str, str, list[str]]) -> None:
    from mlflow.entities import ViewType as MViewType

    uri, exp, ids = mlflow_runs
    cases = [(f.format(*ids), []) for f in RUN_FILTERS] + [("", order) for order in RUN_ORDERS]
    ml = _mlflow_store(uri, backend)
    try:
        expected = [
            _outcome(lambda: [ids.index(r.info.run_id) for r in ml.search_runs([exp], f, MViewType.ALL, order_by=o)])
            for f, o in cases
        ]
        refused_extensions = [_outcome(lambda f=f: ml.search_runs([exp], f, MViewType.ALL)) for f in EXTENSIONS]
        answered_stricter = [_outcome(lambda f=f: ml.search_runs([exp], f, MViewType.ALL)) for f in STRICTER]
    finally:
        ml.engine.dispose()
    assert refused_extensions == ["INVALID_PARAMETER"] * len(EXTENSIONS)
    assert "INVALID_PARAMETER" not in answered_stricter

    async def ours(store: AsyncStore, f: str, order: list[str]) -> Any:
        try:
            page = await store.runs.search([exp], f, view=ViewType.ALL, order_by=order)
        except StoreError as exc:
            assert exc.code is ErrorCode.INVALID_PARAMETER, exc
            return "INVALID_PARAMETER"
        return [ids.index(r.run_id) for r in page.items]

    async def run() -> None:
        async with AsyncStore.open(uri) as store:
            got = [await ours(store, f, o) for f, o in cases]
            differ = [
                f"filter {f!r} order {o}: MLflow {want}, asyncstore {have}"
                for (f, o), want, have in zip(cases, expected, got)
                if have != want
            ]
            assert not differ, "\n".join(differ)
            for f, want in EXTENSIONS.items():
                assert await ours(store, f, []) == want, f
            for f in STRICTER:
                assert await ours(store, f, []) == "INVALID_PARAMETER", f

    asyncio.run(run())


def test_experiments_search_answers_as_mlflow_s(backend: str, mlflow_runs: tuple[str, str, list[str]]) -> None:
    from mlflow.entities import ViewType as MViewType

    uri, _, _ = mlflow_runs
    cases = [(f, []) for f in EXPERIMENT_FILTERS] + [("", o) for o in EXPERIMENT_ORDERS]
    extensions = [(f, []) for f in EXPERIMENT_EXTENSIONS]
    ml = _mlflow_store(uri, backend)
    try:
        expected = [
            _outcome(lambda: [e.name for e in ml.search_experiments(MViewType.ALL, 100, f, o)])
            for f, o in cases + extensions
        ]
    finally:
        ml.engine.dispose()
    assert expected[len(cases):] == ["INVALID_PARAMETER"] * len(extensions)
    expected[len(cases):] = EXPERIMENT_EXTENSIONS.values()
    cases += extensions

    async def run() -> list[Any]:
        async with AsyncStore.open(uri) as store:
            got = []
            for f, o in cases:
                try:
                    got.append([e.name for e in (await store.experiments.search(ViewType.ALL, f, 100, o)).items])
                except StoreError as exc:
                    assert exc.code is ErrorCode.INVALID_PARAMETER, exc
                    got.append("INVALID_PARAMETER")
            return got

    differ = [
        f"filter {f!r} order {o}: MLflow {want}, asyncstore {have}"
        for (f, o), want, have in zip(cases, expected, asyncio.run(run()))
        if have != want
    ]
    assert not differ, "\n".join(differ)
