"""The one naming scheme of outputs, used by every command, the folder runner, the job zip and the web page.

* An output keeps its source's name with the output format's suffix: ``café 猫.jpg`` -> ``café 猫.png``.
* Its certificate is ``<output name>.json`` beside it: ``café 猫.png.json``.
* When several sources of one folder would get the same output name (``a.jpg`` and ``a.png`` -> ``a.png``;
  compared without case, as macOS and Windows do), the source already named like the output keeps it and
  every other one keeps its whole name: ``a.jpg.png``. Names still equal after that (the same name uploaded
  twice) are numbered in input order, a plain name winning over a whole-name one: ``a.jpg (2).png``.
* The names depend on the set of source names alone (never on timing or on what exists on disk), so a
  resumed batch plans the same outputs.

Names that come from a user (uploads) are cleaned first with :func:`clean_name`: the letters of every
language are kept; path separators, ``..``, control characters and characters no file system accepts are
not. HTTP headers carry such a name with RFC 5987 (:func:`content_disposition`). Torch-free.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import quote

MAX_NAME_BYTES = 200  # UTF-8 bytes of a cleaned name (file systems allow 255; room for ".png.json")
CERTIFICATE_SUFFIX = ".json"
# characters no common file system (or shell-friendly name) should get: Windows' reserved set and separators
_FORBIDDEN = re.compile(r'[<>:"/\\|?*]')
_SPACES = re.compile(r"\s+")
_ASCII_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _keep(char: str) -> str:
    """Control characters become a space; bidi overrides, other invisible format characters, surrogates,
    private-use and unassigned code points are dropped (zero-width joiners, needed by some scripts, stay)."""
    category = unicodedata.category(char)
    if category == "Cc":
        return " "
    if category.startswith("C") and char not in "\u200c\u200d":
        return ""
    return char


def _truncate(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` UTF-8 bytes, keeping its suffix and never splitting a character."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    suffix = f".{ext}" if dot and stem and len(ext.encode()) <= 16 else ""
    body = stem if suffix else name
    room = limit - len(suffix.encode())
    return body.encode()[:room].decode("utf-8", "ignore").rstrip(" .") + suffix


def clean_name(name: str | None, default: str = "image") -> str:
    """A user-given file name made safe as one file name, a zip entry and (via RFC 5987) a header value.

    Keeps letters of every script, digits, spaces and punctuation; drops any folder part, control
    characters and ``<>:"/\\|?*``; never returns ``.``/``..``/a hidden name; NFC; at most 200 UTF-8 bytes.
    ``default`` when nothing is left.
    """
    text = unicodedata.normalize("NFC", name or "")
    base = re.split(r"[\\/]", text)[-1]
    base = "".join(_keep(c) for c in base)
    base = _SPACES.sub(" ", _FORBIDDEN.sub("_", base)).strip(" ._")
    return _truncate(base, MAX_NAME_BYTES) or default


def ascii_name(name: str, default: str = "image") -> str:
    """The ASCII stand-in of a name for old clients (``filename=`` of Content-Disposition): accents
    folded (``café`` -> ``cafe``), other characters become ``_``; ``default`` when no letter is left."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""

    def fold(text: str) -> str:
        plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return _ASCII_UNSAFE.sub("_", plain).strip(" ._")

    stem_a, ext_a = fold(stem), fold(ext)
    if not stem_a.replace("_", ""):
        stem_a = default
    return f"{stem_a}.{ext_a}" if ext_a else stem_a


def content_disposition(name: str, kind: str = "attachment") -> str:
    """``attachment; filename="ascii"; filename*=UTF-8''percent-encoded`` (RFC 6266 / RFC 5987)."""
    return f"{kind}; filename=\"{ascii_name(name)}\"; filename*=UTF-8''{quote(name, safe='')}"


def _stem(name: str) -> str:
    """The name without its last suffix (``a.b.jpg`` -> ``a.b``); a suffix-less name is its own stem."""
    stem = PurePosixPath(name).stem
    return stem or name


def _numbered(name: str, suffix: str, n: int) -> str:
    return f"{name[: -len(suffix)]} ({n}){suffix}" if suffix and name.endswith(suffix) else f"{name} ({n})"


def output_names(sources: Sequence[str], suffix: str) -> list[str]:
    """The output name of each source (``'/'`` paths; the folder part is kept), in the order given.

    ``suffix`` is the output format's (``.png``). See the module docstring for the rule; the result depends
    only on ``sources`` (their order matters only between identical names).
    """
    plain = [_join(src, _stem(_base(src)) + suffix) for src in sources]
    groups: dict[str, list[int]] = {}
    for i, out in enumerate(plain):
        groups.setdefault(out.casefold(), []).append(i)
    names, fallback = list(plain), [False] * len(plain)
    for members in groups.values():
        if len(members) > 1:
            for i in members:
                if _base(sources[i]).casefold() != _base(plain[i]).casefold():  # not named like its output
                    names[i], fallback[i] = _join(sources[i], _base(sources[i]) + suffix), True
    return _number_duplicates(names, fallback, suffix)


def _number_duplicates(names: list[str], fallback: list[bool], suffix: str) -> list[str]:
    """Names still equal (case-insensitively) get `` (2)``, `` (3)``...: a plain name wins over a whole-name
    fallback, then the earlier source; the result keeps the input order."""
    taken = {n.casefold() for n in names}
    seen: set[str] = set()
    out = list(names)
    for i in sorted(range(len(names)), key=lambda k: (fallback[k], k)):
        name = names[i]
        if name.casefold() in seen:
            n = 2
            while _numbered(name, suffix, n).casefold() in taken:
                n += 1
            name = _numbered(name, suffix, n)
            taken.add(name.casefold())
        seen.add(name.casefold())
        out[i] = name
    return out


def _base(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _join(source: str, name: str) -> str:
    """``name`` in the folder of ``source``."""
    folder, slash, _ = source.rpartition("/")
    return f"{folder}{slash}{name}"


def output_name(source: str, suffix: str) -> str:
    """The output name of a single source (no other source to collide with)."""
    return output_names([source], suffix)[0]


def certificate_name(output: str) -> str:
    """Where an output's certificate goes: ``<output name>.json`` beside it."""
    return output + CERTIFICATE_SUFFIX
