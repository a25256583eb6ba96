"""The package as an installer gets it (issue 14): a wheel built from pyproject.toml, installed (not editable)
into fresh virtual environments outside the source tree, with the extra of each machine.

The wheel is built once per module from a copy of what the build reads (pyproject.toml, README.md and the
packages), so the checkout gets no build/ or egg-info of it. pip takes the dependencies from its index and
its cache; where it cannot reach an index at all the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from simulators.brokers import free_port
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]  # pip may have to download on a new machine

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("doorkeep", "edge", "server", "simulators")
#: the web stack and the server's storage: none of it belongs on a Pi installed with [edge] only
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "jinja2", "argon2", "sqlite_utils", "multipart", "pyotp",
               "tomlkit", "amqtt", "yaml")
EDGE_NEEDS = ("cryptography", "paho", "serial", "gpiozero", "cv2", "numpy", "sdnotify")


def clean_env() -> dict[str, str]:
    """The environment without anything that would make the venv's Python see the checkout or another venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(cmd: list[str | Path], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


def pip(python: Path | str, args: list[str | Path], cwd: Path) -> None:
    """Run pip; a failure fails the test, unless pip reaches no index at all (then the test is skipped)."""
    proc = run([python, "-m", "pip", "--disable-pip-version-check", *args], cwd)
    if proc.returncode == 0:
        return
    probe = run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", cwd / "probe", "sdnotify==0.3.2"], cwd)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach a package index: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    pytest.fail(f"pip {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def make_venv(path: Path) -> Path:
    """A fresh virtual environment at ``path`` (with pip); its python."""
    proc = run([sys.executable, "-m", "venv", path], path.parent, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"python -m venv does not work here (on Debian: apt-get install python3-venv): {proc.stderr[-300:]}")
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside the source tree for the venvs and the demo's var/."""
    path = tmp_path_factory.mktemp("package")
    assert ROOT not in path.parents
    return path


@pytest.fixture(scope="module")
def wheel(work: Path) -> Path:
    """The wheel, built once from a copy of what the build reads."""
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "keys", "*.key"))
    pip(sys.executable, ["wheel", "--quiet", "--no-deps", "--wheel-dir", work / "dist", src], work)
    (built,) = (work / "dist").glob("doorkeep-*.whl")
    return built


