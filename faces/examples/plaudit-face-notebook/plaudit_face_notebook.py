"""A complete plaudit face in one module: posts live in a JSON notebook file, and a person
gives them stars by editing the file's "stars" table ({"ref": number}). Stars count as likes."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from plaudit.faces import (
    Draft,
    Face,
    FaceConfig,
    FaceInfo,
    HistoricalPost,
    Limits,
    Permanent,
    Published,
    Reactions,
    ReactionSnapshot,
    utc_now,
)


class NotebookConfig(FaceConfig):
    audience: int = 10  # how many people read the notebook
    max_length: int = 200


class NotebookFace(Face[NotebookConfig]):
    type_name = "notebook"  # must equal the entry-point name
    Config = NotebookConfig

    @property
    def path(self) -> Path:
        return self.state_dir / "notebook.json"

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {"posts": [], "stars": {}}
        except (OSError, ValueError) as exc:  # translate at the boundary, once
            raise Permanent(f"Cannot read {self.path}: {exc}; fix or move the file.") from exc

    def _save(self, book: dict[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(book, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: the notebook is never half-written

    def _post(self, entry: dict[str, Any], stars: dict[str, int]) -> HistoricalPost:
        return HistoricalPost(
            id=entry["ref"],
            text=entry["text"],
            created_at=datetime.fromisoformat(entry["at"]),
            reactions=Reactions(likes=stars.get(entry["ref"], 0)),
            audience=self.config.audience,
        )

    @property
    def limits(self) -> Limits:
        return Limits(max_length=self.config.max_length)

    async def _history(
        self, *, since: datetime | None, until: datetime | None, limit: int | None
    ) -> AsyncIterator[HistoricalPost]:
        book = self._load()
        posts = [self._post(entry, book["stars"]) for entry in book["posts"]]
        for post in sorted(posts, key=lambda p: p.created_at, reverse=True):
            yield post

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        book = self._load()
        for entry in book["posts"]:
            if entry.get("key") == idempotency_key:  # published before: same post
                return Published(ref=entry["ref"], published_at=datetime.fromisoformat(entry["at"]))
        now = utc_now()
        ref = f"n{len(book['posts']) + 1}"
        book["posts"].append(
            {"ref": ref, "key": idempotency_key, "text": draft.text, "at": now.isoformat()}
        )
        self._save(book)
        return Published(ref=ref, published_at=now)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        book, now = self._load(), utc_now()
        known = {entry["ref"] for entry in book["posts"]}
        return [
            ReactionSnapshot(
                ref=ref,
                found=True,
                reactions=Reactions(likes=book["stars"].get(ref, 0)),
                audience=self.config.audience,
                read_at=now,
            )
            for ref in refs
            if ref in known
        ]

    async def _check(self) -> FaceInfo:
        book = self._load()
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=str(self.path),
            audience=self.config.audience,
            limits=self.limits,
            details={"posts": len(book["posts"])},
        )
