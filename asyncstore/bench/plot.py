"""``--plot``: a PNG bar chart of throughput per workload, per system.

matplotlib comes with the ``bench`` extra; it is imported only when a chart is
drawn, with the non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asyncstore.bench.workloads import ON_MLFLOW_SCHEMA

INSTALL_HINT = "pip install 'asyncstore[bench]'  (or: pip install matplotlib)"
LABELS = {
    "asyncstore": "asyncstore",
    ON_MLFLOW_SCHEMA: "asyncstore on MLflow's tables",
    "mlflow": "MLflow SqlAlchemyStore (thread pool; otlp_ingest: mlflow server)",
    "raw": "raw driver ceiling",
    "direct": "asyncstore in-process, no HTTP (OTLP ceiling)",
}
COLOURS = {
    "asyncstore": "#2b6cb0", ON_MLFLOW_SCHEMA: "#63b3ed", "mlflow": "#dd6b20", "raw": "#718096", "direct": "#a0aec0",
}


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def series(result: Mapping[str, Any]) -> dict[str, list[float | None]]:
    """Throughput per system, one value per workload (None where not measured).

    Systems that have no figure for any workload are left out.
    """
    workloads: Mapping[str, Mapping[str, Any]] = result["workloads"]
    found: dict[str, list[float | None]] = {}
    for system in LABELS:
        values: list[float | None] = []
        for entry in workloads.values():
            figures = entry.get(system)
            rate = figures.get("throughput") if isinstance(figures, Mapping) else None
            values.append(float(rate) if isinstance(rate, (int, float)) else None)
        if any(v is not None for v in values):
            found[system] = values
    return found


def write_png(result: Mapping[str, Any], path: Path) -> Path:
    """Draw the chart of ``result`` into ``path`` (PNG) and return the path.

    Raises:
        ImportError: matplotlib is not installed (see :data:`INSTALL_HINT`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["workloads"])
    units = [result["workloads"][n]["unit"] for n in names]
    data = series(result)
    width = 0.8 / max(len(data), 1)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    for i, (system, values) in enumerate(data.items()):
        xs = [x + (i - (len(data) - 1) / 2) * width for x in range(len(names))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=LABELS[system], color=COLOURS[system])
        for bar, value in zip(bars, values):
            if value is not None:
                ax.annotate(
                    f"{value:,.0f}" if value >= 10 else f"{value:.1f}",
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points",
                )
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n({u})" for n, u in zip(names, units)], fontsize=8)
    ax.set_ylabel("throughput per second (log scale, higher is better)")
    server = result["versions"]["database_server"]
    ax.set_title(f"asyncstore bench on {server}: scale {result['scale']}, {result['date'][:10]}")
    top = max((v for values in data.values() for v in values if v is not None), default=1.0)
    ax.set_ylim(top=top * 4)  # room for the value labels above the tallest bar
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(data), frameon=False)
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
