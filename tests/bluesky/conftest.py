"""Fixtures for the bluesky face: one reference atproto network per test session."""

from collections.abc import Iterator

import pytest
from bluesky_support import DevNetwork, start_network


@pytest.fixture(scope="session")
def devnet() -> Iterator[DevNetwork]:
    network = start_network()
    try:
        yield network
    finally:
        network.close()
