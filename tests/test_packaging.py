"""A wheel built from the repository installs and works in clean venvs, with and without
each extra, offline (dependencies come from the wheelhouse `make test` prepares)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import poolclient
from tests.helpers import ROOT

WHEELHOUSE = os.path.join(ROOT, ".venv", "wheelhouse")

pytestmark = pytest.mark.slow  # builds a wheel and clean venvs: pytest -m slow runs these alone

CHECK = """
import importlib.util, json, os, sys
import poolclient, poolclient.registry, poolclient.adapters, poolclient.gunicorn
from poolclient import PoolClientMiddleware, Registry, Settings
here = os.path.dirname(poolclient.__file__)
print(json.dumps({
    "version": poolclient.__version__,
    "site": "site-packages" in here,
    "typed": os.path.exists(os.path.join(here, "py.typed")),
    "has": {m: importlib.util.find_spec(m) is not None
            for m in ("gunicorn", "gevent", "prometheus_client", "trustme", "app", "httpx2")},
    "metrics": __import__("poolclient.metrics").metrics.available(),
    "imported": sorted(m for m in ("httpx", "httpx2") if m in sys.modules),
    "transport": type(Registry().httpx2_transport()).__module__
                 if importlib.util.find_spec("httpx2") else None,
}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.isdir(WHEELHOUSE):
        pytest.fail(f"{WHEELHOUSE} is missing: run `make test`, which builds it")
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy: setuptools would otherwise reuse (and leave) ROOT/build.
    source = tmp_path_factory.mktemp("source") / "poolclient"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "run", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(source)],
                   check=True, cwd=out, capture_output=True)
    (built,) = out.glob("poolclient-*.whl")
    return built


@pytest.mark.parametrize("extra", ["", "gunicorn", "gevent", "prometheus", "httpx2"])
def test_wheel_installs_and_imports_in_a_clean_venv(wheel: Path, tmp_path: Path, extra: str):
    """pip install poolclient[extra] from the wheel into a new venv (no network), then
    import it from site-packages: version, py.typed, and exactly the extra's packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    target = f"poolclient[{extra}]" if extra else "poolclient"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index",
                    "--find-links", WHEELHOUSE, "--find-links", str(wheel.parent), target],
                   check=True, cwd=tmp_path, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run([python, "-c", CHECK], check=True, cwd=tmp_path, env=env,
                         capture_output=True, text=True).stdout
    found = json.loads(out)
    assert found["version"] == poolclient.__version__
    assert found["site"] and found["typed"]
    assert found["has"] == {
        "gunicorn": extra in ("gunicorn", "gevent"),
        "gevent": extra == "gevent",
        "prometheus_client": extra == "prometheus",
        "trustme": False,
        "app": False,  # the example service is not shipped as a top-level package
        "httpx2": extra == "httpx2",
    }
    assert found["metrics"] is (extra == "prometheus")
    # The package and its hooks import no httpx stack; the transport imports its own.
    assert found["imported"] == []
    assert found["transport"] == ("poolclient.integrations.httpx2" if extra == "httpx2" else None)
