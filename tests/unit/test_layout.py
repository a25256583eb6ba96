"""The import rules of DESIGN §1, kept by a test rather than by memory."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports(package: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path.name, alias.name.split(".")[0]) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path.name, node.module.split(".")[0]))
    return found


def test_core_imports_only_stdlib_cryptography_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | {"cryptography", "doorkeep"}
    bad = [(f, m) for f, m in imports("doorkeep") if m not in allowed]
    assert not bad, f"doorkeep/ must stay free of I/O libraries and other parts: {bad}"


@pytest.mark.parametrize("package, forbidden", [
    ("edge", {"server", "simulators"}),
    ("server", {"edge", "simulators"}),
])
def test_edge_and_server_never_import_each_other_or_simulators(package: str, forbidden: set[str]) -> None:
    bad = [(f, m) for f, m in imports(package) if m in forbidden]
    assert not bad, f"{package}/ imports {bad}"


def test_core_cli_loads_parts_only_by_name() -> None:
    from doorkeep.cli import HANDLERS

    for target in HANDLERS.values():
        module = target.split(":")[0]
        assert module.split(".")[0] in {"doorkeep", "edge", "server", "simulators"}
        assert module.split(".")[0] == "doorkeep" or module.endswith(".cli")


# The store's connection and lock are its own (issue 13): everything else calls Store's typed methods.
STORE_MODULES = {"server/store.py"} | {f"server/{p.name}" for p in (ROOT / "server").glob("store_*.py")}
STORE_PRIVATE = {"_db", "db", "_conn", "_lock", "_in_tx", "connection_for_tests"}


def _names_a_store(node: ast.expr) -> bool:
    """``store``, ``self.store``, ``server.store``, ``audit.store`` …: an expression naming a Store."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "store" or name.endswith("_store")


def store_reach_ins(root: Path) -> list[str]:
    """Every place outside the store modules that touches a store's connection or lock, as ``file:line code``."""
    found = []
    for package in ("server", "simulators", "bench", "edge", "doorkeep"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in STORE_MODULES:
                continue
            tree = ast.parse(path.read_text(), filename=rel)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute):
                    continue
                reach = (node.attr in STORE_PRIVATE and _names_a_store(node.value)) or (
                    node.attr == "conn" and isinstance(node.value, ast.Attribute) and node.value.attr in {"db", "_db"})
                if reach:
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def test_nothing_outside_the_store_touches_its_connection_or_lock() -> None:
    bad = store_reach_ins(ROOT)
    assert not bad, ("these reach into a Store's connection or lock; give Store a typed method named for what it "
                     "does (server/store.py, server/store_*.py) and call that instead:\n" + "\n".join(bad))


def test_store_layout_scan_finds_a_reach_in(tmp_path: Path) -> None:
    """The scan itself: a module that takes the store's lock and runs SQL on its connection is reported."""
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "leaky.py").write_text(
        "def f(store, server):\n"
        "    with store._lock, store._db.conn:\n"
        "        store._db.conn.execute('DELETE FROM events')\n"
        "    return server.store.db.conn, server.store.connection_for_tests()\n")
    found = store_reach_ins(tmp_path)
    assert [f.split(" ")[0] for f in found].count("server/leaky.py:2") == 3  # _lock, _db, _db.conn
    assert any(f.endswith("server.store.connection_for_tests") for f in found)
    assert any(f.endswith("server.store.db.conn") for f in found)


def test_the_application_layer_never_imports_the_web_layer() -> None:
    """server/web/ translates HTTP to the services in server/ and nothing more (DESIGN §9): the services never
    reach back into it, so there is no import circle (server/app.py once imported server.web.app lazily)."""
    bad = []
    for path in sorted((ROOT / "server").glob("*.py")):  # server/, not server/web/
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [(path.name, n) for n in names if n == "server.web" or n.startswith("server.web.")]
            if isinstance(node, ast.ImportFrom) and node.module == "server" and any(a.name == "web" for a in node.names):
                bad.append((path.name, "server.web"))
    assert not bad, f"the application layer imports the web layer: {bad}"


