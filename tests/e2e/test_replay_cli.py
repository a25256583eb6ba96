"""``doorkeep site diff --replay``: badges recorded by a running site, replayed against a proposed edit of it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.cli import main
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE, BOB, ELI = "0F00A1B2C3", "0F00B0B0B0", "0F00E5E5E5"  # eli's card is lost


@pytest.fixture
def recorded_site(mosquitto, tmp_path: Path) -> Iterator[tuple[SiteRunner, Path]]:
    """The demo site run from a copy of its directory; alice, bob and eli's lost card badged at the lobby."""
    current = tmp_path / "current"
    shutil.copytree(DEMO_SITE, current)
    runner = SiteRunner.from_dir(current, broker_url=mosquitto.url, data_dir=tmp_path / "data")
    runner.start()
    try:
        assert runner.wait_connected(10) and runner.wait_policies(10)
        for card in (ALICE, BOB, ELI):
            runner.doors["lobby_in"].badge(card)
        assert runner.server is not None
        store = runner.server.store
        assert wait_until(lambda: len([e for e in store.events(20, door="lobby_in") if e["type"] == "access"]) == 3,
                          10), "the three badges were not recorded"
        yield runner, current
    finally:
        runner.stop()


def proposed_without_staff(current: Path, dest: Path) -> Path:
    """An edited copy of the site directory: the access level ``staff`` removed (and from everyone's levels)."""
    shutil.copytree(current, dest)
    site = (dest / "site.toml").read_text()
    site, n = re.subn(r"\[access_levels\.staff\].*?\]\n", "", site, flags=re.S)
    assert n == 1
    (dest / "site.toml").write_text(site)
    people = (dest / "people.toml").read_text().replace('"staff", ', "").replace('["staff"]', "[]")
    (dest / "people.toml").write_text(people)
    return dest


def diff(runner: SiteRunner, current: Path, proposed: Path, *extra: str,
         monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("DOORKEEP_CREDENTIAL_KEY", runner.key.hex())
    assert runner.data_dir is not None
    return ["site", "diff", "--replay", "1", "--site", str(current), "--proposed", str(proposed),
            "--data", str(runner.data_dir / "server"), *extra]


def test_site_diff_names_the_people_a_removed_access_level_would_lock_out(
        recorded_site: tuple[SiteRunner, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    runner, current = recorded_site
    proposed = proposed_without_staff(current, tmp_path / "proposed")

    assert main(diff(runner, current, proposed, "--json", monkeypatch=monkeypatch)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attempts"] == 3 and report["judged"] == 3
    assert report["to_refused"] == [{"before": "granted", "after": "no_access", "count": 2,
                                     "examples": report["to_refused"][0]["examples"]}]
    assert set(report["people"]) == {"alice", "bob"}, "eli's lost card was refused before and after"
    assert set(report["doors"]) == {"lobby_in"}
    assert report["honesty"]["same_reason"] == 3, "the replay of the current site reproduces what was recorded"

    assert main(diff(runner, current, proposed, monkeypatch=monkeypatch)) == 0
    text = capsys.readouterr().out
    assert "2 people / 1 door would change: 2 grants become refusals (no_access 2)" in text
    assert "Alice Archer (alice)" in text and "Bob Baker (bob)" in text


def test_site_diff_of_an_unchanged_copy_changes_nothing_and_an_invalid_proposal_is_refused(
        recorded_site: tuple[SiteRunner, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    runner, current = recorded_site
    same = tmp_path / "same"
    shutil.copytree(current, same)
    assert main(diff(runner, current, same, monkeypatch=monkeypatch)) == 0
    assert "no grant or refusal would change over 3 judged attempts" in capsys.readouterr().out

    broken = tmp_path / "broken"
    shutil.copytree(current, broken)
    (broken / "site.toml").write_text((broken / "site.toml").read_text().replace('to = "floor7"', 'to = "nowhere"'))
    assert main(diff(runner, current, broken, monkeypatch=monkeypatch)) == 2
    assert "proposed site" in capsys.readouterr().err
