"""``asyncstore bench``: run the workloads, print the table, write JSON (and a chart).

::

    asyncstore bench [--uri URI] [--workload NAME ...] [--scale small|medium|large]
                     [--out DIR] [--compare mlflow] [--plot]

Without ``--uri`` it runs on a SQLite file in a new temporary directory; with a
PostgreSQL or MySQL URI it creates a database with a random name on that server
and drops it at the end, even after an error or Ctrl-C (see
:mod:`asyncstore.bench.database`). Every workload runs after a warm-up, several
times, and the median is reported (:mod:`asyncstore.bench.measure`).

Exit codes: 0 all workloads measured; 1 some workload failed (the others are still
reported); 2 a usage problem (e.g. ``--compare mlflow`` without mlflow installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from asyncstore.bench import report
from asyncstore.bench.database import ScratchDatabase, create_scratch
from asyncstore.bench.measure import Workload, measure_all
from asyncstore.bench.progress import Progress
from asyncstore.bench.scale import SCALES, Scale
from asyncstore.bench.workloads import SPECS, STORE_WORKLOADS, Spec
from asyncstore.config import redact
from asyncstore.errors import StoreError
from asyncstore.store import AsyncStore

if TYPE_CHECKING:
    from asyncstore.bench.mlflow_peer import MlflowPeer

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_WORKLOAD_FAILED = 1
EXIT_USAGE = 2
DEFAULT_OUT = "bench-results"
DESCRIPTION = (
    "Benchmark asyncstore on a fresh database: experiment and run creation, log_batch, get_run, run search, "
    "span ingestion, trace search and job claiming, each after a warm-up and several repetitions (median "
    "reported), next to raw-driver ceilings and optionally MLflow's SqlAlchemyStore. Prints a table and "
    "writes every figure, the versions and the machine to a JSON file. Without --uri it runs on a SQLite file "
    "in a temporary directory; with a server URI it creates a database with a random name there and drops it "
    "at the end, even after an error or Ctrl-C."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    parser.add_argument(
        "--uri", default=None, metavar="URI",
        help="a server to run on (postgresql://user@host/db, mysql://user@host/db): a fresh database with a "
        "random name is created there and dropped at the end; default: a SQLite file in a temporary directory",
    )
    parser.add_argument(
        "--workload", nargs="+", action="extend", choices=[s.name for s in SPECS], metavar="NAME",
        help=f"workloads to run (default: all): {', '.join(s.name for s in SPECS)}",
    )
    parser.add_argument("--scale", choices=list(SCALES), default="small", help="how much work (default: small)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"where the JSON (and PNG) go (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--compare", choices=["mlflow"], default=None,
        help="also run the workloads through MLflow's SqlAlchemyStore (needs the bench extra)",
    )
    parser.add_argument("--plot", action="store_true", help="write a PNG chart (needs matplotlib, the bench extra)")


def add_bench_command(subparsers: Subparsers) -> None:
    """Register ``asyncstore bench`` on the ``asyncstore`` command line."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark asyncstore on a fresh database (optionally against MLflow)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``asyncstore bench`` on its own (``python -m asyncstore.bench.runner``)."""
    parser = argparse.ArgumentParser(prog="asyncstore bench", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``asyncstore bench`` with ``argv`` (without the program name); return the exit code.

    Example::

        from asyncstore.bench.runner import main
        main(["--scale", "small", "--out", "/tmp/bench"])
    """
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run_bench(args))
    except StoreError as exc:
        print(f"asyncstore bench: error: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        print("asyncstore bench: interrupted", file=sys.stderr)
    return EXIT_USAGE


async def run_bench(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    """The ``bench`` command: check options, run, report. See the module docstring."""
    out = stream if stream is not None else sys.stdout
    compare = args.compare == "mlflow"
    if compare:
        from asyncstore.bench.mlflow_peer import INSTALL_HINT, mlflow_available

        if not mlflow_available():
            print(f"asyncstore bench: --compare mlflow needs the mlflow package: {INSTALL_HINT}", file=sys.stderr)
            return EXIT_USAGE
    if args.plot:
        from asyncstore.bench.plot import INSTALL_HINT as PLOT_HINT
        from asyncstore.bench.plot import matplotlib_available

        if not matplotlib_available():
            print(f"asyncstore bench: --plot needs matplotlib: {PLOT_HINT}", file=sys.stderr)
            return EXIT_USAGE
    scale = SCALES[args.scale]
    chosen = set(args.workload or [s.name for s in SPECS])
    specs = [s for s in SPECS if s.name in chosen]
    bench = _Bench(scale, specs, compare, out)
    result = await bench.run(args.uri)
    result["command"] = _command(args)
    report.add_ratios(result["workloads"])
    out_dir = Path(args.out)
    json_path = report.write_json(result, out_dir)
    out.write("\n" + report.table(result) + "\n\n")
    out.write(f"figures: {json_path}\n")
    if args.plot:
        from asyncstore.bench.plot import write_png

        png = write_png(result, json_path.with_suffix(".png"))
        out.write(f"chart:   {png}\n")
    out.flush()
    return EXIT_WORKLOAD_FAILED if result["failed"] else EXIT_OK


def _command(args: argparse.Namespace) -> str:
    parts = ["asyncstore", "bench"]
    if args.uri:
        parts += ["--uri", redact(args.uri)]
    if args.workload:
        parts += ["--workload", *args.workload]
    parts += ["--scale", args.scale]
    if args.compare:
        parts += ["--compare", args.compare]
    if args.plot:
        parts.append("--plot")
    return " ".join(parts)


class _Bench:
    """One benchmark run: scratch databases, the systems, the measured figures."""

    def __init__(self, scale: Scale, specs: list[Spec], compare: bool, out: TextIO) -> None:
        self.scale = scale
        self.specs = specs
        self.compare = compare
        per_workload = scale.warmup + scale.repetitions
        steps = sum(per_workload * (1 + int(s.raw) + int(compare)) for s in specs)
        self.progress = Progress(total=steps, stream=out)
        self.failed: list[str] = []

    async def run(self, uri: str | None) -> dict[str, Any]:
        """Create the scratch database(s), measure every workload, drop them; return the result."""
        scratches: list[ScratchDatabase] = []
        workloads: dict[str, dict[str, Any]] = {}
        try:
            scratch = await create_scratch(uri, "store")
            scratches.append(scratch)
            self.progress.note(f"asyncstore bench: scale {self.scale.name} on {scratch.safe_uri}")
            peer: MlflowPeer | None = None
            if self.compare:
                peer = await self._open_peer(uri, scratches)
            try:
                async with AsyncStore.open(scratch.uri) as store:
                    for spec in self.specs:
                        workloads[spec.name] = await self._workload(spec, store, scratch, peer)
            finally:
                if peer is not None:
                    await peer.close()
            server = scratch.server_version
            backend = scratch.backend
            database = scratch.safe_uri
        finally:
            self.progress.close()
            for made in scratches:
                with contextlib.suppress(Exception):  # never hide the original error
                    await asyncio.shield(made.drop())
        return {
            "tool": "asyncstore bench",
            "date": report.now_utc(),
            "backend": backend.value,
            "database": database,
            "scale": self.scale.name,
            "warmup": self.scale.warmup,
            "repetitions": self.scale.repetitions,
            "versions": report.versions(backend, server, mlflow=self.compare),
            "machine": report.machine(),
            "workloads": workloads,
            "failed": self.failed,
        }

    async def _open_peer(self, uri: str | None, scratches: list[ScratchDatabase]) -> MlflowPeer:
        from asyncstore.bench.mlflow_peer import MlflowPeer

        mlflow_db = await create_scratch(uri, "mlflow")
        scratches.append(mlflow_db)
        self.progress.note("creating MLflow's schema (its own migrations; not timed)")
        peer = MlflowPeer(mlflow_db)
        await peer.open()
        return peer

    async def _workload(
        self, spec: Spec, store: AsyncStore, scratch: ScratchDatabase, peer: MlflowPeer | None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "unit": spec.unit,
            "description": spec.description,
            "concurrency": spec.concurrency,
            "items_per_repetition": spec.size(self.scale),
        }
        systems: dict[str, Workload] = {"asyncstore": STORE_WORKLOADS[spec.name](store, self.scale)}
        if spec.raw:
            from asyncstore.bench.raw import RAW_WORKLOADS

            systems["raw"] = RAW_WORKLOADS[spec.name](scratch, self.scale)
        if peer is not None:
            from asyncstore.bench.mlflow_peer import MLFLOW_WORKLOADS

            systems["mlflow"] = MLFLOW_WORKLOADS[spec.name](peer, self.scale)
        reps = self.scale.warmup + self.scale.repetitions
        finished = dict.fromkeys(systems, 0)
        self.progress.status(f"{spec.name}: setting up {', '.join(systems)}")

        def done(system: str, rep: int, rate: float | None) -> None:
            finished[system] += 1
            kind = "warm-up" if rate is None else f"{report.format_rate(rate)} {spec.unit}"
            self.progress.step(f"{spec.name} / {system} {rep + 1}/{reps}: {kind}")

        def failed(system: str, exc: Exception) -> None:
            self.failed.append(f"{spec.name} / {system}")
            self.progress.note(f"FAILED {spec.name} / {system}: {_describe(exc)}")
            self.progress.done = min(self.progress.total, self.progress.done + reps - finished[system])

        results = await measure_all(
            systems, warmup=self.scale.warmup, repetitions=self.scale.repetitions,
            on_repetition=done, on_failure=failed,
        )
        for system, figures in results.items():
            entry[system] = {"error": _describe(figures)} if isinstance(figures, Exception) else figures.to_json()
        return entry


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or ""
    return f"{type(exc).__name__}: {message}".rstrip(": ")


if __name__ == "__main__":  # python -m asyncstore.bench.runner
    sys.exit(main())
