"""Where the project's data files are: the Avro schemas, the ClickHouse migrations and the
example configuration.

In the checkout they live at the top level (``schemas/``, ``clickhouse/``, ``config/``).
A built wheel carries copies of them as package data under ``streams/_data/`` (the build
hook in ``streams/_build.py`` puts them there). Every module finds them here, and nowhere
else: the packaged copy when there is one (an installed wheel), else the checkout's
(the editable install, the tests and the benchmarks).

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The top-level directories, as named in the checkout and under streams/_data/ in a wheel.
SCHEMAS = "schemas"
MIGRATIONS = "clickhouse"
EXAMPLE_CONFIG = "config"
DATA_DIRS = (SCHEMAS, MIGRATIONS, EXAMPLE_CONFIG)

_CHECKOUT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """The directory ``name`` (one of :data:`DATA_DIRS`): packaged if installed, else the checkout's."""
    if name not in DATA_DIRS:
        raise ValueError(f"unknown data directory {name!r}; expected one of {DATA_DIRS}")
    packaged = files("streams") / "_data" / name
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = _CHECKOUT / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"spendstream's {name}/ directory is neither packaged ({packaged}) nor in a checkout ({checkout}); "
        "reinstall spendstream from a wheel or run it from its source tree"
    )


def schemas_dir() -> Path:
    """The Avro schemas (``*.avsc``)."""
    return data_dir(SCHEMAS)


def migrations_dir() -> Path:
    """The numbered ClickHouse migrations (``NNNN_*.sql``)."""
    return data_dir(MIGRATIONS)


def example_config_dir() -> Path:
    """The example configuration (``*.example.toml``, ``*.example.csv``)."""
    return data_dir(EXAMPLE_CONFIG)
