"""A decision never waits behind a site change's listeners (issue 13): reporting a card lost rebuilds the site
under the directory's lock, but the policy publisher (signing, seconds at 100,000 people) hears of it only
after the lock is released. Before, one lost-card report stalled a concurrent decision for about 2.1 s,
longer than the doors' 1 s decision timeout."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from doorkeep.clock import FakeClock
from doorkeep.config import load_site_dir
from doorkeep.decision import AccessRequest
from doorkeep.model import CredentialState, Site
from server.directory import Directory
from server.store import Store

DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"


def test_a_decision_goes_on_while_a_slow_listener_publishes_a_lost_card(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    try:
        d = Directory(load_site_dir(DEMO), secrets.token_bytes(32), store, FakeClock(1_780_000_000.0))
        signing, release = threading.Event(), threading.Event()
        heard: list[Site] = []

        def slow_publisher(site: Site) -> None:  # stands in for signing every edge's policy
            heard.append(site)
            signing.set()
            assert release.wait(10)

        d.listeners.append(slow_publisher)
        bob = d.card("em4100", "0F00B0B0B0")
        alice = d.card("em4100", "0F00A1B2C3")
        reporter = threading.Thread(target=d.set_card_state, args=(bob, CredentialState.LOST), daemon=True)
        reporter.start()
        assert signing.wait(5), "the listener was not told of the change"
        # The publisher is still busy: a decision must not wait for it, and already sees the lost card.
        done = threading.Event()
        outcome: dict[str, str] = {}

        def decide_both() -> None:
            outcome["alice"] = d.decide(AccessRequest("lobby_in", alice)).reason.value
            outcome["bob"] = d.decide(AccessRequest("lobby_in", bob)).reason.value
            done.set()

        threading.Thread(target=decide_both, daemon=True).start()
        assert done.wait(2), "a decision waited behind the site listener"
        assert outcome == {"alice": "granted", "bob": "credential_inactive"}
        release.set()
        reporter.join(5)
        assert heard[-1].credentials[bob].state is CredentialState.LOST
    finally:
        store.close()


def test_nested_changes_tell_the_listeners_once_with_the_newest_site(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    try:
        d = Directory(load_site_dir(DEMO), secrets.token_bytes(32), store, FakeClock(1_780_000_000.0))
        heard: list[Site] = []
        d.listeners.append(heard.append)
        bob = d.card("em4100", "0F00B0B0B0")
        with d._lock:  # one operation made of two changes (as a visitor check-out is)
            d.set_card_state(bob, CredentialState.LOST)
            d.lockdown("floor7", True)
            assert heard == []  # nobody is told while the lock is held
        assert len(heard) == 1
        assert heard[0].credentials[bob].state is CredentialState.LOST and "floor7" in heard[0].lockdowns
    finally:
        store.close()


def test_a_decision_goes_on_while_a_change_is_being_built_and_sees_it_once_swapped_in(tmp_path: Path) -> None:
    """One writer: a change holds the writer lock while it writes the store and rebuilds the site (hundreds of
    ms at 100,000 people); decisions take only the decision lock, held for the swap, so they go on meanwhile
    with the site as it was, and see the change from the moment it is swapped in."""
    store = Store(tmp_path / "data")
    try:
        d = Directory(load_site_dir(DEMO), secrets.token_bytes(32), store, FakeClock(1_780_000_000.0))
        bob = d.card("em4100", "0F00B0B0B0")
        building, release = threading.Event(), threading.Event()
        real_build = d._build

        def slow_build() -> Site:  # stands in for a rebuild of a very large site
            building.set()
            assert release.wait(10)
            return real_build()

        d._build = slow_build  # type: ignore[method-assign]
        reporter = threading.Thread(target=d.set_card_state, args=(bob, CredentialState.LOST), daemon=True)
        reporter.start()
        assert building.wait(5)
        outcome: list[str] = []
        decider = threading.Thread(target=lambda: outcome.append(d.decide(AccessRequest("lobby_in", bob)).reason.value),
                                   daemon=True)
        decider.start()
        decider.join(2)
        assert outcome == ["granted"], "a decision waited behind a site rebuild"  # the change is not live yet
        release.set()
        reporter.join(5)
        assert d.decide(AccessRequest("lobby_in", bob)).reason.value == "credential_inactive"
    finally:
        store.close()
