"""The server's certificate expiry watch (server/certificates.py): ``certificate_expiring`` raised for every
certificate of SITE/pki within 30 days of its expiry or past it, at start and daily on the injected clock, and
cleared when the certificate is renewed or gone. Real certificates from doorkeep.pki, a real SQLite store, a
FakeClock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep import vocabulary
from doorkeep.alarm_priority import MEDIUM, priority_of
from doorkeep.clock import FakeClock
from doorkeep.model import AlarmSettings
from doorkeep.pki import LEAF_DAYS, init_ca, issue, revoke
from server.certificates import CERTIFICATE_EXPIRING, DAY_S, CertificateWatch
from server.store import Store
from simulators.wait import wait_until

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
END = T0 + timedelta(days=LEAF_DAYS)  # when a leaf issued at T0 expires


def at(moment: datetime) -> FakeClock:
    return FakeClock(wall=moment.timestamp())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A site CA with the broker, server and one device issued at T0 and an integration a year later."""
    d = tmp_path / "site" / "pki"
    init_ca(d, "t", now=T0)
    for name in ("broker", "server", "pi-a"):
        issue(d, name, now=T0)
    issue(d, "home-assistant", now=T0 + timedelta(days=365), role="integration")
    return d


def active(store: Store) -> dict[str, dict]:
    return {a["key"].split(":", 1)[1]: a for a in store.open_alarms(type=CERTIFICATE_EXPIRING) if a["state"] == "active"}


def test_the_alarm_is_declared_as_supervision_trouble_with_medium_priority() -> None:
    declared = vocabulary.ALARMS[CERTIFICATE_EXPIRING]
    assert (declared.severity, declared.source, declared.label) == ("trouble", "supervision", "Certificate expiring")
    assert priority_of(AlarmSettings(), CERTIFICATE_EXPIRING) == MEDIUM


def test_nothing_is_raised_while_every_certificate_has_more_than_30_days(store: Store, pki: Path) -> None:
    watch = CertificateWatch(store, pki, at(END - timedelta(days=31)))
    found = watch.check()
    assert [s.status for s in found] == ["ok"] * 5 and store.open_alarms() == []


def test_each_certificate_within_30_days_raises_one_alarm_a_devices_naming_the_device(store: Store, pki: Path) -> None:
    clock = at(END - timedelta(days=20))
    watch = CertificateWatch(store, pki, clock)
    watch.check()
    alarms = active(store)
    assert sorted(alarms) == ["broker", "pi-a", "server"]  # the CA (10 years) and the later integration are fine
    assert alarms["pi-a"]["device"] == "pi-a" and alarms["server"]["device"] is None
    d = alarms["pi-a"]["detail"]
    assert (d["certificate"], d["role"], d["days_left"], d["expired"]) == ("pi-a", "device", 20.0, False)
    assert "doorkeep pki revoke pi-a" in d["fix"] and "doorkeep pki issue pi-a" in d["fix"]
    assert alarms["broker"]["severity"] == "trouble"
    clock.advance(DAY_S)
    watch.check()  # still expiring: the same alarms, their detail refreshed, no new ones
    assert len(store.open_alarms(type=CERTIFICATE_EXPIRING)) == 3
    assert active(store)["pi-a"]["detail"]["days_left"] == 19.0
    clock.advance(25 * DAY_S)
    watch.check()
    d = active(store)["pi-a"]["detail"]
    assert d["expired"] is True and d["days_left"] == -6.0 and len(store.open_alarms(type=CERTIFICATE_EXPIRING)) == 3


def test_a_renewed_certificate_clears_its_alarm_and_a_revoked_one_clears_too(store: Store, pki: Path) -> None:
    clock = at(END - timedelta(days=10))
    watch = CertificateWatch(store, pki, clock)
    watch.check()
    assert sorted(active(store)) == ["broker", "pi-a", "server"]
    now = datetime.fromtimestamp(clock.wall(), tz=timezone.utc)
    revoke(pki, "pi-a", now=now)
    issue(pki, "pi-a", now=now)  # renewed: five years again
    revoke(pki, "server", now=now)  # not yet reissued: the file is gone from pki/
    watch.check()
    assert sorted(active(store)) == ["broker"]
    pi = store.open_alarms(type=CERTIFICATE_EXPIRING, device="pi-a")[0]
    assert pi["state"] == "cleared" and pi["detail"]["renewed"] is True and pi["detail"]["days_left"] > 1800
    server = store.open_alarm(CertificateWatch.key("server"))
    assert server is not None and server["state"] == "cleared" and server["detail"]["removed"] is True


def test_a_renewed_certificate_that_lapses_again_raises_the_same_open_alarm_until_resolved(store: Store,
                                                                                           pki: Path) -> None:
    clock = at(END - timedelta(days=10))
    watch = CertificateWatch(store, pki, clock)
    watch.check()
    first = store.open_alarm(CertificateWatch.key("pi-a"))
    assert first is not None
    now = datetime.fromtimestamp(clock.wall(), tz=timezone.utc)
    revoke(pki, "pi-a", now=now)
    issue(pki, "pi-a", now=now)
    watch.check()
    store.resolve(first["id"], "ada", "renewed and copied to the Pi")
    clock.advance((LEAF_DAYS - 5) * DAY_S)
    watch.check()
    again = store.open_alarm(CertificateWatch.key("pi-a"))
    assert again is not None and again["id"] != first["id"] and again["state"] == "active"


def test_an_unreadable_certificate_is_listed_and_logged_never_alarmed_or_fatal(store: Store, pki: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    (pki / "pi-z.crt").write_bytes(b"\x00garbage")
    watch = CertificateWatch(store, pki, at(END - timedelta(days=40)))
    found = {s.info.name: s for s in watch.check()}
    assert found["pi-z"].status == "unreadable" and found["pi-z"].to_dict()["error"] == "not a PEM certificate"
    assert store.open_alarms() == [] and "pi-z.crt" in caplog.text


def test_a_site_without_a_pki_directory_has_nothing_to_watch(store: Store, tmp_path: Path) -> None:
    watch = CertificateWatch(store, tmp_path / "plain-site" / "pki", at(T0))
    assert watch.check() == [] and store.open_alarms() == []


def test_checked_at_start_and_then_once_a_day_by_the_injected_clock(store: Store, pki: Path) -> None:
    clock = at(END - timedelta(days=40))
    watch = CertificateWatch(store, pki, clock)
    assert watch.tick() is True and watch.tick() is False  # at start; not again the same day
    clock.advance(DAY_S - 1)
    assert watch.tick() is False
    clock.advance(1)
    assert watch.tick() is True and watch.checks == 2


def test_the_watch_thread_checks_at_start_and_when_the_clock_passes_a_day(store: Store, pki: Path) -> None:
    clock = at(END - timedelta(days=31) + timedelta(hours=1))
    watch = CertificateWatch(store, pki, clock, poll_s=0.01)
    watch.start()
    try:
        assert wait_until(lambda: watch.checks == 1, 5), "no check at start"
        assert store.open_alarms() == []
        clock.advance(DAY_S)  # now 30 days minus an hour before the expiry
        assert wait_until(lambda: watch.checks == 2, 5), "no check a day later"
        assert sorted(active(store)) == ["broker", "pi-a", "server"]
    finally:
        watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()
