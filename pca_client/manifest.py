"""The batch manifest: ``DST/.pca-manifest.jsonl`` gets one JSON line per processed file *after* its output is
in place (status, source sha256, settings fingerprint, output path and sha256, certificate, error). The last
line of a source wins; a torn last line (``kill -9``) is ignored and repaired on the next append.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pca_attack.io.files import atomic_write

MANIFEST_NAME = ".pca-manifest.jsonl"
CSV_NAME = ".pca-manifest.csv"
CSV_COLUMNS = (
    "source",
    "status",
    "output",
    "error",
    "source_sha256",
    "settings_fingerprint",
    "output_sha256",
    "linf_255",
    "budget_ok",
    "psnr_db",
    "ssim",
    "time",
)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """Short stable hash of the attack + output settings (key order and None-valued keys ignored)."""
    clean = {k: v for k, v in sorted(settings.items()) if v is not None}
    blob = json.dumps(clean, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Manifest:
    """Append-only JSON-lines record of DST; the latest line per source wins."""

    def __init__(self, dst: Path) -> None:
        self.path = dst / MANIFEST_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.lines = 0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by kill -9
                if isinstance(entry, dict) and isinstance(entry.get("source"), str):
                    self.entries[entry["source"]] = entry
                    self.lines += 1

    def outputs(self) -> set[str]:
        """Output paths (relative to DST) the manifest knows, done or not."""
        return {e["output"] for e in self.entries.values() if isinstance(e.get("output"), str)}

    def append(self, entry: dict[str, Any]) -> None:
        """Append one line durably (flush + fsync); repairs a torn last line first."""
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            self.entries[entry["source"]] = entry
            self.lines += 1

    def write_csv(self, path: Path | None = None) -> Path:
        """A flat CSV view (certificate reduced to its headline numbers)."""
        target = path or self.path.with_name(CSV_NAME)
        rows = []
        for entry in self.entries.values():
            cert = entry.get("certificate") or {}
            row = {c: entry.get(c) for c in CSV_COLUMNS}
            row.update({k: cert.get(k) for k in ("linf_255", "budget_ok", "psnr_db", "ssim")})
            rows.append(row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(target, buf.getvalue().encode())
        return target
