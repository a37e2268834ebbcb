from __future__ import annotations

import pytest

from .devproc import Dev


@pytest.fixture
def dev(tmp_path):
    started: list[Dev] = []

    def start(*args: str) -> Dev:
        d = Dev(tmp_path, *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.cleanup()
