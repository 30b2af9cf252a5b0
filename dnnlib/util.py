"""EasyDict, construct-by-class-name, the user-facing error type and a cached URL opener.

The URL opener is what the metrics (Inception) and inversion (VGG16) use for pretrained weights: it downloads once into
a cache folder, verifies a SHA-256 checksum where one is known, and fails offline with a message that names the URL and
the option for a local file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO


class UserError(Exception):
    """A problem the user can fix (bad file, option or field). CLIs print the message without a traceback."""


class EasyDict(dict):
    """A dict whose keys are also attributes: ``d.x`` is ``d['x']``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def get_obj_by_name(name: str) -> Any:
    """Return the object named by a dotted path, e.g. ``'training.networks.stylegan2.Generator'``."""
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise UserError(f"'{name}' is not a dotted name of the form 'package.module.object'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise UserError(f"cannot import module '{module_name}' for '{name}': {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module '{module_name}' has no attribute '{attr}' (looking up '{name}')") from None


def construct_class_by_name(*args: Any, class_name: str, **kwargs: Any) -> Any:
    """Instantiate the class named by ``class_name`` with the remaining arguments."""
    cls = get_obj_by_name(class_name)
    if not callable(cls):
        raise UserError(f"'{class_name}' is not callable")
    return cls(*args, **kwargs)


def get_cache_dir(*subdirs: str) -> Path:
    """The download cache: ``$HEADGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/headgan``, else ``~/.cache/headgan``."""
    root = os.environ.get("HEADGAN_CACHE_DIR")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
        root = os.path.join(xdg, "headgan")
    return Path(root, *subdirs)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_url(
    url: str,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_option: str = "a local file path",
    timeout: float = 30.0,
) -> BinaryIO:
    """Open ``url`` (or a local path) as a binary file object, downloading once into the cache.

    ``sha256`` is checked on download and on every cache hit. ``local_option`` names the CLI option through which a user
    can pass a local copy instead; it appears in the error raised when the download fails (e.g. on an offline machine).
    """
    if "://" not in url or url.startswith("file://"):
        path = url.removeprefix("file://")
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found")
        data = Path(path).read_bytes()
        if sha256 is not None and _sha256(data) != sha256:
            raise UserError(f"{path}: SHA-256 checksum mismatch (expected {sha256}); corrupt file or another version")
        return io.BytesIO(data)

    cache = Path(cache_dir) if cache_dir is not None else get_cache_dir("downloads")
    key = hashlib.md5(url.encode("utf-8")).hexdigest()
    cached = cache / f"{key}_{os.path.basename(url.split('?')[0]) or 'download'}"
    if cached.is_file():
        data = cached.read_bytes()
        if sha256 is None or _sha256(data) == sha256:
            return io.BytesIO(data)
        cached.unlink()  # A stale or corrupt cache entry: download again.

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"could not download {url} ({e}). If this machine is offline, download the file elsewhere and pass it "
            f"with {local_option}, or place it in the cache as {cached}"
        ) from None
    if sha256 is not None and _sha256(data) != sha256:
        raise UserError(f"downloaded {url} but its SHA-256 checksum does not match {sha256}; not caching it")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, cached)
    return io.BytesIO(data)
