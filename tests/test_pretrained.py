"""Published models by name and the downloader: a generated model (random weights in the published
layout) served from an HTTP server on 127.0.0.1 stands for AllenNLP's S3 bucket."""

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from elmo_fast import Elmo, ElmoBiLm, batch_to_ids, export_elmo
from elmo_fast import pretrained
from elmo_fast.pretrained import ChecksumError, DownloadError, PublishedFile, PublishedModel, UnknownModelError


class _Server:
    """Serves `files` {url path: bytes}; counts GETs per path. mode 'truncate' announces the whole
    length and closes after half; a `delay` per 64 KiB chunk makes downloads overlap."""

    def __init__(self, files):
        self.files, self.gets, self.mode, self.delay = files, {}, "ok", 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.gets[self.path] = outer.gets.get(self.path, 0) + 1
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = len(body) // 2 if outer.mode == "truncate" else len(body)
                for i in range(0, n, 1 << 16):
                    self.wfile.write(body[i : min(i + (1 << 16), n)])
                    if outer.delay:
                        time.sleep(outer.delay)
                if outer.mode == "truncate":
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("published")
    export_elmo(ElmoBiLm("tiny"), d)
    return d, (d / "options.json").read_bytes(), (d / "weights.hdf5").read_bytes()


@pytest.fixture
def served(model_files, tmp_path, monkeypatch):
    """A server with the tiny model, registered as 'test-tiny'; an empty cache."""
    d, opts, weights = model_files
    server = _Server({"/m/options.json": opts, "/m/weights.hdf5": weights})
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ELMO_FAST_OFFLINE", raising=False)
    model = PublishedModel("test-tiny", PublishedFile(server.base + "/m/options.json", hashlib.sha256(opts).hexdigest(), len(opts)),
                           PublishedFile(server.base + "/m/weights.hdf5", hashlib.sha256(weights).hexdigest(), len(weights)))
    monkeypatch.setitem(pretrained.MODELS, "test-tiny", model)
    yield server, model, d
    server.close()


def _cache_entries(tmp_path):
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def test_registry_holds_allennlp_published_models():
    assert pretrained.names()[:4] == ["small", "medium", "original", "original-5.5B"]
    orig = pretrained.MODELS[pretrained.DEFAULT_MODEL]
    # AllenNLP 0.9's allennlp/commands/elmo.py DEFAULT_OPTIONS_FILE / DEFAULT_WEIGHT_FILE
    base = "https://allennlp.s3.amazonaws.com/models/elmo/2x4096_512_2048cnn_2xhighway/elmo_2x4096_512_2048cnn_2xhighway_"
    assert (orig.options.url, orig.weights.url) == (base + "options.json", base + "weights.hdf5")
    for m in pretrained.MODELS.values():
        assert m.options.url.endswith("_options.json") and m.weights.url.endswith("_weights.hdf5")
        assert m.output_dim in (256, 512, 1024)


def test_from_pretrained_downloads_once_and_equals_the_local_files(served, tmp_path):
    server, model, d = served
    ids = batch_to_ids([["A", "published", "model", "."], ["Two"]])
    local = Elmo(str(d / "options.json"), str(d / "weights.hdf5"), 1, dropout=0.0, stateful=False)
    remote = Elmo.from_pretrained("test-tiny", 1, dropout=0.0, stateful=False)
    assert server.gets == {"/m/options.json": 1, "/m/weights.hdf5": 1}
    again = Elmo.from_pretrained("test-tiny", 1, dropout=0.0, stateful=False)
    opts, weights = pretrained.resolve_model("test-tiny")
    assert pretrained.resolve_file("test-tiny", "weights") == weights
    assert pretrained.resolve_file(model.options.url, "options") == opts  # the URL and the name share one cached file
    assert server.gets == {"/m/options.json": 1, "/m/weights.hdf5": 1}, "a cached file was fetched again"
    assert open(weights, "rb").read() == (d / "weights.hdf5").read_bytes()
    for m in (remote, again):
        torch.testing.assert_close(m(ids)["elmo_representations"][0], local(ids)["elmo_representations"][0], rtol=0, atol=0)
    # the name works as both file arguments of the AllenNLP constructor too
    named = Elmo("test-tiny", "test-tiny", 1, dropout=0.0, stateful=False)
    torch.testing.assert_close(named(ids)["elmo_representations"][0], local(ids)["elmo_representations"][0], rtol=0, atol=0)
    assert sum(server.gets.values()) == 2


def test_interrupted_download_leaves_nothing_under_the_final_name(served, tmp_path):
    server, model, _ = served
    server.mode = "truncate"
    with pytest.raises(DownloadError, match=r"closed after \d+ of \d+ bytes|connection lost") as e:
        pretrained.resolve_model("test-tiny")
    assert model.options.url in str(e.value) and str(tmp_path / "cache") in str(e.value) and "\n" not in str(e.value)
    assert _cache_entries(tmp_path) == [], "a partial download was left in the cache"
    server.mode = "ok"
    opts, weights = pretrained.resolve_model("test-tiny")
    assert os.path.getsize(weights) == model.weights.size


