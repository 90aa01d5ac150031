"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exporter.simulator import Simulator
from tests.helpers import TOKEN


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A running Shoplazza simulator that accepts the test token."""
    with Simulator(tokens=(TOKEN,)) as simulator:
        yield simulator
