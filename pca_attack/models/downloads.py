"""Weights published as plain files (not on the Hugging Face hub): fetched once into a local folder, checked.

The tiny autoencoders of FLUX.2 and Sana (registry names ``taef2``, ``taesana``) are ``.pth`` files in the
``madebyollin/taesd`` GitHub repository. Their registry entries name each file by a URL pinned to one commit,
with the size and SHA-256 of the bytes this project ran (``RemoteFile``). ``fetch`` returns the local copy,
downloading it when it is missing or does not match:

* where: ``PCA_MODELS_DIR`` (a folder), else ``$XDG_CACHE_HOME/pca-attack/models``, else
  ``~/.cache/pca-attack/models``; one sub-folder per entry (``taef2/taef2_encoder.pth``), so a folder copied
  from a machine with network access works offline, and ``--model <that sub-folder>`` works too;
* a download is streamed into a temporary file beside the target, never read past the expected size, and
  renamed into place only when size and checksum match: an interrupted, truncated or altered download leaves
  nothing the loader would read;
* offline (``--offline``, ``HF_HUB_OFFLINE=1``) nothing is requested; a missing file is a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from pca_attack.errors import ModelNotFoundError
from pca_attack.models.registry import ModelEntry, RemoteFile

log = logging.getLogger("pca_attack.downloads")  # the CLI shows its INFO lines: a first run says what it fetches
MODELS_ENV = "PCA_MODELS_DIR"
CHUNK = 1 << 20  # bytes read per network call


def models_folder() -> Path:
    """The folder the downloaded weights are kept in (see the module docstring)."""
    chosen = os.environ.get(MODELS_ENV, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "pca-attack" / "models"


def local_path(entry: ModelEntry, file: RemoteFile) -> Path:
    """Where ``file`` of ``entry`` lives once downloaded."""
    return models_folder() / entry.name / file.name


def file_of(entry: ModelEntry, role: str) -> RemoteFile | None:
    """The entry's ``role`` ("encoder" | "decoder") file, or None when none is published."""
    return next((f for f in entry.files if f.role == role), None)


def matches(path: Path, file: RemoteFile) -> bool:
    """True when ``path`` holds exactly the published bytes (size, then SHA-256)."""
    if not path.is_file() or path.stat().st_size != file.size:
        return False
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest() == file.sha256


def is_cached(entry: ModelEntry) -> bool:
    """Every published file of ``entry`` is here and matches."""
    return bool(entry.files) and all(matches(local_path(entry, f), f) for f in entry.files)


def _missing(entry: ModelEntry, file: RemoteFile, why: str) -> ModelNotFoundError:
    target = local_path(entry, file)
    return ModelNotFoundError(
        f"model {entry.name!r}: {file.name} is not available ({why}). Fix: run `pca-protect models download "
        f"{entry.name}` on a machine with network access (it writes {target}; copy that folder here, or point "
        f"{MODELS_ENV} at it), or download {file.url} yourself and pass its folder with --model PATH. To try "
        f"the tool without it: --model demo (a bundled toy that protects nothing)."
    )


def fetch(entry: ModelEntry, role: str, offline: bool, timeout: float = 30.0) -> Path | None:
    """The local copy of the entry's ``role`` file (downloaded when missing or altered); None when the entry
    publishes no such file (e.g. an encoder-only model's decoder)."""
    file = file_of(entry, role)
    if file is None:
        return None
    target = local_path(entry, file)
    if matches(target, file):
        return target
    if offline:
        why = "it does not match the published checksum" if target.exists() else "not downloaded"
        raise _missing(entry, file, f"{why}, and --offline (or HF_HUB_OFFLINE) forbids downloading")
    log.info("fetching %s for model %r (%.1f MB, once) from %s into %s", file.name, entry.name, file.size / 1e6,
             urllib.parse.urlsplit(file.url).netloc, target.parent)
    try:
        download(file, target, timeout)
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors; ValueError: size or checksum
        raise _missing(entry, file, f"download failed: {type(exc).__name__}: {exc}") from None
    return target


def download(file: RemoteFile, target: Path, timeout: float) -> None:
    """Stream ``file.url`` into ``target`` atomically; ValueError when the bytes are not the published ones."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{file.name}.", suffix=".part")
    part = Path(name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(descriptor, "wb") as out, urllib.request.urlopen(file.url, timeout=timeout) as response:
            while size <= file.size and (chunk := response.read(CHUNK)):  # never past one chunk over the size
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        if size != file.size or digest.hexdigest() != file.sha256:
            raise ValueError(f"{file.url} sent {size} bytes with SHA-256 {digest.hexdigest()[:16]}..., expected "
                             f"{file.size} bytes with {file.sha256[:16]}...; nothing was kept")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
