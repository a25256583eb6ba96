"""Site revisions (server/siteadmin.py): the site model lives in the store, every change is validated with the
rules of ``doorkeep config check``, numbered, audited, live through ``apply``, and can be rolled back.

The site is a copy of the shipped ``hq`` site; the store is a real SQLite file.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from doorkeep.clock import FakeClock
from doorkeep.config import SiteBundle
from server.audit import AuditLog
from server.siteadmin import SiteAdmin, SiteConflict, SiteInvalid, apply_edits
from server.store import Store

HQ = Path(__file__).resolve().parents[2] / "firmware-config" / "sites" / "hq"


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hq"
    shutil.copytree(HQ, d)
    return d


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "data")
    yield s
    s.close()


class Sink:
    """Records every site the service makes live (what the running server's decisions would get)."""

    def __init__(self) -> None:
        self.applied: list[SiteBundle] = []

    def __call__(self, bundle: SiteBundle) -> None:
        self.applied.append(bundle)


def admin_for(store: Store, site_dir: Path, sink: Sink | None = None) -> SiteAdmin:
    clock = FakeClock(1_780_000_000.0)
    admin = SiteAdmin(store, site_dir, clock, audit=AuditLog(store, clock), apply=sink)
    admin.start()
    return admin


def test_first_start_imports_site_toml_as_revision_1_and_export_then_import_is_a_no_op(store, site_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    admin = admin_for(store, site_dir)
    first = admin.current()
    assert first is not None and first.number == 1 and first.actor == "system"
    assert first.site_toml == (site_dir / "site.toml").read_text()
    out = tmp_path / "export"
    admin.export_dir(out)
    assert (out / "site.toml").read_text() == first.site_toml
    again = admin.import_dir(out, actor="ada")
    assert again.number == 1 and [r.number for r in admin.history()] == [1]
    # a second start finds the revision and adds none
    assert admin_for(store, site_dir).current().number == 1  # type: ignore[union-attr]


def test_a_change_becomes_a_numbered_revision_with_its_changes_in_words_audited_and_live(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    admin = admin_for(store, site_dir, sink)
    rev = admin.change({"doors.lab_in.unlock_s": 9, "areas.gym.max_occupancy": 12,
                        "areas.sauna": {"name": "Sauna"}}, base=1, actor="ada")
    assert rev.number == 2 and rev.actor == "ada"
    assert "+ doors.lab_in.unlock_s = 9" in rev.changes  # the file left it at its default (5)
    assert "+ areas.gym.max_occupancy = 12" in rev.changes
    assert rev.summary == "areas.gym changed; areas.sauna added; doors.lab_in changed"
    # live: the sink got the new site, and decisions would use the new unlock time
    assert sink.applied[-1].site.doors["lab_in"].unlock_s == 9
    assert sink.applied[-1].site.areas["gym"].max_occupancy == 12
    # the comments of the file survive an edit (tomlkit keeps the document)
    assert "# HQ: the scenario site." in rev.site_toml
    [record] = [r for r in store.rows("audit_log") if r["action"] == "site.revision" and r["actor"] == "ada"]
    assert record["target"] == "revision 2"


def test_an_invalid_change_is_refused_with_the_config_check_message_and_nothing_is_stored(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    admin = admin_for(store, site_dir, sink)
    with pytest.raises(SiteInvalid) as exc:
        admin.change({"doors.lab_in.to": "nowhere"}, base=1, actor="ada")
    assert "doors.lab_in" in str(exc.value) and "nowhere" in str(exc.value)
    assert exc.value.errors and exc.value.errors[0].file.endswith("site.toml")
    assert admin.current().number == 1 and sink.applied == []  # type: ignore[union-attr]


def test_a_stale_edit_of_the_same_door_is_a_conflict_naming_who_changed_it(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    admin = admin_for(store, site_dir)
    admin.change({"doors.lab_in.unlock_s": 7}, base=1, actor="ada")
    with pytest.raises(SiteConflict) as exc:
        admin.change({"doors.lab_in.unlock_s": 3}, base=1, actor="ben")
    assert exc.value.clashing == {"doors.lab_in"} and "revision 2 by ada" in str(exc.value)
    assert admin.current().number == 2  # type: ignore[union-attr]
    assert tomllib.loads(admin.current().site_toml)["doors"]["lab_in"]["unlock_s"] == 7  # type: ignore[union-attr]


def test_a_stale_edit_of_something_else_is_rebased_not_refused(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    admin = admin_for(store, site_dir)
    admin.change({"doors.lab_in.unlock_s": 7}, base=1, actor="ada")
    rev = admin.change({"areas.archive.max_occupancy": 3}, base=1, actor="ben")
    doc = tomllib.loads(rev.site_toml)
    assert rev.number == 3 and doc["doors"]["lab_in"]["unlock_s"] == 7 and doc["areas"]["archive"]["max_occupancy"] == 3


def test_a_whole_text_commit_on_an_old_base_is_a_conflict(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    admin = admin_for(store, site_dir)
    text = admin.current().site_toml  # type: ignore[union-attr]
    admin.change({"rules.escort_window_s": 45}, base=1, actor="ada")
    with pytest.raises(SiteConflict):
        admin.commit(text.replace("pin_max_attempts = 3", "pin_max_attempts = 4"), base=1, actor="ben")


def test_rollback_makes_an_old_revision_live_again_as_a_new_revision(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    admin = admin_for(store, site_dir, sink)
    admin.change({"doors.lab_in.unlock_s": 9}, base=1, actor="ada")
    rev = admin.rollback(1, actor="ben")
    assert (rev.number, rev.rollback_of, rev.summary) == (3, 1, "rollback to revision 1")
    assert rev.site_toml == admin.revision(1).site_toml
    assert sink.applied[-1].site.doors["lab_in"].unlock_s == 5
    assert [r.number for r in admin.history()] == [3, 2, 1]


def test_a_revision_committed_by_another_process_is_picked_up_by_poll(store, site_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    server_side = admin_for(store, site_dir, sink)
    other = tmp_path / "reviewed"
    shutil.copytree(site_dir, other)
    text = (other / "site.toml").read_text().replace("escort_window_s = 30", "escort_window_s = 60")
    (other / "site.toml").write_text(text)
    cli_side = SiteAdmin(store, site_dir, FakeClock(1_780_000_100.0))  # `doorkeep site import` in its own process
    assert cli_side.import_dir(other, actor="cli:root").number == 2
    assert sink.applied == []
    assert server_side.poll() is True
    assert sink.applied[-1].site.rules.escort_window_s == 60
    assert server_side.poll() is False


def test_a_site_toml_edited_on_disk_does_not_override_the_live_revision(store, site_dir) -> None:  # type: ignore[no-untyped-def]
    admin = admin_for(store, site_dir)
    admin.change({"doors.lab_in.unlock_s": 9}, base=1, actor="ada")
    restarted = SiteAdmin(store, site_dir, FakeClock(1_780_000_200.0))
    live = restarted.start()
    assert live is not None and live.site.doors["lab_in"].unlock_s == 9 and restarted.live_differs_from_file


def test_apply_edits_adds_a_new_named_table_and_removes_keys() -> None:
    text = '[site]\nid = "x"  # the id\n\n[areas.lobby]\nname = "Lobby"\n'
    out = apply_edits(text, {"areas.gym": {"name": "Gym", "max_occupancy": 4}, "areas.lobby.name": None})
    doc = tomllib.loads(out)
    assert doc["areas"]["gym"] == {"name": "Gym", "max_occupancy": 4} and doc["areas"]["lobby"] == {}
    assert "# the id" in out


def test_an_invalid_import_names_the_imported_file(store, site_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    admin = admin_for(store, site_dir)
    reviewed = tmp_path / "reviewed"
    reviewed.mkdir()
    (reviewed / "site.toml").write_text((site_dir / "site.toml").read_text().replace('to = "lab"', 'to = "attic"'))
    with pytest.raises(SiteInvalid) as exc:
        admin.import_dir(reviewed, actor="cli:root")
    assert {e.file for e in exc.value.errors} == {str(reviewed / "site.toml")}
    assert admin.current().number == 1  # type: ignore[union-attr]
