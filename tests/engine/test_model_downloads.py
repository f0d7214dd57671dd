"""Registry models published as files (``taef2``, ``taesana``): fetched by URL into ``PCA_MODELS_DIR``, checked
against the published size and SHA-256, written whole; offline and failed downloads are clear errors.

Nothing leaves the machine: the registry's URLs are pointed at a loopback HTTP server for each test.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pca_attack.errors import ModelNotFoundError
from pca_attack.models import encoder as encoder_module
from pca_attack.models import registry
from pca_attack.models.downloads import fetch, local_path
from pca_attack.models.registry import REGISTRY, RemoteFile
from pca_attack.models.weights import resolve_source

MODELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "models"


@dataclass
class Server:
    """A loopback server of ``files`` (name -> bytes) that counts the requests it answered."""

    url: str
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("", {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            state.requests.append(self.path)
            body = state.files.get(self.path.lstrip("/"))
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *_: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("PCA_MODELS_DIR", str(folder))
    monkeypatch.setattr(encoder_module, "_cache", {})  # loaded models are cached by registry name
    return folder


def _serve(monkeypatch: pytest.MonkeyPatch, server: Server, name: str, contents: dict[str, bytes],
           published: dict[str, bytes] | None = None) -> None:
    """Point registry entry ``name`` at ``server``, serving ``contents``; the published size and checksum are
    those of ``published`` (default: the served bytes themselves)."""
    entry = REGISTRY[name]
    files = []
    for f in entry.files:
        truth = (published or contents)[f.name]
        files.append(RemoteFile(f"{server.url}/{f.name}", hashlib.sha256(truth).hexdigest(), len(truth), f.role))
        server.files[f.name] = contents[f.name]
    monkeypatch.setitem(registry.REGISTRY, name, replace(entry, files=tuple(files)))


def _real(name: str) -> dict[str, bytes]:
    folder = MODELS / name
    if not folder.is_dir():
        pytest.skip(f"{folder.resolve()} is absent: the pretrained tiny-autoencoder weights are not in this workspace")
    return {f.name: f.read_bytes() for f in folder.glob("*.pth")}


def test_the_pinned_entries_are_the_files_this_project_ran() -> None:
    """The registry's sizes and checksums are those of the weights every TAEF2/TAESana number was measured on."""
    for name in ("taef2", "taesana"):
        real = _real(name)
        entry = REGISTRY[name]
        assert {f.name for f in entry.files} == set(real) and entry.ran_here and not entry.bundled
        for f in entry.files:
            assert (f.size, f.sha256) == (len(real[f.name]), hashlib.sha256(real[f.name]).hexdigest())
            assert f.url.startswith("https://raw.githubusercontent.com/madebyollin/taesd/")
    assert resolve_source("taef2").kind == "url"


