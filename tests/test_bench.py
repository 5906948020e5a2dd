"""`asyncstore bench`: the small run CI does, scratch-database hygiene, and the parts.

The end-to-end test runs ``asyncstore bench --scale small`` on SQLite through the
command line's ``main(argv)`` and checks its JSON for every workload and figure
(presence, types, positive numbers: never timing thresholds). The hygiene tests
run one workload on each backend and check that no scratch database is left
behind, also when a workload fails or the run is interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import os
import re
import signal
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, inspect, select
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore, cli
from asyncstore.bench import database, otlp, plot, report, runner
from asyncstore.bench.measure import (
    Figures,
    Outcome,
    fan_out,
    measure,
    measure_all,
    mixed_load,
    percentile,
)
from asyncstore.bench.options import SCALE_QUERIES
from asyncstore.bench.progress import Progress
from asyncstore.bench.raw import (
    RAW_FK_METRICS,
    RAW_FK_SPANS,
    RAW_METRICS,
    RAW_SPANS,
    METRIC_COLUMNS,
    SPAN_COLUMNS,
    RawMetrics,
    RawSpans,
    clone_table,
)
from asyncstore.bench.data import metric_batch, to_metrics, to_spans
from asyncstore.bench.scale import METRIC_BATCH, SCALES
from asyncstore.bench.workloads import SPEC_BY_NAME, SPECS, STORE_WORKLOADS
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine
from asyncstore.schema import ROW_ID, metrics, spans, trace_info
from tests import dbadmin
from tests.helpers import count_rows, postgresql_only

SMALL = SCALES["small"]


def _only_json(out: Path) -> dict[str, Any]:
    files = list(out.glob("bench-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text(encoding="utf-8"))


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_figures(figures: dict[str, Any], *, latency: bool) -> None:
    assert _positive(figures["throughput"]), figures
    assert len(figures["throughputs"]) == SMALL.repetitions
    assert all(_positive(v) for v in figures["throughputs"])
    assert len(figures["seconds"]) == SMALL.repetitions
    assert all(_positive(v) for v in figures["seconds"])
    assert isinstance(figures["items"], int) and figures["items"] > 0
    assert min(figures["throughputs"]) <= figures["throughput"] <= max(figures["throughputs"])
    if latency:
        assert _positive(figures["p50_ms"]) and _positive(figures["p99_ms"])
        assert figures["p50_ms"] <= figures["p99_ms"]
    else:
        assert "p50_ms" not in figures and "p99_ms" not in figures


def test_small_bench_on_sqlite_reports_every_workload_and_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code = cli.main(["bench", "--scale", "small", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = _only_json(out)

    assert result["failed"] == []
    assert result["backend"] == "sqlite" and result["scale"] == "small"
    assert result["command"] == "asyncstore bench --scale small"
    assert (result["warmup"], result["repetitions"]) == (SMALL.warmup, SMALL.repetitions)
    versions = result["versions"]
    for key in ("python", "sqlalchemy", "asyncstore", "alembic"):
        assert isinstance(versions[key], str) and versions[key], key
    assert versions["database_server"].startswith("SQLite 3.")
    assert versions["drivers"]["aiosqlite"]
    assert "mlflow" not in versions
    machine = result["machine"]
    assert _positive(machine["cpu_count"]) and _positive(machine["memory_bytes"])
    assert isinstance(machine["cpu_model"], str) and isinstance(machine["platform"], str)

    assert list(result["workloads"]) == [spec.name for spec in SPECS]
    for spec in SPECS:
        entry = result["workloads"][spec.name]
        assert entry["unit"] == spec.unit and entry["description"] == spec.description
        assert entry["concurrency"] == spec.concurrency
        assert entry["items_per_repetition"] == spec.size(SMALL) > 0
        _check_figures(entry["asyncstore"], latency=spec.name in ("get_run", "mixed"))
        assert entry["asyncstore"]["items"] == entry["items_per_repetition"]
        assert "mlflow" not in entry and "ratio_mlflow" not in entry
        if spec.raw:
            _check_figures(entry["raw"], latency=spec.name == "get_run")
            assert entry["raw"]["items"] == entry["items_per_repetition"]
            assert entry["ratio_raw"] == round(entry["asyncstore"]["throughput"] / entry["raw"]["throughput"], 2)
        else:
            assert "raw" not in entry and "ratio_raw" not in entry
        if spec.raw_fk:
            _check_figures(entry["raw_fk"], latency=False)
            assert entry["raw_fk"]["items"] == entry["items_per_repetition"]
            assert entry["ratio_raw_fk"] == round(entry["asyncstore"]["throughput"] / entry["raw_fk"]["throughput"], 2)
        else:
            assert "raw_fk" not in entry and "ratio_raw_fk" not in entry
        assert spec.name in printed
    assert "of raw" in printed and "figures:" in printed
    # Reads have raw-driver ceilings too: the same queries replayed by the bare driver.
    for name in ("get_run", "search_runs", "search_traces"):
        entry = result["workloads"][name]
        assert _positive(entry["raw"]["throughput"]) and _positive(entry["ratio_raw"]), name
        row = next(line for line in printed.splitlines() if line.startswith(f"{name} "))
        assert re.search(r"\s\d+%(\s|$)", row), row  # the "of raw" column is filled
    for name in ("log_batch", "log_spans"):
        assert _positive(result["workloads"][name]["ratio_raw_fk"]), name
    assert all("naive" not in entry for entry in result["workloads"].values())  # only with --job-workers
    # mixed: reads and writes of the mixed phase and the reads alone, each with its figures.
    mixed = result["workloads"]["mixed"]
    parts = mixed["asyncstore"]["parts"]
    assert set(parts) == {"reads", "writes", "reads_alone"}
    for figures in parts.values():
        assert _positive(figures["throughput"]) and figures["p50_ms"] <= figures["p99_ms"], figures
    # Reads and writes share the mixed phase's seconds: their rates are in the 4:1 ratio of their calls.
    assert parts["reads"]["throughput"] / parts["writes"]["throughput"] == pytest.approx(4.0)
    assert mixed["read_p99_mixed_over_alone"] == round(parts["reads"]["p99_ms"] / parts["reads_alone"]["p99_ms"], 2)
    assert "reads_alone" in printed and "read_p99_mixed_over_alone" in printed
    assert all(key not in mixed for key in ("writes_x_mlflow", "read_p99_of_mlflow", "write_p99_of_mlflow"))
    # The scratch SQLite file and its temporary directory are gone.
    scratch_file = Path(make_url(result["database"]).database or "")
    assert scratch_file.name == "store.db" and not scratch_file.parent.exists()


def test_extra_options_add_their_workloads_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    argv = [
        "bench", "--workload", "log_batch", "log_spans", "claim_jobs", "--batch-sizes", "500,2000",
        "--job-workers", "2", "--million", "3000", "--search-scale", "600", "--out", str(out),
    ]
    code = cli.main(argv)
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = _only_json(out)
    assert result["failed"] == []
    assert result["command"] == (
        "asyncstore bench --workload log_batch log_spans claim_jobs --scale small --batch-sizes 500,2000 "
        "--job-workers 2 --million 3000 --search-scale 600"
    )
    scale_queries = [f"search_scale/{label}" for label in SCALE_QUERIES]
    assert list(result["workloads"]) == [
        "log_batch@500",  # 2,000 metrics is over log_batch's limit: no log_batch@2000
        "log_spans@500", "log_spans@2000", "claim_jobs@2", "million_spans", *scale_queries,
    ]
    workloads = result["workloads"]
    for name, size in (("log_batch@500", 500), ("log_spans@500", 500), ("log_spans@2000", 2000)):
        entry = workloads[name]
        base = SPEC_BY_NAME[name.split("@")[0]]
        assert entry["items_per_repetition"] == base.size(SMALL)  # the same rows as the plain workload
        assert entry["items_per_repetition"] % size == 0
        for system in ("asyncstore", "raw", "raw_fk"):
            _check_figures(entry[system], latency=False)
            assert entry[system]["items"] == entry["items_per_repetition"]
        assert _positive(entry["ratio_raw"]) and _positive(entry["ratio_raw_fk"])
        assert f"{size:,}" in entry["description"]
    jobs = workloads["claim_jobs@2"]
    assert jobs["concurrency"] == 2 and "Worker at concurrency 2" in jobs["description"]
    latency = jobs["asyncstore"]["extra"]
    assert 0 < latency["start_latency_p50_ms"] <= latency["start_latency_max_ms"]
    for system in ("asyncstore", "raw", "naive"):
        _check_figures(jobs[system], latency=False)
        assert jobs[system]["items"] == SMALL.jobs
    assert _positive(jobs["ratio_raw"])
    # The naive claim loop beside it: every job done, its lost claims counted.
    assert set(jobs["naive"]["extra"]) == {"empty_claims", "lost_claims"}
    assert "lost_claims" in printed
    million = workloads["million_spans"]
    figures = million["asyncstore"]
    assert figures["items"] == million["items_per_repetition"] == 3000 and len(figures["throughputs"]) == 1
    memory = figures["extra"]
    assert set(memory) == {"rss_mb_at_10pct", "rss_mb_end", "rss_mb_max_sampled", "peak_rss_mb"}
    assert all(_positive(v) for v in memory.values())
    assert memory["rss_mb_end"] <= memory["rss_mb_max_sampled"] <= memory["peak_rss_mb"]
    assert "peak_rss_mb" in printed
    for name in scale_queries:
        entry = workloads[name]
        assert "600 runs" in entry["description"]
        _check_figures(entry["asyncstore"], latency=True)
        _check_figures(entry["raw"], latency=True)
        assert _positive(entry["ratio_raw"])


@pytest.mark.parametrize("option", ["--batch-sizes", "--job-workers", "--million", "--search-scale"])
@pytest.mark.parametrize("value", ["0", "x", "-5"])
def test_extra_options_refuse_bad_sizes(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", option, value])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def _leftovers(backend: str, uri: str) -> set[str]:
    if backend == "sqlite":
        return {p.name for p in Path(make_url(uri).database or "").parent.glob(f"{database.NAME_PREFIX}*")}
    if backend == "postgresql":
        rows = asyncio.run(dbadmin._pg("SELECT datname FROM pg_database"))
        return {r["datname"] for r in rows if r["datname"].startswith(database.NAME_PREFIX)}
    rows = asyncio.run(dbadmin._my(["SHOW DATABASES"]))[0]
    return {r[0] for r in rows if r[0].startswith(database.NAME_PREFIX)}


def _server_uri(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'mine.db'}"
    return dbadmin.server_url(backend).render_as_string(hide_password=False)


def test_run_on_a_server_uri_leaves_no_database_behind(backend: str, tmp_path: Path) -> None:
    uri = _server_uri(backend, tmp_path)
    before = _leftovers(backend, uri)
    stream = io.StringIO()
    args = runner.build_parser().parse_args(["--uri", uri, "--workload", "claim_jobs", "--out", str(tmp_path)])
    assert asyncio.run(runner.run_bench(args, stream)) == 0, stream.getvalue()
    result = _only_json(tmp_path)
    name = make_url(result["database"]).database or ""
    assert database.NAME_PREFIX in name  # it ran in a scratch database, not in the one named
    assert result["backend"] == backend and _positive(result["workloads"]["claim_jobs"]["asyncstore"]["throughput"])
    assert _leftovers(backend, uri) == before


class _Boom(Exception):
    pass


@pytest.mark.parametrize("failure", [_Boom, KeyboardInterrupt])
def test_failure_or_interrupt_still_drops_the_scratch_database(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: type[BaseException]
) -> None:
    uri = _server_uri(backend, tmp_path)
    before = _leftovers(backend, uri)
    seen: list[str] = []
    workload = STORE_WORKLOADS["log_batch"]

    async def broken(self: Any, rep: int) -> Outcome:
        now = await asyncio.to_thread(_leftovers, backend, uri)
        seen.append(now.difference(before).pop())  # the scratch database exists while running
        raise failure("stop here")

    monkeypatch.setattr(workload, "run", broken)
    stream = io.StringIO()
    args = runner.build_parser().parse_args(["--uri", uri, "--workload", "log_batch", "--out", str(tmp_path)])
    if failure is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(runner.run_bench(args, stream))
    else:
        assert asyncio.run(runner.run_bench(args, stream)) == runner.EXIT_WORKLOAD_FAILED
        result = _only_json(tmp_path)
        assert result["failed"] == ["log_batch / asyncstore"]
        assert "_Boom: stop here" in result["workloads"]["log_batch"]["asyncstore"]["error"]
        assert _positive(result["workloads"]["log_batch"]["raw"]["throughput"])  # the others still ran
        assert "FAILED" in stream.getvalue()
    assert seen and seen[0].startswith(database.NAME_PREFIX)
    assert _leftovers(backend, uri) == before


@postgresql_only
@pytest.mark.slow
def test_compare_queue_peers_drains_with_procrastinate_and_pgqueuer(backend: str, tmp_path: Path) -> None:
    uri = _server_uri("postgresql", tmp_path)
    before = _leftovers("postgresql", uri)
    stream = io.StringIO()
    args = runner.build_parser().parse_args([
        "--uri", uri, "--workload", "claim_jobs", "--job-workers", "2", "--compare", "procrastinate", "pgqueuer",
        "--out", str(tmp_path),
    ])
    assert asyncio.run(runner.run_bench(args, stream)) == 0, stream.getvalue()
    result = _only_json(tmp_path)
    assert result["command"].endswith("--job-workers 2 --compare procrastinate pgqueuer")
    entry = result["workloads"]["claim_jobs@2"]
    for peer in ("procrastinate", "pgqueuer"):
        _check_figures(entry[peer], latency=False)
        assert entry[peer]["items"] == SMALL.jobs and entry[peer]["extra"]["start_latency_p50_ms"] > 0
        assert entry[f"ratio_{peer}"] == round(entry["asyncstore"]["throughput"] / entry[peer]["throughput"], 2)
        assert result["versions"][peer]
        assert f"{peer}: " in stream.getvalue()
    assert _leftovers("postgresql", uri) == before  # the peers' scratch databases too


def test_compare_queue_peers_elsewhere_than_postgresql_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["bench", "--uri", f"sqlite:///{tmp_path / 'x.db'}", "--compare", "pgqueuer", "--out", str(tmp_path)])
    assert code == 2 and "runs on PostgreSQL only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_compare_mlflow_without_mlflow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    code = cli.main(["bench", "--compare", "mlflow", "--out", str(tmp_path)])
    assert code == 2
    assert "pip install 'asyncstore[bench]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing ran


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = runner.main(["--plot", "--out", str(tmp_path)])
    assert code == 2
    assert "pip install 'asyncstore[bench]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unknown_workload_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--workload", "nope"])
    assert info.value.code == 2
    assert "create_runs" in capsys.readouterr().err  # the choices are listed


def test_in_memory_sqlite_is_refused_with_advice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--uri", "sqlite://", "--out", str(tmp_path)]) == 2
    assert "omit --uri" in capsys.readouterr().err


# --- the parts -----------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


class _Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def setup(self) -> None:
        self.calls.append("setup")

    async def prepare(self, rep: int) -> None:
        self.calls.append(f"prepare {rep}")

    async def run(self, rep: int) -> Outcome:
        self.calls.append(f"run {rep}")
        await asyncio.sleep(0.001 * (rep + 1))
        return Outcome(10, latencies=[0.001 * (rep + 1)] * 3, extra={"lost": 1})

    async def teardown(self) -> None:
        self.calls.append("teardown")


async def test_measure_discards_warmup_and_reports_the_median() -> None:
    workload = _Counting()
    seen: list[tuple[int, float | None]] = []
    results = await measure_all(
        {"x": workload}, warmup=1, repetitions=3, on_repetition=lambda system, r, v: seen.append((r, v))
    )
    figures = results["x"]
    assert isinstance(figures, Figures)
    assert workload.calls == [
        "setup", "prepare 0", "run 0", "prepare 1", "run 1", "prepare 2", "run 2", "prepare 3", "run 3", "teardown"
    ]
    assert [r for r, _ in seen] == [0, 1, 2, 3] and seen[0][1] is None and all(v for _, v in seen[1:])
    assert len(figures.throughputs) == 3 and figures.throughput == sorted(figures.throughputs)[1]
    assert figures.items == 10 and figures.extra == {"lost": 3}
    assert figures.p50_ms == pytest.approx(3.0)  # the median repetition (rep 2) had 3 ms calls
    assert set(figures.to_json()) >= {"throughput", "throughputs", "seconds", "items", "p50_ms", "p99_ms", "extra"}
    assert figures.setup_seconds is not None and figures.setup_seconds >= 0


class _Failing(_Counting):
    async def run(self, rep: int) -> Outcome:
        self.calls.append(f"run {rep}")
        if rep == 1:
            raise _Boom("rep 1")
        return Outcome(1)


async def test_measure_all_interleaves_systems_and_isolates_a_failure() -> None:
    log: list[str] = []
    good, bad = _Counting(), _Failing()
    failures: list[str] = []
    results = await measure_all(
        {"good": good, "bad": bad}, warmup=0, repetitions=3,
        on_repetition=lambda system, rep, rate: log.append(f"{system} {rep}"),
        on_failure=lambda system, exc: failures.append(f"{system}: {exc}"),
    )
    assert log == ["good 0", "bad 0", "good 1", "good 2"]  # interleaved; bad stopped at rep 1
    assert failures == ["bad: rep 1"]
    assert isinstance(results["bad"], _Boom) and isinstance(results["good"], Figures)
    assert bad.calls[-1] == "teardown" and good.calls[-1] == "teardown"
    with pytest.raises(_Boom):
        await measure(_Failing(), warmup=0, repetitions=2)


async def test_fan_out_makes_every_call_once_and_cancels_on_failure() -> None:
    seen: list[int] = []
    running = 0
    peak = 0

    async def call(i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        seen.append(i)
        running -= 1

    await fan_out(50, 4, call)
    assert sorted(seen) == list(range(50)) and peak == 4

    async def failing(i: int) -> None:
        if i == 3:
            raise _Boom("call 3")
        await asyncio.sleep(0.01)

    with pytest.raises(_Boom):
        await fan_out(100, 4, failing)


def test_progress_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream)
    assert progress.tty is False  # StringIO is not a TTY
    progress.status("working")  # not shown in plain mode
    progress.step("first done")
    progress.step("second done")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("[  1/2]") and lines[1].endswith("second done")
    assert "\r" not in stream.getvalue()


def test_progress_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(total=4, stream=stream, tty=True)
    progress.step("one")
    progress.step("two")
    progress.note("a note")
    progress.close()
    text = stream.getvalue()
    assert "\r[############............] 2/4" in text
    assert "a note\n" in text and text.count("\n") == 1


def _result(**workloads: dict[str, Any]) -> dict[str, Any]:
    return {
        "backend": "sqlite", "scale": "small", "repetitions": 3, "warmup": 1, "date": "2026-01-01T00:00:00+00:00",
        "versions": {"database_server": "SQLite 3.45.0"}, "workloads": workloads,
    }


def test_ratios_table_and_plot_series() -> None:
    result = _result(
        log_spans={"unit": "spans/s", "description": "d1", "asyncstore": {"throughput": 900.0},
                   "mlflow": {"throughput": 100.0}, "raw": {"throughput": 1000.0},
                   "asyncstore_on_mlflow_schema": {"throughput": 450.0}},
        get_run={"unit": "calls/s", "description": "d2", "asyncstore": {"throughput": 50.0, "p50_ms": 1.5, "p99_ms": 9.0},
                 "mlflow": {"error": "MlflowException: x"}},
    )
    report.add_ratios(result["workloads"])
    assert result["workloads"]["log_spans"]["ratio_mlflow"] == 9.0
    assert result["workloads"]["log_spans"]["ratio_raw"] == 0.9
    assert result["workloads"]["log_spans"]["ratio_mlflow_same_tables"] == 4.5
    assert "ratio_mlflow" not in result["workloads"]["get_run"]
    text = report.table(result)
    assert "9.00x" in text and "90%" in text and "p50 1.5 / p99 9.0 ms" in text and "FAILED" in text
    assert "asyncstore on MLflow's tables" in text and "4.50x" in text
    assert plot.series(result) == {
        "asyncstore": [900.0, 50.0], "asyncstore_on_mlflow_schema": [450.0, None], "mlflow": [100.0, None],
        "raw": [1000.0, None],
    }


def test_mixed_goals_are_ratios_of_the_parts_of_both_systems() -> None:
    def parts(reads_p99: float, writes: float, writes_p99: float, alone_p99: float) -> dict[str, Any]:
        return {"throughput": 10.0, "parts": {
            "reads": {"throughput": 4 * writes, "p50_ms": 1.0, "p99_ms": reads_p99},
            "writes": {"throughput": writes, "p50_ms": 1.0, "p99_ms": writes_p99},
            "reads_alone": {"throughput": 5 * writes, "p50_ms": 1.0, "p99_ms": alone_p99},
        }}

    result = _result(mixed={"unit": "calls/s", "description": "d", "asyncstore": parts(30.0, 120.0, 50.0, 20.0),
                            "mlflow": parts(300.0, 20.0, 400.0, 250.0)})
    report.add_ratios(result["workloads"])
    entry = result["workloads"]["mixed"]
    assert (entry["read_p99_mixed_over_alone"], entry["writes_x_mlflow"]) == (1.5, 6.0)
    assert (entry["read_p99_of_mlflow"], entry["write_p99_of_mlflow"]) == (0.1, 0.12)
    text = report.table(result)
    assert "writes 120/s (p50 1.0 / p99 50.0 ms)" in text and "writes_x_mlflow 6.00" in text


async def test_mixed_load_makes_the_reads_alone_then_one_write_in_five() -> None:
    made: list[tuple[str, int]] = []

    async def call(kind: str, i: int) -> None:
        made.append((kind, i))
        await asyncio.sleep(0)

    outcome = await mixed_load(
        lambda i: call("read", i), lambda i: call("write", i), calls=50, concurrency=4, write_every=5
    )
    alone, mixed = made[:40], made[40:]
    assert alone == [("read", i) for i in range(40)]
    assert sorted(i for kind, i in mixed if kind == "write") == list(range(4, 50, 5))
    assert sorted(i for kind, i in mixed if kind == "read") == [i for i in range(50) if i % 5 != 4]
    assert outcome.items == 50 and outcome.seconds is not None
    assert {name: part.calls for name, part in outcome.parts.items()} == {"reads": 40, "writes": 10, "reads_alone": 40}
    assert sorted(outcome.latencies or []) == sorted(outcome.parts["reads"].latencies + outcome.parts["writes"].latencies)


def test_json_file_name_and_content(tmp_path: Path) -> None:
    result = _result(x={"unit": "u", "description": "d", "asyncstore": {"throughput": 1.0}})
    path = report.write_json(result, tmp_path / "new")
    assert path.name == "bench-sqlite-20260101T000000Z.json"
    assert json.loads(path.read_text()) == result


def test_raw_tables_match_the_store_tables_without_foreign_keys() -> None:
    for raw, source in ((RAW_METRICS, metrics), (RAW_SPANS, spans)):
        assert [(c.name, repr(c.type), c.nullable) for c in raw.columns] == [
            (c.name, repr(c.type), c.nullable) for c in source.columns
        ]
        assert raw.primary_key.columns.keys() == source.primary_key.columns.keys()
        assert sorted(tuple(c.name for c in i.columns) for i in raw.indexes) == sorted(
            tuple(c.name for c in i.columns) for i in source.indexes
        )
        assert not raw.foreign_keys and source.foreign_keys
    assert RAW_SPANS.c.duration_ns.computed is not None
    copy = clone_table(metrics, "other", MetaData())
    assert {i.name for i in copy.indexes}.isdisjoint({i.name for i in RAW_METRICS.indexes})


async def test_raw_span_tables_are_stored_as_the_store_table_is(backend: str, db_uri: str) -> None:
    """On MySQL/MariaDB the raw spans tables are keyed by the store table's invisible row
    id (schema.ROW_ID), so that "raw, same table" writes into the same layout."""
    engine = create_engine(StoreConfig.load(db_uri))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: RAW_SPANS.create(sync))
            key = await conn.run_sync(lambda sync: inspect(sync).get_pk_constraint(RAW_SPANS.name)["constrained_columns"])
            unique = await conn.run_sync(lambda sync: inspect(sync).get_indexes(RAW_SPANS.name))
    finally:
        await engine.dispose()
    if backend == "mysql":
        assert key == [ROW_ID]
        assert [(i["name"], i["column_names"]) for i in unique if i["unique"]] == [
            (f"{RAW_SPANS.name}_pk", ["trace_id", "span_id"])
        ]
    else:
        assert key == ["trace_id", "span_id"]


async def test_span_ceilings_write_the_rows_the_store_writes() -> None:
    """The raw span ceilings write, for the same generated spans, the very rows (columns,
    content bytes, order) that log_spans writes, so "of raw" compares equal work."""
    scratch = await database.create_scratch(None, "same-rows")
    try:
        async with AsyncStore.open(scratch.uri) as store:
            experiment = await store.experiments.create("same-rows")
            raw = RawSpans(scratch, SMALL, SPEC_BY_NAME["log_spans"], None)  # type: ignore[arg-type]
            await raw.prepare(0)
            assert await store.spans.log_spans(experiment, to_spans(raw.rows[0])) == len(raw.batches[0])
            query = select(*(spans.c[c] for c in SPAN_COLUMNS)).order_by(spans.c.trace_id, spans.c.span_id)
            async with store.engine.connect() as conn:
                stored = [tuple(row) for row in await conn.execute(query)]
        without_experiment = lambda rows: [(r[0], *r[2:]) for r in rows]  # noqa: E731
        assert without_experiment(raw.batches[0]) == without_experiment(stored)
    finally:
        await scratch.drop()


async def test_metric_ceilings_write_the_rows_the_store_writes() -> None:
    """Likewise for log_batch: the raw metric ceilings write the rows log_batch writes,
    in its order (sorted by primary key)."""
    scratch = await database.create_scratch(None, "same-metrics")
    try:
        async with AsyncStore.open(scratch.uri) as store:
            experiment = await store.experiments.create("same-metrics")
            run = await store.runs.create(experiment)
            raw = RawMetrics(scratch, SMALL, SPEC_BY_NAME["log_batch"], None)  # type: ignore[arg-type]
            raw.run_uuid = run.info.run_id
            await raw.prepare(0)
            generated = metric_batch(0, 0, len(raw.batches), size=METRIC_BATCH)
            await store.runs.log_batch(run.info.run_id, metrics=to_metrics(generated))
            m = metrics.c
            query = select(*(m[c] for c in METRIC_COLUMNS)).order_by(m.key, m.timestamp, m.step, m.value)
            async with store.engine.connect() as conn:
                stored = [tuple(row) for row in await conn.execute(query)]
        assert raw.batches[0] == stored
    finally:
        await scratch.drop()


def test_figures_json_drops_missing_values() -> None:
    figures = Figures(throughput=2.0, throughputs=[2.0], seconds=[1.0], items=2)
    assert figures.to_json() == {"throughput": 2.0, "throughputs": [2.0], "seconds": [1.0], "items": 2}


def test_identical_raw_tables_keep_the_store_tables_foreign_keys() -> None:
    for raw, source in ((RAW_FK_METRICS, metrics), (RAW_FK_SPANS, spans)):
        assert [(c.name, repr(c.type), c.nullable) for c in raw.columns] == [
            (c.name, repr(c.type), c.nullable) for c in source.columns
        ]
        assert raw.primary_key.columns.keys() == source.primary_key.columns.keys()
        assert sorted(fk.target_fullname for fk in raw.foreign_keys) == sorted(
            fk.target_fullname for fk in source.foreign_keys
        )


# --- otlp_ingest and otlp_soak: OTLP/HTTP into asyncstore serve (and MLflow's server) ---------

TINY_OTLP = dataclasses.replace(SMALL, span_batches=1, repetitions=2)
"""1,000 spans (20 requests of 50) per repetition, one warm-up and two recorded."""


@pytest.fixture
def started_servers(monkeypatch: pytest.MonkeyPatch) -> list[otlp.ServerProcess]:
    """Every server process the OTLP workloads start during the test."""
    started: list[otlp.ServerProcess] = []
    start = otlp.ServerProcess.start

    async def recording(self: otlp.ServerProcess, timeout: float = otlp.START_TIMEOUT) -> None:
        started.append(self)
        await start(self, timeout)

    monkeypatch.setattr(otlp.ServerProcess, "start", recording)
    return started


def _check_otlp_system(entry: dict[str, Any], system: str, *, server: bool) -> None:
    figures = entry[system]
    assert len(figures["throughputs"]) == TINY_OTLP.repetitions and _positive(figures["throughput"]), figures
    assert figures["items"] == entry["items_per_repetition"] == 1000
    assert figures["p50_ms"] <= figures["p99_ms"]
    # The workload counted the experiment's spans in the database after each repetition.
    assert figures["extra"]["spans_stored"] == 1000 * TINY_OTLP.repetitions
    if server:
        memory = figures["extra"]
        assert _positive(memory["rss_mb_start"]) and _positive(memory["rss_mb_end"])
        assert [s["rep"] for s in figures["samples"]] == [1, 1, 2, 2]  # start and end of each recorded one
        assert all(_positive(s["rss_mb"]) for s in figures["samples"])


def test_otlp_ingest_is_opt_in_and_reports_http_over_direct(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_servers: list[otlp.ServerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "otlp_ingest" not in {spec.name for spec in SPECS}  # not in the default run
    monkeypatch.setitem(SCALES, "small", TINY_OTLP)
    out = tmp_path / "results"
    code = cli.main(["bench", "--workload", "otlp_ingest", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = _only_json(out)
    assert result["failed"] == [] and list(result["workloads"]) == ["otlp_ingest"]
    entry = result["workloads"]["otlp_ingest"]
    assert entry["concurrency"] == otlp.OTLP_EXPORTERS and "mlflow" not in entry
    _check_otlp_system(entry, "asyncstore", server=True)
    _check_otlp_system(entry, "direct", server=False)
    # Group commit: fewer transactions than the 40 recorded requests, and time spent in them.
    assert 1 <= entry["asyncstore"]["extra"]["transactions"] <= 40
    assert _positive(entry["asyncstore"]["extra"]["write_s"])
    assert entry["ratio_direct"] == round(entry["asyncstore"]["throughput"] / entry["direct"]["throughput"], 2) > 0
    assert "of direct" in printed and "rss_mb_end" in printed
    # One asyncstore serve, started on a free port and stopped by SIGTERM.
    assert [s.name for s in started_servers] == ["asyncstore serve"]
    assert started_servers[0].stopped() and started_servers[0].process is not None
    assert started_servers[0].process.returncode in (0, -signal.SIGTERM)


async def test_otlp_ingest_stores_every_span_it_sends(store: AsyncStore, backend: str, tmp_path: Path) -> None:
    http = otlp.OtlpIngest(store, TINY_OTLP)
    direct = otlp.DirectIngest(_server_uri(backend, tmp_path), TINY_OTLP)  # a database of its own
    for workload in (http, direct):
        await workload.setup()
    try:
        assert direct.scratch is not None and direct.store is not store
        for rep in range(2):
            for workload in (http, direct):
                await workload.prepare(rep)
                outcome = await workload.run(rep)
                assert outcome.items == 1000 and outcome.latencies and len(outcome.latencies) == 20
        for workload in (http, direct):
            experiment = int(workload.experiment_id)
            assert await count_rows(workload.store, spans, spans.c.experiment_id == experiment) == 2000
            # Whole traces: 5 of 10 spans per request.
            assert await count_rows(workload.store, trace_info, trace_info.c.experiment_id == experiment) == 200
        # serve's database holds serve's spans alone
        assert await count_rows(store, spans) == 2000
    finally:
        for workload in (http, direct):
            await workload.teardown()
    assert direct.scratch.dropped
    server = http.server
    assert server is not None and server.stopped()
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM)
    assert not os.path.exists(server.workdir)


@pytest.mark.slow
def test_otlp_ingest_against_mlflows_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_servers: list[otlp.ServerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(SCALES, "small", TINY_OTLP)
    out = tmp_path / "results"
    code = cli.main(["bench", "--workload", "otlp_ingest", "--compare", "mlflow", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    entry = _only_json(out)["workloads"]["otlp_ingest"]
    for system in ("asyncstore", "asyncstore_on_mlflow_schema", "mlflow"):
        _check_otlp_system(entry, system, server=True)  # MLflow's database holds every span too
    _check_otlp_system(entry, "direct", server=False)
    assert entry["ratio_mlflow"] == round(entry["asyncstore"]["throughput"] / entry["mlflow"]["throughput"], 2) > 0
    assert _positive(entry["ratio_mlflow_same_tables"]) and _positive(entry["ratio_direct"])
    assert "x MLflow" in printed and "of direct" in printed
    names = [s.name for s in started_servers]
    assert sorted(names) == ["asyncstore serve", "asyncstore serve", "mlflow server"]
    mlflow_server = started_servers[names.index("mlflow server")]
    assert len(mlflow_server.processes) >= 2  # the `mlflow server` command and its uvicorn worker
    assert all(server.stopped() for server in started_servers)


def test_otlp_soak_samples_memory_and_throughput(
    tmp_path: Path, started_servers: list[otlp.ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code = cli.main(["bench", "--workload", "otlp_soak", "--otlp-minutes", "0.05", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = _only_json(out)
    assert result["command"] == "asyncstore bench --workload otlp_soak --scale small --otlp-minutes 0.05"
    entry = result["workloads"]["otlp_soak"]
    assert set(entry) >= {"asyncstore"} and "direct" not in entry and "0.05 minutes" in entry["description"]
    figures = entry["asyncstore"]
    assert len(figures["throughputs"]) == 1 and _positive(figures["throughput"])
    assert figures["items"] == figures["extra"]["spans_stored"] > 0
    assert 2.5 <= figures["seconds"][0] < 30
    samples = figures["samples"]
    assert len(samples) >= 5 and samples[0]["t_s"] == 0 and samples[-1]["spans"] == figures["items"]
    assert all(_positive(s["rss_mb"]) for s in samples) and any(_positive(s["spans_per_s"]) for s in samples)
    memory = figures["extra"]
    assert memory["rss_mb_start"] == samples[0]["rss_mb"] and memory["rss_mb_end"] == samples[-1]["rss_mb"]
    assert memory["rss_mb_max"] == max(s["rss_mb"] for s in samples) and _positive(memory["rss_mb_at_10pct"])
    assert printed.count("server RSS") == len(samples)  # each reading printed as it is taken
    assert len(started_servers) == 1 and started_servers[0].stopped()


@pytest.mark.parametrize("value", ["0", "x", "-1", "inf"])
def test_otlp_minutes_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--otlp-minutes", value])
    assert info.value.code == 2
    assert "argument --otlp-minutes: expected a positive number" in capsys.readouterr().err


def test_otlp_workloads_without_their_packages_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(otlp, "missing_packages", lambda: ["aiohttp"])
    assert cli.main(["bench", "--workload", "otlp_ingest", "--out", str(tmp_path)]) == 2
    assert "pip install 'asyncstore[bench]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_direct_ratio_and_columns() -> None:
    result = _result(otlp_ingest={"unit": "spans/s", "description": "d", "asyncstore": {"throughput": 600.0},
                                  "direct": {"throughput": 800.0}})
    report.add_ratios(result["workloads"])
    assert result["workloads"]["otlp_ingest"]["ratio_direct"] == 0.75
    text = report.table(result)
    assert "of direct" in text and "75%" in text and "direct (no HTTP)" in text
    assert "of direct" not in report.table(_result(x={"unit": "u", "description": "d", "asyncstore": {"throughput": 1.0}}))


async def test_exporters_send_again_after_429_and_503_as_otlp_exporters_do() -> None:
    """The bench's exporters retry a request answered 429 or 503 (MLflow's server answers
    503 to a deadlock on MariaDB), counting the retries; any other answer, or a 503
    past the last retry, fails the repetition."""
    from aiohttp import web

    answers: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == otlp.PROTOBUF and request.headers[otlp.EXPERIMENT_HEADER] == "1"
        status = answers.pop(0)
        return web.Response(status=status, headers={"Retry-After": "0"} if status != 200 else None, text=str(status))

    class Exporter(otlp._ServerIngest):
        experiment_id = "1"

    app = web.Application()
    app.router.add_post("/v1/traces", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = otlp.free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    exporter = Exporter()
    exporter.server = types.SimpleNamespace(url=f"http://127.0.0.1:{port}", name="test server")  # type: ignore[assignment]
    try:
        async with otlp._exporters(2) as client:
            await _retries(exporter, client, answers)
    finally:
        await runner.cleanup()
    assert otlp._retry_wait(None, 0) == otlp.RETRY_FIRST_WAIT
    assert otlp._retry_wait(None, 10) == otlp.RETRY_MAX_WAIT
    assert otlp._retry_wait("0.5", 3) == 0.5 and otlp._retry_wait("Wed, 21 Oct 2015 07:28:00 GMT", 1) == 0.2


async def _retries(exporter: Any, client: Any, answers: list[int]) -> None:
    """The exporter against a server answering ``answers`` in turn."""
    answers[:] = [503, 429, 200]
    await exporter._post(client, b"")
    assert (exporter.sent, exporter.retries, answers) == (otlp.OTLP_REQUEST_SPANS, 2, [])
    answers[:] = [400, 200]
    with pytest.raises(RuntimeError, match="answered 400"):
        await exporter._post(client, b"")
    assert answers == [200] and exporter.retries == 2
    answers[:] = [503] * (otlp.RETRIES + 1) + [200]
    with pytest.raises(RuntimeError, match="answered 503"):
        await exporter._post(client, b"")
    assert answers == [200] and exporter.retries == 2 + otlp.RETRIES
    assert exporter.sent == otlp.OTLP_REQUEST_SPANS


async def test_a_server_that_exits_at_start_is_reported_with_its_output() -> None:
    command = [sys.executable, "-c", "import sys; print('no database here'); sys.exit(3)"]
    server = otlp.ServerProcess("broken server", command, otlp.free_port())
    with pytest.raises(RuntimeError, match="broken server exited with 3: no database here"):
        await server.start()
    assert server.stopped() and not os.path.exists(server.workdir)
