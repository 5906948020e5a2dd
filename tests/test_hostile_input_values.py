"""Hostile values: 4-byte UTF-8, case- and space-twins, oversized, wrong types, NaN, 5 MB.

The promise for every case: the value is stored and read back exactly, or the call is
refused with INVALID_PARAMETER before anything is written (the rows of every table are
counted before and after, and the rest of a refused batch is absent too). Every case
runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import func, select

from asyncstore import AsyncStore, InvalidParameter, NotFound
from asyncstore.entities import Metric, Param, RunTag, Span, SpanEvent, SpanStatus
from asyncstore.schema import metadata

EMOJI = "😀🚀🧪𝔘𝔫𝔦 naïve Ωμέγα 中文 עברית e\u0301 \u200b ﷽"
"""4-byte UTF-8 (emoji, mathematical letters), combining marks, RTL, zero-width space."""
LETTERS = "naïve_Ωμέγα_中文"
"""Non-ASCII letters: allowed in metric, param and tag keys (MLflow's \\w rule)."""
T0_NS = 1_700_000_000_000_000_000


async def _counts(store: AsyncStore) -> dict[str, int]:
    async def read(conn):  # type: ignore[no-untyped-def]
        return {t.name: int(await conn.scalar(select(func.count()).select_from(t))) for t in metadata.sorted_tables}

    return await store.uow.run(read, write=False)


async def _refused(store: AsyncStore, call: Any) -> InvalidParameter:
    """Assert ``call`` raises INVALID_PARAMETER and leaves every table as it was."""
    before = await _counts(store)
    with pytest.raises(InvalidParameter) as info:
        await call
    assert await _counts(store) == before
    return info.value


async def test_four_byte_utf8_in_every_text_column(store: AsyncStore) -> None:
    """Promise: emoji and other non-BMP, combining and RTL text in every free-text column
    (experiment name and tags, run name and user, param and tag values, non-ASCII keys,
    trace tags/metadata/previews/client id, span name/type/status message/attributes/
    events, job name/params/result) is stored and read back exactly."""
    exp = await store.experiments.create(f"exp {EMOJI}", tags={"t": EMOJI})
    got = await store.experiments.get(exp)
    assert (got.name, got.tags["t"]) == (f"exp {EMOJI}", EMOJI)
    assert (await store.experiments.get_by_name(f"exp {EMOJI}")).experiment_id == exp

    run = await store.runs.create(exp, run_name=f"run {EMOJI}", user_id=EMOJI)
    run_id = run.info.run_id
    await store.runs.log_batch(
        run_id,
        metrics=[Metric(LETTERS, 1.5, 1, 0)],
        params=[Param(LETTERS, EMOJI), Param("long", EMOJI * 150)],
        tags=[RunTag(LETTERS, EMOJI), RunTag("big", "😀" * 8000)],
    )
    data = (await store.runs.get(run_id)).data
    info = (await store.runs.get(run_id)).info
    assert (info.run_name, info.user_id) == (f"run {EMOJI}", EMOJI)
    assert data.params == {LETTERS: EMOJI, "long": EMOJI * 150}
    assert (data.tags[LETTERS], data.tags["big"], data.metrics) == (EMOJI, "😀" * 8000, {LETTERS: 1.5})
    found = await store.runs.search([exp], f"params.`{LETTERS}` = '{EMOJI}'")
    assert [r.info.run_id for r in found] == [run_id]

    trace_id = "tr-" + "a" * 32
    await store.traces.start(
        exp, trace_id=trace_id, timestamp_ms=1, client_request_id="😀" * 50, request_preview=EMOJI,
        response_preview="🚀" * 1000, tags={EMOJI: EMOJI}, metadata={"m": EMOJI},
    )
    span = Span(trace_id, "b" * 16, f"span {EMOJI}", T0_NS, T0_NS + 1, span_type=f"type {EMOJI}",
                status=SpanStatus.ERROR, status_message=EMOJI, attributes={EMOJI: EMOJI, "n": [EMOJI]},
                events=(SpanEvent(EMOJI, T0_NS, {"e": EMOJI}),), resource={"r": EMOJI})
    await store.spans.log_spans(exp, [span])
    trace = await store.traces.get_info(trace_id)
    assert (trace.client_request_id, trace.request_preview, trace.response_preview) == ("😀" * 50, EMOJI, "🚀" * 1000)
    assert (trace.tags[EMOJI], trace.metadata["m"]) == (EMOJI, EMOJI)
    assert await store.spans.get_spans(trace_id) == [span]

    job = await store.jobs.create(f"job {EMOJI}", {EMOJI: [EMOJI, 1]})
    assert (await store.jobs.claim([f"job {EMOJI}"]))[0].params == {EMOJI: [EMOJI, 1]}
    assert (await store.jobs.finish(job.job_id, EMOJI)).result == EMOJI
    assert (await store.jobs.get(job.job_id)).result == EMOJI


@pytest.mark.parametrize("twin", ["Case", "case ", "case  "], ids=["case", "trailing-space", "two-trailing-spaces"])
async def test_keys_that_differ_only_by_case_or_trailing_space(store: AsyncStore, twin: str) -> None:
    """Promise: keys "case" and its twin (different case, or trailing spaces) are two
    different keys on every backend: params, tags, metrics, experiment tags, trace tags
    and metadata keep both, each with its own value, and an exact-match search finds
    only its own run."""
    exp = await store.experiments.create("twins", tags={"case": "lower", twin: "twin"})
    assert (await store.experiments.get(exp)).tags == {"case": "lower", twin: "twin"}
    runs = []
    for key in ("case", twin):
        run_id = (await store.runs.create(exp)).info.run_id
        runs.append(run_id)
        await store.runs.log_batch(run_id, params=[Param(key, key)], tags=[RunTag(key, key)])
    both = (await store.runs.create(exp)).info.run_id
    await store.runs.log_batch(
        both,
        metrics=[Metric("case", 1.0, 1, 0), Metric(twin, 2.0, 1, 0)],
        params=[Param("case", "lower"), Param(twin, "twin")],
        tags=[RunTag("case", "lower"), RunTag(twin, "twin")],
    )
    data = (await store.runs.get(both)).data
    assert (data.metrics, data.params) == ({"case": 1.0, twin: 2.0}, {"case": "lower", twin: "twin"})
    assert {k: data.tags[k] for k in ("case", twin)} == {"case": "lower", twin: "twin"}
    for run_id, key in zip(runs, ("case", twin)):
        found = await store.runs.search([exp], f"params.`{key}` = '{key}'")
        assert [r.info.run_id for r in found] == [run_id], key
        found = await store.runs.search([exp], f"tags.`{key}` = '{key}'")
        assert [r.info.run_id for r in found] == [run_id], key

    trace_id = "tr-" + "c" * 32
    await store.traces.start(exp, trace_id=trace_id, timestamp_ms=1, tags={"case": "lower", twin: "twin"},
                             metadata={"case": "lower", twin: "twin"})
    await store.traces.set_metrics(trace_id, {"case": 1.0, twin: 2.0})
    info = await store.traces.get_info(trace_id)
    mine = ("case", twin)  # start adds MLflow's own tags and metadata besides these
    assert ({k: info.tags[k] for k in mine}, {k: info.metadata[k] for k in mine}, info.metrics) == (
        {"case": "lower", twin: "twin"}, {"case": "lower", twin: "twin"}, {"case": 1.0, twin: 2.0}
    )


async def test_oversized_values_are_refused_before_anything_is_written(store: AsyncStore) -> None:
    """Promise: each value one past its limit (MLflow's: key 250, param value 6000, tag
    value 8000, experiment name 500, run name 250; trace tag 8000; job name 500; batch
    sizes 1000 metrics / 100 params / 100 tags) is INVALID_PARAMETER naming the limit,
    and nothing of the batch is written; the same value at the limit, in 4-byte
    characters, is stored and read back exactly."""
    exp = await store.experiments.create("limits")
    run_id = (await store.runs.create(exp)).info.run_id
    ok_metric = [Metric("fine", 1.0, 1, 0)]
    for kwargs in (
        {"params": [Param("k" * 251, "v")]},
        {"params": [Param("p", "x" * 6001)]},
        {"params": [Param("p", "😀" * 6001)]},
        {"tags": [RunTag("t", "y" * 8001)]},
        {"metrics": [Metric("m" * 251, 1.0, 1, 0)]},
        {"metrics": [Metric(f"m{i}", 1.0, 1, 0) for i in range(1001)]},
        {"params": [Param(f"p{i}", "v") for i in range(101)]},
        {"tags": [RunTag(f"t{i}", "v") for i in range(101)]},
    ):
        kwargs.setdefault("metrics", ok_metric)
        error = await _refused(store, store.runs.log_batch(run_id, **kwargs))
        assert any(str(n) in error.message for n in (250, 6000, 8000, 1000, 100)), error.message
    await _refused(store, store.experiments.create("e" * 501))
    await _refused(store, store.runs.create(exp, run_name="r" * 251))
    await _refused(store, store.jobs.create("j" * 501, {}))
    trace_id = "tr-" + "d" * 32
    await store.traces.start(exp, trace_id=trace_id, timestamp_ms=1)
    await _refused(store, store.traces.set_tag(trace_id, "t", "z" * 8001))

    await store.runs.log_batch(run_id, params=[Param("p" * 250, "😀" * 6000)], tags=[RunTag("t" * 250, "🚀" * 8000)])
    data = (await store.runs.get(run_id)).data
    assert (data.params["p" * 250], data.tags["t" * 250]) == ("😀" * 6000, "🚀" * 8000)
    assert (await store.experiments.get(await store.experiments.create("😀" * 500))).name == "😀" * 500


@pytest.mark.parametrize(
    "kwargs",
    [
        {"metrics": [Metric("m", "abc", 1, 0)]},  # type: ignore[arg-type]
        {"metrics": [Metric("m", None, 1, 0)]},  # type: ignore[arg-type]
        {"metrics": [Metric("m", 1.0, "now", 0)]},  # type: ignore[arg-type]
        {"metrics": [Metric("m", 1.0, 1, 1.5)]},  # type: ignore[arg-type]
        {"metrics": [Metric("m", 1.0, 2**63, 0)]},
        {"metrics": [Metric("m", 1.0, 1, -(2**63) - 1)]},
        {"metrics": [Metric(5, 1.0, 1, 0)]},  # type: ignore[arg-type]
        {"metrics": [Metric("", 1.0, 1, 0)]},
        {"params": [Param("", "v")]},
        {"params": [Param(None, "v")]},  # type: ignore[arg-type]
        {"params": [Param("p", b"bytes")]},  # type: ignore[arg-type]
        {"params": [Param("p", {"a": 1})]},  # type: ignore[arg-type]
        {"tags": [RunTag("", "v")]},
        {"tags": [RunTag("😀", "v")]},
        {"tags": [RunTag("../up", "v")]},
        {"params": [Param("p", "one"), Param("p", "two")]},
        {"metrics": "not a list"},
        {"metrics": [("m", 1.0, 1, 0)]},
    ],
    ids=lambda kwargs: repr(kwargs)[:60],
)
async def test_wrong_types_and_empty_keys_are_refused(store: AsyncStore, kwargs: dict[str, Any]) -> None:
    """Promise: a wrong type, an empty or malformed key, a 64-bit overflow or a param
    logged twice with two values in one batch is INVALID_PARAMETER with nothing of the
    batch written (a valid metric of the same batch is absent too)."""
    exp = await store.experiments.create("types")
    run_id = (await store.runs.create(exp)).info.run_id
    batch = dict(kwargs)
    if isinstance(batch.get("metrics"), list):
        batch["metrics"] = [Metric("valid", 1.0, 1, 0), *batch["metrics"]]
    await _refused(store, store.runs.log_batch(run_id, **batch))
    assert (await store.runs.get(run_id)).data.metrics == {}


async def test_nan_and_infinities(store: AsyncStore) -> None:
    """Promise: NaN, +inf and -inf metrics are stored and read back as such (latest value,
    history), extreme finite doubles (the next-to-largest, the smallest subnormal,
    2**53 + 1) are read back as the same numbers (not as infinities), the largest
    double itself (MLflow's stored form of ±inf) and an integer beyond every double (in a
    metric or a search filter) are refused with INVALID_PARAMETER before anything is
    written, and non-finite trace metrics are refused likewise."""
    exp = await store.experiments.create("nan")
    run_id = (await store.runs.create(exp)).info.run_id
    for largest in (1.7976931348623157e308, -1.7976931348623157e308):
        await _refused(store, store.runs.log_batch(run_id, metrics=[Metric("ok", 1.0, 1, 0), Metric("max", largest, 1, 0)]))
    huge = await _refused(store, store.runs.log_batch(run_id, metrics=[Metric("ok", 1.0, 1, 0), Metric("i", 10**400, 1, 0)]))
    assert "1329 bits, too large for a double" in str(huge)
    refused = await _refused(store, store.runs.search([exp], "metrics.ok > " + "9" * 400))
    assert "too large for a double" in str(refused)
    assert (await store.runs.get(run_id)).data.metrics == {}
    below_max = math.nextafter(1.7976931348623157e308, 0.0)
    values = [float("nan"), float("inf"), float("-inf"), below_max, -below_max,
              5e-324, -0.0, 2.0**53 + 1]
    await store.runs.log_batch(run_id, metrics=[Metric(f"m{i}", v, 1, 0) for i, v in enumerate(values)] +
                               [Metric("hist", v, 1, i) for i, v in enumerate(values)])
    latest = (await store.runs.get(run_id)).data.metrics
    history = [m.value for m in await store.runs.get_metric_history(run_id, "hist")]
    wrong = [(v, latest[f"m{i}"], history[i]) for i, v in enumerate(values)
             if not (_same(latest[f"m{i}"], v) and _same(history[i], v))]
    assert wrong == []  # (logged, latest read back, history read back)

    trace_id = "tr-" + "e" * 32
    await store.traces.start(exp, trace_id=trace_id, timestamp_ms=1)
    for bad in (float("nan"), float("inf"), float("-inf"), "1.0", 10**400):
        await _refused(store, store.traces.set_metrics(trace_id, {"ok": 1.0, "bad": bad}))
    assert (await store.traces.get_info(trace_id)).metrics == {}


def _same(got: float, want: float) -> bool:
    """Equal as numbers (NaN to NaN; -0.0 may come back as 0.0: SQLite and MariaDB drop the sign)."""
    if math.isnan(want):
        return math.isnan(got)
    return got == want


@pytest.mark.slow
@pytest.mark.parametrize("alphabet", ["ascii", "emoji"])
async def test_five_megabyte_span_content(store: AsyncStore, alphabet: str) -> None:
    """Promise: a span whose content is about 5 MB (one 5 MB attribute, ASCII or 4-byte
    characters) is stored and read back exactly on every backend, next to a small span
    of the same batch."""
    exp = await store.experiments.create("big")
    blob = "x" * (5 * 1024 * 1024) if alphabet == "ascii" else "😀" * (5 * 1024 * 1024 // 4)
    trace_id = "tr-" + "f" * 32
    big = Span(trace_id, "1" * 16, "big", T0_NS, T0_NS + 10, attributes={"blob": blob})
    small = Span(trace_id, "2" * 16, "small", T0_NS, T0_NS + 5, parent_span_id="1" * 16)
    assert await store.spans.log_spans(exp, [big, small]) == 2
    got = {s.span_id: s for s in await store.spans.get_spans(trace_id)}
    assert got == {"1" * 16: big, "2" * 16: small}


async def test_hostile_ids_are_refused_or_not_found(store: AsyncStore) -> None:
    """Promise: run, experiment, trace and job ids carrying SQL or odd characters are
    INVALID_PARAMETER or NOT_FOUND, never another error, and change nothing."""
    before = await _counts(store)
    hostile = ["'; DROP TABLE runs; --", "1 OR 1=1", "", " ", "😀", "0" * 33, "../1", "1;", "\x00", "%", "-1", "99999999999"]
    for value in hostile:
        for call in (store.runs.get(value), store.experiments.get(value), store.traces.get_info(value),
                     store.jobs.get(value), store.spans.get_spans(value)):
            try:
                await call
            except (InvalidParameter, NotFound):
                continue
            raise AssertionError(f"{value!r} was accepted")
    assert await _counts(store) == before
