"""`file`: a face made of files, for people who post by hand or through another program.

- history: JSONL files (one post per line: `{"id", "text", "created_at", "likes", "reposts",
  "replies", "quotes", "audience", "url"}`; `text` and `created_at` (ISO-8601 with a zone, or
  epoch seconds) are required) or plain-text files (one post per line, or posts separated by
  blank lines; their posts are dated `text_epoch` + n hours in file order, oldest first, with
  ids `<file name>:<n>`);
- publish: appends `{"ref", "idempotency_key", "text", "published_at"}` to the `published`
  JSONL file, fsynced before `publish()` returns. The file is a write-ahead log: an append
  that fails (a full disk) is cut back to the previous size, and a torn last record left by a
  crash (no newline) is cut before the next append or the first read, with a warning naming
  the bytes cut; complete lines are never removed;
- reactions: read from the `reactions` JSONL file that a person or a program writes, one line
  `{"ref", "likes", "reposts", "replies", "quotes", "audience", "extra"}` per observation; the
  last line for a ref wins. Refs may be published refs or history ids.

Files are read line by line (never whole) and must be regular files: a device such as
/dev/full, a pipe or a folder is refused when the config is validated and when it is read.
A line longer than `MAX_LINE_BYTES` is a bad line.

Bad lines: with `on_bad_line = "error"` (the default) a malformed line raises `Permanent`
naming the file and line number; with "skip" it is skipped, logged and counted
(`check()` reports the count). A last line without a newline that does not parse yet is
treated as being written right now and ignored, in either mode. Only the face's own
`published` file is ever rewritten, and only its torn tail.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final, Literal

import structlog
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

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

# A post is a few KB; a longer line is a bad line, read past in chunks of this size, so that
# no file (a runaway writer, a device mistaken for a file) can make the face hold it whole.
MAX_LINE_BYTES: Final = 1 << 20
# Errors that pass by themselves or once space is freed: a publish may be retried.
_PASSING: Final = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free disk space"} | {
    code: "this may pass" for code in (errno.EIO, errno.EAGAIN, errno.EINTR)
}


def _regular_or_creatable(path: Path, key: str) -> Path:
    """`path` if it names a regular file or one that can be created. Only definite problems
    are refused: a path this user cannot look at may be the daemon's."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            raise ValueError(
                f"{path} cannot be created: {parent} is a file, not a folder; set `{key}` to a "
                "path in a folder"
            ) from None
        return path
    except NotADirectoryError:
        raise ValueError(
            f"{path} cannot be created: a folder on its way is a file; set `{key}` to a path "
            "in a folder"
        ) from None
    except OSError:  # permission denied, a loop: the face reports it when it reads
        return path
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path} is a folder; set `{key}` to a file, such as {path}/posts.jsonl")
    if not stat.S_ISREG(mode):
        raise ValueError(
            f"{path} is not a regular file but a device, a pipe or a socket (reading it may "
            f"never end); set `{key}` to a file"
        )
    return path


class FileConfig(FaceConfig):
    """Where the file face reads and writes. Relative paths are taken from the working
    directory of the process; `published` and `reactions` default to files in the face's
    state folder. Each must be a regular file, or for `published` and `reactions` one that can
    be created."""

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

    @field_validator("history")
    @classmethod
    def _history_files(cls, paths: list[Path]) -> list[Path]:
        # A missing history file is reported when it is read: it may be mounted later.
        return [_regular_or_creatable(p, "history") for p in paths]

    @field_validator("published", "reactions")
    @classmethod
    def _own_files(cls, path: Path | None, info: Any) -> Path | None:
        return None if path is None else _regular_or_creatable(path, str(info.field_name))


@dataclass(frozen=True)
class _Line:
    path: Path
    number: int
    data: dict[str, Any]


def _parse_time(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):  # out of range, or NaN
            raise ValueError(f"{value!r} is not a time in epoch seconds") from None
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


