"""PostgreSQL for the tests: a fresh database per test, dropped after it (issue 20, docs/scale.md).

The server is the machine's own (``make test`` starts Debian's cluster when none answers: scripts/ensure-test-tools),
reached at ``DOORKEEP_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth). With no
PostgreSQL answering, a test that needs one is skipped and says why; with ``DOORKEEP_REQUIRE_POSTGRES`` set it fails
instead, so a CI run meant to cover both engines cannot pass on SQLite alone.

Use ``engine_url`` (parametrized ``sqlite`` / ``postgresql``: None for SQLite, a database URL for PostgreSQL) to run
one test on both engines, or ``pg_url`` for PostgreSQL only. Import the fixtures into a test module
(``from tests.pg import engine_url, pg_url``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    from server.store import Store

ADMIN_URL = os.environ.get("DOORKEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")

_reachable: str | None = None  # "" once reached, the reason otherwise; None before the first try


def _unreachable_reason() -> str:
    """Why no PostgreSQL can be used ("" when one answers); tried once per test session."""
    global _reachable
    if _reachable is None:
        try:
            import psycopg
        except ImportError:
            _reachable = "psycopg is not installed (pip install -e '.[server]')"
        else:
            try:
                psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3).close()
                _reachable = ""
            except psycopg.Error as exc:
                _reachable = f"no PostgreSQL answers at {ADMIN_URL}: {str(exc).strip().splitlines()[0]}"
    return _reachable


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database (``doorkeep_test_<random>``), dropped after the test."""
    reason = _unreachable_reason()
    if reason:
        if os.environ.get("DOORKEEP_REQUIRE_POSTGRES"):
            pytest.fail(f"DOORKEEP_REQUIRE_POSTGRES is set but {reason}")
        pytest.skip(reason)
    import psycopg

    name = f"doorkeep_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request: pytest.FixtureRequest) -> str | None:
    """None on the SQLite run; a fresh PostgreSQL database's URL on the PostgreSQL run (see ``pg_url``)."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(name="store")
def engine_store(engine_url: str | None, tmp_path: Path) -> Iterator[Store]:
    """A store on each engine in turn (``engine_url``): SQLite under ``tmp_path``, then a fresh PostgreSQL
    database. Import it as ``engine_store``; tests ask for it as ``store``."""
    from server.store import Store

    s = Store(tmp_path / "data", url=engine_url)
    yield s
    s.close()
