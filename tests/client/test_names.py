"""The one naming scheme (``pca_attack.io.names``): collisions, Unicode names, stability for resume, and
that every user of it (folder plan, runner, ``protect``'s plan, the service's upload names) agrees."""

from __future__ import annotations

import json
import random
from pathlib import Path
from urllib.parse import unquote

import pytest

from pca_attack.io.names import (
    ascii_name,
    certificate_name,
    clean_name,
    content_disposition,
    output_name,
    output_names,
)
from pca_client.plan import plan_tasks
from pca_client.runner import BatchRunner
from tests.client.conftest import manifest_lines, visible_files, write_images


def test_output_keeps_the_stem_and_takes_the_format_suffix() -> None:
    assert output_name("photo.jpg", ".png") == "photo.png"
    assert output_name("a/b/photo.tiff", ".webp") == "a/b/photo.webp"
    assert output_name("archive.tar.jpeg", ".png") == "archive.tar.png"
    assert output_name("noext", ".png") == "noext.png"
    assert certificate_name("a/photo.png") == "a/photo.png.json"


def test_collisions_get_distinct_predictable_names() -> None:
    names = output_names(["a.jpg", "a.png", "a.webp", "b.jpg", "sub/a.jpg"], ".png")
    assert names == ["a.jpg.png", "a.png", "a.webp.png", "b.png", "sub/a.png"]
    # without the one already named like the output, every member keeps its whole name
    assert output_names(["x.jpg", "x.webp"], ".png") == ["x.jpg.png", "x.webp.png"]
    # case-insensitive file systems: A.jpg and a.png would be one file
    assert output_names(["A.jpg", "a.png"], ".png") == ["A.jpg.png", "a.png"]
    # the same name twice (two uploads) and a contrived clash with a whole-name fallback are numbered
    assert output_names(["a.jpg", "a.jpg"], ".png") == ["a.jpg.png", "a.jpg (2).png"]
    names = output_names(["x.jpg", "x.jpg.png", "x.png"], ".png")
    assert len({n.casefold() for n in names}) == 3 and names[1:] == ["x.jpg.png", "x.png"]


def test_names_depend_only_on_the_set_of_sources() -> None:
    """A resumed batch (any walk order) plans the same outputs; random sets never produce a clash."""
    rng = random.Random(0)
    stems, exts = ["a", "A", "b", "a.jpg", "c d", "猫"], [".jpg", ".png", ".PNG", ".webp", ".jpeg"]
    for _ in range(300):
        folder = rng.choice(["", "sub/", "x/y/"])
        sources = sorted({folder + rng.choice(stems) + rng.choice(exts) for _ in range(rng.randint(1, 8))})
        names = dict(zip(sources, output_names(sources, ".png"), strict=True))
        assert len({n.casefold() for n in names.values()}) == len(sources), names
        assert all(n.startswith(folder) and n.endswith(".png") for n in names.values())
        shuffled = sources[:]
        rng.shuffle(shuffled)
        plan = plan_tasks(Path("/s"), Path("/d"), shuffled, "png")
        assert {t.rel: t.out_rel for t in plan} == names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("café 猫.jpg", "café 猫.jpg"),
        ("Ünïcödé фото 写真.png", "Ünïcödé фото 写真.png"),
        ("cafe\u0301.png", "café.png"),  # NFC
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\x.png", "x.png"),
        ("..", "image"),
        ("", "image"),
        (".hidden.png", "hidden.png"),
        ("a\x00b\nc\u202e.jpg", "a b c.jpg"),  # control and bidi-override characters
        ('what?*<>|:".png', "what_______.png"),
    ],
)
def test_clean_name_keeps_letters_and_drops_what_is_unsafe(given: str, expected: str) -> None:
    assert clean_name(given) == expected


def test_clean_name_is_bounded_and_keeps_the_suffix() -> None:
    long = clean_name("猫" * 400 + ".jpeg")
    assert len(long.encode()) <= 200 and long.endswith("猫.jpeg")


