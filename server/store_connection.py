"""The store's PostgreSQL connection, which survives a lost backend (docs/scale.md "State in PostgreSQL").

Why: the bus retries a write the store refuses (a full or read-only disk on SQLite: ``sqlite3.OperationalError``
or ``OSError``) and acknowledges an event to the broker only once it is stored, so nothing is lost while the
store is away and the doors keep deciding (decisions never wait for the store). On PostgreSQL the same happens
when the server restarts, the network drops or an administrator ends the backend (``pg_terminate_backend``):
psycopg raises an ``OperationalError`` and the connection stays closed for good. This connection

- maps the driver's ``OperationalError`` to :class:`StoreUnavailable`, a :class:`~server.errors.StoreError` and so
  an ``OSError``: the very type the bus already retries, on both engines;
- opens a new connection at the next statement once the old one is lost, with the old one's notification
  handlers and ``LISTEN`` channels (the alarm watch's wake-up, server/store_alarm_desk.py);
- never lets a transaction that was open when the connection broke look committed: until it is rolled back,
  every statement and the commit raise :class:`StoreUnavailable` (its writes are gone with the backend, and the
  caller, the store's ``transaction()``, rolls back and the bus retries the whole batch).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from server import sqldb
from server.errors import StoreError

#: libpq's connect timeout for the store, in seconds: a start or a reconnect fails within this long.
CONNECT_TIMEOUT_S = 5


class StoreUnavailable(StoreError):
    """The store's database cannot be used right now (PostgreSQL unreachable, its backend ended, a lock timed
    out): retry later. An ``OSError`` through :class:`StoreError`, as SQLite's refused disk is to the bus."""


def describe_target(url: str) -> str:
    """``host H, port P, database D, user U`` from a store URL (never its password): what a message names."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # a URL libpq cannot parse: name no more than what follows the @
        return url.split("@")[-1]
    parts = [f"{key} {info[key]}" for key in ("host", "port", "dbname", "user") if info.get(key)]
    return ", ".join(parts).replace("dbname", "database") or "libpq's defaults"


def unreachable(url: str, exc: BaseException) -> str:
    """The message of a store that cannot be opened: where, the driver's reason, and the fix."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"cannot reach the PostgreSQL store ({describe_target(url)}): {reason} (fix: start PostgreSQL or correct "
            "[store] url / --store / $DOORKEEP_STORE_URL; create the database and its role as docs/scale.md shows; "
            "a password comes from ~/.pgpass, PGPASSFILE or PGPASSWORD, never from the URL)")


class ReconnectingPgConnection(sqldb.PgConnection):
    """:class:`server.sqldb.PgConnection` that reopens after a lost backend and raises :class:`StoreUnavailable`
    for the driver's ``OperationalError`` (see the module docstring). Used under the store's lock, one thread at a
    time, as the plain connection is."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url if "connect_timeout" in url else f"{url}{'&' if '?' in url else '?'}connect_timeout={CONNECT_TIMEOUT_S}"
        self._operational: type[Exception] = psycopg.OperationalError
        self._lost_in_tx = False
        self._listening: list[str] = []
        #: How many times a lost connection was replaced (tests and logs read it).
        self.reconnects = 0
        try:
            super().__init__(self.url)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(unreachable(url, exc)) from exc

    # ------------------------------------------------------------ the guard

    def _usable(self) -> None:
        """Before a statement: replace a connection lost outside a transaction; refuse inside a lost one."""
        if not self.raw.closed:
            return
        if self._lost_in_tx:
            raise StoreUnavailable("the PostgreSQL connection was lost inside a transaction, whose writes are gone: "
                                   "roll it back and try again")
        old = self.raw
        handlers = list(getattr(old, "_notify_handlers", ()))
        try:
            sqldb.PgConnection.__init__(self, self.url)
        except self._operational as exc:
            raise StoreUnavailable(unreachable(self.url, exc)) from exc
        self.reconnects += 1
        for handler in handlers:
            self.raw.add_notify_handler(handler)
        for channel in self._listening:
            self.raw.execute(f"LISTEN {channel}")

    def _run(self, call: Callable[[], Any]) -> Any:
        self._usable()
        was_in_tx = self.raw.info.transaction_status != self._idle
        try:
            return call()
        except self._operational as exc:
            if self.raw.closed:
                self._lost_in_tx = was_in_tx
            raise StoreUnavailable(f"the PostgreSQL store refused or lost a statement: "
                                   f"{(str(exc).strip().splitlines() or [''])[0]}") from exc

    # ------------------------------------------------------- the port's face

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        words = sql.split()
        if len(words) == 2 and words[0].upper() == "LISTEN" and words[1] not in self._listening:
            self._listening.append(words[1])
        return self._run(lambda: sqldb.PgConnection.execute(self, sql, params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        return self._run(lambda: sqldb.PgConnection.executemany(self, sql, seq))

    def insert_rowid(self, sql: str, params: Sequence[Any] = ()) -> int | None:
        return self._run(lambda: sqldb.PgConnection.insert_rowid(self, sql, params))

    def execute_script(self, sql: str) -> None:
        self._run(lambda: sqldb.PgConnection.execute_script(self, sql))

    @property
    def in_transaction(self) -> bool:
        if self.raw.closed:
            return self._lost_in_tx
        return self.raw.info.transaction_status != self._idle

    def begin(self, *, immediate: bool = False) -> None:
        self._run(lambda: sqldb.PgConnection.begin(self, immediate=immediate))

    def commit(self) -> None:
        if self.raw.closed:
            if self._lost_in_tx:
                raise StoreUnavailable("the PostgreSQL connection was lost before the commit: nothing was committed")
            return
        self._run(lambda: sqldb.PgConnection.commit(self))

    def rollback(self) -> None:
        if self.raw.closed:
            self._lost_in_tx = False  # the backend took the transaction with it; the next statement reconnects
            return
        try:
            sqldb.PgConnection.rollback(self)
        except self._operational:
            self._lost_in_tx = False  # lost during the rollback: nothing stays open either way

    def close(self) -> None:
        self.raw.close()


__all__ = ["CONNECT_TIMEOUT_S", "ReconnectingPgConnection", "StoreUnavailable", "describe_target", "unreachable"]
