"""The publish journal the network faces keep in their state_dir."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from plaudit.faces import Published
from plaudit.faces._journal import JournalState, PublishJournal


def test_journal_records_survive_reopening(tmp_path: Path) -> None:
    journal = PublishJournal(tmp_path / "state" / "j.sqlite3")
    assert journal.get("k") is None
    entry = journal.begin("k", text="hello")
    assert entry.state is JournalState.PENDING and entry.attempts == 1 and entry.published is None
    assert journal.begin("k", text="hello").attempts == 2
    with pytest.raises(ValueError, match="different text"):
        journal.begin("k", text="another text")
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    journal.published("k", Published(ref="42", url="https://x/42", published_at=when))
    journal.close()
    reopened = PublishJournal(tmp_path / "state" / "j.sqlite3")
    entry = reopened.get("k")
    assert entry is not None and entry.state is JournalState.PUBLISHED
    assert entry.published == Published(ref="42", url="https://x/42", published_at=when)
    assert reopened.published_refs() == {"42"}
    reopened.close()


def test_discard_only_forgets_pending_and_unknown_is_counted(tmp_path: Path) -> None:
    journal = PublishJournal(tmp_path / "j.sqlite3")
    journal.begin("a", text="a")
    journal.discard("a")
    assert journal.get("a") is None
    journal.begin("b", text="b")
    journal.unknown("b", note="ReadTimeout")
    journal.discard("b")  # an unknown outcome is never forgotten
    entry = journal.get("b")
    assert entry is not None and entry.state is JournalState.UNKNOWN and entry.note == "ReadTimeout"
    assert journal.count(JournalState.UNKNOWN) == 1 and journal.count(JournalState.PENDING) == 0
    journal.close()
