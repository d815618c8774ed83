"""The start-up check that llama.cpp can run on this CPU, driven with child scripts that crash,
fail or succeed (no model needed), and once with the real engine."""

from __future__ import annotations

import pytest

from keel.errors import ConfigError
from keel.providers.local.preflight import check_engine_runs

SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
ILLEGAL = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"


@pytest.fixture
def build(tmp_path):
    library = tmp_path / "libggml-cpu.so"
    library.write_bytes(b"build 1")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights")
    return {"engine_files": [library], "model": model, "cache_dir": tmp_path / "cache"}


def check(build, probe):
    check_engine_runs(build["model"], probe=probe, engine_files=build["engine_files"],
                      cache_dir=build["cache_dir"])


@pytest.mark.parametrize("probe, name", [(SEGFAULT, "SIGSEGV"), (ILLEGAL, "SIGILL")])
def test_a_crashing_engine_stops_start_up_saying_how_to_rebuild(build, probe, name):
    with pytest.raises(ConfigError) as caught:
        check(build, probe)
    message = str(caught.value)
    assert name in message and str(build["model"]) in message
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in message
    assert not build["cache_dir"].exists()  # a crash is never remembered


def test_success_is_remembered_per_build(build, tmp_path):
    runs = tmp_path / "runs"
    counting = f"open({str(runs)!r}, 'a').write('x')"
    check(build, counting)
    check(build, counting)
    assert runs.read_text() == "x"

    build["engine_files"][0].write_bytes(b"build 2, reinstalled")
    check(build, counting)
    assert runs.read_text() == "xx"


def test_a_python_error_in_the_probe_is_left_to_the_real_load(build):
    check(build, "raise ValueError('not a GGUF file')")  # no ConfigError from the check
    assert not build["cache_dir"].exists()


@pytest.mark.model
def test_the_installed_engine_passes(tmp_path):
    from keel.providers.local.model import default_model_path

    check_engine_runs(default_model_path(), cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1


def test_an_unwritable_cache_only_means_checking_again(build, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    build["cache_dir"] = blocker / "cache"  # mkdir fails: its parent is a file
    check(build, "pass")
    check(build, "pass")
