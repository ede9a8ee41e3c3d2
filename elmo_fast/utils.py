"""Small shared helpers: atomic writes (no half-written file is ever left under the final name)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is fsynced and renamed over `path`."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def cache_dir() -> str:
    """Where downloaded options/weight files are kept: `$ELMO_FAST_CACHE`, else `~/.cache/elmo_fast`."""
    return os.path.expanduser(os.environ.get("ELMO_FAST_CACHE") or os.path.join("~", ".cache", "elmo_fast"))


def resolve_file(path, what: str = "file") -> str:
    """A local path for `path`: `~` expanded; an http(s) URL (or a public `s3://bucket/key`, which is
    fetched over https as AllenNLP's `cached_path` does) downloaded once into `cache_dir()`.

    AllenNLP's `Elmo` accepts the published S3 URLs of options.json and weights.hdf5 directly, so a
    drop-in has to as well. The download goes to a temporary file that is renamed when complete, so
    an interrupted download is never mistaken for a cached file."""
    path = os.fspath(path)
    if path.startswith("s3://"):
        bucket, _, key = path[len("s3://"):].partition("/")
        path = f"https://{bucket}.s3.amazonaws.com/{key}"
    if not path.startswith(("http://", "https://")):
        return os.path.expanduser(path)
    import hashlib
    import urllib.parse

    import torch.hub

    name = os.path.basename(urllib.parse.urlparse(path).path) or "download"
    local = os.path.join(cache_dir(), hashlib.sha256(path.encode()).hexdigest()[:16] + "-" + name)
    if os.path.exists(local):
        return local
    os.makedirs(cache_dir(), exist_ok=True)
    try:
        # writes to a temporary file in the same folder and moves it into place when complete
        torch.hub.download_url_to_file(path, local, progress=True)
    except Exception as e:  # urllib raises URLError/HTTPError/OSError subclasses
        raise OSError(
            f"could not download the {what} {path} ({e}); check the URL and the network, or download it "
            f"yourself and pass the local path (downloads are cached in {cache_dir()}, set by ELMO_FAST_CACHE)"
        ) from None
    return local
