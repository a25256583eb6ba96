"""The store setting (site.toml [store] url, --store, $DOORKEEP_STORE_URL) and a PostgreSQL store that loses its
backend (server/store_url.py, server/store_connection.py, docs/configuration.md [store], docs/scale.md)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from doorkeep.clock import FakeClock
from doorkeep.config import load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from server.errors import StoreError
from server.store import Store
from server.store_connection import StoreUnavailable
from server.store_url import ENV, open_store, resolve_store_url, store_url_for
from tests.pg import ADMIN_URL, pg_url  # noqa: F401  (fixture)
from tests.unit.test_store_engines import ev

DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    d = tmp_path / "site"
    shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("keys", "pki", "var"))
    return d


def _with(site: Path, table: str) -> Path:
    with (site / "site.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + table + "\n")
    return site


def _errors(site: Path) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as info:
        load_site_dir(site)
    return info.value.errors


# ------------------------------------------------------------------ the setting


def test_no_store_table_keeps_sqlite_in_the_data_directory(site: Path) -> None:
    assert load_site_dir(site).store.url is None
    assert store_url_for(site, environ={}) is None


def test_store_url_is_read_from_site_toml(site: Path) -> None:
    _with(site, '[store]\nurl = "postgresql://doorkeep@db.example:5433/doorkeep"')
    assert load_site_dir(site).store.url == "postgresql://doorkeep@db.example:5433/doorkeep"


def test_a_password_in_the_url_is_refused_naming_the_key_and_the_password_file(site: Path) -> None:
    _with(site, '[store]\nurl = "postgresql://doorkeep:s3cret@db.example/doorkeep"')
    (err,) = _errors(site)
    assert err.file.endswith("site.toml") and err.key == "store.url"
    assert "password" in err.problem and "s3cret" not in str(err)
    assert "pgpass" in err.fix and "PGPASSFILE" in err.fix and "PGPASSWORD" in err.fix


def test_a_password_as_a_url_parameter_is_refused_too(site: Path) -> None:
    _with(site, '[store]\nurl = "postgresql://doorkeep@db.example/doorkeep?password=x"')
    (err,) = _errors(site)
    assert err.key == "store.url" and "password" in err.problem


@pytest.mark.parametrize("url, words", [
    ("mysql://doorkeep@db/doorkeep", "postgresql://"),
    ("sqlite:///var/doorkeep.db", "postgresql://"),
    ("postgresql://doorkeep@db.example:5432/", "no database"),
    ("postgresql://doorkeep@db.example:99999/doorkeep", "not a valid URL"),
], ids=["mysql", "sqlite-url", "no-database", "bad-port"])
def test_config_check_validates_the_url(site: Path, url: str, words: str) -> None:
    _with(site, f'[store]\nurl = "{url}"')
    (err,) = _errors(site)
    assert err.key == "store.url" and words in err.problem


def test_an_unknown_key_in_store_is_named(site: Path) -> None:
    _with(site, '[store]\nuri = "postgresql://doorkeep@db/doorkeep"')
    (err,) = _errors(site)
    assert err.key == "store.uri" and "url" in err.fix


def test_backup_with_a_postgresql_store_is_refused_naming_postgresqls_own_backups(site: Path) -> None:
    (site / "recovery.pub").write_text("-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n")
    _with(site, '[store]\nurl = "postgresql://doorkeep@db/doorkeep"\n\n'
                '[backup]\ndir = "backups"\nrecovery_key = "recovery.pub"')
    (err,) = _errors(site)
    assert err.key == "backup.dir" and "pg_dump" in err.fix and "WAL archiving" in err.fix


def test_config_check_command_reports_the_store_error(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import main

    _with(site, '[store]\nurl = "postgresql://a:b@db/doorkeep"')
    assert main(["config", "check", str(site)]) != 0
    out = capsys.readouterr()
    assert "store.url" in out.out + out.err and "holds a password" in out.out + out.err


def test_command_line_beats_environment_beats_site_toml(site: Path) -> None:
    _with(site, '[store]\nurl = "postgresql://doorkeep@site/doorkeep"')
    env = {ENV: "postgresql://doorkeep@env/doorkeep"}
    assert store_url_for(site, "postgresql://doorkeep@cli/doorkeep", env) == "postgresql://doorkeep@cli/doorkeep"
    assert store_url_for(site, None, env) == "postgresql://doorkeep@env/doorkeep"
    assert store_url_for(site, None, {}) == "postgresql://doorkeep@site/doorkeep"


@pytest.mark.parametrize("cli, env, source", [
    ("postgresql://a:pw@h/db", None, "--store"),
    (None, "postgresql://a:pw@h/db", f"${ENV}"),
    ("http://h/db", None, "--store"),
])
def test_an_override_is_checked_and_names_its_source(cli: str | None, env: str | None, source: str) -> None:
    from doorkeep.config import StoreSettings

    with pytest.raises(ConfigError) as info:
        resolve_store_url(StoreSettings(), cli, {ENV: env} if env else {})
    assert info.value.file == source and "pw" not in str(info.value)


def test_the_server_command_refuses_backup_when_the_environment_makes_the_store_postgresql(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from server.app import bootstrap

    (site / "recovery.pub").write_text("-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n")
    _with(site, '[backup]\ndir = "backups"\nrecovery_key = "recovery.pub"')
    bundle = load_site_dir(site)
    with pytest.raises(ConfigError) as info:
        bootstrap(bundle, tmp_path / "data", None, store_url="postgresql://doorkeep@127.0.0.1/none",  # type: ignore[arg-type]
                  key=b"k" * 32)
    assert info.value.key == "backup.dir"


# ------------------------------------------------------------- start and loss


def test_an_unreachable_store_stops_the_start_naming_host_port_database_reason_and_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        open_store(tmp_path / "data", "postgresql://doorkeep@127.0.0.1:1/campus")
    text = str(info.value)
    assert "host 127.0.0.1" in text and "port 1" in text and "database campus" in text
    assert "refused" in text.lower() and "fix:" in text and "pgpass" in text


def test_a_missing_database_is_named(pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    missing = pg_url.rsplit("/", 1)[0] + "/doorkeep_absent_db"
    with pytest.raises(StoreError) as info:
        open_store(tmp_path / "data", missing)
    assert "doorkeep_absent_db" in str(info.value) and "does not exist" in str(info.value)


def _kill_backend(store: Store) -> None:
    with store.connection_for_tests(port=True) as conn:
        pid = conn.raw.info.backend_pid
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)


@pytest.fixture
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[Store]:  # noqa: F811
    s = open_store(tmp_path / "data", pg_url)
    yield s
    s.close()


def test_a_lost_backend_is_a_retryable_error_and_the_retry_reconnects(pg_store: Store) -> None:
    assert pg_store.insert_event(ev("e1", 1), 1.0)
    _kill_backend(pg_store)
    with pytest.raises(StoreUnavailable) as info:
        pg_store.insert_event(ev("e2", 2), 2.0)
    assert isinstance(info.value, OSError)  # what the bus retries, as a full disk on SQLite
    assert pg_store.insert_event(ev("e2", 2), 2.0)  # the retry: a new connection
    assert sorted(e["id"] for e in pg_store.events(10)) == ["e1", "e2"]


def test_a_transaction_whose_backend_died_is_never_taken_for_committed(pg_store: Store, pg_url: str) -> None:  # noqa: F811
    with pytest.raises(StoreUnavailable):
        with pg_store.transaction():
            pg_store.ingest_event(ev("a", 1), 1.0)
            _kill_backend(pg_store)
            pg_store.ingest_event(ev("b", 2), 2.0)
    with psycopg.connect(pg_url) as other:
        assert other.execute("SELECT count(*) FROM events").fetchone() == (0,)
    # The bus's retry of the whole batch stores both, once.
    assert pg_store.ingest_events([(ev("a", 1), 1.0), (ev("b", 2), 2.0)]) != [None, None]
    with psycopg.connect(pg_url) as other:
        assert other.execute("SELECT count(*) FROM events").fetchone() == (2,)


def test_a_backend_lost_at_commit_raises_instead_of_acknowledging(pg_store: Store, pg_url: str) -> None:  # noqa: F811
    with pytest.raises(StoreUnavailable):
        with pg_store.transaction():
            pg_store.ingest_event(ev("a", 1), 1.0)
            _kill_backend(pg_store)
    with psycopg.connect(pg_url) as other:
        assert other.execute("SELECT count(*) FROM events").fetchone() == (0,)


def test_the_alarm_watch_still_wakes_after_a_reconnect(pg_store: Store) -> None:
    woken: list[int] = []
    pg_store.on_alarm_write(lambda: woken.append(1))
    _kill_backend(pg_store)
    clock = FakeClock()
    for _ in range(2):  # the first statement finds the backend gone; the retry reconnects and LISTENs again
        try:
            pg_store.raise_alarm("tamper", key="tamper:lobby_in", at=clock.wall(), device="pi-lobby", door="lobby_in")
            break
        except StoreUnavailable:
            continue
    assert woken


def test_the_impact_previews_second_connection_reads_a_postgresql_store(pg_store: Store, pg_url: str) -> None:  # noqa: F811
    from server.store import read_access_events

    for i in range(1, 4):
        pg_store.insert_event(ev(f"e{i}", i, ts=f"2026-03-30T09:00:0{i}.000Z"), float(i))
    rows = list(read_access_events(pg_store.dir, "2026-03-30T09:00:02.000Z", batch=1, url=pg_store.url))
    assert [r.id for r in rows] == ["e2", "e3"]
    assert pg_store.url == pg_url


def test_doorkeep_backup_refuses_a_postgresql_store_naming_pg_dump(site: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import main

    _with(site, '[store]\nurl = "postgresql://doorkeep@127.0.0.1/doorkeep"')
    assert main(["backup", "--site", str(site), "--to", str(tmp_path / "b.dkb")]) == 2
    err = capsys.readouterr().err
    assert "PostgreSQL" in err and "pg_dump" in err and not (tmp_path / "b.dkb").exists()
