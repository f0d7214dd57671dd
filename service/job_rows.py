"""The tables of the job store (SQLAlchemy 2.0: ``jobs`` and ``items``) and the additive migration that gives
a database created by an earlier version the columns added since (owner, progress)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite drops the timezone: read every stored time back as UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)
    settings_json: Mapped[str] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # SHA-256 of the creating key
    items: Mapped[list[ItemRow]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="ItemRow.index"
    )


class ItemRow(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))  # sanitised display name, never a path
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    certificate_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    result_suffix: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # while running: {"step", "steps", "tile", "tiles", "eta_s"} of the attack (written at most ~2x a second)
    progress_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    job: Mapped[JobRow] = relationship(back_populates="items")


# columns added after the first release: (table, column, SQL type); old databases get them on start
ADDED_COLUMNS = (("jobs", "owner", "VARCHAR(64)"), ("items", "progress_json", "TEXT"))


def add_missing_columns(engine: Any) -> list[str]:
    """Add the columns of ``ADDED_COLUMNS`` that a database created by an earlier version lacks (their
    values stay NULL: old jobs are unowned, old items have no progress). Returns what was added."""
    added = []
    for table, column, kind in ADDED_COLUMNS:
        if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))
            added.append(f"{table}.{column}")
    return added
