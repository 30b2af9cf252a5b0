"""dnnlib: EasyDict, construct-by-name, and the cached URL opener (served from a local HTTP server, no network)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

import dnnlib
from dnnlib import EasyDict, UserError


def test_easydict_attribute_access():
    d = EasyDict(a=1)
    d.b = 2
    assert d["b"] == 2 and d.a == 1
    del d.a
    assert "a" not in d
    with pytest.raises(AttributeError):
        _ = d.missing


def test_construct_class_by_name():
    obj = dnnlib.construct_class_by_name(class_name="collections.Counter", b=2)
    assert obj["b"] == 2
    frac = dnnlib.construct_class_by_name(3, 4, class_name="fractions.Fraction")
    assert float(frac) == 0.75
    with pytest.raises(UserError, match="no attribute 'Nope'"):
        dnnlib.construct_class_by_name(class_name="fractions.Nope")
    with pytest.raises(UserError, match="cannot import module"):
        dnnlib.construct_class_by_name(class_name="no_such_module_xyz.Thing")


@pytest.fixture
def http_root(tmp_path: Path):
    """A throwaway HTTP server on localhost serving tmp_path/www; counts requests."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 - name fixed by the base class
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def test_open_url_downloads_once_and_checks_checksum(http_root, tmp_path):
    root, base, hits = http_root
    payload = b"weights" * 100
    (root / "w.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    cache = tmp_path / "cache"
    assert dnnlib.open_url(f"{base}/w.bin", sha256=digest, cache_dir=cache).read() == payload
    assert dnnlib.open_url(f"{base}/w.bin", sha256=digest, cache_dir=cache).read() == payload
    assert hits == ["/w.bin"], "the second call must be served from the cache"
    with pytest.raises(UserError, match="checksum"):
        dnnlib.open_url(f"{base}/w.bin", sha256="0" * 64, cache_dir=tmp_path / "cache2")


def test_open_url_offline_error_names_url_and_option(tmp_path):
    url = "http://127.0.0.1:9/inception.pt"  # the discard port: connection refused immediately
    with pytest.raises(UserError) as info:
        dnnlib.open_url(url, cache_dir=tmp_path, local_option="--detector-path", timeout=2)
    assert url in str(info.value) and "--detector-path" in str(info.value)


def test_open_url_local_file(tmp_path):
    f = tmp_path / "local.bin"
    f.write_bytes(b"abc")
    assert dnnlib.open_url(str(f)).read() == b"abc"
    with pytest.raises(UserError, match="file not found"):
        dnnlib.open_url(str(tmp_path / "missing.bin"))
    with pytest.raises(UserError, match="checksum"):
        dnnlib.open_url(str(f), sha256="0" * 64)
