"""Planning a folder batch: which files of SRC are wanted, and where each protected copy goes in DST.

Walk SRC recursively, keep supported image suffixes that pass the include/exclude globs and mirror each one
into DST with the one naming scheme of ``pca_attack.io.names`` (``a/b/x.jpg`` -> ``DST/a/b/x.png`` for PNG
output; when ``x.jpg`` and ``x.png`` share a folder: ``x.jpg.png`` and ``x.png``; each certificate is
``<output>.json`` beside its output). DST == SRC or DST inside SRC is refused unless ``in_place``.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pca_attack.errors import UnsupportedImageError
from pca_attack.io.formats import INPUT_SUFFIXES, image_format
from pca_attack.io.names import output_names


class BatchError(Exception):
    """The batch cannot start (bad folders) or was aborted (a fatal processor error)."""


@dataclass(frozen=True)
class Task:
    """One source image and where its protected copy goes."""

    source: Path
    rel: str  # source path relative to SRC, with '/'
    output: Path
    out_rel: str  # output path relative to DST, with '/'


def check_folders(src: Path, dst: Path, *, in_place: bool = False) -> tuple[Path, Path]:
    """Resolve both folders; refuse DST == SRC or DST inside SRC unless ``in_place``."""
    src_r, dst_r = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src_r.is_dir():
        raise BatchError(f"source folder {src} does not exist or is not a folder")
    if dst_r.exists() and not dst_r.is_dir():
        raise BatchError(f"destination {dst} exists and is not a folder")
    if not in_place:
        if dst_r == src_r:
            raise BatchError(f"destination {dst} is the source folder; pass --in-place to allow it")
        if src_r in dst_r.parents:
            raise BatchError(f"destination {dst} is inside the source folder {src}; pass --in-place to allow it")
    return src_r, dst_r


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def wanted(rel: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    """Supported suffix, matched by an include glob (if any) and by no exclude glob.

    A glob matches the path relative to SRC (``*`` also crosses folders) or the bare file name.
    """
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(".pca-") or PurePosixPath(name).suffix.lower() not in INPUT_SUFFIXES:
        return False
    if include and not _matches(rel, include):
        return False
    return not (exclude and _matches(rel, exclude))


def walk_sources(src: Path, skip_dirs: Iterable[Path] = ()) -> list[str]:
    """Every file under ``src`` (relative '/' paths, sorted), not descending into ``skip_dirs``."""
    skip = {Path(d).resolve() for d in skip_dirs}
    found: list[str] = []
    for root, dirs, files in os.walk(src):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in skip)
        base = here.relative_to(src).as_posix()
        found.extend(f if base == "." else f"{base}/{f}" for f in files)
    return sorted(found)


def output_suffix(fmt: str) -> str:
    """The file suffix of output format ``fmt`` (aliases accepted); BatchError when unsupported."""
    try:
        return image_format(fmt).suffix
    except UnsupportedImageError as exc:
        raise BatchError(str(exc)) from None


def plan_tasks(src: Path, dst: Path, rels: Iterable[str], fmt: str) -> list[Task]:
    """Mirror ``rels`` into ``dst`` named by ``pca_attack.io.names.output_names`` (stable for a given set)."""
    ordered = sorted(set(rels))
    outputs = output_names(ordered, output_suffix(fmt))
    return [Task(src / rel, rel, dst / out_rel, out_rel) for rel, out_rel in zip(ordered, outputs, strict=True)]
