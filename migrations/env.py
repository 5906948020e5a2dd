"""Alembic environment for asyncstore.

Two ways in:

* from asyncstore (``asyncstore.migrate``): the library opens an ``AsyncConnection``,
  takes the migration lock and calls Alembic inside ``AsyncConnection.run_sync``,
  handing the synchronous connection over in ``config.attributes["connection"]``;
* from the plain ``alembic`` command line: this file builds an async engine from
  ``-x uri=...`` (or ASYNCSTORE_DATABASE_URI) and runs the same code through
  ``run_sync`` inside ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import logging.config

from alembic import context
from sqlalchemy.engine import Connection

from asyncstore.schema import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions on a synchronous connection."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        # SQLite DDL is transactional: the whole upgrade runs inside the one
        # exclusive transaction that asyncstore.migrate opened. Elsewhere each
        # revision commits on its own, so a failure leaves a consistent revision.
        transaction_per_migration=connection.dialect.name != "sqlite",
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_from_command_line() -> None:
    """Entry for the ``alembic`` command: open our own engine and take the lock."""
    if config.config_file_name is not None:
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    from asyncstore.migrate import run_locked

    uri = context.get_x_argument(as_dictionary=True).get("uri")
    asyncio.run(run_locked(uri, run_migrations))


if context.is_offline_mode():
    raise SystemExit("asyncstore migrations need a live database connection (no --sql mode)")

connection = config.attributes.get("connection")
if connection is None:
    run_from_command_line()
else:
    run_migrations(connection)
