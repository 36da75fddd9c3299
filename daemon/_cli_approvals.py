"""`plaudit approvals`: the approval queue of a running daemon (list, approve, edit, reject).

The queue lives in the daemon (controller/_approval.py); these commands go through its HTTP
API, so the daemon must run with [http] enabled. Without --config or --state-dir (and no
./plaudit.toml), they find the daemon this user started last, as `plaudit status` does."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer

from plaudit.daemon._cli_core import ConfigOption, StateDirOption, fail, which_daemon

if TYPE_CHECKING:
    from plaudit.daemon._client import DaemonClient
    from plaudit.daemon._control import ApprovalQueue, Decision, HeldPost

approvals_app = typer.Typer(
    help="List the posts held for approval in a running daemon; approve, edit or reject them. "
    "Without a command: list.",
    invoke_without_command=True,
)

FaceOption = Annotated[
    str | None,
    typer.Option("--face", metavar="FACE", help="Only this face's posts (a name from [faces])."),
]
PostId = Annotated[
    int, typer.Argument(metavar="ID", help="The post's id, as `plaudit approvals` lists it.")
]


def _connect(config: Path | None, state_dir: Path | None) -> tuple[DaemonClient, Path]:
    """A client of the running daemon's API, or exit 1 with what is wrong and how to fix it."""
    from plaudit.daemon import _client
    from plaudit.state import StateLock

    settings, folder = which_daemon(config, state_dir)
    try:
        client = _client.for_state_dir(folder, token=settings.http.token)
    except _client.ClientError as exc:
        raise fail(str(exc), 1) from None
    if client is not None:
        return client, folder
    pid = StateLock.running_pid(folder)
    if pid is None:
        raise fail(
            f"no plaudit daemon is running on state folder {folder}: start it with `plaudit run` "
            f"(or give the daemon's --state-dir / --config)",
            1,
        )
    raise fail(
        f"the plaudit daemon (pid {pid}) on state folder {folder} has no HTTP API, which the "
        "approval queue is decided through: enable [http] in its config and restart it",
        1,
    )


def _duration(seconds: float) -> str:
    """``2d 3h``, ``5h 12m``, ``7m``, ``40s``: the two largest units, rounded down (as a
    countdown shows time left)."""
    s = max(0, int(seconds))
    days, s = divmod(s, 86_400)
    hours, s = divmod(s, 3_600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m"
    return f"{s}s"


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines() or [""])


def _print_post(post: HeldPost, now: float) -> None:
    parts = [f"post {post.id}", f"face {post.face}"]
    if post.status == "awaiting":
        if post.expires_at is not None:
            left = post.expires_at - now
            parts.append(f"expires in {_duration(left)}" if left >= 1 else "expiring now")
    else:
        parts.append(
            {"edited": "approved with an edit", "expired": "approved on expiry"}.get(
                post.approval or "", "approved"
            )
        )
    if post.predicted_reward is not None:
        parts.append(f"predicted reward {post.predicted_reward:+.2f}")
    typer.echo("  ".join(parts))
    typer.echo(_indented(post.text))


def _print_queue(queue: ApprovalQueue) -> None:
    now = time.time()
    waiting = [p for p in queue.posts if p.status == "awaiting"]
    approved = [p for p in queue.posts if p.status == "approved"]
    expiry = f"held posts expire after {_duration(queue.expire_after_seconds)}, then " + (
        "publish" if queue.on_expiry == "publish" else "are dropped"
    )
    if not queue.required and not queue.posts:
        typer.echo(
            "the approval queue is off ([approval] required = false) and empty: posts publish "
            "without a human's approval"
        )
        return
    if queue.required:
        typer.echo(f"approval queue: on; {expiry}")
    else:
        typer.echo(
            "approval queue: off ([approval] required = false), but it still holds posts "
            f"from before; {expiry}"
        )
    if waiting:
        typer.echo(f"\n{len(waiting)} waiting for a decision (oldest first):")
        for post in waiting:
            _print_post(post, now)
        typer.echo(
            "\napprove: plaudit approvals approve ID [--edit | --text TEXT]; "
            "reject: plaudit approvals reject ID"
        )
    else:
        typer.echo("\nno posts wait for a decision")
    if approved:
        typer.echo(f"\n{len(approved)} approved, not published yet:")
        for post in approved:
            _print_post(post, now)


