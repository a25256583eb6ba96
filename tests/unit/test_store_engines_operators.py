"""server/store_operators.py on both engines: accounts, tokens, sessions, login failures and second factors, each
behaviour asserted on SQLite and on PostgreSQL (tests/pg.py; skipped with the reason when no PostgreSQL answers).
"""

from __future__ import annotations

import pytest

from server.store import Store
from server.store_operators import FailureCount, OperatorRow, SessionRow, TokenRow, TotpRow
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)

AT = 1_780_000_000.0


def test_accounts_are_unique_and_the_last_active_admin_is_kept(store: Store) -> None:
    assert store.insert_operator("zed", "admin", "h-z", AT) is True
    assert store.insert_operator("amy", "desk", "h-a", AT + 1) is True
    assert store.insert_operator("zed", "desk", "other", AT) is False
    assert store.operator_rows() == [OperatorRow("amy", "desk", AT + 1, None, "h-a"),
                                     OperatorRow("zed", "admin", AT, None, "h-z")]
    assert store.disable_operator_keeping_an_admin("zed", AT) == "last_admin"
    assert store.disable_operator_keeping_an_admin("nobody", AT) == "unknown"
    store.create_session("s-amy", "amy", "csrf", "127.0.0.1", AT, idle_before=0, started_before=0)
    assert store.disable_operator_keeping_an_admin("amy", AT + 2) == "disabled"
    assert store.session_row("s-amy") is None
    assert store.disable_operator_keeping_an_admin("amy", AT + 3) == "already_disabled"
    assert store.operator_row("amy") == OperatorRow("amy", "desk", AT + 1, AT + 2, "h-a")
    assert store.disable_operator("amy", AT + 4) is False
    store.set_password_hash("amy", "h-a2")
    store.create_session("s-zed", "zed", "c", "", AT, idle_before=0, started_before=0)
    assert store.replace_password("zed", "h-z2") == ["s-zed"] and store.session_hashes("zed") == []
    assert store.replace_password("nobody", "x") is None
    row = store.operator_row("amy")
    assert row is not None and row.password_hash == "h-a2"


def test_a_role_change_revokes_the_tokens_it_no_longer_grants_and_ends_sessions(store: Store) -> None:
    store.insert_operator("root", "admin", "h", AT)
    store.insert_operator("ann", "admin", "h", AT)
    assert store.insert_token(TokenRow("t1", "ann", "ci", "admin", AT), "hash-1") is True
    assert store.insert_token(TokenRow("t2", "ann", "feed", "desk", AT + 1), "hash-2") is True
    assert store.insert_token(TokenRow("t3", "ann", "ci", "desk", AT + 2), "hash-3") is False  # a live label
    store.create_session("s1", "ann", "c", "", AT, idle_before=0, started_before=0)
    change = store.change_role("ann", "desk", ["desk", "auditor"], AT + 5)
    assert (change.outcome, change.old_role, change.revoked_tokens, change.ended_sessions) == (
        "changed", "admin", ("t1",), ("s1",))
    assert store.change_role("ann", "desk", [], AT).outcome == "unchanged"
    assert store.change_role("nobody", "desk", [], AT).outcome == "unknown"
    assert store.change_role("root", "desk", [], AT).outcome == "last_admin"
    assert store.change_role("ann", "auditor", ["auditor"], AT + 6).revoked_tokens == ("t2",)
    assert [(t.id, t.revoked_at) for t in store.operator_tokens("ann")] == [("t1", AT + 5), ("t2", AT + 6)]


