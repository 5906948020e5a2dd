"""Countable claims of the README that no other test module asserts, on every backend.

The others are asserted beside the code they are about: ``runs.get`` in 2 SELECTs and
``log_batch`` in a fixed number of statements in ``tests/test_runs.py``, ``log_spans``
in ``tests/test_spans.py``, each Reliability row in ``tests/faults/`` and
``tests/test_hostile_input*.py`` (each case's docstring states its promise; the fuzz
size is checked against the README there).
"""

from __future__ import annotations

from asyncstore import AsyncStore
from asyncstore.entities import NewJob
from asyncstore.schema import jobs
from tests.helpers import count_rows, count_statements, readme_row


async def test_create_many_takes_a_bounded_number_of_statements(store: AsyncStore) -> None:
    """README, jobs: ``create_many`` enqueues "in a bounded number of statements": 1,500
    jobs take at most two statements more than 2 jobs do (multi-row INSERTs of up to
    500 rows), not one per job."""
    assert "`create_many` in a bounded number of statements" in readme_row("`jobs.create(")
    with count_statements(store) as few:
        await store.jobs.create_many([NewJob("few", {"i": i}) for i in range(2)])
    with count_statements(store) as many:
        await store.jobs.create_many([NewJob("many", {"i": i}) for i in range(1500)])
    assert len(many) <= len(few) + 2, many
    assert await count_rows(store, jobs) == 1502

