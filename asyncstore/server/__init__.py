"""``asyncstore serve``: an OTLP/HTTP trace receiver writing spans into an asyncstore database.

Needs the ``server`` extra (``pip install 'asyncstore[server]'``: starlette, uvicorn,
prometheus-client). :func:`create_app` is imported on first use, so the command line
can register ``serve`` without these packages installed.

Example::

    from asyncstore.server import create_app

    app = create_app("postgresql://user:pw@db/mlflow", default_experiment_id="1")
    # uvicorn module:app --port 4318
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncstore.server.app import create_app

INSTALL_HINT = "pip install 'asyncstore[server]'"
"""How to install what ``asyncstore serve`` needs."""


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from asyncstore.server.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["INSTALL_HINT", "create_app"]