def test_tokens_are_found_by_hash_while_live_touched_and_revoked_by_label(store: Store) -> None:
    store.insert_operator("ann", "admin", "h", AT)
    store.insert_token(TokenRow("t1", "ann", "ci", "admin", AT), "hash-1")
    assert store.live_token("hash-1") == TokenRow("t1", "ann", "ci", "admin", AT)
    store.touch_token("t1", AT + 9)
    assert store.live_token("hash-1") == TokenRow("t1", "ann", "ci", "admin", AT, AT + 9)
    assert store.revoke_token("ann", "ci", AT + 10) == "t1"
    assert store.revoke_token("ann", "ci", AT + 11) is None
    assert store.live_token("hash-1") is None
    assert store.insert_token(TokenRow("t2", "ann", "ci", "admin", AT + 12), "hash-2") is True  # label free again


def test_sessions_expire_on_the_next_login_and_are_touched_and_deleted(store: Store) -> None:
    store.create_session("old", "ann", "c1", "10.0.0.1", AT, idle_before=0, started_before=0)
    store.create_session("idle", "ann", "c2", "10.0.0.2", AT + 50, idle_before=0, started_before=0)
    store.touch_session("old", AT + 200)
    assert store.session_row("old") == SessionRow("ann", "c1", AT, AT + 200)
    # A new login sweeps sessions idle since before AT+100 ("idle") or started before AT+10 ("old").
    store.create_session("new", "ann", "c3", "", AT + 300, idle_before=AT + 100, started_before=AT + 10)
    assert store.session_hashes("ann") == ["new"]
    store.delete_session("new")
    assert store.session_hashes("ann") == []


def test_login_failures_update_atomically_and_a_refusal_writes_nothing(store: Store) -> None:
    class Refused(Exception):
        pass

    def bump(current: dict[str, FailureCount | None]) -> dict[str, FailureCount]:
        return {k: FailureCount((c.failures if c else 0) + 1, AT, AT + 60 if c else None) for k, c in current.items()}

    store.update_login_failures(["name:x", "addr:y"], bump)
    store.update_login_failures(["name:x"], bump)
    assert store.login_failure("name:x") == FailureCount(2, AT, AT + 60)
    assert store.login_failure("addr:y") == FailureCount(1, AT, None)

    def refuse(current: dict[str, FailureCount | None]) -> dict[str, FailureCount]:
        raise Refused()

    with pytest.raises(Refused):
        store.update_login_failures(["name:x"], refuse)
    assert store.login_failure("name:x") == FailureCount(2, AT, AT + 60)
    store.clear_login_failures("name:x")
    assert store.login_failure("name:x") is None and store.login_failure("addr:y") is not None


def test_second_factor_enrols_confirms_accepts_each_step_once_and_spends_codes_once(store: Store) -> None:
    store.insert_operator("ann", "admin", "h", AT)
    assert store.totp_row("nobody") is None
    store.set_totp_pending("ann", "SECRET1")
    assert store.totp_row("ann") == TotpRow(None, None, None, "SECRET1")
    assert store.confirm_totp("ann", "OTHER", at=AT, step=5, recovery_codes=[]) is False
    assert store.confirm_totp("ann", "SECRET1", at=AT, step=5, recovery_codes=[("s1", "d1"), ("s2", "d2")]) is True
    assert store.totp_row("ann") == TotpRow("SECRET1", AT, 5, None)
    assert store.unused_recovery_codes("ann") == 2
    assert store.accept_totp_step("ann", "SECRET1", 5) is False
    assert store.accept_totp_step("ann", "SECRET1", 6) is True
    assert store.accept_totp_step("ann", "WRONG", 7) is False
    seen: list[str] = []

    def matches(salt: str, digest: str) -> bool:
        seen.append(salt)
        return digest == "d2"

    assert store.spend_recovery_code("ann", matches, AT + 1) == 1
    assert sorted(seen) == ["s1", "s2"]  # every unused code is checked, no early exit
    assert store.spend_recovery_code("ann", matches, AT + 2) is None  # spent once
    assert store.unused_recovery_codes("ann") == 1
    assert store.reset_totp("ann") is True and store.reset_totp("ann") is False
    assert store.totp_row("ann") == TotpRow(None, None, None, None) and store.unused_recovery_codes("ann") == 0
