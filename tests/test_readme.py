"""The README's quickstart runs exactly as printed, on every backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import readme_python


def test_quickstart_runs_as_printed(db_uri: str, tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(readme_python("Quickstart"), encoding="utf-8")
    env = {**os.environ, "ASYNCSTORE_DATABASE_URI": db_uri}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"loss=0\.01, trace of 2 spans in 9 ms, job \S+ SUCCEEDED", done.stdout), done.stdout
