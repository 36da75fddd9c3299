"""`plaudit approvals` (list, approve, approve --text / --edit, reject) against the daemon's real
ControlService and HTTP server with `[approval] required = true`; the held posts are put into
the store directly, as the post job holds them. The CLI runs in a thread (it is synchronous)
while the server answers on the test's event loop."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from daemon_helpers import PLAUDIT
from http_helpers import FACES, TOKEN, loop_settings, running_control, seed_store

from plaudit.daemon import _cli
from plaudit.daemon._auth import TOKEN_FILE
from plaudit.daemon._client import URL_FILE
from plaudit.daemon._http import build_app, serve
from plaudit.daemon._metrics import Metrics
from plaudit.state import (
    Approval,
    NewCandidate,
    Post,
    PostStatus,
    RewardSource,
    StateLock,
    Store,
)

# End to end through a running daemon (about 20 s): in CI's `slow` run, out of the default one.
pytestmark = pytest.mark.slow

TEXTS = [
    "Sunny morning, fresh coffee and a good book. Perfect start!",
    "Rain all week. The cat refuses to go outside and so do I.",
]


def app() -> Any:
    """The CLI with its commands registered."""
    _cli._register()
    return _cli.app


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Daemon:
    store: Store
    folder: Path

    async def cli(self, *args: str, input: str | None = None, **env: str) -> Result:
        """`plaudit ARGS --state-dir FOLDER` in a subprocess, while the server answers here."""
        environ = {**os.environ, **env}
        environ.pop("STATE_DIRECTORY", None)
        environ.pop("VISUAL", None)
        proc = await asyncio.create_subprocess_exec(
            *PLAUDIT,
            *args,
            "--state-dir",
            str(self.folder),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.folder.parent,  # no plaudit.toml there
            env=environ,
        )
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else b""), timeout=60
        )
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    def hold(self, face: str, text: str, *, predicted: float | None = 0.25) -> int:
        (pid,) = self.store.add_candidates(
            face=face,
            cycle_id=f"c-{text[:8]}",
            candidates=[
                NewCandidate(
                    text=text,
                    tokens=[1, 2, 3],
                    logprobs=[-1.0, -0.5, -0.2],
                    predicted_reward=predicted,
                )
            ],
        )
        self.store.choose(pid)
        self.store.hold(pid)
        return pid


@pytest.fixture
async def daemon(tiny_model_dir: Path, tmp_path: Path) -> AsyncIterator[Daemon]:
    settings = loop_settings(tiny_model_dir)
    settings = settings.model_copy(
        update={"approval": settings.approval.model_copy(update={"required": True})}
    )
    folder = tmp_path / "state"
    metrics = Metrics(faces=list(FACES), version="0.1.0", model="tiny-test")
    with Store.open(folder) as store:
        # A post a few hours ago on each face: the next is a day away (the post interval), so
        # the post job neither holds posts of its own nor publishes approved ones in a test.
        seed_store(store)
        async with running_control(settings, store, metrics, tiny_model_dir, tmp_path) as service:
            srv = await serve(
                build_app(control=service, metrics=metrics, token=TOKEN), host="127.0.0.1", port=0
            )
            # What the daemon writes at start: where its API is, and its generated token.
            (folder / URL_FILE).write_text(srv.url + "\n")
            (folder / TOKEN_FILE).write_text(TOKEN + "\n")
            try:
                yield Daemon(store=store, folder=folder)
            finally:
                await srv.stop()


def ok(result: Any) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    out: str = result.stdout
    return out


def one_error_line(result: Any) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line: str = lines[0]
    return line


async def test_list_shows_held_then_approved_posts(daemon: Daemon) -> None:
    empty = ok(await daemon.cli("approvals"))
    assert "approval queue: on" in empty and "no posts wait for a decision" in empty
    first = daemon.hold("sim", TEXTS[0], predicted=0.31)
    second = daemon.hold("journal", TEXTS[1], predicted=None)
    daemon.store.approve(second)

    out = ok(await daemon.cli("approvals"))
    assert out == ok(await daemon.cli("approvals", "list"))
    assert "held posts expire after 1d, then are dropped" in out
    waiting, approved = out.split("1 approved, not published yet:")
    assert f"post {first}  face sim  expires in 23h 59m  predicted reward +0.31" in waiting
    assert f"    {TEXTS[0]}" in waiting
    assert f"post {second}  face journal  approved" in approved and TEXTS[1] in approved

    as_json = json.loads(ok(await daemon.cli("approvals", "list", "--json")))
    assert as_json["state_dir"] == str(daemon.folder)
    assert as_json["required"] is True and as_json["on_expiry"] == "drop"
    assert [(p["id"], p["status"]) for p in as_json["posts"]] == [
        (first, "awaiting"),
        (second, "approved"),
    ]
    assert as_json["posts"][0]["text"] == TEXTS[0]
    assert as_json["posts"][0]["predicted_reward"] == 0.31
    # The group's own options are list's.
    assert json.loads(ok(await daemon.cli("approvals", "--json"))) == as_json

    only_sim = json.loads(ok(await daemon.cli("approvals", "list", "--face", "sim", "--json")))
    assert [p["id"] for p in only_sim["posts"]] == [first]
    unknown = one_error_line(await daemon.cli("approvals", "list", "--face", "nowhere"))
    assert "no face named 'nowhere'" in unknown


def approved(store: Store, post_id: int) -> Post:
    """The post, approved and waiting for its face's slot (a day away in these tests)."""
    post = store.get_post(post_id)
    assert post.status is PostStatus.APPROVED, post.status
    return post


