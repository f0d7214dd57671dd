"""More than fifteen kinds of bad input: each answered 4xx with a message in the common error shape
(or 200 where the engine legitimately handles the input), and the worker keeps serving afterwards."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.service.conftest import png_bytes

FORM = {"steps": "2"}


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A few hundred bytes whose IHDR claims width x height (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * 3 * 16
    idat = zlib.compress(row * 4)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_bytes(width: int = 32, height: int = 32, **options: object) -> bytes:
    arr = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def animated_gif() -> bytes:
    rng = np.random.default_rng(4)
    frames = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def png16() -> bytes:
    import png

    arr = np.random.default_rng(2).integers(0, 65536, (16, 24 * 3), dtype=np.uint16)
    buffer = io.BytesIO()
    png.Writer(24, 16, greyscale=False, bitdepth=16).write(buffer, arr.tolist())
    return buffer.getvalue()


def huge_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: ~60 kB of EXIF (the JPEG APP1 limit is 64 kB)
    return jpeg_bytes(exif=exif.tobytes())


BAD_UPLOADS = {
    "zero_bytes": (b"", 415),
    "plain_text": (b"hello, this is not an image\n" * 10, 415),
    "html": (b"<!doctype html><html><body><img src=x></body></html>", 415),
    "json": (b'{"image": "nope"}', 415),
    "truncated_png": (png_bytes(64, 64)[:200], 415),
    "truncated_jpeg": (jpeg_bytes(64, 64)[:300], 415),
    "png_signature_only": (b"\x89PNG\r\n\x1a\n", 415),
    "random_bytes": (np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(), 415),
    "decompression_bomb_30000x30000": (bomb_png(), 413),
    "over_max_pixels_2000x1000": (bomb_png(2000, 1000), 413),
    "one_by_one": (png_bytes(1, 1), 422),
    "seven_pixels_high": (png_bytes(64, 7), 422),
    "animated_gif": (animated_gif(), 415),
    "pdf_header": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", 415),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_is_refused_with_a_message(client: TestClient, name: str) -> None:
    data, status = BAD_UPLOADS[name]
    r = client.post("/v1/protect", files={"file": ("upload.png", data, "image/png")}, data=FORM)
    assert r.status_code == status, (name, r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"code", "message", "detail"}
    assert len(error["message"]) > 10


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eps", "0"),
        ("eps", "65"),
        ("eps", "-1"),
        ("eps", "abc"),
        ("steps", "0"),
        ("steps", "100000"),
        ("step", "0"),
        ("preset", "pca*"),
        ("format", "gif"),
        ("quality", "0"),
        ("quality", "101"),
        ("seed", "-5"),
        ("random_start", "maybe"),
        ("keep_exif", "sometimes"),
        ("eot", "no-such-eot"),
    ],
)
def test_bad_parameter_is_422(client: TestClient, field: str, value: str) -> None:
    r = client.post("/v1/protect", files={"file": ("a.png", png_bytes())}, data={**FORM, field: value})
    assert r.status_code == 422, (field, value, r.text)
    body = r.json()["error"]
    assert body["code"] == "invalid_parameter"
    assert field in body["message"] or field in str(body["detail"]), body


def test_bad_query_and_missing_file(client: TestClient) -> None:
    r = client.post("/v1/protect?response=xml", files={"file": ("a.png", png_bytes())}, data=FORM)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
    r = client.post("/v1/protect", data=FORM)
    assert r.status_code == 422 and "file" in r.json()["error"]["message"]
    r = client.post("/v1/protect", content=b"raw body", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 422


def test_oversized_body_is_413(client: TestClient) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 * 1024 * 1024)  # the limit in tests is 2 MiB
    r = client.post("/v1/protect", files={"file": ("big.png", big)}, data=FORM)
    assert r.status_code == 413
    assert "limit" in r.json()["error"]["message"]


def test_oversized_file_just_over_the_per_file_limit_is_413(client: TestClient) -> None:
    big = b"\x00" * (2 * 1024 * 1024 + 10)  # passes the body guard (multipart slack), not the file limit
    r = client.post("/v1/protect", files={"file": ("big.png", big)}, data=FORM)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "file_too_large"


def test_wrong_extension_is_judged_by_content(client: TestClient) -> None:
    r = client.post("/v1/protect", files={"file": ("photo.gif", jpeg_bytes(), "image/gif")}, data=FORM)
    assert r.status_code == 200, r.text  # a JPEG called .gif is still a JPEG
    assert r.headers["content-disposition"] == 'attachment; filename="photo.png"; filename*=UTF-8\'\'photo.png'
    r = client.post("/v1/protect", files={"file": ("photo.png", b"GIF89a not really", "image/png")}, data=FORM)
    assert r.status_code == 415


def test_cmyk_is_accepted_and_keeps_its_size(client: TestClient) -> None:
    data = png_bytes(40, 32, mode="CMYK", fmt="JPEG")
    r = client.post("/v1/protect?response=json", files={"file": ("cmyk.jpg", data)}, data=FORM)
    assert r.status_code == 200, r.text
    cert = r.json()["certificate"]
    assert (cert["width"], cert["height"]) == (40, 32)
    assert any("CMYK" in note for note in cert["notes"])


def test_16bit_png_is_protected_at_full_depth_but_not_as_jpeg(client: TestClient) -> None:
    r = client.post("/v1/protect?response=json", files={"file": ("deep.png", png16())}, data=FORM)
    assert r.status_code == 200, r.text
    assert r.json()["certificate"]["bit_depth"] == 16
    r = client.post("/v1/protect", files={"file": ("deep.png", png16())}, data={**FORM, "format": "jpeg"})
    assert r.status_code == 422 and "16-bit" in r.json()["error"]["message"]


def test_huge_exif_is_handled(client: TestClient) -> None:
    data = huge_exif_jpeg()
    r = client.post("/v1/protect", files={"file": ("exif.jpg", data)}, data=FORM)
    assert r.status_code == 200, r.text
    assert len(Image.open(io.BytesIO(r.content)).info.get("exif", b"")) > 50_000
    r = client.post("/v1/protect", files={"file": ("exif.jpg", data)}, data={**FORM, "keep_exif": "false"})
    assert r.status_code == 200
    assert not Image.open(io.BytesIO(r.content)).info.get("exif")


def test_worker_survives_bad_inputs(client: TestClient) -> None:
    for data, _ in BAD_UPLOADS.values():
        client.post("/v1/protect", files={"file": ("x.png", data)}, data=FORM)
    assert client.get("/readyz").status_code == 200
    r = client.post("/v1/protect", files={"file": ("ok.png", png_bytes())}, data=FORM)
    assert r.status_code == 200