def _is_record(raw: bytes) -> bool:
    """Whether `raw` is one whole published record (a tail that only lost its newline)."""
    try:
        data = json.loads(raw)
    except ValueError:  # not JSON, not UTF-8
        return False
    return isinstance(data, dict) and all(
        isinstance(data.get(k), str) for k in ("ref", "idempotency_key", "published_at")
    )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # a regular file never does this unless it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _last_newline_end(fd: int, size: int) -> int:
    """The offset just past the last newline of the file (0 when there is none), read from
    the end in bounded chunks."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


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
        self._tail_checked = False  # the published file's tail is checked once, at first use

    # ---- reading files -----------------------------------------------------------------------

    def _os_error(self, exc: OSError, path: Path, doing: str) -> FaceError:
        """The one mapping from OS errors to face errors: a missing, unreadable or misplaced
        file is Permanent (fix the config); a full disk or I/O error may pass (Transient)."""
        passing = _PASSING.get(exc.errno or 0)
        if passing is not None:
            return Transient(
                f"Face '{self.name}' could not {doing} {path}: {exc.strerror}; {passing}, then "
                "try again.",
                face=self.name,
            )
        if exc.errno == errno.EFBIG:
            fix = "move it away or raise the file size limit (ulimit -f)"
        else:
            fix = "check the path in its config and the file's permissions"
        return Permanent(
            f"Face '{self.name}' could not {doing} {path}: {exc.strerror or exc}; {fix}.",
            face=self.name,
        )

    def _not_regular(self, path: Path, key: str) -> Permanent:
        return Permanent(
            f"Face '{self.name}': {path} is not a regular file (a folder, a device or a pipe); "
            f"set `{key}` in [faces.{self.name}] to a file.",
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

    def _open(self, path: Path, key: str, *, missing_ok: bool) -> IO[bytes] | None:
        """`path` open for reading, after checking that it is a regular file (a device or a
        pipe would be read without end; O_NONBLOCK keeps a pipe from blocking the open)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise Permanent(
                f"Face '{self.name}' has no history file {path}; fix the `history` path in "
                f"[faces.{self.name}].",
                face=self.name,
            ) from None
        except OSError as exc:
            raise self._os_error(exc, path, "read") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._not_regular(path, key)
        return os.fdopen(fd, "rb")

    def _lines(
        self, path: Path, key: str, *, missing_ok: bool, report: bool = True
    ) -> Iterator[tuple[int, str | None, bool]]:
        """(number, text, terminated) for each line of `path`, read one bounded line at a time.
        `text` is None for a line that is too long or not UTF-8 (reported as bad when
        `report`: a first pass over a file leaves that to the second)."""
        f = self._open(path, key, missing_ok=missing_ok)
        if f is None:
            return
        with f:
            number = 0
            while True:
                try:
                    raw = f.readline(MAX_LINE_BYTES + 1)
                    terminated = raw.endswith(b"\n")
                    too_long = not terminated and len(raw) > MAX_LINE_BYTES
                    while too_long and not terminated:  # read past the rest, keeping none
                        more = f.readline(MAX_LINE_BYTES)
                        if not more:
                            break
                        terminated = more.endswith(b"\n")
                except OSError as exc:
                    raise self._os_error(exc, path, "read") from exc
                if not raw:
                    return
                number += 1
                if too_long:
                    if report:
                        self._bad_line(path, number, f"is longer than {MAX_LINE_BYTES} bytes")
                    yield number, None, terminated
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    if terminated and report:  # a last line may end inside a character
                        self._bad_line(
                            path, number, f"is not UTF-8 text ({exc.reason}); convert the file"
                        )
                    yield number, None, terminated
                    continue
                yield number, text.removesuffix("\n").removesuffix("\r"), terminated

    def _jsonl(self, path: Path, key: str, *, missing_ok: bool) -> Iterator[_Line]:
        for number, line, terminated in self._lines(path, key, missing_ok=missing_ok):
            if line is None or not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, or a number of over 4300 digits
                if not terminated:  # no newline yet: still being written
                    continue
                problem = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                self._bad_line(path, number, f"is not valid JSON ({problem})")
                continue
            except RecursionError:
                self._bad_line(path, number, "is nested too deeply to be a post")
                continue
            if not isinstance(data, dict):
                self._bad_line(path, number, "is not a JSON object")
                continue
            yield _Line(path, number, data)

    def _is_paragraphs(self, path: Path) -> bool:
        """Whether a text file separates its posts by blank lines: an empty line with text
        both before and after it (one pass, bounded memory)."""
        text_before = blank_between = False
        for _, line, _ in self._lines(path, "history", missing_ok=False, report=False):
            if line is None:
                continue
            if line.strip():
                if blank_between:
                    return True
                text_before = True
            elif not line and text_before:
                blank_between = True
        return False

    def _text_chunks(self, path: Path, fmt: str) -> Iterator[str]:
        """The posts of a text file in file order: one per line, or one per paragraph (lines
        up to an empty line; a paragraph longer than MAX_LINE_BYTES is a bad line)."""
        if fmt == "lines":
            for _, line, _ in self._lines(path, "history", missing_ok=False):
                if line is not None and line.strip():
                    yield line.strip()
            return
        lines: list[str] = []
        size, first = 0, 0
        for number, line, _ in self._lines(path, "history", missing_ok=False):
            if line is None:
                continue
            if line:
                first = first or number
                size += len(line) + 1
                if size <= MAX_LINE_BYTES:
                    lines.append(line)
                continue
            if size > MAX_LINE_BYTES:
                self._bad_line(
                    path, first, f"starts a paragraph longer than {MAX_LINE_BYTES} bytes"
                )
            elif "\n".join(lines).strip():
                yield "\n".join(lines).strip()
            lines, size, first = [], 0, 0
        if size > MAX_LINE_BYTES:
            self._bad_line(path, first, f"starts a paragraph longer than {MAX_LINE_BYTES} bytes")
        elif "\n".join(lines).strip():
            yield "\n".join(lines).strip()

    def _text_posts(self, path: Path) -> list[HistoricalPost]:
        fmt = self.config.history_format
        if fmt == "auto":
            fmt = "paragraphs" if self._is_paragraphs(path) else "lines"
        return [
            HistoricalPost(
                id=f"{path.name}:{n}",
                text=post,
                created_at=self.config.text_epoch + timedelta(hours=n),
                audience=self.config.audience,
            )
            for n, post in enumerate(self._text_chunks(path, fmt), start=1)
        ]

    def _history_posts(self, path: Path) -> list[HistoricalPost]:
        fmt = self.config.history_format
        is_jsonl = fmt == "jsonl" or (fmt == "auto" and path.suffix in (".jsonl", ".ndjson"))
        if not is_jsonl:
            return self._text_posts(path)
        posts = []
        for line in self._jsonl(path, "history", missing_ok=False):
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

    def _published(self) -> Iterator[_Line]:
        if not self._tail_checked:
            self._repair_tail(reading=True)
        return self._jsonl(self.published_path, "published", missing_ok=True)

    def _latest_reactions(self) -> dict[str, _Line]:
        latest: dict[str, _Line] = {}
        for line in self._jsonl(self.reactions_path, "reactions", missing_ok=True):
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

    # ---- the published file: a write-ahead log -------------------------------------------------

    def _open_published(self, *, reading: bool) -> int | None:
        """The published file open for writing and locked (flock: a second process that reads
        it, `plaudit train offline --face`, repairs its tail only under the same lock). None
        when there is no file, or when only `reading` and this user may not write it (reads
        pass over a torn last line anyway)."""
        path = self.published_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if reading and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return None
            raise self._os_error(exc, path, "open") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._not_regular(path, "published")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _repair_tail(self, *, reading: bool = False) -> None:
        """Cut a torn last record (bytes after the last newline: a crash mid-append) so that the
        next record starts a line of its own and no read meets a broken middle line. A tail
        that is a whole record, short of its newline only, gets the newline instead."""
        path = self.published_path
        fd = self._open_published(reading=reading)
        if fd is None:
            self._tail_checked = True
            return
        try:
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                self._tail_checked = True
                return
            start = _last_newline_end(fd, size)
            torn = size - start
            if torn <= MAX_LINE_BYTES and _is_record(os.pread(fd, torn, start)):
                os.pwrite(fd, b"\n", size)
                log.warning(
                    "published file: its last record had lost its newline; restored",
                    face=self.name,
                    file=str(path),
                )
            else:
                os.ftruncate(fd, start)
                log.warning(
                    "published file: cut a torn last record (a crash or a full disk during an "
                    "append); nothing complete was removed",
                    face=self.name,
                    file=str(path),
                    bytes=torn,
                    kept_bytes=start,
                )
            os.fsync(fd)
            self._tail_checked = True
        except OSError as exc:
            raise self._os_error(exc, path, "repair the end of") from exc
        finally:
            os.close(fd)

    def _append(self, data: bytes) -> None:
        """Append one record and fsync it, or leave the file exactly as it was: a write that
        fails half-way (no space left) is cut back to the previous size."""
        path = self.published_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise self._os_error(exc, path, "append to") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._not_regular(path, "published")
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            os.lseek(fd, size, os.SEEK_SET)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                except OSError as cut:  # the tail check before the next append cuts it then
                    self._tail_checked = False
                    log.error(
                        "published file: could not cut a failed append back",
                        face=self.name,
                        file=str(path),
                        error=cut.strerror,
                    )
                raise self._os_error(exc, path, "append to") from exc
        finally:
            os.close(fd)

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
                if line.data.get("idempotency_key") != idempotency_key:
                    continue
                try:
                    return Published(
                        ref=line.data["ref"], published_at=_parse_time(line.data["published_at"])
                    )
                except (KeyError, ValueError, ValidationError) as exc:
                    self._bad_line(line.path, line.number, f"is not a published post ({exc})")
            now = utc_datetime(self.clock)
            digest = hashlib.sha256(f"{self.name}\x1f{idempotency_key}".encode()).hexdigest()
            record = {
                "ref": f"file-{digest[:16]}",
                "idempotency_key": idempotency_key,
                "text": draft.text,
                "published_at": now.isoformat(),
            }
            # The tail is checked before every append: a failed cut-back is mended here.
            self._repair_tail()
            self._append(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            return Published(ref=record["ref"], published_at=now)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        now = utc_datetime(self.clock)
        latest = self._latest_reactions()
        known = {ref for line in self._published() if isinstance(ref := line.data.get("ref"), str)}
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
        published = sum(1 for _ in self._published())
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
