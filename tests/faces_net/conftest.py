"""Fixtures for the network faces: one mastodon-mock server per test session."""

import subprocess
from collections.abc import Iterator

import pytest
from faces_net_support import MastodonServer, start_mastodon


@pytest.fixture(scope="session")
def mastodon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonServer]:
    proc, base_url = start_mastodon(tmp_path_factory.mktemp("mastodon"))
    server = MastodonServer(base_url)
    try:
        yield server
    finally:
        server.client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mastodon(mastodon_server: MastodonServer) -> MastodonServer:
    """The session's server with no fault rules left over from another test."""
    mastodon_server.clear_faults()
    return mastodon_server
