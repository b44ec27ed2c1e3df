"""The runtime's fence: the Faust and aiokafka fixes patch only the releases they were written for."""

from __future__ import annotations

from importlib import metadata

import pytest

from streams.runtime import faust_fixes


def test_the_installed_releases_are_the_pinned_ones() -> None:
    faust_fixes.require_pinned_versions()
    assert {name: metadata.version(name) for name in faust_fixes.PINNED} == faust_fixes.PINNED


def test_another_release_is_a_clear_error_naming_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = metadata.version("aiokafka")
    monkeypatch.setitem(faust_fixes.PINNED, "aiokafka", "0.13.9")
    with pytest.raises(faust_fixes.UnsupportedVersion) as refused:
        faust_fixes.install()
    message = str(refused.value)
    assert f"aiokafka {installed} is installed" in message
    assert "aiokafka 0.13.9" in message and "'aiokafka==0.13.9'" in message
