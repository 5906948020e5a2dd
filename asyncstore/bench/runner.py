"""``asyncstore bench``: run the workloads, print the table, write JSON (and a chart).

::

    asyncstore bench [--uri URI] [--workload NAME ...] [--scale small|medium|large]
                     [--batch-sizes N,N,...] [--job-workers N,N,...] [--million [SPANS]]
                     [--search-scale [RUNS]] [--otlp-minutes M] [--out DIR]
                     [--compare mlflow|procrastinate|pgqueuer ...] [--plot]

Without ``--uri`` it runs on a SQLite file in a new temporary directory; with a
PostgreSQL or MySQL URI it creates a database with a random name on that server
and drops it at the end, even after an error or Ctrl-C (see
:mod:`asyncstore.bench.database`). Every workload runs after a warm-up, several
times, and the median is reported (:mod:`asyncstore.bench.measure`), next to
the raw-driver ceilings of :mod:`asyncstore.bench.raw` measured in the same run.

Exit codes: 0 all workloads measured; 1 some workload failed (the others are still
reported); 2 a usage problem (e.g. ``--compare mlflow`` without mlflow installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from asyncstore.bench import report
from asyncstore.bench.database import ScratchDatabase, create_scratch
from asyncstore.bench.measure import Workload, measure_all
from asyncstore.bench.options import MILLION, OPT_IN, SCALE_RUNS, variants
from asyncstore.bench.progress import Progress
from asyncstore.bench.queue_peers import QUEUE_PEERS
from asyncstore.bench.scale import SCALES, Scale
from asyncstore.bench.workloads import ON_MLFLOW_SCHEMA, SPECS, Spec
from asyncstore.cliargs import positive_int, positive_number
from asyncstore.config import Backend, StoreConfig, redact
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
    "reported), next to raw-driver ceilings (the same rows written, or the statements the store sends for reads "
    "and job claims replayed, by the bare driver) and optionally MLflow's SqlAlchemyStore; when named, OTLP/HTTP "
    "ingestion through asyncstore serve (and MLflow's server). Prints a table and "
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
        "--workload", nargs="+", action="extend", choices=[s.name for s in (*SPECS, *OPT_IN)], metavar="NAME",
        help=f"workloads to run (default: all but {' and '.join(s.name for s in OPT_IN)}, which start server "
        f"processes and run only when named): {', '.join(s.name for s in (*SPECS, *OPT_IN))}",
    )
    parser.add_argument("--scale", choices=list(SCALES), default="small", help="how much work (default: small)")
    parser.add_argument(
        "--batch-sizes", type=_sizes, default=(), metavar="N,N,...",
        help="run log_batch and log_spans with these rows per call instead of 1000 (e.g. 100,1000,10000), as "
        "workloads named log_spans@100 etc. (1000 is the plain one), with their raw ceilings; the same rows per "
        "repetition; log_batch takes at most 1000 (MLflow's limit)",
    )
    parser.add_argument(
        "--job-workers", type=_sizes, default=(), metavar="N,N,...",
        help="run claim_jobs with these numbers of concurrent workers instead of 8 (e.g. 1,4,8), as claim_jobs@1 "
        "etc. (8 is the plain one), each beside a naive claim loop (SELECT, then UPDATE if still pending) whose "
        "lost claims are counted",
    )
    parser.add_argument(
        "--million", type=positive_int, nargs="?", const=MILLION, default=0, metavar="SPANS",
        help=f"also ingest {MILLION:,} spans (or SPANS) in 1,000-span batches once, reporting resident memory "
        "along the way and the peak (it must stay flat)",
    )
    parser.add_argument(
        "--search-scale", type=positive_int, nargs="?", const=SCALE_RUNS, default=0, metavar="RUNS",
        help=f"also search {SCALE_RUNS:,} runs (or RUNS) with 20 metrics each (filled in bulk, untimed): metric "
        "filters ordered by another metric, pages of 100 and 1,000, with the raw ceiling",
    )
    parser.add_argument(
        "--otlp-minutes", type=positive_number, default=0, metavar="M",
        help="run otlp_soak (asyncstore serve under otlp_ingest's load, printing its resident memory and the "
        "throughput every 30 s) for M minutes (default 10 when --workload names otlp_soak)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"where the JSON (and PNG) go (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--compare", nargs="+", action="extend", choices=["mlflow", *QUEUE_PEERS], default=None, metavar="PEER",
        help="also run the workloads through MLflow's SqlAlchemyStore (mlflow), and the claim_jobs workloads "
        "through procrastinate's and PgQueuer's workers (procrastinate, pgqueuer; PostgreSQL only); "
        "all need the bench extra",
    )
    parser.add_argument("--plot", action="store_true", help="write a PNG chart (needs matplotlib, the bench extra)")


def _sizes(text: str) -> tuple[int, ...]:
    """``100,1000,10000`` -> (100, 1000, 10000); each at least 1."""
    try:
        found = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        found = ()
    if not found or min(found) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return found


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
    compare = "mlflow" in (args.compare or [])
    queue_peers = [peer for peer in QUEUE_PEERS if peer in (args.compare or [])]
    if queue_peers:
        problem = _queue_peers_problem(args.uri, queue_peers)
        if problem:
            print(f"asyncstore bench: {problem}", file=sys.stderr)
            return EXIT_USAGE
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
    specs = variants(
        [s for s in (*SPECS, *OPT_IN) if s.name in chosen], batch_sizes=args.batch_sizes,
        job_workers=args.job_workers, million=args.million, search_runs=args.search_scale,
        otlp_minutes=args.otlp_minutes,
    )
    if any(s.kind == "otlp_ingest" for s in specs):
        from asyncstore.bench.otlp import INSTALL_HINT as OTLP_HINT
        from asyncstore.bench.otlp import missing_packages

        missing = missing_packages()
        if missing:
            print(f"asyncstore bench: the OTLP workloads need {', '.join(missing)}: {OTLP_HINT}", file=sys.stderr)
            return EXIT_USAGE
    backend = StoreConfig.load(args.uri).backend if args.uri else Backend.SQLITE
    bench = _Bench(scale, specs, compare, out, queue_peers, backend)
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
    for option in ("batch_sizes", "job_workers"):
        if getattr(args, option):
            parts += [f"--{option.replace('_', '-')}", ",".join(map(str, getattr(args, option)))]
    for option in ("million", "search_scale"):
        if getattr(args, option):
            parts += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.otlp_minutes:
        parts += ["--otlp-minutes", f"{args.otlp_minutes:g}"]
    if args.compare:
        parts += ["--compare", *dict.fromkeys(args.compare)]
    if args.plot:
        parts.append("--plot")
    return " ".join(parts)


class _Bench:
    """One benchmark run: scratch databases, the systems, the measured figures."""

    def __init__(
        self, scale: Scale, specs: list[Spec], compare: bool, out: TextIO, queue_peers: Sequence[str] = (),
        backend: Backend = Backend.SQLITE,
    ) -> None:
        self.scale = scale
        self.specs = specs
        self.compare = compare
        self.queue_peers = list(queue_peers)
        self.uri: str | None = None
        steps = sum(sum(self._reps(s)) * len(s.systems(compare, queue_peers, backend)) for s in specs)
        self.progress = Progress(total=steps, stream=out)
        self.failed: list[str] = []

    async def run(self, uri: str | None) -> dict[str, Any]:
        """Create the scratch database(s), measure every workload, drop them; return the result."""
        scratches: list[ScratchDatabase] = []
        workloads: dict[str, dict[str, Any]] = {}
        self.uri = uri
        try:
            scratch = await create_scratch(uri, "store")
            scratches.append(scratch)
            self.progress.note(f"asyncstore bench: scale {self.scale.name} on {scratch.safe_uri}")
            peer: MlflowPeer | None = None
            on_mlflow: AsyncStore | None = None
            if self.compare:
                peer = await self._open_peer(uri, scratches)
                on_mlflow = await self._open_on_mlflow_schema(uri, scratches)
            try:
                async with AsyncStore.open(scratch.uri) as store:
                    for spec in self.specs:
                        workloads[spec.name] = await self._workload(spec, store, scratch, peer, on_mlflow)
            finally:
                if peer is not None:
                    await peer.close()
                if on_mlflow is not None:
                    await on_mlflow.close()
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
            "versions": report.versions(backend, server, mlflow=self.compare, peers=self.queue_peers),
            "machine": report.machine(),
            "workloads": workloads,
            "failed": self.failed,
        }

    def _reps(self, spec: Spec) -> tuple[int, int]:
        """Warm-up and recorded repetitions of ``spec``."""
        return (0, 1) if spec.once else (self.scale.warmup, self.scale.repetitions)

    async def _open_peer(self, uri: str | None, scratches: list[ScratchDatabase]) -> MlflowPeer:
        from asyncstore.bench.mlflow_peer import MlflowPeer

        mlflow_db = await create_scratch(uri, "mlflow")
        scratches.append(mlflow_db)
        self.progress.note("creating MLflow's schema (its own migrations; not timed)")
        peer = MlflowPeer(mlflow_db)
        await peer.open()
        return peer

    async def _open_on_mlflow_schema(self, uri: str | None, scratches: list[ScratchDatabase]) -> AsyncStore:
        """asyncstore on a database whose schema MLflow's own migrations made."""
        from asyncstore.bench.mlflow_peer import MlflowPeer

        made = await create_scratch(uri, "on_mlflow")
        scratches.append(made)
        self.progress.note("creating MLflow's schema for asyncstore to run on (not timed)")
        creator = MlflowPeer(made)
        await creator.open()
        await creator.close()
        return await AsyncStore.open(made.uri)

    async def _workload(
        self,
        spec: Spec,
        store: AsyncStore,
        scratch: ScratchDatabase,
        peer: MlflowPeer | None,
        on_mlflow: AsyncStore | None = None,
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "unit": spec.unit,
            "description": spec.description,
            "concurrency": spec.concurrency,
            "items_per_repetition": spec.size(self.scale),
        }
        systems = self._systems(spec, store, scratch, peer, on_mlflow)
        warmup, repetitions = self._reps(spec)
        reps = warmup + repetitions
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
            systems, warmup=warmup, repetitions=repetitions,
            on_repetition=done, on_failure=failed,
        )
        for system, figures in results.items():
            entry[system] = {"error": _describe(figures)} if isinstance(figures, Exception) else figures.to_json()
        return entry

    def _systems(
        self,
        spec: Spec,
        store: AsyncStore,
        scratch: ScratchDatabase,
        peer: MlflowPeer | None,
        on_mlflow: AsyncStore | None = None,
    ) -> dict[str, Workload]:
        """The workload of every system measured for ``spec``, asyncstore first (the others read its setup)."""
        from asyncstore.bench.options import workload_class
        from asyncstore.bench.otlp import DirectIngest, MlflowServerIngest, OtlpIngest

        ours = workload_class(spec.kind)(store, self.scale, spec)
        systems: dict[str, Workload] = {"asyncstore": ours}
        for system in spec.systems(peer is not None, self.queue_peers, scratch.backend):
            if system in ("raw", "raw_fk", "raw_insert"):
                from asyncstore.bench.raw import RAW_FK_WORKLOADS, RAW_INSERT_WORKLOADS
                from asyncstore.bench.replay import RAW_WORKLOADS

                tables: dict[str, Mapping[str, Any]] = {
                    "raw": RAW_WORKLOADS, "raw_fk": RAW_FK_WORKLOADS, "raw_insert": RAW_INSERT_WORKLOADS,
                }
                systems[system] = tables[system][spec.kind](scratch, self.scale, spec, ours)
            elif system == "naive":
                from asyncstore.bench.options import NAIVE_WORKLOADS

                systems[system] = NAIVE_WORKLOADS[spec.kind](store, self.scale, spec)
            elif system == "direct":
                systems[system] = DirectIngest(self.uri, self.scale, spec)
            elif system == ON_MLFLOW_SCHEMA and on_mlflow is not None:
                systems[system] = workload_class(spec.kind)(on_mlflow, self.scale, spec)
            elif system == "mlflow" and peer is not None and spec.kind == "otlp_ingest":
                systems[system] = MlflowServerIngest(peer, self.scale, spec)
            elif system == "mlflow" and peer is not None:
                from asyncstore.bench.mlflow_peer import MLFLOW_WORKLOADS

                systems[system] = MLFLOW_WORKLOADS[spec.kind](peer, self.scale)
            elif system in QUEUE_PEERS:
                from asyncstore.bench.queue_peers import QueuePeerJobs

                systems[system] = QueuePeerJobs(system, self.uri, spec.size(self.scale), spec.concurrency)
        for workload in systems.values():
            if isinstance(workload, (OtlpIngest, MlflowServerIngest)):
                workload.note = self.progress.note  # the soak prints its readings
        return systems


def _queue_peers_problem(uri: str | None, peers: Sequence[str]) -> str | None:
    """Why ``--compare procrastinate/pgqueuer`` cannot run here, or None."""
    import importlib.util

    if uri is None or StoreConfig.load(uri).backend is not Backend.POSTGRESQL:
        return f"--compare {' '.join(peers)} runs on PostgreSQL only: give --uri postgresql://..."
    missing = [peer for peer in peers if importlib.util.find_spec(peer) is None]
    if missing:
        return f"--compare {' '.join(missing)} needs the {', '.join(missing)} package: pip install '.[bench]'"
    return None


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc) or ""
    return f"{type(exc).__name__}: {message}".rstrip(": ")


if __name__ == "__main__":  # python -m asyncstore.bench.runner
    sys.exit(main())
