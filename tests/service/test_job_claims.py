"""Two processes on one jobs database (Ray Serve replicas sharing PCA_DATABASE_URL) never claim the same
item: the claim is a compare-and-set on the item's status."""

from __future__ import annotations

from pathlib import Path

from service.job_store import JobStore


def test_two_stores_on_one_database_never_claim_the_same_item(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first, second = JobStore(url, tmp_path, retention_s=60), JobStore(url, tmp_path, retention_s=60)
    first.create([(f"{i}.png", b"x" * 10) for i in range(6)], {"steps": 1})
    # the second store read the queue before the first one's claim was committed: simulate by claiming
    # in turn with overlapping limits
    taken_first = first.claim(4)
    taken_second = second.claim(4)
    taken_again = first.claim(4)
    indices = [c.index for c in taken_first + taken_second + taken_again]
    assert sorted(indices) == list(range(6))  # every item exactly once
    assert len(set(indices)) == len(indices)


def test_the_claim_is_a_compare_and_set(tmp_path: Path) -> None:
    """The second taker of one queued item loses, whatever its (possibly stale) view of the queue said."""
    from sqlalchemy import select

    from service.job_store import ItemRow, _take

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store, other = JobStore(url, tmp_path, retention_s=60), JobStore(url, tmp_path, retention_s=60)
    store.create([("a.png", b"x" * 10)], {"steps": 1})
    with store.sessions.begin() as s:
        item_id = s.scalars(select(ItemRow.id)).one()
    with other.sessions.begin() as s:
        assert _take(s, item_id)  # another replica wins
    with store.sessions.begin() as s:
        assert not _take(s, item_id)  # this one loses and will not run the item
