"""The built wheel carries the migrations: install it into a fresh venv and migrate from elsewhere."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from asyncstore import migrate

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str | Path, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_migrates_outside_the_repository(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--quiet", "-w", dist)
    (wheel,) = dist.glob("asyncstore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("asyncstore/py.typed", "asyncstore/migrations/env.py", "asyncstore/migrations/script.py.mako",
                     "asyncstore/migrations/versions/0001_initial.py", "asyncstore/cli.py"):
        assert required in names, f"{required} is missing from {wheel.name}"
    assert not any(name.startswith("tests/") for name in names)

    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env)
    python = env / "bin" / "python"
    # Dependencies come from pip's cache when it has them (the dev environment was built from it).
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = env / "bin" / "asyncstore"
    up = _run(script, "db", "upgrade", "sqlite:///x.db", cwd=elsewhere)
    head = migrate.head_revision()
    assert f"{head} (head)" in up.stdout
    assert (elsewhere / "x.db").is_file()
    assert subprocess.run([script, "db", "check", "sqlite:///x.db"], cwd=elsewhere, timeout=60).returncode == 0
    # The installed copy, not this checkout, was the one that ran.
    where = _run(python, "-c", "import asyncstore.migrate as m; print(m.script_location())", cwd=elsewhere)
    assert str(env) in where.stdout and str(ROOT) not in where.stdout