def installed_files(python: Path, cwd: Path) -> tuple[Path, set[str]]:
    """Where the venv's doorkeep lives and every non-Python file of its four packages, relative to there."""
    proc = run([python, "-I", "-c", "import doorkeep, pathlib; print(pathlib.Path(doorkeep.__file__).parents[1])"], cwd)
    assert proc.returncode == 0, proc.stderr
    site = Path(proc.stdout.strip())
    files = {p.relative_to(site).as_posix() for package in PACKAGES for p in (site / package).rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")}
    return site, files


#: walks the installed packages and imports every module (but ``__main__``, which runs the command); prints how
#: many and where they came from
IMPORT_ALL = """
import importlib, pkgutil, sys
tops = sys.argv[1:]
names = []
for top in tops:
    package = importlib.import_module(top)
    names.append(top)
    names += [m.name for m in pkgutil.walk_packages(package.__path__, top + ".") if not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
print(len(names))
print(sorted({sys.modules[n].__file__.rsplit("/", 2)[0] for n in tops}))
"""


def test_the_wheel_installs_outside_the_checkout_imports_whole_and_runs_the_demo(wheel: Path, work: Path) -> None:
    python = make_venv(work / "demo-venv")
    pip(python, ["install", "--quiet", f"{wheel}[demo]"], work)

    # Not editable, not the checkout: the files are in the venv, and every runtime file of the source is there.
    site, shipped = installed_files(python, work)
    assert work in site.parents and ROOT not in site.parents, site
    wanted = {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*")
              if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
              and "scenarios" not in p.parts and "keys" not in p.parts}  # scenarios: test material of a checkout
    assert wanted - shipped == set(), f"files the code reads that the wheel lacks: {sorted(wanted - shipped)}"
    assert {"doorkeep/sites/demo/site.toml", "server/web/templates/privacy-notice.txt"} <= shipped

    proc = run([python, "-I", "-c", IMPORT_ALL, *PACKAGES], work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, where = proc.stdout.splitlines()
    assert int(count) > 80 and where == str([str(site)]), proc.stdout

    # The demo from a directory that is not a checkout, with the desk up on a free port: pages and static files.
    port = free_port()
    log = work / "demo.log"
    with log.open("w") as out:
        demo = subprocess.Popen([work / "demo-venv" / "bin" / "doorkeep", "--log-level", "WARNING", "demo",
                                 "--duration", "15", "--desk-port", str(port)],
                                cwd=work, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: "security desk: http://" in log.read_text() or demo.poll() is not None, 45), \
            log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=10) as page:
            html = page.read().decode()
        css = re.search(r'href="(/static/[^"]+\.css)"', html)
        assert css, html[:2000]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{css.group(1)}", timeout=10) as sheet:
            assert sheet.status == 200 and sheet.read()
        assert demo.wait(timeout=60) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = log.read_text()
    assert "Alice Archer" in text and "granted" in text, text
    assert "all relays de-energised: yes" in text, text
    assert "Traceback" not in text, text


#: which of the modules named on the command line are importable, as JSON
FIND = "import importlib.util, json, sys; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"


def test_an_edge_install_has_no_web_stack_and_runs_the_edge_commands(wheel: Path, work: Path) -> None:
    python = make_venv(work / "edge-venv")
    pip(python, ["install", "--quiet", f"{wheel}[edge]"], work)
    bin_ = work / "edge-venv" / "bin"

    proc = run([python, "-I", "-c", FIND, *SERVER_ONLY, *EDGE_NEEDS], work)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert [m for m in SERVER_ONLY if found[m]] == [], f"an [edge] install brings these: {found}"
    assert [m for m in EDGE_NEEDS if not found[m]] == [], f"an [edge] install lacks these: {found}"

    # Everything the edge runs imports here: the core and the whole edge package.
    proc = run([python, "-I", "-c", IMPORT_ALL, "doorkeep", "edge"], work)
    assert proc.returncode == 0, proc.stderr[-3000:]

    site, _ = installed_files(python, work)
    demo_site = site / "doorkeep" / "sites" / "demo"
    check = run([bin_ / "doorkeep", "config", "check", demo_site], work)
    assert (check.returncode, check.stdout.strip()) == (0, "ok"), check.stdout + check.stderr
    for args in (["edge", "--help"], ["osdp", "install-key", "--help"]):
        proc = run([bin_ / "doorkeep", *args], work)
        assert proc.returncode == 0 and "--device" in proc.stdout, proc.stdout + proc.stderr
    # install-key gets past its imports to the device file: the demo's lobby reader is no OSDP reader (exit 2)
    proc = run([bin_ / "doorkeep", "osdp", "install-key", "lobby_in", "--device", demo_site / "devices" / "pi-lobby.toml"],
               work)
    assert proc.returncode == 2 and "lobby_in" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "extra" not in proc.stderr, proc.stderr

    # The server's commands say which extra they need, in one line, instead of a traceback.
    for args, extra in ((["server", "--site", demo_site], "[server]"), (["desk", "--site", demo_site], "[server]"),
                        (["demo", "--duration", "1"], "[demo]")):
        proc = run([bin_ / "doorkeep", *args], work)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"needs the {extra} extra" in proc.stderr and f"{wheel.name.split('-py3')[0]}" in proc.stderr, proc.stderr

    # [pi] is [edge] and the lgpio pin driver, nothing of the server either.
    report = work / "pi-report.json"
    pip(python, ["install", "--quiet", "--dry-run", "--report", report, f"{wheel}[pi]"], work)
    new = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "lgpio" in new and not new & {"fastapi", "uvicorn", "jinja2", "argon2-cffi", "sqlite-utils"}, new
