"""`simulated`: the embedded default face, an audience that lives in a SQLite file.

History: the VADER tweets corpus (4,200 posts, see NOTICE-vader-tweets.txt) as posts of the
years 2013-2014 (post n at 2013-01-01 + n·2 h, give or take 40 min), followed in time by the
posts published through this face. Historical reactions follow the same audience model as live
posts, with the mean human rating / 4 as the sentiment (so the history teaches what the live
audience rewards); they are final (all arrived).

Live posts: at publish time the face computes the post's appeal (see `_audience`), draws its
final reaction counts and stores them with the seed; reactions then arrive over simulated time
with a decaying rate, mean `arrival_mean_hours`. The count at time t is the number of seeded
arrival times before t, so it never decreases and is the same for the same seed, post and t,
across restarts.

`appeal(texts)` (the optional `SimulatedAudience` capability) gives the expected score of text
that was never published: what a benchmark scores fresh samples of a policy with.

Time is the face's clock (the host's): on a `SimulatedClock` the audience lives at whatever
speed the host drives that clock, so keep `time_scale = 1`; on the wall clock, `time_scale`
simulated seconds pass per real second (1440: a day of reactions in a minute, for a demo).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt

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
from ._audience import (
    AudienceModel,
    arrival_offsets,
    collapse_punctuation,
    degenerate_penalties,
    draw_totals,
    seeded_rng,
    words,
)
from ._corpus import CorpusPost, load_corpus

__all__ = ["PenaltyWeights", "SimulatedConfig", "SimulatedFace"]

CORPUS_EPOCH = datetime(2013, 1, 1, tzinfo=UTC)
KINDS = ("likes", "reposts", "replies", "quotes")
DB_FILE = "simulated.sqlite3"


class PenaltyWeights(BaseModel):
    """How much each kind of penalty lowers a post's appeal (appeal is about -1..1 before)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    degenerate: NonNegativeFloat = 1.5  # punctuation spam, shouting, very short, word salad
    repetition: NonNegativeFloat = 2.0  # near-duplicate of a recent own post
    template: NonNegativeFloat = 1.0  # the same phrases again and again


class SimulatedConfig(FaceConfig):
    """Settings of the simulated audience. The defaults give about 30-130 likes per post from
    1,000 followers in real time; on the wall clock, set `time_scale = 1440` to see a day of
    reactions in a minute (on a simulated clock, leave it at 1: the clock sets the pace)."""

    account: str = "simulated"
    audience_size: PositiveInt = 1000
    time_scale: float = Field(default=1.0, gt=0)  # audience seconds per second of the clock
    arrival_mean_hours: float = Field(default=4.0, gt=0)  # mean delay of a reaction
    seed: int = 0
    preference: Literal["positive", "negative", "neutral", "intense"] = "positive"
    topics: dict[str, float] = Field(default_factory=dict)  # word -> appeal bonus
    base_rate: float = Field(default=0.03, gt=0, le=1)  # like share for a neutral post
    gain: float = Field(default=1.6, ge=0)
    noise_sigma: float = Field(default=0.25, ge=0, le=2)
    penalty_weights: PenaltyWeights = Field(default_factory=PenaltyWeights)
    repetition_window: PositiveInt = 50  # recent own posts the audience remembers
    max_length: PositiveInt = 280
    min_interval_seconds: NonNegativeFloat = 0.0
    history_page_size: PositiveInt = 200


_SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    published_at TEXT NOT NULL,
    seed INTEGER NOT NULL,
    time_scale REAL NOT NULL,
    arrival_mean_s REAL NOT NULL,
    likes INTEGER NOT NULL,
    reposts INTEGER NOT NULL,
    replies INTEGER NOT NULL,
    quotes INTEGER NOT NULL,
    appeal_json TEXT NOT NULL
);
"""


class SimulatedFace(Face[SimulatedConfig]):
    """The simulated audience (type "simulated"). It reads the time from `self.clock`: give it
    a `SimulatedClock` to run days of audience in a test."""

    type_name = "simulated"
    Config = SimulatedConfig

    def __init__(
        self,
        *,
        name: str,
        config: SimulatedConfig,
        state_dir: Path,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(name=name, config=config, state_dir=state_dir, clock=clock)
        self.model = AudienceModel(
            size=config.audience_size,
            base_rate=config.base_rate,
            gain=config.gain,
            noise_sigma=config.noise_sigma,
            preference=config.preference,
            topics=dict(config.topics),
            penalty_weights=config.penalty_weights.model_dump(),
        )
        self._db: sqlite3.Connection | None = None
        self._analyzer: Any = None
        self._lexicon: frozenset[str] | None = None
        self._arrivals: dict[tuple[str, str], np.ndarray[Any, np.dtype[np.float64]]] = {}

    # ---- storage -----------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILE

    def _store_error(self, exc: sqlite3.Error, doing: str) -> FaceError:
        """The one mapping from SQLite to the face errors."""
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return Transient(
                f"The simulated face's store {self.db_path} is locked by another process "
                f"while {doing}; try again, or stop the other process using it.",
                face=self.name,
            )
        return Permanent(
            f"The simulated face's store {self.db_path} failed while {doing} "
            f"({type(exc).__name__}: {exc}); move the file aside to start a fresh audience.",
            face=self.name,
        )

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.db_path, timeout=5.0)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.Error as exc:
                raise self._store_error(exc, "opening it") from exc
            except OSError as exc:
                raise Permanent(
                    f"Cannot create the simulated face's state folder {self.state_dir}: "
                    f"{exc.strerror}; point state_dir somewhere writable.",
                    face=self.name,
                ) from exc
            db.row_factory = sqlite3.Row
            self._db = db
        return self._db

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._conn().execute(sql, args))
        except sqlite3.Error as exc:
            raise self._store_error(exc, "reading posts") from exc

    # ---- the audience ------------------------------------------------------------------------

    def _vader(self) -> Any:
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()
            self._lexicon = frozenset(self._analyzer.lexicon)
        return self._analyzer

    def sentiment(self, text: str) -> float:
        """VADER compound sentiment (-1..1) of `text`, repeated punctuation collapsed first."""
        return float(self._vader().polarity_scores(collapse_punctuation(text))["compound"])

    def _recent(self) -> list[str]:
        """The own posts the audience remembers (repetition and template penalties)."""
        return [
            row["text"]
            for row in self._rows(
                "SELECT text FROM posts ORDER BY seq DESC LIMIT ?",
                (self.config.repetition_window,),
            )
        ]

    async def appeal(self, texts: Sequence[str]) -> list[float]:
        """The expected score of each text if it were published now (`SimulatedAudience`):
        its appeal against the recent own posts, as `publish` computes it; the mean final
        counts at that appeal (`AudienceModel.mean_totals`); weighted by `score_weights` and
        divided by the audience, as `score()` does. Each text is judged on its own against the
        same recent posts; nothing is stored."""
        self._require_open("appeal")
        if isinstance(texts, str):
            raise TypeError("appeal() takes a sequence of texts, not a single string.")
        recent = self._recent()
        self._vader()  # loads the lexicon the word-salad penalty reads
        w = self.config.score_weights
        out = []
        for text in texts:
            appeal = self.model.appeal(
                text, sentiment=self.sentiment(text), recent=recent, lexicon=self._lexicon
            )
            mean = self.model.mean_totals(appeal.total)
            weighted = (
                w.likes * mean["likes"]
                + w.reposts * mean["reposts"]
                + w.replies * mean["replies"]
                + w.quotes * mean["quotes"]
            )
            out.append(weighted / max(self.config.audience_size, 1))
        return out

    def _corpus_post(self, post: CorpusPost) -> HistoricalPost:
        jitter = float(seeded_rng(0, "corpus-time", str(post.id)).uniform(-40, 40))
        created = CORPUS_EPOCH + timedelta(hours=2 * (post.id - 1), minutes=jitter)
        self._vader()
        rating = max(-1.0, min(1.0, post.rating / 4))
        preference = self.model.preference_of(rating)
        # Whole words, as live posts are judged ("cat" is no bonus in "education").
        tokens = set(words(post.text))
        topic = sum(bonus for word, bonus in self.model.topics.items() if word.lower() in tokens)
        degenerate = sum(degenerate_penalties(post.text, self._lexicon).values())
        penalty = self.model.penalty_weights.get("degenerate", 0.0) * degenerate
        appeal = max(-3.0, min(2.0, preference + topic - penalty))
        totals = draw_totals(
            self.model, appeal, seeded_rng(self.config.seed, "corpus", str(post.id))
        )
        return HistoricalPost(
            id=f"vader-{post.id}",
            text=post.text,
            created_at=created,
            reactions=Reactions.model_validate(totals),
            audience=self.config.audience_size,
        )

    def _counts_at(self, row: sqlite3.Row, now: datetime) -> Reactions:
        published = datetime.fromisoformat(row["published_at"])
        elapsed = max(0.0, (now - published).total_seconds()) * float(row["time_scale"])
        counts = {}
        for kind in KINDS:
            key = (row["ref"], kind)
            offsets = self._arrivals.get(key)
            if offsets is None:
                rng = seeded_rng(int(row["seed"]), "arrivals", row["ref"], kind)
                offsets = arrival_offsets(int(row[kind]), float(row["arrival_mean_s"]), rng)
                self._arrivals[key] = offsets
            counts[kind] = int(np.searchsorted(offsets, elapsed, side="right"))
        return Reactions.model_validate(counts)

    def _own_post(self, row: sqlite3.Row, now: datetime) -> HistoricalPost:
        return HistoricalPost(
            id=row["ref"],
            text=row["text"],
            created_at=datetime.fromisoformat(row["published_at"]),
            reactions=self._counts_at(row, now),
            audience=self.config.audience_size,
            url=self._url(row["ref"]),
        )

    def _url(self, ref: str) -> str:
        return f"simulated://{self.name}/{ref}"

    def explain(self, ref: str) -> dict[str, Any] | None:
        """Why the audience reacts to a published post as it does: its appeal, with the
        preference, topic bonus and each penalty, and its final counts. None if unknown."""
        rows = self._rows("SELECT * FROM posts WHERE ref = ?", (ref,))
        if not rows:
            return None
        row = rows[0]
        return {
            "appeal": json.loads(row["appeal_json"]),
            "final": {kind: int(row[kind]) for kind in KINDS},
        }

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
        now = utc_datetime(self.clock)
        size = self.config.history_page_size
        yielded = 0
        last_seq: int | None = None
        while True:  # own posts, newest first, a page at a time
            rows = self._rows(
                "SELECT * FROM posts WHERE (? IS NULL OR seq < ?) ORDER BY seq DESC LIMIT ?",
                (last_seq, last_seq, size),
            )
            for row in rows:
                post = self._own_post(row, now)
                if since is not None and post.created_at < since:
                    return
                if until is None or post.created_at < until:
                    yield post
                    yielded += 1
                    if limit is not None and yielded >= limit:
                        return
            if len(rows) < size:
                break
            last_seq = int(rows[-1]["seq"])
        for item in reversed(load_corpus()):  # then the corpus, newest first
            post = self._corpus_post(item)
            if since is not None and post.created_at < since:
                return
            if until is not None and post.created_at >= until:
                continue
            yield post
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    async def _publish(self, draft: Draft, *, idempotency_key: str) -> Published:
        existing = self._rows("SELECT * FROM posts WHERE idempotency_key = ?", (idempotency_key,))
        if existing:
            row = existing[0]
            published_at = datetime.fromisoformat(row["published_at"])
            return Published(ref=row["ref"], url=self._url(row["ref"]), published_at=published_at)
        sentiment = self.sentiment(draft.text)
        appeal = self.model.appeal(
            draft.text, sentiment=sentiment, recent=self._recent(), lexicon=self._lexicon
        )
        now = utc_datetime(self.clock)
        db = self._conn()
        try:
            with db:  # one transaction: the post and its fate are stored together
                (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM posts").fetchone()
                ref = f"sim-{seq}"
                totals = draw_totals(
                    self.model, appeal.total, seeded_rng(self.config.seed, "post", ref, draft.text)
                )
                db.execute(
                    "INSERT INTO posts (seq, ref, idempotency_key, text, published_at, seed, "
                    "time_scale, arrival_mean_s, likes, reposts, replies, quotes, appeal_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        ref,
                        idempotency_key,
                        draft.text,
                        now.isoformat(),
                        self.config.seed,
                        self.config.time_scale,
                        self.config.arrival_mean_hours * 3600.0,
                        totals["likes"],
                        totals["reposts"],
                        totals["replies"],
                        totals["quotes"],
                        json.dumps({**appeal.as_dict(), "sentiment": sentiment}),
                    ),
                )
        except sqlite3.Error as exc:
            raise self._store_error(exc, "storing a published post") from exc
        return Published(ref=ref, url=self._url(ref), published_at=now)

    async def _reactions(self, refs: Sequence[str]) -> Sequence[ReactionSnapshot]:
        now = utc_datetime(self.clock)
        found: list[ReactionSnapshot] = []
        own = [r for r in refs if r.startswith("sim-")]
        if own:
            marks = ",".join("?" * len(own))
            for row in self._rows(f"SELECT * FROM posts WHERE ref IN ({marks})", own):
                found.append(
                    ReactionSnapshot(
                        ref=row["ref"],
                        found=True,
                        reactions=self._counts_at(row, now),
                        audience=self.config.audience_size,
                        read_at=now,
                    )
                )
        corpus = load_corpus()
        for ref in refs:
            number = ref.removeprefix("vader-")
            if ref.startswith("vader-") and number.isdigit() and 1 <= int(number) <= len(corpus):
                post = self._corpus_post(corpus[int(number) - 1])
                found.append(
                    ReactionSnapshot(
                        ref=ref,
                        found=True,
                        reactions=post.reactions,
                        audience=post.audience,
                        read_at=now,
                    )
                )
        return found

    async def _check(self) -> FaceInfo:
        (count,) = self._rows("SELECT COUNT(*) FROM posts")[0]
        return FaceInfo(
            face=self.name,
            type_name=self.type_name,
            account=self.config.account,
            audience=self.config.audience_size,
            limits=self.limits,
            details={
                "store": str(self.db_path),
                "posts_published": int(count),
                "history_corpus_posts": len(load_corpus()),
                "time_scale": self.config.time_scale,
                "preference": self.config.preference,
                "seed": self.config.seed,
            },
        )

    async def _aclose(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
