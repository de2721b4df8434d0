"""Shared test fixtures: paths to ../shared/fixtures and the repo root."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARCFACE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"
SPEC = SHARED / "spec"
MXNET_PYTHON = Path(os.environ.get("MXNET_PYTHON", REPO / ".venv-mxnet" / "bin" / "python"))

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES} (set ARCFACE_SHARED)")
    return FIXTURES


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    return SPEC


@pytest.fixture(scope="session")
def mxnet_python() -> Path:
    """The interpreter of the MXNet 1.9.1 side environment; .ci/run creates it."""
    if not MXNET_PYTHON.exists():
        pytest.fail(f"MXNet side environment missing: {MXNET_PYTHON} (run bash .ci/setup)")
    return MXNET_PYTHON


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, request):
    """The session's one short demo training run (tests/demo_model.py): trained by the first test that asks,
    reused by every other (test_train's learning test, the integrity tools' demo-model tests). Under
    pytest-xdist (.ci/run) every worker has its own session: the first trains in the run's common temp
    folder under a lock, the others wait and read the result."""
    from tests.demo_model import shared_demo_run, train_demo
    if not hasattr(request.config, "workerinput"):
        return train_demo(tmp_path_factory.mktemp("demo_run"))
    return shared_demo_run(tmp_path_factory.getbasetemp().parent / "demo_run")


@pytest.fixture(scope="session")
def demo_world(demo_run, tmp_path_factory):
    """Image-folder variants of the demo run's training data with planted copies (tests/integrity_worlds.py)."""
    from tests.integrity_worlds import demo_world as build
    demo_run.check()
    return build(demo_run, tmp_path_factory.mktemp("integrity_demo_world"))


@pytest.fixture(autouse=True)
def _return_freed_memory():
    """After each test, hand freed heap back to the OS: the suite runs in one process, and later tests
    fork DataLoader workers from it (CI saw fork fail with ENOMEM once the heap had grown to ~5 GB)."""
    yield
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):       # not glibc: nothing to trim
        pass


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Tests marked fresh_process run in a new interpreter, as users start training: they fork DataLoader
    workers, and forking the long-lived suite process failed with ENOMEM late in CI runs."""
    if pyfuncitem.get_closest_marker("fresh_process") is None or os.environ.get("ARCFACE_FRESH_PROCESS"):
        return None
    import subprocess
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                            cwd=REPO, env=dict(os.environ, ARCFACE_FRESH_PROCESS="1"), capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"failed in a fresh process:\n{result.stdout[-6000:]}{result.stderr[-2000:]}", pytrace=False)
    return True
