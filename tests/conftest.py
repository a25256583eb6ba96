"""Shared fixtures: one real Mosquitto per test session on a free loopback port, over mutual TLS.

The session broker runs exactly the configuration ``doorkeep broker config`` generates (TLS only,
``require_certificate``, the certificate's CN as user name, the per-site ACL, the CRL), for every
shipped site (each of its devices in its own site) and the tests' own devices (TEST_DEVICES),
from a session CA made with :mod:`doorkeep.pki`. It holds a
certificate for every device of the shipped sites and for ``server``, and issues one for any other
name on first use: ``mosquitto.client(NAME)`` is a paho client presenting NAME's certificate,
``mosquitto.client_config(NAME)`` the ``BrokerConfig`` an edge or server uses, ``mosquitto.pki`` the
directory. The broker binds each client id to its certificate (``use_username_as_clientid``), so one
certificate is one connection: a peer that must read or write everything connects as ``observer``
(OBSERVER, in this broker's ACL only), never as ``server``, which would drop the running server; the
operator's command-line tools connect as ``operator``. A SiteRunner given ``mosquitto.url`` finds its
clients' certificates by itself (simulators.brokers.tls_broker_for); log lines land in ``mosquitto.log_file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.config import load_site_dir
from doorkeep.pki import OPERATOR, SERVER
from doorkeep.sites import DEMO_SITE
from simulators.brokers import OBSERVER, MosquittoBroker
from simulators.wait import wait_until  # noqa: F401  (re-exported for the tests)

SITES_DIR = Path(__file__).resolve().parent.parent / "firmware-config" / "sites"
#: devices only the tests play (beside every device of the shipped sites), by site: the ACL of a
#: broker serving several sites lists each device in its own site (doorkeep.pki.broker_acl)
TEST_DEVICES = {"demo": ["pi-annex"], "t": ["d"]}


def session_sites() -> dict[str, list[str]]:
    """The sites the session broker serves, each with the device ids its ACL confines to their subtrees."""
    sites: dict[str, list[str]] = {}
    shipped = [DEMO_SITE, *(p for p in SITES_DIR.iterdir() if (p / "site.toml").is_file())]
    for site_dir in sorted(shipped):
        bundle = load_site_dir(site_dir)
        sites[bundle.site.id] = sorted(bundle.devices)
    for site_id, devices in TEST_DEVICES.items():
        sites[site_id] = [*sites.get(site_id, []), *devices]
    return sites


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tls_sites=session_sites(), clients=[SERVER, OPERATOR, OBSERVER]).start()
    assert broker.tls and broker.url.startswith("mqtts://")
    yield broker
    broker.stop()


# ------------------------------------------------------------------ the fault table (tests/faults/)

#: The user property a fault test's row travels in (tests/faults/conftest.py ``fault_row``). Read here, in the
#: root conftest, because under xdist only the controller prints, and it never loads tests/faults/conftest.py.
FAULT_ROW = "fault_row"
FAULT_HEAD = ("fault", "sent", "stored", "duplicates", "lost", "recover_s", "note")
_FAULT_ROWS: list[dict[str, object]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect the rows from each fault test's teardown report (it carries every property the test added)."""
    if report.when == "teardown":
        _FAULT_ROWS.extend(value for name, value in report.user_properties
                           if name == FAULT_ROW and isinstance(value, dict))


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    if not _FAULT_ROWS:
        return
    table = [FAULT_HEAD] + [tuple(str(r.get(h, "")) for h in FAULT_HEAD) for r in _FAULT_ROWS]
    widths = [max(len(row[i]) for row in table) for i in range(len(FAULT_HEAD))]
    terminalreporter.section("fault injection")  # type: ignore[attr-defined]
    for n, row in enumerate(table):
        terminalreporter.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())  # type: ignore[attr-defined]
        if n == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))  # type: ignore[attr-defined]

