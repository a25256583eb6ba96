"""Which store a server-side command opens: SQLite in the data directory, or PostgreSQL (docs/configuration.md [store]).

One rule for every opener (``doorkeep server`` and the commands that open the store with ``--data``: doctor,
muster, key rotate, site, audit, retention, subject, user, replay), so they all open the store the server uses.
The first that is set wins:

1. ``--store URL`` on the command line (``doorkeep server``),
2. ``$DOORKEEP_STORE_URL`` in the environment (a unit file's ``Environment=``, beside PGPASSFILE),
3. ``[store] url`` in the site directory's site.toml,
4. none: SQLite, ``doorkeep.db`` in the data directory.

The order is the usual one, most specific first: a command line beats the service's environment, which beats
the site's file. Every source must be a ``postgresql://`` URL without a password (doorkeep/config.py
``store_url_problem``); the password comes from libpq's password file or ``PGPASSWORD``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from doorkeep.config import BackupSettings, StoreSettings, check_backup_store, load_store_settings, store_url_problem
from doorkeep.envelope import SnapshotKeys
from doorkeep.errors import ConfigError, ConfigErrors
from server.errors import StoreError
from server.store import Store

ENV = "DOORKEEP_STORE_URL"


def resolve_store_url(site_store: StoreSettings, cli_url: str | None = None,
                      environ: Mapping[str, str] | None = None) -> str | None:
    """The store URL the order of the module docstring gives (None: SQLite); a :class:`ConfigError` naming the
    source (``--store``, ``$DOORKEEP_STORE_URL``) when the URL that wins is not usable. ``[store] url`` was already
    checked when site.toml was loaded."""
    env = os.environ if environ is None else environ
    for source, url in (("--store", cli_url), (f"${ENV}", env.get(ENV) or None)):
        if url is None:
            continue
        problem = store_url_problem(url)
        if problem is not None:
            raise ConfigError(source, "url", *problem)
        return url
    return site_store.url


def site_store_settings(site_dir: Path | str | None) -> StoreSettings:
    """``[store]`` of ``SITE/site.toml`` alone (the commands that need no more of the site); a
    :class:`ConfigErrors` when the table is wrong. No site directory: the default."""
    if site_dir is None:
        return StoreSettings()
    errors: list[ConfigError] = []
    settings = load_store_settings(Path(site_dir) / "site.toml", errors)
    if errors:
        raise ConfigErrors(errors)
    return settings


def store_url_for(site_dir: Path | str | None, cli_url: str | None = None,
                  environ: Mapping[str, str] | None = None) -> str | None:
    """The store URL of the site in ``site_dir`` after the overrides (None: SQLite in the data directory)."""
    return resolve_store_url(site_store_settings(site_dir), cli_url, environ)


def store_present(data_dir: Path, url: str | None) -> bool:
    """Whether there is a store to open: PostgreSQL is always there to try; SQLite needs ``doorkeep.db``. The
    commands that read a server's store refuse to create an empty one in a mistyped directory."""
    return url is not None or (Path(data_dir) / "doorkeep.db").exists()


def check_backup(bundle_backup: BackupSettings, url: str | None, site_file: str) -> None:
    """Refuse ``[backup]`` when the store that wins is PostgreSQL (also through ``--store`` or the environment,
    which site.toml's own check cannot see): a :class:`ConfigError` naming the fix."""
    refused = check_backup_store(bundle_backup, StoreSettings(url=url), site_file)
    if refused is not None:
        raise refused


def open_store(data_dir: Path | str, url: str | None, *, keys: SnapshotKeys | None = None) -> Store:
    """The server's store: :class:`Store` in ``data_dir`` with its records at ``url`` (None: SQLite).

    A PostgreSQL store that cannot be reached or used raises a :class:`StoreError` naming host, port, database,
    the driver's reason and the fix (server/store_connection.py ``unreachable``)."""
    if url is None:
        return Store(data_dir, keys=keys)
    import psycopg

    from server.store_connection import StoreUnavailable, unreachable

    try:
        return Store(data_dir, keys=keys, url=url)
    except StoreError as exc:
        cause = exc.__cause__
        if isinstance(cause, StoreUnavailable):
            raise StoreError(str(cause)) from cause
        raise
    except psycopg.Error as exc:  # reached, but refused the schema: a role without CREATE, a wrong database
        raise StoreError(unreachable(url, exc).replace("cannot reach", "cannot use", 1)) from exc


__all__ = ["ENV", "check_backup", "open_store", "resolve_store_url", "site_store_settings", "store_present", "store_url_for"]
