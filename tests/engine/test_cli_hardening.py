"""Issue 11 (CLI / engine side of the hardening round): output files get the user's umask (0644 under
umask 022), not the temp file's 0600."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from pca_attack.io.files import atomic_write, current_umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        atomic_write(tmp_path / "a.png", b"bytes")
        atomic_write(tmp_path / "b.png", io.BytesIO(b"stream"))
        assert _mode(tmp_path / "a.png") == 0o644 and _mode(tmp_path / "b.png") == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "a.png", b"again")  # an overwrite takes the mode of the new write
        assert _mode(tmp_path / "a.png") == 0o600
        os.umask(0o002)
        atomic_write(tmp_path / "c.png", b"group")
        assert _mode(tmp_path / "c.png") == 0o664
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").read_bytes() == b"again"
