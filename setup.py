"""The one part of the build pyproject.toml cannot declare without a warning: the C reader
of usage events into Arrow columns (streams/events/columnar.py). Optional: where it cannot
be built (no C compiler), every message is decoded by fastavro, exact but slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("streams.events._columnar", ["streams/events/_columnar.c"], optional=True)])
