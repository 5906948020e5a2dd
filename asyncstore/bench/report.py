"""The results: versions, machine, the printed table and the JSON file.

The JSON file holds every figure of a run (per system, per repetition), the
versions (Python, SQLAlchemy, asyncstore, drivers, database server, MLflow) and
the machine (CPU count and model, memory), so that results can be compared later.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asyncstore.config import Backend
from asyncstore.bench.queue_peers import QUEUE_PEERS
from asyncstore.bench.workloads import ON_MLFLOW_SCHEMA

SYSTEMS = ("asyncstore", "mlflow", "raw")
"""The systems a workload can be measured on, in table order."""

_DRIVERS = {Backend.SQLITE: ("aiosqlite",), Backend.POSTGRESQL: ("asyncpg",), Backend.MYSQL: ("aiomysql", "PyMySQL")}
_MLFLOW_DRIVERS = {Backend.SQLITE: (), Backend.POSTGRESQL: ("psycopg2-binary", "psycopg2"), Backend.MYSQL: ("PyMySQL",)}


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(backend: Backend, server_version: str, *, mlflow: bool, peers: Sequence[str] = ()) -> dict[str, Any]:
    """Versions of everything that shapes the figures (``peers``: the job queues compared)."""
    drivers = {name: package_version(name) for name in _DRIVERS[backend]}
    if backend is Backend.SQLITE:
        drivers["sqlite3 library"] = sqlite3.sqlite_version
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "asyncstore": package_version("asyncstore"),
        "sqlalchemy": package_version("SQLAlchemy"),
        "alembic": package_version("alembic"),
        "drivers": drivers,
        "database_server": server_version,
        # Optional speed-ups asyncstore uses when installed (span content JSON).
        "optional": {name: package_version(name) for name in ("orjson",) if package_version(name)},
    }
    for peer in peers:
        found[peer] = package_version(peer)
    if mlflow:
        found["mlflow"] = package_version("mlflow")
        found["mlflow_drivers"] = {
            name: package_version(name) for name in _MLFLOW_DRIVERS[backend] if package_version(name)
        }
    return found


def machine() -> dict[str, Any]:
    """CPU count and model, memory and operating system of this machine."""
    return {
        "cpu_count": os.cpu_count() or 1,
        "cpu_model": _cpu_model(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        import psutil  # optional: in the bench and test extras

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not on this platform
        return 0


def now_utc() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded to 2 decimals, None when either is missing or 0."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def add_ratios(workloads: Mapping[str, dict[str, Any]]) -> None:
    """Set ``ratio_<peer>`` (asyncstore / peer) in place for MLflow and the raw ceilings.

    ``ratio_raw`` is the fraction of the bare-table (or bare-query) ceiling,
    ``ratio_raw_fk`` of the identical-table one (foreign keys included),
    ``ratio_direct`` of the OTLP workload's in-process ceiling (the same spans written
    by ``log_spans`` without HTTP).
    ``ratio_mlflow_same_tables`` is asyncstore on MLflow's own tables over MLflow;
    ``ratio_procrastinate`` and ``ratio_pgqueuer`` asyncstore's worker over theirs.
    """
    for entry in workloads.values():
        ours = _throughput(entry.get("asyncstore"))
        for peer in ("mlflow", "raw", "raw_fk", "raw_insert", "direct", *QUEUE_PEERS):
            value = ratio(ours, _throughput(entry.get(peer)))
            if value is not None:
                entry[f"ratio_{peer}"] = value
        same = ratio(_throughput(entry.get(ON_MLFLOW_SCHEMA)), _throughput(entry.get("mlflow")))
        if same is not None:
            entry["ratio_mlflow_same_tables"] = same
        entry.update(_part_ratios(entry))


PART_RATIOS: dict[str, tuple[str, str, str, str, str]] = {
    # name: (system, part, figure) over (system, part, figure), the mixed workload's goals.
    "read_p99_mixed_over_alone": ("asyncstore", "reads", "p99_ms", "reads_alone", "asyncstore"),
    "writes_x_mlflow": ("asyncstore", "writes", "throughput", "writes", "mlflow"),
    "read_p99_of_mlflow": ("asyncstore", "reads", "p99_ms", "reads", "mlflow"),
    "write_p99_of_mlflow": ("asyncstore", "writes", "p99_ms", "writes", "mlflow"),
}
"""Ratios between the parts (kinds of call) of a workload that reports them (``mixed``):
name -> (system, part, figure, other part, other system); the figure is the same on both sides."""


def _part_ratios(entry: Mapping[str, Any]) -> dict[str, float]:
    found = {}
    for name, (system, part, figure, other_part, other_system) in PART_RATIOS.items():
        mine = _part(entry.get(system), part, figure)
        theirs = _part(entry.get(other_system), other_part, figure)
        value = ratio(mine, theirs)
        if value is not None:
            found[name] = value
    return found


def _part(figures: Any, part: str, figure: str) -> float | None:
    if not isinstance(figures, Mapping):
        return None
    value = figures.get("parts", {}).get(part, {}).get(figure)
    return float(value) if isinstance(value, (int, float)) else None


def _throughput(figures: Any) -> float | None:
    if isinstance(figures, Mapping) and isinstance(figures.get("throughput"), (int, float)):
        return float(figures["throughput"])
    return None


def format_rate(value: float) -> str:
    """A throughput for people: ``1,234``, ``56.7``, ``123k``."""
    if value >= 100_000:
        return f"{value / 1000:,.0f}k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _cell(figures: Any) -> str:
    rate = _throughput(figures)
    if rate is None:
        if isinstance(figures, Mapping) and "error" in figures:
            return "FAILED (see JSON)"
        return str(figures.get("unsupported", "n/a")) if isinstance(figures, Mapping) else "-"
    text = format_rate(rate)
    if isinstance(figures, Mapping) and "p50_ms" in figures:
        text += f" (p50 {figures['p50_ms']:.1f} / p99 {figures['p99_ms']:.1f} ms)"
    return text


def table(result: Mapping[str, Any]) -> str:
    """The results as a fixed-width text table (one row per workload)."""
    workloads: Mapping[str, Mapping[str, Any]] = result["workloads"]
    compare = any("mlflow" in w for w in workloads.values())
    fk = any("raw_fk" in w for w in workloads.values())
    direct = any("direct" in w for w in workloads.values())
    multirow = any("raw_insert" in w for w in workloads.values())
    header = ["workload", "unit", "asyncstore"]
    if compare:
        header += ["MLflow", "x MLflow", "asyncstore on MLflow's tables", "x MLflow"]
    header += ["raw driver", "of raw"]
    if fk:
        header += ["raw, same table", "of same"]
    if multirow:
        header += ["raw, multi-row INSERT", "of it"]
    if direct:
        header += ["direct (no HTTP)", "of direct"]
    rows: list[Sequence[str]] = [header]
    for name, entry in workloads.items():
        row = [name, entry["unit"], _cell(entry.get("asyncstore"))]
        if compare:
            mlflow = entry.get("mlflow")
            row += [_cell(mlflow) if mlflow is not None else "-"]
            row += [f"{entry['ratio_mlflow']:.2f}x" if "ratio_mlflow" in entry else "-"]
            same = entry.get(ON_MLFLOW_SCHEMA)
            row += [_cell(same) if same is not None else "-"]
            row += [f"{entry['ratio_mlflow_same_tables']:.2f}x" if "ratio_mlflow_same_tables" in entry else "-"]
        raw = entry.get("raw")
        row += [_cell(raw) if raw is not None else "-"]
        row += [f"{entry['ratio_raw']:.0%}" if "ratio_raw" in entry else "-"]
        if fk:
            same = entry.get("raw_fk")
            row += [_cell(same) if same is not None else "-"]
            row += [f"{entry['ratio_raw_fk']:.0%}" if "ratio_raw_fk" in entry else "-"]
        if multirow:
            row += [_cell(entry["raw_insert"]) if "raw_insert" in entry else "-"]
            row += [f"{entry['ratio_raw_insert']:.0%}" if "ratio_raw_insert" in entry else "-"]
        if direct:
            row += [_cell(entry["direct"]) if "direct" in entry else "-"]
            row += [f"{entry['ratio_direct']:.0%}" if "ratio_direct" in entry else "-"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (
        f"asyncstore bench - {result['backend']} ({result['versions']['database_server']}), "
        f"scale {result['scale']}, median of {result['repetitions']} repetitions after "
        f"{result['warmup']} warm-up"
    )
    notes = [f"  {name}: {entry['description']}{_extras(entry)}" for name, entry in workloads.items()]
    ceilings = (
        "asyncstore on MLflow's tables: a database MLflow's migrations made, its indexes only; "
        "raw driver: the same rows written (bare table, no foreign keys) or the same queries run by the bare "
        "driver; raw, same table: an identical table, foreign keys included"
    )
    if multirow:
        ceilings += (
            "; on MySQL/MariaDB the raw ceilings are LOAD DATA LOCAL INFILE (streamed), and raw, multi-row "
            "INSERT is aiomysql's executemany into the bare table"
        )
    if direct:
        ceilings += (
            "; direct (no HTTP): the OTLP requests' spans written by store.spans.log_spans in the bench's "
            "process, same calls and concurrency, into a database of its own"
        )
    return "\n".join([title, "", *lines, "", "throughput per second; " + ceilings + "; workloads:", *notes])


def _extras(entry: Mapping[str, Any]) -> str:
    """The counters (lost claims, memory) and kinds of call of a workload's systems for its footnote."""
    parts = []
    for system, figures in entry.items():
        if isinstance(figures, Mapping) and figures.get("extra"):
            counters = ", ".join(f"{k} {v:,.1f}".replace(".0 ", " ").removesuffix(".0")
                                 for k, v in figures["extra"].items())
            beside = system in ("naive", *QUEUE_PEERS)  # systems with no column of their own
            throughput = f"{format_rate(figures['throughput'])} {entry['unit']}, " if beside else ""
            ratio_to = f", asyncstore {entry[f'ratio_{system}']:.2f}x" if f"ratio_{system}" in entry else ""
            parts.append(f"{system}: {throughput}{counters}{ratio_to}")
        if isinstance(figures, Mapping) and figures.get("parts"):
            kinds = ", ".join(
                f"{name} {format_rate(f['throughput'])}/s (p50 {f['p50_ms']:.1f} / p99 {f['p99_ms']:.1f} ms)"
                for name, f in figures["parts"].items()
            )
            parts.append(f"{system}: {kinds}")
    ratios = [f"{name} {entry[name]:.2f}" for name in PART_RATIOS if name in entry]
    if ratios:
        parts.append(", ".join(ratios))
    return f" [{'; '.join(parts)}]" if parts else ""


def write_json(result: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``bench-<backend>-<timestamp>.json`` into ``out_dir`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = str(result["date"]).replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out_dir / f"bench-{result['backend']}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path
