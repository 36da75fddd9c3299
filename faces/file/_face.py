"""`file`: a face made of files, for people who post by hand or through another program.

- history: JSONL files (one post per line: `{"id", "text", "created_at", "likes", "reposts",
  "replies", "quotes", "audience", "url"}`; `text` and `created_at` (ISO-8601 with a zone, or
  epoch seconds) are required) or plain-text files (one post per line, or posts separated by
  blank lines; their posts are dated `text_epoch` + n hours in file order, oldest first, with
  ids `<file name>:<n>`);
- publish: appends `{"ref", "idempotency_key", "text", "published_at"}` to the `published`
  JSONL file, flushed and fsynced before `publish()` returns; the file is only ever appended to;
- reactions: read from the `reactions` JSONL file that a person or a program writes, one line
  `{"ref", "likes", "reposts", "replies", "quotes", "audience", "extra"}` per observation; the
  last line for a ref wins. Refs may be published refs or history ids.

Bad lines: with `on_bad_line = "error"` (the default) a malformed line raises `Permanent`
naming the file and line number; with "skip" it is skipped, logged and counted
(`check()` reports the count). A last line without a newline that does not parse yet is
treated as being written right now and ignored, in either mode. No file is ever rewritten.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, ValidationError

from .._api import Face
from .._clock import Clock, utc_datetime
from .._errors import FaceError, Permanent, Transient
from .._models import (
    Draft,
    FaceConfig,
    FaceInfo,
    HistoricalPost,
    Limits,
    Published,
    Reactions,
    ReactionSnapshot,
)

__all__ = ["FileConfig", "FileFace"]

log = structlog.get_logger("plaudit.faces.file")


class FileConfig(FaceConfig):
    """Where the file face reads and writes. Relative paths are taken from the working
    directory of the process; `published` and `reactions` default to files in the face's
    state folder."""

    history: list[Path] = Field(default_factory=list)
    history_format: Literal["auto", "jsonl", "lines", "paragraphs"] = "auto"
    text_epoch: datetime = datetime(2020, 1, 1, tzinfo=UTC)
    published: Path | None = None  # default: <state_dir>/published.jsonl
    reactions: Path | None = None  # default: <state_dir>/reactions.jsonl
    on_bad_line: Literal["error", "skip"] = "error"
    account: str = "file"
    audience: NonNegativeInt | None = None
    max_length: PositiveInt = 500
    min_interval_seconds: NonNegativeFloat = 0.0


@dataclass(frozen=True)
class _Line:
    path: Path
    number: int
    data: dict[str, Any]


def _parse_time(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str):
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone; add Z or +00:00")
        return moment.astimezone(UTC)
    raise ValueError(f"{value!r} is neither an ISO-8601 string nor epoch seconds")


def _reactions_of(data: dict[str, Any]) -> Reactions:
    return Reactions.model_validate(
        {k: data[k] for k in ("likes", "reposts", "replies", "quotes", "extra") if k in data}
    )


class FileFace(Face[FileConfig]):
    """The file face (type "file")."""

    type_name = "file"
    Config = FileConfig

    def __init__(
        self, *, name: str, config: FileConfig, state_dir: Path, clock: Clock | None = None
    ) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir, clock=clock)
        self.published_path = config.published or self.state_dir / "published.jsonl"
        self.reactions_path = config.reactions or self.state_dir / "reactions.jsonl"
        self.skipped_lines = 0
        self._write_lock = asyncio.Lock()

    # ---- reading files -----------------------------------------------------------------------

    def _os_error(self, exc: OSError, path: Path, doing: str) -> FaceError:
        """The one mapping from OS errors to face errors: a missing, unreadable or misplaced
        file is Permanent (fix the config); a full disk or I/O error may pass (Transient)."""
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EAGAIN, errno.EINTR):
            return Transient(
                f"Face '{self.name}' could not {doing} {path}: {exc.strerror}; this may pass "
                "(free disk space), then try again.",
                face=self.name,
            )
        return Permanent(
            f"Face '{self.name}' could not {doing} {path}: {exc.strerror or exc}; check the "
            "path in its config and the file's permissions.",
            face=self.name,
        )

    def _bad_line(self, path: Path, number: int, problem: str) -> None:
        if self.config.on_bad_line == "skip":
            self.skipped_lines += 1
            log.warning("bad line skipped", face=self.name, file=str(path), line=number)
            return
        raise Permanent(
            f"{path} line {number} {problem}. Fix or delete that line, or set "
            f'on_bad_line = "skip" in [faces.{self.name}] to skip such lines.',
            face=self.name,
        )

    def _read_text(self, path: Path, *, missing_ok: bool) -> str | None:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_ok:
                return None
            raise Permanent(
                f"Face '{self.name}' has no history file {path}; fix the `history` path in "
                f"[faces.{self.name}].",
                face=self.name,
            ) from None
        except UnicodeDecodeError as exc:
            raise Permanent(
                f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it "
                "to UTF-8.",
                face=self.name,
            ) from exc
        except OSError as exc:
            raise self._os_error(exc, path, "read") from exc

    def _jsonl(self, path: Path, *, missing_ok: bool) -> Iterator[_Line]:
        text = self._read_text(path, missing_ok=missing_ok)
        if text is None:
            return
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == len(lines):  # no newline yet: still being written
                    continue
                self._bad_line(path, number, f"is not valid JSON ({exc.msg})")
                continue
            if not isinstance(data, dict):
                self._bad_line(path, number, "is not a JSON object")
                continue
            yield _Line(path, number, data)

    def _text_posts(self, path: Path) -> list[HistoricalPost]:
        text = self._read_text(path, missing_ok=False) or ""
        fmt = self.config.history_format
        if fmt == "auto":
            fmt = "paragraphs" if "\n\n" in text.replace("\r\n", "\n").strip() else "lines"
        normal = text.replace("\r\n", "\n")
        chunks = normal.split("\n\n") if fmt == "paragraphs" else normal.split("\n")
        posts = [c.strip() for c in chunks]
        return [
            HistoricalPost(
                id=f"{path.name}:{n}",
                text=post,
                created_at=self.config.text_epoch + timedelta(hours=n),
                audience=self.config.audience,
            )
            for n, post in enumerate((p for p in posts if p), start=1)
        ]

    def _history_posts(self, path: Path) -> list[HistoricalPost]:
        fmt = self.config.history_format
        is_jsonl = fmt == "jsonl" or (fmt == "auto" and path.suffix in (".jsonl", ".ndjson"))
        if not is_jsonl:
            return self._text_posts(path)
        posts = []
        for line in self._jsonl(path, missing_ok=False):
            data = line.data
            try:
                posts.append(
                    HistoricalPost(
                        id=str(data.get("id") or f"{path.name}:{line.number}"),
                        text=data["text"],
                        created_at=_parse_time(data["created_at"]),
                        reactions=_reactions_of(data),
                        audience=data.get("audience", self.config.audience),
                        url=data.get("url"),
                    )
                )
            except KeyError as exc:
                self._bad_line(path, line.number, f"has no {exc.args[0]!r} key")
            except (ValueError, ValidationError) as exc:
                problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._bad_line(path, line.number, f"has a bad value: {problem}")
        return posts

    def _published(self) -> list[_Line]:
        return list(self._jsonl(self.published_path, missing_ok=True))

    def _latest_reactions(self) -> dict[str, _Line]:
        latest: dict[str, _Line] = {}
        for line in self._jsonl(self.reactions_path, missing_ok=True):
            ref = line.data.get("ref")
            if not isinstance(ref, str) or not ref:
                self._bad_line(line.path, line.number, 'has no "ref" string')
                continue
            latest[ref] = line
        return latest

    def _snapshot(self, ref: str, line: _Line, now: datetime) -> ReactionSnapshot | None:
        try:
            reactions = _reactions_of(line.data)
            audience = line.data.get("audience", self.config.audience)
            return ReactionSnapshot(
                ref=ref, found=True, reactions=reactions, audience=audience, read_at=now
            )
        except ValidationError as exc:
            self._bad_line(line.path, line.number, f"has bad counts: {exc.errors()[0]['msg']}")
            return None

    # ---- the face ----------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return Limits(
            max_length=self.config.max_length,
            min_interval=timedelta(seconds=self.config.min_interval_seconds),
        )

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        posts: list[HistoricalPost] = []
        for path in self.config.history:
            posts.extend(self._history_posts(Path(path)))
        now = utc_datetime(self.clock)
        reactions = self._latest_reactions()
        for line in self._published():
            data = line.data
            try:
                post = HistoricalPost(
                    id=data["ref"],
                    text=data["text"],
                    created_at=_parse_time(data["published_at"]),
                    audience=self.config.audience,
                )
            except (KeyError, ValueError, ValidationError) as exc:
                self._bad_line(line.path, line.number, f"is not a published post ({exc})")
                continue
            posts.append(post)
        # The reactions file may update the counts of any post, published or historical.
        merged = []
        for post in posts:
            seen = reactions.get(post.id)
            snap = self._snapshot(post.id, seen, now) if seen else None
            if snap is not None:
                post = post.model_copy(
                    update={"reactions": snap.reactions, "audience": snap.audience}
                )
            merged.append(post)
        merged.sort(key=lambda p: p.created_at, reverse=True)
        for post in merged:
            yield post

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        async with self._write_lock:
            for line in self._published():
                if line.data.get("idempotency_key") == idempotency_key:
                    return Published(
                        ref=line.data["ref"],
                        published_at=_parse_time(line.data["published_at"]),
                    )
            now = utc_datetime(self.clock)
            digest = hashlib.sha256(f"{self.name}\x1f{idempotency_key}".encode()).hexdigest()
            record = {
                "ref": f"file-{digest[:16]}",
                "idempotency_key": idempotency_key,
                "text": draft.text,
                "published_at": now.isoformat(),
            }
            path = self.published_path
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a+b") as f:
                    # Never glue a record onto a torn last line left by a crash.
                    f.seek(0, os.SEEK_END)
                    lead = b""
                    if f.tell() > 0:
                        f.seek(-1, os.SEEK_END)
                        lead = b"" if f.read(1) == b"\n" else b"\n"
                    encoded = json.dumps(record, ensure_ascii=False).encode() + b"\n"
                    f.write(lead + encoded)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise self._os_error(exc, path, "append to") from exc
            return Published(ref=record["ref"], published_at=now)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        now = utc_datetime(self.clock)
        latest = self._latest_reactions()
        known = {line.data.get("ref") for line in self._published()}
        for path in self.config.history:
            known.update(p.id for p in self._history_posts(Path(path)))
        out = []
        for ref in refs:
            if ref in latest:
                snap = self._snapshot(ref, latest[ref], now)
                if snap is not None:
                    out.append(snap)
            elif ref in known:  # published, no reactions written yet
                out.append(
                    ReactionSnapshot(
                        ref=ref, found=True, audience=self.config.audience, read_at=now
                    )
                )
        return out

    async def _check(self) -> FaceInfo:
        history = 0
        for path in self.config.history:
            history += len(self._history_posts(Path(path)))
        published = len(self._published())
        reactions = len(self._latest_reactions())
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=self.config.account,
            audience=self.config.audience,
            limits=self.limits,
            details={
                "history_files": [str(p) for p in self.config.history],
                "history_posts": history,
                "published_file": str(self.published_path),
                "published_posts": published,
                "reactions_file": str(self.reactions_path),
                "refs_with_reactions": reactions,
                "skipped_lines": self.skipped_lines,
            },
        )
