"""Many workers in one consumer group: roles, partitions spread, a worker killed and one
added mid-flow (the scenario and what it checks: ``bench/many_workers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import check
from bench.many_workers import scenario_many_workers

pytestmark = pytest.mark.integration


def test_three_processing_workers_one_killed_one_added_stay_exact(stack_env: dict[str, str], tmp_path: Path) -> None:
    check(scenario_many_workers(stack_env, tmp_path))
