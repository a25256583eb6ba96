"""The site's certificates and their expiry: the ``certificate_expiring`` alarm and the desk's Certificates page.

A certificate that lapses fails its client at the next TLS handshake, with nothing on the desk to say why:
an edge whose certificate expired decides offline from its cache, an expired broker or server certificate
cuts every door off from the server, an expired CA takes the whole site with it, and an integration (Home
Assistant, a SOC's collector) goes quietly blind. Five-year certificates are forgotten, so the server watches
every certificate file of the site's PKI directory (``SITE/pki/*.crt``: the CA, the broker, the server, the
operator's tools, each device, each integration; doorkeep.pki.certificate_inventory) and raises one
``certificate_expiring`` alarm per certificate that expires within ``warn_days`` (30) or has expired, keyed
``certificate_expiring:NAME``. A device's certificate names its device on the alarm. While it stays
active the daily check refreshes its detail (the days left); once the certificate is replaced by a later one
(``doorkeep pki revoke`` then ``pki issue``), or is gone from the directory, the alarm clears, and an operator
resolves it as any other.

Checked when the server starts and then every ``interval_s`` (a day) by the injected clock's monotonic time:
the watch's thread wakes every ``poll_s`` (a minute) on its stop event and checks when the day is up, so a
test's FakeClock drives it and stopping is immediate. Only ``.crt`` files are read, never a key. A file that
cannot be read is logged and listed on the desk as unreadable, not alarmed (its expiry is unknown).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from doorkeep.clock import Clock, iso_ms
from doorkeep.pki import EXPIRY_WARN_DAYS, INTEGRATION, CertificateInfo, certificate_inventory, renewal_hint
from server.store import Store

log = logging.getLogger("doorkeep.server.certificates")

CERTIFICATE_EXPIRING = "certificate_expiring"
DAY_S = 86_400.0
#: How often the watch's thread looks at the clock to see whether a check is due.
POLL_S = 60.0


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate as the desk and the API list it, at one moment."""

    info: CertificateInfo
    status: str
    """``ok``, ``expiring`` (within the warning period), ``expired`` or ``unreadable``."""
    days_left: float | None
    fix: str
    """How to renew it (the commands for its role)."""

    def to_dict(self) -> dict[str, Any]:
        i = self.info
        return {"name": i.name, "role": i.role, "read_only": i.read_only if i.role == INTEGRATION else None,
                "serial": format(i.serial, "x") if i.serial is not None else None,
                "not_after": i.not_after.timestamp() if i.not_after is not None else None,
                "days_left": None if self.days_left is None else round(self.days_left, 1),
                "status": self.status, "error": i.error, "fix": self.fix}


class CertificateWatch:
    """Raises and clears ``certificate_expiring`` for the certificates in ``pki``; lists them for the desk."""

    def __init__(self, store: Store, pki: Path, clock: Clock, *, warn_days: float = EXPIRY_WARN_DAYS,
                 interval_s: float = DAY_S, poll_s: float = POLL_S) -> None:
        if warn_days <= 0 or interval_s <= 0 or poll_s <= 0:
            raise ValueError("warn_days, interval_s and poll_s must be positive")
        self.store = store
        self.pki = Path(pki)
        self.clock = clock
        self.warn_days = warn_days
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.checks = 0
        self.last: list[CertificateStatus] = []
        self.stop_event = threading.Event()
        self._due: float | None = None  # the injected clock's monotonic time of the next check
        self._thread: threading.Thread | None = None

    @staticmethod
    def key(name: str) -> str:
        return f"{CERTIFICATE_EXPIRING}:{name}"

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.wall(), tz=timezone.utc)

    def statuses(self) -> list[CertificateStatus]:
        """Every certificate file now, with its status; reads the files, raises nothing (the desk's page)."""
        now = self._now()
        site = self.pki.parent
        return [CertificateStatus(c, c.status(now, self.warn_days), c.days_left(now), renewal_hint(c, site))
                for c in certificate_inventory(self.pki)]

    def check(self) -> list[CertificateStatus]:
        """Raise an alarm for each certificate expiring or expired, clear the alarms of those renewed or gone."""
        at = self.clock.wall()
        found = self.statuses()
        alarmed: set[str] = set()
        for s in found:
            info = s.info
            if s.status == "unreadable":
                log.warning("certificate %s: %s; its expiry cannot be checked", self.pki / f"{info.name}.crt",
                            info.error)
                continue
            assert info.not_after is not None and s.days_left is not None
            detail = {"certificate": info.name, "role": info.role, "serial": format(info.serial or 0, "x"),
                      "not_after": iso_ms(info.not_after.timestamp()), "days_left": round(s.days_left, 1),
                      "expired": s.status == "expired", "warn_days": self.warn_days, "fix": s.fix}
            if s.status in ("expiring", "expired"):
                alarmed.add(info.name)
                _, new = self.store.raise_alarm(CERTIFICATE_EXPIRING, key=self.key(info.name), at=at,
                                                device=info.name if info.role == "device" else None, detail=detail)
                if new:
                    log.warning("certificate %s (%s) %s on %s", info.name, info.role,
                                "has expired" if s.status == "expired" else f"expires in {s.days_left:.0f} days",
                                detail["not_after"])
            elif self.store.clear_alarm(self.key(info.name), at, {**detail, "renewed": True}) is not None:
                log.info("certificate %s renewed: valid until %s", info.name, detail["not_after"])
        present = {s.info.name for s in found}
        for alarm in self.store.open_alarms(type=CERTIFICATE_EXPIRING):
            name = str(alarm["key"]).removeprefix(f"{CERTIFICATE_EXPIRING}:")
            if alarm["state"] == "active" and name not in alarmed and name not in present:
                self.store.clear_alarm(alarm["key"], at, {**alarm["detail"], "removed": True})
                log.info("certificate %s is no longer in %s: its expiry alarm is cleared", name, self.pki)
        self.last, self.checks = found, self.checks + 1
        self._due = self.clock.monotonic() + self.interval_s
        return found

    def tick(self) -> bool:
        """Check if none has run yet or the interval is up by the injected clock; True if it checked."""
        if self._due is not None and self.clock.monotonic() < self._due:
            return False
        self.check()
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="doorkeep-certificates", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        delay = 0.0
        while not self.stop_event.wait(delay):
            try:
                self.tick()
            except Exception:  # a broken check must not end the watch: the next poll tries again
                log.exception("certificate expiry check failed")
                self._due = self.clock.monotonic() + min(self.interval_s, 3600.0)
            delay = self.poll_s
