"""Build hook (setuptools commands, named in pyproject.toml): ship the top-level data
directories inside the package.

``schemas/``, ``clickhouse/`` and ``config/`` stay at the top of the source tree; a wheel
carries them as ``streams/_data/<name>/``, where :mod:`streams.resources` finds them, and
an sdist carries them at its top level so that a wheel built from it has them too. Used
only while building; nothing imports this module at run time.
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

DATA_DIRS = ("schemas", "clickhouse", "config")  # as streams.resources.DATA_DIRS


def data_files(root: Path) -> list[Path]:
    """The files of the data directories under ``root``, relative to it."""
    found = []
    for name in DATA_DIRS:
        directory = root / name
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory} is missing: a spendstream package without it cannot run")
        found += [p.relative_to(root) for p in sorted(directory.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    return found


class BuildPy(build_py):
    """build_py, plus the data directories copied into ``streams/_data/``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for relative in data_files(Path.cwd()):
            target = Path(self.build_lib) / "streams" / "_data" / relative
            self.mkpath(str(target.parent))
            self.copy_file(str(relative), str(target))


class Sdist(sdist):
    """sdist, plus the data directories at the archive's top level."""

    def make_distribution(self) -> None:
        self.filelist.extend(str(p) for p in data_files(Path.cwd()))
        super().make_distribution()
