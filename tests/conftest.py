"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from exporter.demo.simulator import Simulator
from tests.helpers import TOKEN


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A running Shoplazza simulator that accepts the test token."""
    with Simulator(tokens=(TOKEN,)) as simulator:
        yield simulator


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority made for the test session."""
    return trustme.CA()


@pytest.fixture
def tls_dir(tmp_path: Path, ca: trustme.CA) -> Path:
    """cert.pem and key.pem for localhost/127.0.0.1, and ca.pem, in tmp_path."""
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path
