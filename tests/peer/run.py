"""``make peer``: urllib3's and requests' own test suites, stock and with poolclient swapped in.

For the urllib3 and requests versions installed in the project's venv (``.venv``), it

1. downloads their sdists (``pip download --no-deps --no-binary :all:``) into ``.peer/sdists``
   and extracts them into ``.peer/src``;
2. makes ``.peer/venv`` (the suites' plugins never load in the project's own test run) with
   poolclient (``pip install -e``), the same urllib3 and requests, and each suite's test
   requirements; a stamp file (``.peer/venv/.peer-installed``) holds what was installed, so
   a second run installs nothing;
3. runs each suite, unmodified, from its extracted folder twice: stock, then with
   ``-p swap`` (``tests/peer/swap.py``: poolclient's pools, manager and adapter in urllib3's
   and requests' place); ``-p record`` (``tests/peer/record.py``) writes each test's outcome
   to ``.peer/results/<suite>-<mode>.jsonl``; pytest's own output goes to ``.log`` beside it;
4. only loopback is reachable: pytest-socket allows connects to loopback only (as urllib3's
   CI does, less its non-routed ``TARPIT_HOST``), and tests that need more are deselected
   (``OUTSIDE`` below, and urllib3's ``requires_network`` marker);
5. prints every test that passes on stock but not swapped, and exits non-zero if one is not
   in ``tests/peer/allowlist.py``, if an allow-list entry's ``readme`` sentence is not in
   README.md, or if an allow-listed test no longer differs (the list must not rot);
6. prints the pass counts and how long each run took (also in ``.peer/results/summary.json``).

    python tests/peer/run.py                     # everything (what make peer runs)
    python tests/peer/run.py --suite requests    # one suite
    python tests/peer/run.py --compare-only      # judge the last results again, run nothing
    PEER_PYTEST_ARGS='-k pickling' python tests/peer/run.py --suite requests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = ROOT / ".peer"
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
VENV = WORK / "venv"
PEER_PYTHON = VENV / "bin" / "python"
RESULTS = WORK / "results"
STAMP = VENV / ".peer-installed"

SUITES = ("urllib3", "requests")
MODES = ("stock", "swapped")

# What an unreached host would be: loopback only, as urllib3's CI allows, without its
# TARPIT_HOST 240.0.0.0 (a connect there would leave the machine).
LOOPBACK = "localhost,127.0.0.1,::1,127.0.0.0"
SOCKET_ARGS = ["--allow-unix-socket", f"--allow-hosts={LOOPBACK}"]

# Tests that need an address off this machine, deselected in both runs (not counted).
OUTSIDE = {
    "urllib3": [
        # Connect to TARPIT_HOST (240.0.0.0), a non-routed address, to get a connect timeout.
        "test/with_dummyserver/test_connectionpool.py::TestConnectionPoolTimeouts::"
        "test_connect_timeout",
        "test/with_dummyserver/test_connectionpool.py::TestConnectionPoolTimeouts::"
        "test_total_applies_connect",
        "test/with_dummyserver/test_connectionpool.py::TestConnectionPoolTimeouts::"
        "test_create_connection_timeout",
        "test/with_dummyserver/test_https.py::TestHTTPS_TLSv1_2::test_enhanced_timeout",
        "test/with_dummyserver/test_https.py::TestHTTPS_TLSv1_3::test_enhanced_timeout",
        "test/with_dummyserver/test_https.py::TestHTTPS_TLSv1_2::"
        "test_enhanced_ssl_connection",
        "test/with_dummyserver/test_https.py::TestHTTPS_TLSv1_3::"
        "test_enhanced_ssl_connection",
        *(f"test/with_dummyserver/test_https.py::TestHTTPS_TLSv1_{v}::test_http2_probe_{t}"
          for v in (2, 3) for t in ("no_result_in_connect_error", "blocked_per_thread")),
    ],
    "requests": [
        # Connect to TARPIT (10.255.255.1), an address off this machine, for a timeout.
        "tests/test_requests.py::TestTimeout::test_connect_timeout[timeout0]",
        "tests/test_requests.py::TestTimeout::test_connect_timeout[timeout1]",
        "tests/test_requests.py::TestTimeout::test_total_timeout_connect[timeout0]",
        "tests/test_requests.py::TestTimeout::test_total_timeout_connect[timeout1]",
        # Resolves doesnotexist.google.com through the machine's DNS server.
        "tests/test_requests.py::TestRequests::test_errors[http://doesnotexist.google.com-"
        "ConnectionError]",
    ],
}

PYTEST_ARGS = {
    # urllib3's CI (noxfile: --strict-config --strict-markers and pytest-socket), less the
    # tests that need the Internet.
    "urllib3": ["test/", "--strict-config", "--strict-markers", "--disable-socket",
                *SOCKET_ARGS, "-m", "not requires_network"],
    # requests' CI runs `pytest tests` (its pyproject adds --doctest-modules).
    "requests": ["tests", *SOCKET_ARGS],
}
COMMON_ARGS = ["-p", "no:cacheprovider", "-p", "record", "-q", "-rfE", "--tb=short",
               "--timeout=120"]

def log(msg: str) -> None:
    print(f"peer: {msg}", flush=True)


def run(cmd: list[str], **kw: object) -> None:
    log(" ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def installed_versions() -> dict[str, str]:
    """urllib3's and requests' versions in the project's venv."""
    out = subprocess.run(
        [str(PROJECT_PYTHON), "-c",
         "import importlib.metadata as m, json; "
         "print(json.dumps({n: m.version(n) for n in ('urllib3', 'requests')}))"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def fetch_sources(versions: dict[str, str]) -> dict[str, Path]:
    """Download and extract each sdist, once; the extracted folder of each suite."""
    sdists = WORK / "sdists"
    src = WORK / "src"
    sdists.mkdir(parents=True, exist_ok=True)
    src.mkdir(parents=True, exist_ok=True)
    folders = {}
    for name, version in versions.items():
        tarball = sdists / f"{name}-{version}.tar.gz"
        if not tarball.exists():
            tmp = sdists / f".download-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            run([PROJECT_PYTHON, "-m", "pip", "download", "-qq", "--no-deps",
                 "--no-binary", ":all:", "--dest", tmp, f"{name}=={version}"])
            found = list(tmp.glob(f"{name}-{version}.tar.gz"))
            if len(found) != 1:
                sys.exit(f"peer: pip download gave {list(tmp.iterdir())}, not {tarball.name}")
            found[0].rename(tarball)
            shutil.rmtree(tmp)
        folder = src / f"{name}-{version}"
        done = folder / ".peer-extracted"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            log(f"extracting {tarball.name}")
            with tarfile.open(tarball) as tar:
                if hasattr(tarfile, "data_filter"):  # 3.10.12, 3.11.4 and later
                    tar.extractall(src, filter="data")
                else:
                    tar.extractall(src)
            if not folder.is_dir():
                sys.exit(f"peer: {tarball.name} has no {folder.name}/")
            done.touch()
        folders[name] = folder
    return folders


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower()


