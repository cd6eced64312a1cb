from __future__ import annotations

import sys

import pytest

from bevialm.runtime import tune_malloc


def test_tune_malloc_applies_on_linux_and_is_harmless_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tune_malloc() is sys.platform.startswith("linux")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert tune_malloc() is False
