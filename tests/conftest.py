"""Backend fixtures: every store test runs on SQLite, PostgreSQL and MySQL/MariaDB.

* ``backend``: the parametrised backend (``sqlite``, ``postgresql``, ``mysql``). A server
  that cannot be reached is skipped with a message saying how to enable it, unless
  ``ASYNCSTORE_TEST_BACKENDS`` names it: then the run fails. With the variable set,
  only the backends it names run. A test that needs a capability only some backends
  have narrows it with a marker from :mod:`tests.helpers` (``needs_server``,
  ``needs_transactional_ddl``, ``sqlite_only``…); shared helpers live there too.
* ``db_uri``: a fresh, empty database of that backend, dropped afterwards.
* ``migrated_uri``: a fresh database already at the head revision (cloned from a
  template migrated once per session, so each test still gets its own database).
* ``store``: an open :class:`AsyncStore` on ``migrated_uri``.

Server locations: ``ASYNCSTORE_TEST_POSTGRESQL_URI`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) and ``ASYNCSTORE_TEST_MYSQL_URI``
(default ``mysql://root@127.0.0.1:3306/test``); the user must be allowed to create
and drop databases.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy.engine import make_url

from tests import dbadmin
from tests.helpers import BACKENDS

# CI explores the same examples on every run, so a submission's result does not depend
# on the draw; local runs keep exploring new ones (and save failures to .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _required() -> set[str] | None:
    raw = os.environ.get("ASYNCSTORE_TEST_BACKENDS", "").strip()
    if not raw:
        return None
    names = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = names - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(
            f"ASYNCSTORE_TEST_BACKENDS names unknown backend(s) {sorted(unknown)}; use {', '.join(BACKENDS)}"
        )
    return names


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test; skips (or fails) when its server is unreachable."""
    name: str = request.param
    required = _required()
    if required is not None and name not in required:
        pytest.skip(f"{name} not in ASYNCSTORE_TEST_BACKENDS={os.environ['ASYNCSTORE_TEST_BACKENDS']}")
    problem = dbadmin.check_server(name)
    if problem is not None:
        message = (
            f"{name} server unreachable ({problem}); start it, or point "
            f"{dbadmin.ENV_VARS.get(name, '')} at one"
        )
        if required is not None:
            pytest.fail(message + " — it is named in ASYNCSTORE_TEST_BACKENDS, so this is a failure")
        pytest.skip(message)
    return name


@pytest.fixture(scope="session")
def template_uri(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head once per session, to clone test databases from."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.db"
        uri = f"sqlite:///{path}"
    else:
        uri = dbadmin.create_database(backend, f"asyncstore_tmpl_{uuid.uuid4().hex[:10]}")
    try:
        asyncio.run(dbadmin.migrate_to_head(uri))
        yield uri
    finally:
        if backend != "sqlite":
            dbadmin.drop_database(backend, uri)


@pytest.fixture
def db_uri(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    uri = dbadmin.create_database(backend, f"asyncstore_test_{uuid.uuid4().hex[:12]}")
    try:
        yield uri
    finally:
        dbadmin.drop_database(backend, uri)


@pytest.fixture
def migrated_uri(backend: str, template_uri: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the head revision for one test."""
    if backend == "sqlite":
        target = tmp_path / "test.db"
        shutil.copyfile(make_url(template_uri).database or "", target)
        yield f"sqlite:///{target}"
        return
    uri = dbadmin.clone_database(backend, template_uri, f"asyncstore_test_{uuid.uuid4().hex[:12]}")
    try:
        yield uri
    finally:
        dbadmin.drop_database(backend, uri)


@pytest.fixture
async def store(migrated_uri: str) -> AsyncIterator[object]:
    """An open AsyncStore on a fresh, migrated database."""
    from asyncstore import AsyncStore

    async with AsyncStore.open(migrated_uri) as opened:
        yield opened


@pytest.fixture(autouse=True)
async def _dispose_cached_engines() -> AsyncIterator[None]:
    """Close the engines a test left in the cache, on the test's own loop."""
    yield
    from asyncstore import dispose_engines

    await dispose_engines()