def _group(groups: dict[str, list[object]], name: str) -> list[str]:
    out: list[str] = []
    for item in groups[name]:
        if isinstance(item, dict):
            out += _group(groups, str(item["include-group"]))
        else:
            out.append(str(item))
    return out


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def lock_constraints(folder: Path, names: list[str]) -> list[str]:
    """``name==version`` from urllib3's ``uv.lock`` (what its CI installs) for ``names`` and
    everything they depend on there (the newest where the lock has several versions).
    Its ``hypercorn`` is a git fork (urllib3/hypercorn, branch urllib3-changes) that PyPI
    does not have: the lock's version, the fork's base release, is taken from PyPI."""
    packages: dict[str, list[dict[str, object]]] = {}
    for package in tomllib.loads((folder / "uv.lock").read_text())["package"]:
        if "version" in package and "editable" not in package.get("source", {}):
            packages.setdefault(package["name"], []).append(package)
    pins: dict[str, str] = {}
    todo = [_name(n).replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in pins or name not in packages:
            continue
        newest = max(packages[name], key=lambda p: _version_key(str(p["version"])))
        pins[name] = str(newest["version"])
        deps = list(newest.get("dependencies", []))  # type: ignore[call-overload]
        for extra in newest.get("optional-dependencies", {}).values():  # type: ignore[union-attr]
            deps += extra
        todo += [str(d["name"]) for d in deps]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def requirements(versions: dict[str, str],
                 folders: dict[str, Path]) -> tuple[list[str], list[str]]:
    """What the suites' venv needs: poolclient, the two libraries, their test requirements;
    and of those, urllib3's (pinned to its lock)."""
    reqs = [f"urllib3=={versions['urllib3']}", f"requests[socks]=={versions['requests']}"]
    # urllib3: its `test` dependency group, and from `dev` what its TLS tests import
    # (trustme, cryptography, idna; not pyopenssl, whose contrib tests then skip).
    groups = tomllib.loads((folders["urllib3"] / "pyproject.toml").read_text())[
        "dependency-groups"]
    urllib3_reqs = _group(groups, "test")
    urllib3_reqs += [r for r in _group(groups, "dev")
                     if _name(r) in ("trustme", "cryptography", "idna")]
    reqs += urllib3_reqs
    # requests: requirements-dev.txt, less coverage and wheel; its `-e .[socks]` is the
    # pinned requests[socks] above.
    for line in (folders["requests"] / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-e") or _name(line) in ("pytest-cov", "wheel"):
            continue
        reqs.append(line)
    return reqs, urllib3_reqs


def make_venv(reqs: list[str], constraints: list[str]) -> None:
    """``.peer/venv`` with ``reqs`` and poolclient (editable), unless already so."""
    stamp = json.dumps({"requirements": reqs, "constraints": constraints,
                        "python": sys.version,
                        "pyproject": hashlib.sha256(
                            (ROOT / "pyproject.toml").read_bytes()).hexdigest()}, indent=1)
    if STAMP.exists() and STAMP.read_text() == stamp and PEER_PYTHON.exists():
        log(f"{VENV.relative_to(ROOT)} is up to date ({STAMP.name})")
        return
    # Anything else changed: made anew, so that what is in it does not depend on its past.
    run([PROJECT_PYTHON, "-m", "venv", "--clear", VENV])
    run([PEER_PYTHON, "-m", "pip", "install", "-qq", "--upgrade", "pip"])
    pins = WORK / "constraints.txt"
    pins.write_text("".join(c + "\n" for c in constraints))
    run([PEER_PYTHON, "-m", "pip", "install", "-qq", "-c", pins, "-e", ROOT, *reqs])
    STAMP.write_text(stamp)


def suite_env(mode: str) -> dict[str, str]:
    """The caller's environment, without ``POOLCLIENT_*`` (the swapped run measures
    poolclient's defaults, the ones README.md states), with this folder on PYTHONPATH (for
    ``-p record`` and ``-p swap``). REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and SSL_CERT_FILE are
    left as they are: both suites pass as released with them set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLCLIENT_")}
    # Except the resilience policy: its breaker, by design, refuses an origin after
    # failures, and each suite's many tests share one local server, so later tests would
    # be refused for what earlier ones did on purpose. It is off here, and only here.
    for switch in ("BREAKER", "BULKHEAD", "RETRY_BUDGET", "STALL_DETECTION"):
        env[f"POOLCLIENT_{switch}"] = "false"
    env["PYTHONPATH"] = str(HERE)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_suite(suite: str, mode: str, folder: Path, extra: list[str]) -> float:
    """One pytest run; its seconds. Outcomes go to ``.peer/results/<suite>-<mode>.jsonl``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = RESULTS / f"{suite}-{mode}.jsonl"
    logfile = RESULTS / f"{suite}-{mode}.log"
    record.unlink(missing_ok=True)
    # Which venv made these results: stock and swapped are compared only from the same one
    # (another pytest names some parametrized tests differently).
    (RESULTS / f"{suite}-{mode}.venv").write_text(
        hashlib.sha256(STAMP.read_bytes()).hexdigest() + "\n")
    env = suite_env(mode)
    env["PEER_RECORD"] = str(record)
    cmd = [str(PEER_PYTHON), "-m", "pytest", *COMMON_ARGS,
           *(["-p", "swap"] if mode == "swapped" else []), *PYTEST_ARGS[suite]]
    for nodeid in OUTSIDE[suite]:
        cmd += ["--deselect", nodeid]
    cmd += extra
    log(f"{suite} {mode}: running in {folder.relative_to(ROOT)}, output in "
        f"{logfile.relative_to(ROOT)}")
    started = time.monotonic()
    with open(logfile, "w") as out:
        out.write(" ".join(cmd) + "\n\n")
        out.flush()
        rc = subprocess.run(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    seconds = time.monotonic() - started
    tail = logfile.read_text(errors="replace").rstrip().splitlines()[-1:]
    log(f"{suite} {mode}: {seconds:.0f} s, pytest exit {rc}: {tail[0] if tail else ''}")
    if rc not in (0, 1):  # 1: some tests failed; anything else: the run itself broke
        sys.exit(f"peer: {suite} {mode}: pytest exited {rc}; see {logfile}")
    return seconds


def outcomes(suite: str, mode: str) -> dict[str, tuple[str, str]]:
    """nodeid -> (outcome, message) of one run: failed or error if any phase failed."""
    path = RESULTS / f"{suite}-{mode}.jsonl"
    if not path.exists():
        return {}
    result: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        nodeid, when, outcome, message = (rec["nodeid"], rec["when"], rec["outcome"],
                                          rec["message"])
        if when == "collect":
            result[nodeid] = ("error", message)
        elif when == "setup":
            result[nodeid] = ("error" if outcome == "failed" else outcome, message)
        elif when == "call":
            result[nodeid] = (outcome, message)
        elif when == "teardown" and outcome == "failed":
            prev = result.get(nodeid, ("passed", ""))
            if prev[0] in ("passed", "xfailed", "skipped"):
                result[nodeid] = ("error", "teardown: " + message)
    return result


PASSING = ("passed", "xfailed")


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def differences(stock: dict[str, tuple[str, str]],
                swapped: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Tests that pass on stock (or fail as marked) but not the same way swapped."""
    diff = {}
    for nodeid, (outcome, _) in stock.items():
        if outcome not in PASSING:
            continue
        other = swapped.get(nodeid, ("missing", "not run with poolclient swapped in"))
        if other[0] != outcome:
            diff[nodeid] = other
    return diff


def counts(result: dict[str, tuple[str, str]]) -> dict[str, int]:
    c: dict[str, int] = {}
    for outcome, _ in result.values():
        c[outcome] = c.get(outcome, 0) + 1
    return c


def judge(suites: list[str], timings: dict[str, float]) -> int:
    sys.path.insert(0, str(HERE))
    from allowlist import ALLOWED  # noqa: PLC0415

    readme = (ROOT / "README.md").read_text()
    problems: list[str] = []
    summary: dict[str, object] = {"timings_s": {k: round(v, 1) for k, v in timings.items()}}
    figures = []
    for suite in suites:
        stock, swapped = outcomes(suite, "stock"), outcomes(suite, "swapped")
        if not stock or not swapped:
            problems.append(f"{suite}: no results for both runs (run it first)")
            continue
        made_by = {(RESULTS / f"{suite}-{m}.venv").read_text() for m in MODES
                   if (RESULTS / f"{suite}-{m}.venv").exists()}
        if len(made_by) != 1:
            problems.append(f"{suite}: stock and swapped results come from different venvs: "
                            "run both again")
        diff = differences(stock, swapped)
        allowed = {k: v for k, v in ALLOWED.items() if v.suite == suite}
        print(f"\n== {suite}: {len(diff)} tests pass on stock but not with poolclient swapped in")
        for nodeid in sorted(diff):
            outcome, message = diff[nodeid]
            tag = "allowed" if nodeid in allowed else "NOT ALLOWED"
            print(f"  [{tag}] {nodeid}: {outcome}: {message.splitlines()[0] if message else ''}")
            if nodeid not in allowed:
                problems.append(f"{suite}: {nodeid} differs ({outcome}) and is not allow-listed")
        for nodeid in sorted(allowed):
            if nodeid in diff:
                continue
            if stock.get(nodeid, ("missing",))[0] in PASSING:
                problems.append(f"{suite}: allow-listed {nodeid} no longer differs "
                                f"(swapped: {swapped.get(nodeid, ('missing',))[0]}): "
                                "remove it from tests/peer/allowlist.py")
            else:
                print(f"  [unchecked] allow-listed {nodeid}: stock "
                      f"{stock.get(nodeid, ('missing',))[0]}, so not compared this run")
        sc, wc = counts(stock), counts(swapped)
        total = len(stock)
        line = (f"{suite}: {wc.get('passed', 0)} of {len(swapped)} tests pass with poolclient "
                f"swapped in; {sc.get('passed', 0)} of {total} stock")
        figures.append(line)
        for mode, c in (("stock", sc), ("swapped", wc)):
            figures.append(f"  {suite} {mode}: " + ", ".join(f"{n} {o}" for o, n in sorted(
                c.items(), key=lambda item: -item[1])))
        summary[suite] = {"stock": sc, "swapped": wc, "stock_total": total,
                          "swapped_total": len(swapped), "differences": sorted(diff),
                          "stock_not_passing": sorted(
                              k for k, (o, _) in stock.items() if o not in PASSING + ("skipped",))}
    # Verbatim up to line breaks and runs of spaces, so that README.md may wrap them.
    readme = _squeeze(readme)
    by_sentence: dict[str, list[str]] = {}
    for nodeid, entry in ALLOWED.items():
        by_sentence.setdefault(entry.readme, []).append(nodeid)
    for sentence, nodeids in by_sentence.items():
        for where, text in (("README.md", readme),):
            if _squeeze(sentence) not in text:
                problems.append(f"not in {where}: {sentence!r}, the readme of "
                                f"{len(nodeids)} allow-list entries: " + ", ".join(nodeids))
    print("\n== figures")
    for line in figures:
        print("  " + line)
    for name, seconds in timings.items():
        print(f"  {name}: {seconds:.0f} s")
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if problems:
        print(f"\n== make peer FAILED: {len(problems)} problem(s)")
        for p in problems:
            print("  " + p)
        return 1
    print("\n== make peer: every difference is allow-listed and documented in README.md")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, action="append",
                        help="run only this suite (repeatable)")
    parser.add_argument("--mode", choices=MODES, action="append",
                        help="run only this mode (repeatable); the other's last results "
                             "are compared")
    parser.add_argument("--compare-only", action="store_true",
                        help="run nothing, judge the results in .peer/results")
    args = parser.parse_args()
    suites = args.suite or list(SUITES)
    modes = args.mode or list(MODES)
    extra = os.environ.get("PEER_PYTEST_ARGS", "").split()
    timings: dict[str, float] = {}
    if not args.compare_only:
        if not PROJECT_PYTHON.exists():
            sys.exit(f"peer: {PROJECT_PYTHON} is missing: make the project's venv first")
        versions = installed_versions()
        log("versions in .venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        folders = fetch_sources(versions)
        reqs, urllib3_reqs = requirements(versions, folders)
        make_venv(reqs, lock_constraints(folders["urllib3"], urllib3_reqs))
        for suite in suites:
            for mode in modes:
                timings[f"{suite} {mode}"] = run_suite(suite, mode, folders[suite], extra)
    prev = RESULTS / "summary.json"
    if prev.exists():  # keep the times of runs not made now
        old = json.loads(prev.read_text()).get("timings_s", {})
        timings = {**{k: float(v) for k, v in old.items()}, **timings}
    return judge(suites, timings)


if __name__ == "__main__":
    sys.exit(main())