def test_taef2_by_name_downloads_once_then_protects_offline(server: Server, models_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pca_attack import AttackConfig
    from pca_attack.pipeline import Engine

    _serve(monkeypatch, server, "taef2", _real("taef2"))
    engine = Engine.from_spec("taef2", device="cpu")
    assert sorted(server.requests) == ["/taef2_decoder.pth", "/taef2_encoder.pth"]
    assert engine.decoder is not None and engine.encoder.name == "taef2"
    assert sorted(p.name for p in (models_dir / "taef2").iterdir()) == ["taef2_decoder.pth", "taef2_encoder.pth"]
    monkeypatch.setattr(encoder_module, "_cache", {})
    again = Engine.from_spec("taef2", device="cpu", offline=True)  # from the local copies: no request
    assert len(server.requests) == 2
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(png, "PNG")
    result = again.protect_bytes(png.getvalue(), AttackConfig(steps=2))
    assert result.certificate.budget_ok and result.certificate.roundtrip_psnr_protected_db is not None


def test_encoder_only_entry_has_no_decoder(server: Server, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pca_attack.pipeline import Engine

    _serve(monkeypatch, server, "taesana", _real("taesana"))
    engine = Engine.from_spec("taesana", device="cpu")
    assert engine.decoder is None and server.requests == ["/taesana_encoder.pth"]


def test_the_two_registry_names_make_an_ensemble(server: Server, models_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """README's recommended pair (FLUX.2's and Sana's latent spaces at once) by name."""
    from pca_attack.pipeline import Engine

    _serve(monkeypatch, server, "taef2", _real("taef2"))
    _serve(monkeypatch, server, "taesana", _real("taesana"))
    engine = Engine.from_spec("taef2,taesana", device="cpu")
    assert engine.model_names() == ["taef2", "taesana"]
    assert engine.decoders["taef2"] is not None and engine.decoders["taesana"] is None


def test_altered_or_oversized_download_keeps_nothing(server: Server, models_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    published = {"taesana_encoder.pth": b"the published bytes"}
    for sent in (b"the altered bytes!!", b"the published bytes" * 100_000):
        _serve(monkeypatch, server, "taesana", {"taesana_encoder.pth": sent}, published)
        with pytest.raises(ModelNotFoundError, match="SHA-256") as caught:
            fetch(REGISTRY["taesana"], "encoder", offline=False)
        assert "nothing was kept" in str(caught.value) and "models download taesana" in str(caught.value)
        assert list((models_dir / "taesana").iterdir()) == []  # no partial or temporary file


def test_offline_without_a_copy_asks_nothing_and_says_how_to_fix(server: Server, models_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from pca_attack.pipeline import Engine

    _serve(monkeypatch, server, "taef2", {"taef2_encoder.pth": b"e", "taef2_decoder.pth": b"d"})
    with pytest.raises(ModelNotFoundError) as caught:
        Engine.from_spec("taef2", device="cpu", offline=True)
    message = str(caught.value)
    assert "--offline" in message and "pca-protect models download taef2" in message and "PCA_MODELS_DIR" in message
    assert server.requests == []


def test_a_damaged_copy_is_replaced_online_and_refused_offline(server: Server, models_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, server, "taesana", {"taesana_encoder.pth": b"good weights"})
    entry = REGISTRY["taesana"]
    target = local_path(entry, entry.files[0])
    target.parent.mkdir(parents=True)
    target.write_bytes(b"bad weights!")  # same size, other bytes
    with pytest.raises(ModelNotFoundError, match="does not match"):
        fetch(entry, "encoder", offline=True)
    assert fetch(entry, "encoder", offline=False) == target and target.read_bytes() == b"good weights"
    assert fetch(entry, "encoder", offline=True) == target and len(server.requests) == 1
    assert fetch(entry, "decoder", offline=False) is None  # none published


def test_models_download_and_list(server: Server, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pca_cli import app

    _serve(monkeypatch, server, "taef2", {"taef2_encoder.pth": b"enc", "taef2_decoder.pth": b"dec"})
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"])
    assert next(line for line in listed.output.splitlines() if line.startswith("taef2 ")).split()[-2:] == ["yes", "no"]
    result = runner.invoke(app, ["models", "download", "taef2"])
    assert result.exit_code == 0, result.output
    assert "checksums match" in result.output and (models_dir / "taef2" / "taef2_decoder.pth").read_bytes() == b"dec"
    listed = runner.invoke(app, ["models", "list"])
    assert next(line for line in listed.output.splitlines() if line.startswith("taef2 ")).split()[-2:] == ["yes", "yes"]
    del server.files["taef2_decoder.pth"]
    (models_dir / "taef2" / "taef2_decoder.pth").unlink()
    failed = runner.invoke(app, ["models", "download", "taef2"])
    assert failed.exit_code == 1 and "HTTPError" in failed.output


def test_a_first_protect_with_the_default_model_fetches_it_says_so_then_reuses_it(
    server: Server, models_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No --model: TAEF2 is fetched on the first run (the CLI announces each file), never again after."""
    from pca_cli import app

    _serve(monkeypatch, server, "taef2", _real("taef2"))
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src)
    for run in ("first", "second"):
        caplog.clear()
        result = CliRunner().invoke(app, ["protect", str(src), "-o", str(tmp_path / run), "--steps", "1",
                                          "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / run / "a.png.json").read_text())["model"] == "taef2"
        fetched = sorted(r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("fetching "))
        assert fetched == (["taef2_decoder.pth", "taef2_encoder.pth"] if run == "first" else []), run
        monkeypatch.setattr(encoder_module, "_cache", {})  # a new process would load from the folder again
    assert sorted(server.requests) == ["/taef2_decoder.pth", "/taef2_encoder.pth"]