async def test_approve_as_is_with_text_and_from_stdin(daemon: Daemon) -> None:
    plain, edited, piped = (daemon.hold("sim", t) for t in [*TEXTS, "Third post, to be piped."])

    out = ok(await daemon.cli("approvals", "approve", str(plain)))
    assert f"post {plain} (sim) approved as it is" in out
    post = approved(daemon.store, plain)
    assert post.approval is Approval.APPROVED and post.text == TEXTS[0]

    out = ok(await daemon.cli("approvals", "approve", str(edited), "--text", "A human's words."))
    assert f"post {edited} (sim) approved with your edit" in out
    post = approved(daemon.store, edited)
    assert (post.approval, post.text, post.original_text) == (
        Approval.EDITED,
        "A human's words.",
        TEXTS[1],
    )

    ok(await daemon.cli("approvals", "approve", str(piped), "--text", "-", input="From a pipe.\n"))
    assert approved(daemon.store, piped).text == "From a pipe."

    # Approved posts are listed after the waiting ones until they are published.
    out = ok(await daemon.cli("approvals"))
    assert "no posts wait for a decision" in out and "3 approved, not published yet:" in out
    assert f"post {edited}  face sim  approved with an edit" in out


async def test_reject_stores_the_rejection_reward(daemon: Daemon) -> None:
    pid = daemon.hold("sim", TEXTS[0])
    out = ok(await daemon.cli("approvals", "reject", str(pid)))
    assert f"post {pid} (sim) rejected: never published; it trains with reward -2.00" in out
    assert daemon.store.get_post(pid).status is PostStatus.REJECTED
    rewards = daemon.store.rewards(source=RewardSource.REJECTED)
    assert [(r.post_id, r.reward) for r in rewards] == [(pid, -2.0)]


async def test_refusals_are_one_line_with_the_fix(daemon: Daemon, tmp_path: Path) -> None:
    expired = daemon.hold("sim", TEXTS[0])
    daemon.store.expire(expired, publish=False)
    line = one_error_line(await daemon.cli("approvals", "approve", str(expired)))
    assert f"post {expired} is not waiting for approval (it is expired)" in line
    assert "plaudit approvals" in line and "(HTTP 409)" in line
    assert "(HTTP 409)" in one_error_line(await daemon.cli("approvals", "reject", str(expired)))
    assert daemon.store.rewards(source=RewardSource.REJECTED) == []

    missing = one_error_line(await daemon.cli("approvals", "reject", "9999"))
    assert "there is no post 9999" in missing and "(HTTP 400)" in missing

    held = daemon.hold("sim", TEXTS[1])
    empty = one_error_line(await daemon.cli("approvals", "approve", str(held), "--text", " "))
    assert "the edited text is empty; reject the post instead" in empty

    (daemon.folder / TOKEN_FILE).write_text("not-the-token-at-all\n")
    refused = one_error_line(await daemon.cli("approvals", "reject", str(held)))
    assert "refused the API token" in refused and TOKEN_FILE in refused
    assert daemon.store.get_post(held).status is PostStatus.AWAITING

    both = await daemon.cli("approvals", "approve", str(held), "--text", "x", "--edit")
    assert both.exit_code == 2 and "either --text or --edit" in both.stderr


