"""Checkpoint download, against a local HTTP server on 127.0.0.1 (never the real URLs)."""
import hashlib
import socket
import threading

import pytest
import torch

import clip
from clip.download import download
from http_server import FileServer
from tiny_clip import write_tiny_checkpoint


def _publish(server, name, data):
    """Serve ``data`` under an OpenAI-style URL (``.../<sha256>/<name>``); returns ``(url, sha256)``."""
    sha = hashlib.sha256(data).hexdigest()
    path = f"clip/models/{sha}/{name}"
    server.files[path] = data
    return server.url_for(path), sha


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=9).read_bytes()


@pytest.fixture
def registered():
    names = []

    def register(name, **kw):
        clip.register_pretrained(name, **kw)
        names.append(name)

    yield register
    for name in names:
        clip.pretrained._REGISTRY.pop(name, None)


def test_download_and_load(server, checkpoint_bytes, registered, tmp_path):
    url, sha = _publish(server, "tiny-test.pt", checkpoint_bytes)
    registered("tiny-test", url=url)  # the SHA256 is read from the URL, as in OpenAI's URLs
    assert clip.pretrained._REGISTRY["tiny-test"].sha256 == sha
    assert "tiny-test" in clip.available_models()
    model, _ = clip.load("tiny-test", download_root=tmp_path)
    target = tmp_path / "tiny-test.pt"
    assert target.read_bytes() == checkpoint_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny-test.pt.lock", "tiny-test.pt"]
    assert model.visual.width == 64
    # a cached file with the right checksum is used without asking the server
    n = len(server.log)
    clip.load("tiny-test", download_root=tmp_path)
    assert len(server.log) == n


def test_bad_checksum_is_a_clear_error_and_leaves_no_file(server, checkpoint_bytes, registered, tmp_path):
    url, _ = _publish(server, "tiny-bad.pt", checkpoint_bytes)
    registered("tiny-bad", url=url, sha256="0" * 64)
    with pytest.raises(clip.DownloadError) as err:
        clip.load("tiny-bad", download_root=tmp_path)
    message = str(err.value)
    assert "SHA256 mismatch" in message and url in message
    assert f"put it at {tmp_path / 'tiny-bad.pt'}" in message
    assert [p.name for p in tmp_path.iterdir()] == [".tiny-bad.pt.lock"]  # the (empty) lock file only


def test_broken_transfer_resumes(server, checkpoint_bytes, tmp_path):
    url, sha = _publish(server, "tiny-resume.pt", checkpoint_bytes)
    target = tmp_path / "tiny-resume.pt"
    server.cut[f"clip/models/{sha}/tiny-resume.pt"] = 1000  # the first transfer stops after 1000 bytes
    with pytest.raises(clip.DownloadError, match="the next call resumes") as err:
        download(url, target, sha256=sha, progress=False)
    assert f"put it at {target}" in str(err.value)
    part = tmp_path / "tiny-resume.pt.part"
    assert not target.exists() and part.stat().st_size == 1000
    download(url, target, sha256=sha, progress=False)
    assert target.read_bytes() == checkpoint_bytes and not part.exists()
    assert server.log[-1][1] == "bytes=1000-"


def test_concurrent_downloads_fetch_once(server, checkpoint_bytes, tmp_path):
    url, sha = _publish(server, "tiny-concurrent.pt", checkpoint_bytes)
    target = tmp_path / "tiny-concurrent.pt"
    errors = []

    def fetch():
        try:
            assert download(url, target, sha256=sha, progress=False) == target
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() == checkpoint_bytes
    assert len(server.log) == 1


def test_stale_part_file_when_the_server_ignores_ranges(server, checkpoint_bytes, tmp_path):
    url, sha = _publish(server, "tiny-norange.pt", checkpoint_bytes)
    server.honour_range = False  # answers 200 with the whole file: the partial file must be started over
    (tmp_path / "tiny-norange.pt.part").write_bytes(b"stale bytes")
    download(url, tmp_path / "tiny-norange.pt", sha256=sha, progress=False)
    assert (tmp_path / "tiny-norange.pt").read_bytes() == checkpoint_bytes
    assert server.log[-1][1] == "bytes=11-"


def test_offline_error_names_url_and_destination(registered, tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip/models/{'a' * 64}/offline.pt"
    registered("tiny-offline", url=url)
    with pytest.raises(clip.DownloadError) as err:
        clip.load("tiny-offline", download_root=tmp_path)
    assert f"download {url} and put it at {tmp_path / 'offline.pt'}" in str(err.value)


def test_builder_registration_and_cache_dir(registered, tmp_path, monkeypatch):
    calls = []

    def build(cache):
        calls.append(cache)
        path = cache / "tiny-built.pt"
        if not path.exists():
            write_tiny_checkpoint(path, seed=4)
        return path

    registered("tiny-built", builder=build)
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "env-cache"))
    assert clip.cache_dir() == tmp_path / "env-cache"
    model, _ = clip.load("tiny-built")
    assert calls == [tmp_path / "env-cache"] and (tmp_path / "env-cache" / "tiny-built.pt").is_file()
    assert clip.cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("CLIP_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert clip.cache_dir() == tmp_path / "home" / ".cache" / "clip"
    with pytest.raises(ValueError, match="exactly one of url= or builder="):
        clip.register_pretrained("tiny-neither")
    with pytest.warns(UserWarning, match="registered again"):
        registered("tiny-built", builder=lambda cache: cache)
    assert isinstance(model, clip.CLIP) and torch.is_tensor(model.logit_scale)
