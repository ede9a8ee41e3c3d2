"""The ELMo models AllenNLP published, by name, and the one downloader every URL goes through.

    from elmo_fast.pretrained import resolve_model
    options, weights = resolve_model("original")      # local paths, downloaded once into the cache

Published names ('small', 'medium', 'original', 'original-5.5B') stand for trained weights. They are
not the presets of `elmo_fast.options.PRESETS` ('tiny', 'small', 'medium', 'original'), which are
options only and give random weights (the starting point of `elmo-fast pretrain`): a published
model is loaded with `Elmo.from_pretrained(name, ...)`, `ElmoEmbedder()` or `elmo-fast ... --elmo NAME`.

Downloads go into `elmo_fast.utils.cache_dir()` (`$ELMO_FAST_CACHE`, default `~/.cache/elmo_fast`),
once: the file is written to a temporary name and renamed when complete (and its checksum, where
known, matches), under a file lock, so concurrent processes download it once and never see half a
file. `ELMO_FAST_OFFLINE=1` forbids the network: cached files are used, anything else is an error.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from dataclasses import dataclass

from .utils import UsageError, atomic_path, cache_dir

__all__ = ["MODELS", "DEFAULT_MODEL", "PublishedFile", "PublishedModel", "DownloadError", "ChecksumError",
           "UnknownModelError", "names", "get_model", "is_published", "resolve_model", "resolve_file", "download",
           "cached_path_for", "offline"]

_BASE = "https://allennlp.s3.amazonaws.com/models/elmo"


@dataclass(frozen=True)
class PublishedFile:
    url: str
    sha256: str | None = None  # None: not known (the files were published without checksums)
    size: int | None = None  # bytes; None: not known


@dataclass(frozen=True)
class PublishedModel:
    name: str
    options: PublishedFile
    weights: PublishedFile
    description: str = ""
    parameters: str = ""  # as AllenNLP's model table gives it
    output_dim: int = 0  # 2 x projection_dim

    def file(self, kind: str) -> PublishedFile:
        return {"options": self.options, "weights": self.weights}[_kind(kind)]


def _published(name: str, stem: str, description: str, parameters: str, output_dim: int) -> PublishedModel:
    return PublishedModel(name, PublishedFile(f"{_BASE}/{stem}/elmo_{stem}_options.json"),
                          PublishedFile(f"{_BASE}/{stem}/elmo_{stem}_weights.hdf5"), description, parameters, output_dim)


#: The models on https://allennlp.org/elmo. 'original' is AllenNLP 0.9's DEFAULT_OPTIONS_FILE /
#: DEFAULT_WEIGHT_FILE (allennlp/commands/elmo.py), the model `allennlp elmo` and ElmoEmbedder use.
MODELS: dict[str, PublishedModel] = {
    m.name: m for m in (
        _published("small", "2x1024_128_2048cnn_1xhighway", "1 Billion Word Benchmark, LSTM 1024 / projection 128", "13.6M", 256),
        _published("medium", "2x2048_256_2048cnn_1xhighway", "1 Billion Word Benchmark, LSTM 2048 / projection 256", "28.0M", 512),
        _published("original", "2x4096_512_2048cnn_2xhighway", "1 Billion Word Benchmark, LSTM 4096 / projection 512", "93.6M", 1024),
        _published("original-5.5B", "2x4096_512_2048cnn_2xhighway_5.5B",
                   "Wikipedia + WMT news crawl (5.5B tokens), same shape as 'original'", "93.6M", 1024),
    )
}
DEFAULT_MODEL = "original"
_KINDS = {"options": "options", "options file": "options", "options_file": "options",
          "weights": "weights", "weight file": "weights", "weight_file": "weights"}


class DownloadError(OSError):
    """A file could not be fetched (no network, offline mode, a bad URL); the message names the URL and the cache path."""


class ChecksumError(ValueError):
    """A downloaded file whose sha256 is not the published one; nothing is left in the cache."""


class UnknownModelError(UsageError):
    """A model name that is not in `MODELS`."""


def _kind(kind: str) -> str:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"kind must be 'options' or 'weights', got {kind!r}") from None


def names() -> list[str]:
    """The published model names."""
    return list(MODELS)


def is_published(name) -> bool:
    """Whether `name` is a published model name (and not a local path that happens to have that name)."""
    return isinstance(name, str) and name in MODELS and not os.path.exists(name)


def get_model(name: str) -> PublishedModel:
    if name in MODELS:
        return MODELS[name]
    hint = ""
    from .presets import PRESETS

    if name in PRESETS:  # 'tiny'
        hint = f"; {name!r} is a preset (options with random weights, for elmo-fast pretrain), not a published model"
    raise UnknownModelError(f"unknown ELMo model {name!r}{hint}; published models: {', '.join(MODELS)} "
                            "(or give an options.json / weights.hdf5 path or URL)")


def offline() -> bool:
    """`ELMO_FAST_OFFLINE` set to 1/true/yes/on: never use the network."""
    return os.environ.get("ELMO_FAST_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(name: str) -> tuple[str, str]:
    """Local `(options_path, weights_path)` of the published model `name` (see `MODELS`), each
    downloaded once into the cache and checked against its checksum where one is known.

    Raises UnknownModelError (listing the names) for an unknown name, DownloadError when a file is
    neither cached nor downloadable, ChecksumError for a corrupt download."""
    model = get_model(name)
    return (download(model.options.url, sha256=model.options.sha256, size=model.options.size, what=f"{name} options file"),
            download(model.weights.url, sha256=model.weights.sha256, size=model.weights.size, what=f"{name} weight file"))


def resolve_file(name_or_path, kind: str = "file") -> str:
    """A local path for an options or weight file given as a published model name (its file of `kind`:
    'options' or 'weights'), an http(s) URL or public `s3://bucket/key` (fetched over https as
    AllenNLP's `cached_path` does; downloaded once into the cache), or a local path (`~` expanded).

    `kind` ('options' / 'options file' or 'weights' / 'weight file'; anything else only names the file
    in messages and resolves no model name)."""
    path = os.fspath(name_or_path)
    if path in MODELS and not os.path.exists(path) and kind in _KINDS:
        f = MODELS[path].file(kind)
        what = "options file" if _kind(kind) == "options" else "weight file"
        return download(f.url, sha256=f.sha256, size=f.size, what=f"{path} {what}")
    if path.startswith("s3://"):
        bucket, _, key = path[len("s3://"):].partition("/")
        path = f"https://{bucket}.s3.amazonaws.com/{key}"
    if path.startswith(("http://", "https://")):
        what = {"options": "options file", "weights": "weight file"}.get(_KINDS.get(kind, ""), kind)
        return download(path, what=what)
    return os.path.expanduser(path)


def cached_path_for(url: str) -> str:
    """Where `download(url)` keeps the file: the URL's hash (two URLs never share a file) and its name."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    return os.path.join(cache_dir(), hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + name)


# Seconds without data before a download gives up (a dead connection must not hang a job forever).
TIMEOUT_S = 60.0


def download(url: str, *, sha256: str | None = None, size: int | None = None, what: str = "file",
             progress: bool | None = None) -> str:
    """The local cached copy of `url`, downloading it first if needed; the one downloader of elmo_fast.

    The body streams into a temporary file next to the final name and is renamed into place only
    when complete (the length the server announced, `size` and `sha256` when given all checked),
    under a file lock on `<file>.lock`: a second process waits and then uses the first one's file,
    and an interrupted download leaves nothing under the final name. `progress=None`: a bar on a terminal.
    """
    import filelock

    local = cached_path_for(url)
    if os.path.exists(local):
        return local
    if offline():
        raise DownloadError(f"ELMO_FAST_OFFLINE is set and the {what} {url} is not in the cache ({local}); "
                            f"unset ELMO_FAST_OFFLINE, or put the file there")
    try:
        os.makedirs(os.path.dirname(local), exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the download cache {os.path.dirname(local)} ({e.strerror}); "
                            "set ELMO_FAST_CACHE to a writable folder") from None
    with filelock.FileLock(local + ".lock"):
        if os.path.exists(local):  # another process finished it while we waited
            return local
        _fetch(url, local, sha256=sha256, size=size, what=what, progress=progress)
    return local


def _fetch(url: str, local: str, *, sha256, size, what: str, progress) -> None:
    import http.client
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    def fail(reason: str) -> DownloadError:
        return DownloadError(f"could not download the {what} {url} ({reason}) into the cache {local}; check the network "
                             "and the URL, or download it yourself and pass the local path (cache: ELMO_FAST_CACHE)")

    h = hashlib.sha256()
    got = 0
    with atomic_path(local) as tmp:
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "elmo_fast"}), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as e:
            raise fail(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise fail(str(getattr(e, "reason", e))) from None
        with resp:
            announced = resp.headers.get("Content-Length")
            total = int(announced) if announced and announced.isdigit() else size
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                                            desc=os.path.basename(local).split("-", 1)[-1],
                                            disable=(None if progress is None else not progress)) as bar:
                while True:
                    try:
                        chunk = resp.read(1 << 20)
                    except (OSError, http.client.HTTPException) as e:  # reset, timed out or truncated
                        raise fail(f"connection lost after {got} bytes: {type(e).__name__} {e}".rstrip()) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        if announced and announced.isdigit() and got != int(announced):
            raise fail(f"the connection closed after {got} of {announced} bytes")
        if size is not None and got != size:
            raise ChecksumError(f"the {what} {url} is {got} bytes, not the published {size}; nothing was cached "
                                f"(in {local}); retry, or check the URL")
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise ChecksumError(f"the {what} downloaded from {url} has sha256 {h.hexdigest()}, not the published "
                                f"{sha256}; nothing was cached (in {local}); retry, or check the URL / a proxy in between")