@approvals_app.command("list", short_help="The held posts, then approved ones not yet out.")
def approvals_list(
    face: FaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """List the posts held for a decision (id, face, time left, predicted reward, text), then
    the approved ones not published yet."""
    from plaudit.daemon import _client

    client, folder = _connect(config, state_dir)
    try:
        with client:
            queue = client.approvals(face=face)
    except _client.ClientError as exc:
        raise fail(str(exc), 1) from None
    if as_json:
        typer.echo(json.dumps({"state_dir": str(folder), **queue.model_dump(mode="json")}))
        return
    _print_queue(queue)


@approvals_app.callback()
def _approvals(
    ctx: typer.Context,
    face: FaceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Without a command: `plaudit approvals list` with these options."""
    if ctx.invoked_subcommand is None:
        approvals_list(face=face, as_json=as_json, config=config, state_dir=state_dir)
    elif face is not None or as_json or config is not None or state_dir is not None:
        raise fail(
            f"give the options after the command: plaudit approvals {ctx.invoked_subcommand} "
            "[OPTIONS]"
        )


def _edit(client: DaemonClient, post_id: int) -> str | None:
    """The post's text as the user edits it in $VISUAL / $EDITOR (else vi), as `git commit`
    does; None when it is unchanged."""
    queue = client.approvals()
    post = next((p for p in queue.posts if p.id == post_id), None)
    if post is None or post.status != "awaiting":
        raise fail(
            f"post {post_id} is not waiting for approval; list the held posts with "
            "`plaudit approvals`",
            1,
        )
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        edited = click.edit(post.text + "\n", editor=editor, extension=".txt")
    except click.ClickException as exc:
        raise fail(
            f"the editor {editor!r} failed ({exc.format_message()}); set $EDITOR to one that "
            "works, or give the text with --text",
            1,
        ) from None
    if edited is None:  # closed without saving
        return None
    text = edited.strip()
    if not text:
        raise fail(
            f"aborting: the edited text is empty; to refuse the post, run "
            f"`plaudit approvals reject {post_id}`",
            1,
        )
    return None if text == post.text.strip() else text


def _print_decision(decision: Decision) -> None:
    if decision.status == "rejected":
        reward = f" with reward {decision.reward:+.2f}" if decision.reward is not None else ""
        typer.echo(
            f"post {decision.id} ({decision.face}) rejected: never published; it trains{reward}"
        )
        return
    how = "with your edit" if decision.approval == "edited" else "as it is"
    typer.echo(
        f"post {decision.id} ({decision.face}) approved {how}: it publishes at the face's next "
        "chance"
    )


@approvals_app.command("approve", short_help="Approve a held post, as it is or edited.")
def approvals_approve(
    post_id: PostId,
    text: Annotated[
        str | None,
        typer.Option(
            "--text",
            metavar="TEXT",
            help="Publish this text instead of the model's (an edit: it then trains the reward "
            "model only, not the policy); - reads it from stdin.",
        ),
    ] = None,
    edit: Annotated[
        bool,
        typer.Option(
            "--edit", help="Edit the text in $VISUAL or $EDITOR (else vi) before approving."
        ),
    ] = False,
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Approve a held post: it publishes at the face's next chance. With --text or --edit, the
    edited text publishes instead of the model's."""
    from plaudit.daemon import _client

    if edit and text is not None:
        raise fail("give either --text or --edit, not both")
    if text == "-":
        text = sys.stdin.read()
        if not text.strip():
            raise fail(
                "the text read from stdin is empty; to refuse the post, run "
                f"`plaudit approvals reject {post_id}`"
            )
    client, _folder = _connect(config, state_dir)
    try:
        with client:
            if edit:
                text = _edit(client, post_id)
                if text is None:
                    typer.echo("the text is unchanged: approving it as it is", err=True)
            decision = client.approve(post_id, text=text)
    except _client.ClientError as exc:
        raise fail(str(exc), 1) from None
    _print_decision(decision)


@approvals_app.command("reject", short_help="Reject a held post: it is never published.")
def approvals_reject(
    post_id: PostId,
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Reject a held post: it is never published, and it trains the policy and the reward
    model with the reward approval.rejected_reward."""
    from plaudit.daemon import _client

    client, _folder = _connect(config, state_dir)
    try:
        with client:
            decision = client.reject(post_id)
    except _client.ClientError as exc:
        raise fail(str(exc), 1) from None
    _print_decision(decision)


def register(app: typer.Typer) -> None:
    app.add_typer(
        approvals_app,
        name="approvals",
        short_help="The approval queue: list, approve, edit or reject held posts.",
    )