# server/web/ translates HTTP to the application services of server/ (visitors.py, operators.py, sessions.py,
# alarms.py, eventlog.py, people.py, siteadmin.py, audit.py) and back; it never reaches the store itself.
#: The composition root: it hands the server's store to the services it builds (a call argument, nothing else).
WEB_COMPOSITION_ROOT = "server/web/app.py"


def web_store_uses(root: Path) -> list[str]:
    """Every place in server/web/ that imports the store's modules, reads a ``.store`` (bar the composition root
    handing it to a service) or touches another object's private attribute, as ``file:line what``."""
    found = []
    for path in sorted((root / "server" / "web").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        handed = {id(arg) for call in ast.walk(tree) if isinstance(call, ast.Call)
                  for arg in [*call.args, *(k.value for k in call.keywords)]} if rel == WEB_COMPOSITION_ROOT else set()
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or "", *(f"server.{a.name}" for a in node.names if node.module == "server")] \
                if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found += [f"{rel}:{node.lineno} imports {m}" for m in modules
                      if m == "server.store" or m.startswith(("server.store.", "server.store_"))]
            if not isinstance(node, ast.Attribute):
                continue
            if node.attr == "store" and id(node) not in handed:
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
            elif node.attr.startswith("_") and not node.attr.startswith("__") and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def test_the_web_layer_reaches_the_store_only_through_services() -> None:
    bad = web_store_uses(ROOT)
    assert not bad, ("server/web/ must only translate HTTP to service calls: these reach the store (or another "
                     "object's private parts) directly; give the service in server/ a method named for what it "
                     "does and call that instead:\n" + "\n".join(bad))


def test_web_layout_scan_finds_a_reach_in(tmp_path: Path) -> None:
    """The scan itself: imports of the store, reads of ``.store`` and private reach-ins are reported; the
    composition root may hand the store to a service, and nothing more."""
    web = tmp_path / "server" / "web"
    web.mkdir(parents=True)
    (web / "leaky.py").write_text(
        "from server.store_audit import AuditRow\n"
        "from server import store\n"
        "def f(request, server):\n"
        "    rows = request.app.state.desk.server.store.open_alarms()\n"
        "    with server.directory._lock:\n"
        "        return Service(server.store), rows\n")
    (web / "app.py").write_text(
        "def create_app(server):\n"
        "    ok = Service(server.store, clock=server.directory.clock)\n"
        "    return server.store.close()\n")
    (web / "people.py").write_text("def f(server):\n    return server.store.rows('people')\n")
    found = web_store_uses(tmp_path)
    assert sorted(f.split(" ")[0] for f in found) == [
        "server/web/app.py:3", "server/web/leaky.py:1", "server/web/leaky.py:2", "server/web/leaky.py:4",
        "server/web/leaky.py:5", "server/web/leaky.py:6", "server/web/people.py:2"], found


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    """pyproject.toml lists packages by hand: one left out (edge.osdp once was) is missing from the built wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("doorkeep", "edge", "server", "simulators")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_every_file_the_code_reads_is_package_data() -> None:
    """Templates, static files, the privacy notice, the demo site: each non-Python file of the packages matches a
    [tool.setuptools.package-data] pattern, or the wheel ships without it and the installed desk or `doorkeep demo`
    fails (tests/e2e/test_package.py proves it on a real wheel). simulators/scenarios are test material run from a
    checkout, never read by the installed code."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    covered = {p for package, globs in patterns.items() for glob in globs
               for p in (ROOT / package.replace(".", "/")).glob(glob) if p.is_file()}
    data = {p for top in ("doorkeep", "edge", "server", "simulators") for p in (ROOT / top).rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
            and "keys" not in p.relative_to(ROOT).parts and p.parent != ROOT / "simulators" / "scenarios"}
    missing = sorted(p.relative_to(ROOT).as_posix() for p in data - covered)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data] in pyproject.toml): {missing}"
    assert ROOT / "doorkeep" / "sites" / "demo" / "site.toml" in covered