async def test_without_a_daemon_or_its_api(tmp_path: Path) -> None:
    nowhere = Daemon(store=None, folder=tmp_path / "nothing")  # type: ignore[arg-type]
    line = one_error_line(await nowhere.cli("approvals"))
    assert "no plaudit daemon is running on state folder" in line and "plaudit run" in line

    # A daemon holds the folder, but it has no [http]: nothing to decide through.
    folder = tmp_path / "no-http"
    lock = StateLock(folder=folder)
    lock.acquire()
    try:
        line = one_error_line(
            await Daemon(store=None, folder=folder).cli("approvals", "reject", "1")
        )  # type: ignore[arg-type]
    finally:
        lock.release()
    assert "has no HTTP API" in line and "enable [http]" in line


def editor(tmp_path: Path, body: str) -> str:
    script = tmp_path / "editor.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


async def test_edit_opens_the_editor_on_the_text(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VISUAL", raising=False)
    pid = daemon.hold("sim", TEXTS[0])
    seen = tmp_path / "seen.txt"
    # The editor sees the model's text, and writes the human's.
    monkeypatch.setenv(
        "EDITOR",
        editor(tmp_path, f'cp "$1" {seen}\nprintf "Edited by a human.\\n\\n" > "$1"'),
    )
    out = ok(await daemon.cli("approvals", "approve", str(pid), "--edit"))
    assert seen.read_text().strip() == TEXTS[0]
    assert f"post {pid} (sim) approved with your edit" in out
    post = approved(daemon.store, pid)
    assert (post.text, post.original_text) == ("Edited by a human.", TEXTS[0])

    # An emptied text aborts: the post still waits.
    emptied = daemon.hold("sim", TEXTS[1])
    monkeypatch.setenv("EDITOR", editor(tmp_path, ': > "$1"'))
    line = one_error_line(await daemon.cli("approvals", "approve", str(emptied), "--edit"))
    assert "the edited text is empty" in line and f"plaudit approvals reject {emptied}" in line
    assert daemon.store.get_post(emptied).status is PostStatus.AWAITING

    # Closed without a change: approved as it is.
    monkeypatch.setenv("EDITOR", "true")
    result = await daemon.cli("approvals", "approve", str(emptied), "--edit")
    assert "approved as it is" in ok(result) and "unchanged" in result.stderr
    post = approved(daemon.store, emptied)
    assert (post.approval, post.original_text) == (Approval.APPROVED, None)

    # A post that no longer waits is refused before the editor opens.
    monkeypatch.setenv("EDITOR", editor(tmp_path, f"touch {tmp_path / 'opened'}"))
    line = one_error_line(await daemon.cli("approvals", "approve", str(pid), "--edit"))
    assert f"post {pid} is not waiting for approval" in line
    assert not (tmp_path / "opened").exists()


@pytest.mark.parametrize(
    "command",
    [["approvals"], ["approvals", "list"], ["approvals", "approve"], ["approvals", "reject"]],
)
def test_help(command: list[str]) -> None:
    short = CliRunner().invoke(app(), [*command, "-h"], terminal_width=80)
    assert short.exit_code == 0 and short.output.startswith("Usage: ")
    assert "<bool>" not in short.output and "…" not in short.output
    listing = CliRunner().invoke(app(), ["-h"], terminal_width=80).output
    assert "  approvals  The approval queue: list, approve, edit or reject held posts.\n" in listing
