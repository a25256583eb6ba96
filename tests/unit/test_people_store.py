"""People and cards live in the server's store; people.toml is an import/export format (server/people.py, issue 13).

Real parts: the demo site copied with a real credential key file, real ``Server``s bootstrapped on real SQLite
stores (bus not started), and the real ``doorkeep site import|export`` commands beside them, as an operator runs
them next to a running server.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import secrets
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, check, load_site_dir
from doorkeep.credentials import card_hash, generate_key_file
from doorkeep.decision import AccessRequest
from doorkeep.envelope import SnapshotKeys
from doorkeep.model import PersonState
from server.app import Server, bootstrap
from server.audit import subject_ref
from server.store import Store
from tests.unit.test_desk_api import DEMO

ALICE, BOB, CHEN, ELI = "0F00A1B2C3", "0F00B0B0B0", "40012345", "0F00E5E5E5"
NUMBERS = (ALICE, BOB, CHEN, ELI, "40011111", "40067890", "0F00C4C4C4", "0F00D1D1D1", "0F00F00001")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the demo site with its own credential key file (what `doorkeep site import` reads)."""
    d = tmp_path / "site"
    shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("keys", "pki"))
    generate_key_file(d / "keys" / "credential.key")
    return d


def key_of(site: Path) -> bytes:
    return bytes.fromhex((site / "keys" / "credential.key").read_text().strip())


def start(site: Path, data: Path, clock: FakeClock | None = None) -> Server:
    return bootstrap(load_site_dir(site), data, BrokerConfig("mqtt://127.0.0.1:9"), key=key_of(site),
                     signing_key=Ed25519PrivateKey.generate(), snapshot_keys=SnapshotKeys.generate(),
                     clock=clock or FakeClock())


@pytest.fixture
def server(site: Path, tmp_path: Path) -> Iterator[Server]:
    srv = start(site, tmp_path / "data")
    yield srv
    srv.store.close()