def test_content_disposition_carries_unicode_with_rfc5987() -> None:
    header = content_disposition("café 猫.png")
    header.encode("latin-1")  # a header value must be latin-1 (ASCII here)
    plain, extended = header.split("; filename")[1:]
    assert plain == '="cafe.png"'
    assert extended.startswith("*=UTF-8''") and unquote(extended[len("*=UTF-8''"):]) == "café 猫.png"
    assert ascii_name("猫.png") == "image.png" and ascii_name('a"b;c.png') == "a_b_c.png"


def _fake(path: Path, data: bytes) -> tuple[bytes, str, dict[str, object]]:
    return data[::-1], ".png", {"linf_255": 1.0, "budget_ok": True}


def test_batch_writes_each_certificate_beside_its_output(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["a.jpg", "a.png", "sub/café 猫.webp"])
    report = BatchRunner(src, dst, _fake, settings={"format": "png"}).run()
    assert report.ok and report.done == 3
    assert visible_files(dst) == {
        "a.jpg.png", "a.jpg.png.json", "a.png", "a.png.json", "sub/café 猫.png", "sub/café 猫.png.json",
    }
    cert = json.loads((dst / "a.jpg.png.json").read_text())
    assert cert["linf_255"] == 1.0 and cert["source"] == "a.jpg" and cert["output"] == "a.jpg.png"
    assert {e["source"]: e["output"] for e in manifest_lines(dst)}["a.png"] == "a.png"


def test_resume_restores_a_missing_certificate_without_reprotecting(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["a.png"])
    BatchRunner(src, dst, _fake, settings={"format": "png"}).run()
    (dst / "a.png.json").unlink()  # e.g. a DST written before certificates were written beside outputs
    calls: list[str] = []

    def counting(path: Path, data: bytes) -> tuple[bytes, str, dict[str, object]]:
        calls.append(path.name)
        return _fake(path, data)

    report = BatchRunner(src, dst, counting, settings={"format": "png"}).run()
    assert report.skipped == 1 and calls == []
    assert json.loads((dst / "a.png.json").read_text())["budget_ok"] is True


def test_protect_command_plans_with_the_same_scheme(tmp_path: Path) -> None:
    from pca_cli.protect import plan_outputs

    write_images(tmp_path / "in", ["a.jpg", "a.png", "d/x.jpg", "d/x.webp"])
    pairs = plan_outputs([tmp_path / "in"], tmp_path / "out", ".png")
    got = {src.relative_to(tmp_path / "in").as_posix(): dst.relative_to(tmp_path / "out").as_posix()
           for src, dst in pairs}
    rels = sorted(got)
    assert got == dict(zip(rels, output_names(rels, ".png"), strict=True))
    assert got["a.jpg"] == "a.jpg.png" and got["d/x.webp"] == "d/x.webp.png"


def test_a_new_colliding_source_renames_predictably_on_the_next_run(tmp_path: Path) -> None:
    """Names follow the current set of sources: a.jpg alone -> a.png; once a.png joins it, a.jpg's output
    moves to a.jpg.png (redone: 'output missing') and a.png takes its own name; a third run does nothing."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_images(src, ["a.jpg"])
    assert BatchRunner(src, dst, _fake, settings={"format": "png"}).run().done == 1
    assert visible_files(dst) == {"a.png", "a.png.json"}
    write_images(src, ["a.png"], seed0=7)
    runner = BatchRunner(src, dst, _fake, settings={"format": "png"})
    assert {t.rel: why for t, why in runner.dry_run().todo} == {"a.jpg": "output missing", "a.png": "new"}
    assert runner.run().done == 2
    assert visible_files(dst) == {"a.jpg.png", "a.jpg.png.json", "a.png", "a.png.json"}
    assert (dst / "a.png").read_bytes() == (src / "a.png").read_bytes()[::-1]  # a.png's own output now
    assert json.loads((dst / "a.png.json").read_text())["source"] == "a.png"
    again = BatchRunner(src, dst, _fake, settings={"format": "png"}).run()
    assert (again.done, again.skipped) == (0, 2)