def test_two_processes_download_once_under_the_lock(served, tmp_path):
    server, model, _ = served
    server.delay = 0.025  # ~2 s for the file: both processes are up (well under that) while it downloads
    # The package's __init__ imports torch (seconds per process on a loaded machine); the downloader
    # needs none of it, so the processes load elmo_fast.pretrained under a bare package.
    code = ("import sys, types; pkg = types.ModuleType('elmo_fast'); pkg.__path__ = [sys.argv[3]]; "
            "sys.modules['elmo_fast'] = pkg; from elmo_fast.pretrained import download; "
            "print(download(sys.argv[1], sha256=sys.argv[2], progress=False))")
    pkg_dir = os.path.dirname(pretrained.__file__)
    procs = [subprocess.Popen([sys.executable, "-c", code, model.weights.url, model.weights.sha256, pkg_dir], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=os.environ.copy()) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1
    assert server.gets["/m/weights.hdf5"] == 1
    with open(paths.pop(), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == model.weights.sha256
    assert _cache_entries(tmp_path) == [os.path.basename(pretrained.cached_path_for(model.weights.url))]


def test_two_threads_download_once_under_the_lock(served):
    server, model, _ = served
    server.delay = 0.005
    results, errors = [], []

    def get():
        try:
            results.append(pretrained.download(model.weights.url, sha256=model.weights.sha256, progress=False))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=get) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(set(results)) == 1 and server.gets["/m/weights.hdf5"] == 1


def test_checksum_mismatch_is_an_error_and_caches_nothing(served, tmp_path, monkeypatch):
    server, model, _ = served
    bad = PublishedModel("test-tiny", model.options, PublishedFile(model.weights.url, "0" * 64, model.weights.size))
    monkeypatch.setitem(pretrained.MODELS, "test-tiny", bad)
    with pytest.raises(ChecksumError, match="not the published 0000") as e:
        Elmo.from_pretrained("test-tiny", 1)
    assert model.weights.url in str(e.value) and "\n" not in str(e.value)
    assert _cache_entries(tmp_path) == [os.path.basename(pretrained.cached_path_for(model.options.url))]
    wrong_size = PublishedModel("test-tiny", model.options, PublishedFile(model.weights.url, None, model.weights.size + 1))
    monkeypatch.setitem(pretrained.MODELS, "test-tiny", wrong_size)
    with pytest.raises(ChecksumError, match="not the published"):
        pretrained.resolve_model("test-tiny")


def test_offline_switch(served, tmp_path, monkeypatch):
    server, model, _ = served
    monkeypatch.setenv("ELMO_FAST_OFFLINE", "1")
    with pytest.raises(DownloadError, match="ELMO_FAST_OFFLINE is set") as e:
        Elmo.from_pretrained("test-tiny", 1)
    assert model.options.url in str(e.value) and pretrained.cached_path_for(model.options.url) in str(e.value)
    assert server.gets == {}
    monkeypatch.delenv("ELMO_FAST_OFFLINE")
    pretrained.resolve_model("test-tiny")
    monkeypatch.setenv("ELMO_FAST_OFFLINE", "1")
    before = dict(server.gets)
    assert os.path.exists(pretrained.resolve_model("test-tiny")[1])  # cached files need no network
    assert server.gets == before


def test_unreachable_url_names_the_url_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ELMO_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ELMO_FAST_OFFLINE", raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/elmo/weights.hdf5"
    monkeypatch.setitem(pretrained.MODELS, "test-gone", PublishedModel("test-gone", PublishedFile(url), PublishedFile(url)))
    with pytest.raises(DownloadError) as e:
        Elmo.from_pretrained("test-gone", 1)
    msg = str(e.value)
    assert url in msg and str(tmp_path / "cache") in msg and "\n" not in msg and "ELMO_FAST_CACHE" in msg
    with pytest.raises(OSError, match="could not download the weight file"):
        pretrained.resolve_file(url, "weight file")


def test_unknown_name_lists_the_known_names():
    with pytest.raises(UnknownModelError, match=r"unknown ELMo model 'orignal'.*small, medium, original, original-5\.5B"):
        Elmo.from_pretrained("orignal", 1)
    with pytest.raises(UnknownModelError, match="'tiny' is a preset"):
        pretrained.resolve_model("tiny")
    with pytest.raises(ValueError, match="kind must be"):
        pretrained.MODELS["small"].file("vocab")


def test_preset_name_without_weights_warns_random(caplog):
    with caplog.at_level("WARNING", logger="elmo_fast.modules.elmo"):
        Elmo("tiny", None, 1)
    assert "RANDOM weights" in caplog.text and "from_pretrained(name, ...) with one of small, medium" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="elmo_fast.modules.elmo"):
        Elmo("small", None, 1)
    assert "RANDOM weights" in caplog.text and "Elmo.from_pretrained('small', ...)" in caplog.text
    # load_options keeps meaning the preset (no download) for names that are both
    from elmo_fast.options import PRESETS, load_options

    assert load_options("original") == PRESETS["original"]
    assert json.dumps(load_options("small"))  # a dict, no network