def cli(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def reason(server: Server, door: str, fmt: str, number: str) -> str:
    return server.directory.decide(AccessRequest(door, server.directory.card(fmt, number))).reason.value


def actions(server: Server) -> list[str]:
    assert server.audit is not None
    return [r["action"] for r in reversed(server.audit.records())]


# ----------------------------------------------------------- the file format


def test_people_toml_takes_a_card_as_its_keyed_hash_and_a_pin_hash(site: Path) -> None:
    key = key_of(site)
    h = card_hash(key, "em4100", "0F00ABCDEF")
    (site / "people.toml").write_text(
        '[people.zed]\nname = "Zed"\naccess_levels = ["staff"]\npin_hash = "' + "ab" * 32 + '"\n'
        f'cards = [{{ format = "em4100", hash = "{h}", last4 = "cdef" }}]\n')
    bundle = load_site_dir(site)
    assert [(c.number, c.hashed(key), c.shown()) for c in bundle.cards] == [("", h, "CDEF")]
    assert bundle.people["zed"].pin_hash == "ab" * 32


@pytest.mark.parametrize("card, key, problem", [
    ('{ format = "em4100", hash = "0F00", last4 = "B2C3" }', "people.zed.cards[0].hash", "not a card hash"),
    ('{ format = "em4100", hash = "' + "a" * 64 + '" }', "people.zed.cards[0].last4", "is required"),
    ('{ format = "em4100", hash = "' + "a" * 64 + '", last4 = "B2C3", number = "0F00A1B2C3" }',
     "people.zed.cards[0].number", "not both"),
    ('{ format = "em4100", hash = "' + "a" * 64 + '", last4 = "B2C3!" }', "people.zed.cards[0].last4",
     "not the last four"),
], ids=["short-hash", "no-last4", "hash-and-number", "bad-last4"])
def test_a_malformed_card_hash_is_refused_with_file_key_and_fix(site: Path, card: str, key: str, problem: str) -> None:
    (site / "people.toml").write_text(f'[people.zed]\nname = "Zed"\ncards = [{card}]\n')
    errors = check(site)
    assert [(e.key, problem in e.problem) for e in errors] == [(key, True)], errors
    assert errors[0].file == str(site / "people.toml") and errors[0].fix


def test_a_pin_hash_beside_a_pin_or_of_the_wrong_shape_is_refused(site: Path) -> None:
    (site / "people.toml").write_text('[people.zed]\nname = "Zed"\npin = "0417"\npin_hash = "' + "a" * 64 + '"\n'
                                      'cards = [{ format = "em4100", number = "0F00ABCDEF" }]\n'
                                      '[people.yan]\nname = "Yan"\npin_hash = "1234"\n')
    assert sorted((e.key, e.problem) for e in check(site)) == [
        ("people.yan.pin_hash", "is not a PIN hash"), ("people.zed.pin_hash", "a person has a pin or a pin_hash, not both")]


# ------------------------------------------------------------ starts


def test_first_start_imports_people_toml_and_later_starts_keep_the_store_and_warn_once(
        site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = start(site, tmp_path / "data")
    assert actions(first).count("people.file_import") == 1
    assert {r["id"] for r in first.store.people_rows()} == {"alice", "bob", "chen", "dana", "eli"}
    assert {r["state"] for r in first.store.card_states()} == {"lost"}  # eli's card, as people.toml says
    first.store.close()
    # people.toml edited on disk: bob loses his levels. A restart runs the store's people and says so once.
    text = (site / "people.toml").read_text()
    (site / "people.toml").write_text(text.replace('clearance = 1\naccess_levels = ["staff"]', 'clearance = 1', 1))
    with caplog.at_level(logging.WARNING, logger="doorkeep.server.people"):
        again = start(site, tmp_path / "data")
    try:
        assert reason(again, "lobby_in", "em4100", BOB) == "granted"
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(site / "people.toml") in warnings[0]
        assert "doorkeep site import" in warnings[0] and "1 person changed" in warnings[0]
        assert actions(again).count("people.file_import") == 1  # no second import
    finally:
        again.store.close()


def test_a_store_with_the_desks_rows_of_migration_008_folds_them_in_and_nothing_seen_changes(
        site: Path, tmp_path: Path) -> None:
    """An upgraded store: people.toml plus the desk's overrides become the store's rows in one step."""
    key = key_of(site)
    store = Store(tmp_path / "data")
    zed = card_hash(key, "em4100", "0F00ABCDEF")
    with store.connection_for_tests() as db:  # what the desk of the version before wrote (migration 008)
        db["desk_people"].insert_all([
            {"id": "bob", "added": 0, "name": None, "kind": None, "clearance": 3, "access_levels": '["staff", "lab"]',
             "state": "suspended", "changed_at": 1.0},
            {"id": "zed", "added": 1, "name": "Zed Zimmer", "kind": "contractor", "clearance": 0,
             "access_levels": '["staff"]', "state": "active", "changed_at": 1.0},
            {"id": "gone", "added": 0, "name": None, "kind": None, "clearance": 1, "access_levels": None,
             "state": None, "changed_at": 1.0}])  # an override of someone people.toml no longer lists
        db["desk_cards"].insert({"hash": zed, "person": "zed", "format": "em4100", "last4": "CDEF", "added_at": 1.0})
    store.close()
    server = start(site, tmp_path / "data")
    try:
        site_now = server.directory.site
        bob = site_now.people["bob"]
        assert (bob.state, bob.clearance, bob.access_levels, bob.name) == (PersonState.SUSPENDED, 3, ("staff", "lab"),
                                                                           "Bob Baker")
        assert reason(server, "lobby_in", "em4100", BOB) == "person_inactive"
        assert reason(server, "lobby_in", "em4100", "0F00ABCDEF") == "granted"  # the desk-added card
        assert reason(server, "lobby_in", "em4100", ALICE) == "granted"
        assert reason(server, "lobby_in", "em4100", ELI) == "credential_inactive"
        assert "gone" not in site_now.people
        with server.store.connection_for_tests() as db:
            assert not {"desk_people", "desk_cards"} & set(db.table_names())
        record = [r for r in server.audit.records() if r["action"] == "people.file_import"]  # type: ignore[union-attr]
        assert len(record) == 1 and record[0]["details"]["desk_people"] == 3 and record[0]["details"]["desk_cards"] == 1
        sources = {r["id"]: (r["source"], r["desk_changed"]) for r in server.store.people_rows()}
        assert sources["zed"] == ("desk", 0) and sources["bob"] == ("people.toml", 1)
    finally:
        server.store.close()


# ------------------------------------------------------------ import / export


def test_export_then_import_is_a_no_op_and_the_file_holds_no_card_number(
        server: Server, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert server.people is not None
    server.people.set_state("bob", PersonState.SUSPENDED, actor="ada")  # the store differs from people.toml now
    data = server.store.dir
    out = tmp_path / "export"
    assert cli("site", "export", out, "--site", site, "--data", data) == 0
    text = (out / "people.toml").read_text()
    assert (out / "people.toml").stat().st_mode & 0o077 == 0
    for number in NUMBERS:
        assert number not in text and number.lower() not in text
    assert 'state = "suspended"' in text and 'state = "lost"' in text
    assert cli("site", "export", tmp_path / "again", "--site", site, "--data", data) == 0
    assert (tmp_path / "again" / "people.toml").read_text() == text, "the export is deterministic"
    before = len(server.audit.records())  # type: ignore[union-attr]
    version = server.store.people_version()
    capsys.readouterr()
    assert cli("site", "import", out, "--site", site, "--data", data) == 0
    printed = capsys.readouterr().out
    assert "no change" in printed and "holds the live people" in printed
    assert len(server.audit.records()) == before and server.store.people_version() == version  # type: ignore[union-attr]


def test_import_applies_the_full_list_prints_it_in_words_audits_pseudonyms_and_is_live(
        server: Server, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = server.store.dir
    reviewed = tmp_path / "reviewed"
    assert cli("site", "export", reviewed, "--site", site, "--data", data) == 0
    text = (reviewed / "people.toml").read_text()
    key = key_of(site)
    # bob gets the lab; chen is removed; eli's lost card is dropped; a new person with a clear card number.
    text = text.replace('clearance = 1\naccess_levels = ["staff"]', 'clearance = 3\naccess_levels = ["staff", "lab"]')
    text = re.sub(r"\[people\.chen\].*?\n\n", "", text, flags=re.S)
    text = re.sub(r'cards = \[\n    \{ format = "em4100", hash = "' + card_hash(key, "em4100", ELI)
                  + r'".*?\n\]\n', "", text, flags=re.S)
    text += '[people.zed]\nname = "Zed Zimmer"\naccess_levels = ["staff"]\ncards = [{ format = "em4100", number = ' \
            '"0F00ABCDEF" }]\n'
    (reviewed / "people.toml").write_text(text)
    (reviewed / "site.toml").unlink()  # people only
    assert reason(server, "lobby_in", "ascii", CHEN) == "granted"
    capsys.readouterr()
    assert cli("site", "import", reviewed, "--site", site, "--data", data) == 0
    printed = capsys.readouterr().out
    lines = [line.strip() for line in printed.splitlines()]
    assert "people are live: 1 person added, 1 person changed, 1 person removed, 1 card added, 3 cards removed" \
        in printed, printed
    assert "+ person zed" in lines and "- person chen" in lines
    assert "~ person bob: access_levels [staff] -> [staff, lab]" in lines and "~ person bob: clearance 1 -> 3" in lines
    assert "- card …E5E5 of eli" in lines and "+ card …CDEF of zed" in lines
    for number in NUMBERS + ("0F00ABCDEF",):
        assert number not in printed
    # live in the running server at its next poll (the command ran as another process would)
    assert server.siteadmin is not None and server.siteadmin.poll() is True
    assert reason(server, "lab", "em4100", BOB) == "granted"
    assert reason(server, "lobby_in", "ascii", CHEN) == "unknown_credential"
    assert reason(server, "lobby_in", "em4100", ELI) == "unknown_credential"
    assert reason(server, "lobby_in", "em4100", "0F00ABCDEF") == "granted"
    record = [r for r in server.audit.records() if r["action"] == "people.file_import"][0]  # type: ignore[union-attr]
    assert record["details"]["people_added"] == 1 and record["details"]["removed"] == [subject_ref(key, "chen")]
    assert "chen" not in json.dumps(record) and "Zed" not in json.dumps(record)


def test_an_invalid_people_toml_changes_nothing_and_names_file_key_and_fix(
        server: Server, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = server.store.dir
    reviewed = tmp_path / "reviewed"
    assert cli("site", "export", reviewed, "--site", site, "--data", data) == 0
    key = key_of(site)
    text = (reviewed / "people.toml").read_text().replace('access_levels = ["staff"]', 'access_levels = ["vault"]', 1)
    # alice's card, given to zed by its number while alice holds it as a hash
    text += '[people.zed]\nname = "Zed"\ncards = [{ format = "em4100", number = "' + ALICE + '" }]\n'
    (reviewed / "people.toml").write_text(text)
    (reviewed / "site.toml").write_text((reviewed / "site.toml").read_text().replace("unlock_s = 5", "unlock_s = 6", 1))
    revision = server.siteadmin.current().number  # type: ignore[union-attr]
    version = server.store.people_version()
    capsys.readouterr()
    assert cli("site", "import", reviewed, "--site", site, "--data", data) == 1
    err = capsys.readouterr().err
    assert "nothing changed" in err and str(reviewed / "people.toml") in err
    assert "access level 'vault' is not defined" in err
    # the loader checks shapes; the duplicate across number and hash shows once the file's shapes are right
    (reviewed / "people.toml").write_text(text.replace('["vault"]', '["staff"]'))
    assert cli("site", "import", reviewed, "--site", site, "--data", data) == 1
    err = capsys.readouterr().err
    assert "people.zed.cards" in err and "also belongs to 'alice'" in err and ALICE not in err
    assert server.siteadmin.current().number == revision and server.store.people_version() == version  # type: ignore[union-attr]
    assert card_hash(key, "em4100", ALICE) in server.directory.site.credentials


def test_an_export_of_the_demo_re_imported_into_a_fresh_store_gives_the_same_decisions(
        server: Server, site: Path, tmp_path: Path) -> None:
    assert server.people is not None
    server.people.set_state("bob", PersonState.SUSPENDED, actor="ada")
    server.people.set_access("chen", 2, ["staff"], actor="ada")
    zed = server.people.check_new_person("zed", "Zed Zimmer", "contractor", 1, ["staff"], [("em4100", "0F00ABCDEF")])
    server.people.add_people([zed], actor="ada", via="desk")
    server.people.report_lost(card_hash(key_of(site), "ascii", "40011111"), actor="ada")
    moved = tmp_path / "moved"  # the site directory, people.toml and site.toml replaced by the export
    shutil.copytree(site, moved)
    (moved / "people.toml").unlink()
    assert cli("site", "export", moved, "--site", site, "--data", server.store.dir) == 0
    fresh = start(moved, tmp_path / "fresh")
    try:
        cards = [(fmt, n) for fmt, n in [("em4100", n) for n in NUMBERS if len(n) == 10]
                 + [("ascii", n) for n in NUMBERS if len(n) == 8] + [("em4100", "0F00ABCDEF")]]
        doors = sorted(server.site.doors)
        before = [(d, c, reason(server, d, *c)) for d in doors for c in cards]
        after = [(d, c, reason(fresh, d, *c)) for d in doors for c in cards]
        assert after == before
        assert fresh.site.people == server.site.people and fresh.site.credentials == server.site.credentials
        assert "granted" in {r for *_, r in after} and "person_inactive" in {r for *_, r in after}
    finally:
        fresh.store.close()


def test_a_desk_change_is_one_row_change_and_needs_no_reload(server: Server) -> None:
    """At 110,000 people a lost card or a new person must stay cheap: one row written, swapped in directly."""
    assert server.people is not None
    version = server.store.people_version()
    server.directory.reload_people = None  # type: ignore[assignment,method-assign]  # a reload would fail loudly
    server.people.set_access("bob", 3, ["staff", "lab"], actor="ada")
    assert server.store.people_version() == version + 1 == server.directory.people_version
    assert server.people.poll() is False  # nothing for the poll to read again
    assert server.store.person_row("bob")["access_levels"] == '["staff", "lab"]'  # type: ignore[index]
    assert server.store.person_row("alice")["desk_changed"] == 0  # type: ignore[index]
    assert reason(server, "lab", "em4100", BOB) == "granted"


def test_a_new_credential_key_is_reported_and_an_import_with_card_numbers_mends_it(
        site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """After a lost edge the site makes a new credential key: the store's hashes are the old key's."""
    start(site, tmp_path / "data").store.close()
    (site / "keys" / "credential.key").unlink()
    generate_key_file(site / "keys" / "credential.key")
    with caplog.at_level(logging.ERROR, logger="doorkeep.server.people"):
        server = start(site, tmp_path / "data")
    try:
        assert "credential key is not the one" in caplog.text and "doorkeep site import" in caplog.text
        assert reason(server, "lobby_in", "em4100", ALICE) == "unknown_credential"  # fails secure
        assert cli("site", "import", site, "--site", site, "--data", server.store.dir) == 0  # people.toml: numbers
        assert "people are live" in capsys.readouterr().out
        assert server.people is not None and server.people.poll()
        assert reason(server, "lobby_in", "em4100", ALICE) == "granted"
        assert reason(server, "lobby_in", "em4100", ELI) == "credential_inactive"
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="doorkeep.server.people"):
            start(site, tmp_path / "data").store.close()
        assert "credential key" not in caplog.text
    finally:
        server.store.close()


def test_an_import_never_re_activates_a_lost_card_in_place_or_removed_and_added_again(
        server: Server, site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """eli's card is lost in the store. An old people.toml that gives it as active, or a file that first drops
    the card and later brings it back, must leave it lost: a found card is still a card someone else held."""
    data = server.store.dir
    assert reason(server, "lobby_in", "em4100", ELI) == "credential_inactive"
    old = tmp_path / "old"
    old.mkdir()
    text = (site / "people.toml").read_text().replace(', state = "lost"', "")  # the file from before the loss
    assert f'number = "{ELI}" }}' in text
    (old / "people.toml").write_text(text)
    capsys.readouterr()
    assert cli("site", "import", old, "--site", site, "--data", data) == 0
    printed = capsys.readouterr().out
    assert "card …E5E5 of eli stays lost" in printed and "lost -> active" not in printed, printed
    assert server.siteadmin is not None
    server.siteadmin.poll()
    assert reason(server, "lobby_in", "em4100", ELI) == "credential_inactive"

    dropped = tmp_path / "dropped"
    dropped.mkdir()
    (dropped / "people.toml").write_text(text.replace(f'cards = [{{ format = "em4100", number = "{ELI}" }}]', "cards = []"))
    assert cli("site", "import", dropped, "--site", site, "--data", data) == 0
    assert cli("site", "import", old, "--site", site, "--data", data) == 0  # the card comes back, as active
    server.siteadmin.poll()
    assert reason(server, "lobby_in", "em4100", ELI) == "credential_inactive"


def test_a_site_change_must_fit_the_people_in_the_store_not_the_file_on_disk(
        server: Server, site: Path, tmp_path: Path) -> None:
    """The site is checked against the store's people: a level someone holds cannot be deleted (whatever
    people.toml on disk says), a level nobody holds any more can, and an import of both files is checked
    against the people.toml that goes live with it."""
    from server.siteadmin import SiteInvalid

    admin = server.siteadmin
    assert admin is not None and server.people is not None
    base = admin.current().number  # type: ignore[union-attr]
    with pytest.raises(SiteInvalid) as refused:
        admin.change({"access_levels.lab": None}, base=base, actor="desk:ada")
    [err] = [e for e in refused.value.errors if e.key == "access_levels.lab"]
    assert "held by 2 people (alice, chen)" in err.problem and "People pages" in err.fix
    assert admin.current().number == base  # type: ignore[union-attr]

    # take the level away in the store only: people.toml on disk still gives it, and no longer matters
    for pid in ("alice", "chen"):
        server.people.set_access(pid, server.site.people[pid].clearance, ["staff"], actor="desk:ada")
    assert '"lab"' in (site / "people.toml").read_text()
    rev = admin.change({"access_levels.lab": None}, base=base, actor="desk:ada")
    assert rev.number == base + 1 and "lab" not in server.site.access_levels

    # doorkeep site import of both files: a level the new people.toml no longer uses can go with it
    both = tmp_path / "both"
    assert cli("site", "export", both, "--site", site, "--data", server.store.dir) == 0
    assert cli("site", "rollback", str(base), "--yes", "--site", site, "--data", server.store.dir) == 0
    assert '"lab"' not in (both / "people.toml").read_text() and "access_levels.lab" not in (both / "site.toml").read_text()
    admin.poll()
    server.people.set_access("alice", 3, ["staff", "lab"], actor="desk:ada")  # the store holds lab again
    assert cli("site", "import", both, "--site", site, "--data", server.store.dir) == 0
    admin.poll()
    assert "lab" not in server.site.access_levels and server.site.people["alice"].access_levels == ("staff",)
