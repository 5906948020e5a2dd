"""A client process of the Galera tests (tests/clusters/test_galera.py), writing through one node.

Usage::

    python tests/clusters/galera_client.py migrate URI
    python tests/clusters/galera_client.py write URI INDEX RUN_ID[,RUN_ID...] EXPERIMENT TRACE_ID[,TRACE_ID...]

``migrate`` opens a store on an empty database (which migrates it, or waits for the
process migrating it) and prints how many revisions this process applied. ``write`` logs, ``ROUNDS`` times, a batch of metrics to
every run and a batch of spans to every trace, all at steps, times and span ids of
its own (INDEX), and prints ``ok`` with the number of calls; each call either raised
or was written whole, and a call that raised is reported (the test expects none).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from asyncstore import AsyncStore
from asyncstore.entities import Metric, Span

ROUNDS = 10
METRICS_PER_CALL = 50  # 5 keys x 10 steps
SPANS_PER_CALL = 20
T0 = 1_700_000_000_000_000_000


def metrics(index: int, round_: int) -> list[Metric]:
    """The metrics process ``index`` logs to each run in ``round_``: steps of its own."""
    first = (index * ROUNDS + round_) * 10
    return [
        Metric(f"m{k}", float(index * 1000 + first + s), 1_000_000 + first + s, first + s)
        for k in range(5) for s in range(10)
    ]


def spans(index: int, round_: int, trace_id: str) -> list[Span]:
    """The spans process ``index`` logs to ``trace_id`` in ``round_`` (ids of its own)."""
    start = T0 + (index * ROUNDS + round_) * 1_000_000
    return [
        Span(trace_id, f"{index:04x}{round_:04x}{s:08x}", f"p{index}", start + s, start + s + 500)
        for s in range(SPANS_PER_CALL)
    ]


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.upgrades = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Running upgrade"):
            self.upgrades += 1


async def migrate(uri: str) -> None:
    counter = _Count()
    alembic = logging.getLogger("alembic.runtime.migration")
    alembic.setLevel(logging.INFO)
    alembic.addHandler(counter)
    async with AsyncStore.open(uri):  # an empty database gets the schema; one half-way waits
        pass
    print(f"applied {counter.upgrades}")


async def write(uri: str, index: int, runs: list[str], experiment: str, traces: list[str]) -> None:
    calls = failed = 0
    async with AsyncStore.open(uri, pool_size=2, max_overflow=0) as store:
        for round_ in range(ROUNDS):
            for run_id in runs:
                calls += 1
                try:
                    await store.runs.log_batch(run_id, metrics=metrics(index, round_))
                except Exception as exc:
                    failed += 1
                    print(f"log_batch failed: {exc!r}", file=sys.stderr)
            for trace_id in traces:
                calls += 1
                try:
                    await store.spans.log_spans(experiment, spans(index, round_, trace_id))
                except Exception as exc:
                    failed += 1
                    print(f"log_spans failed: {exc!r}", file=sys.stderr)
    print(f"ok {calls} calls, {failed} failed")


def main(argv: list[str]) -> None:
    if argv[0] == "migrate":
        asyncio.run(migrate(argv[1]))
    elif argv[0] == "write":
        asyncio.run(write(argv[1], int(argv[2]), argv[3].split(","), argv[4], argv[5].split(",")))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
