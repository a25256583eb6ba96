"""The cyclic collector is the application's to pause, never doorkeep.policy's (issue 15).

``gc.disable()`` switches the collector off for the whole process, every thread included; a library that
did so behind its caller's back would leave a long-running server or edge collecting nothing if it ever
failed to switch it back, and would pause it for work the caller never wanted paused. So doorkeep.policy's
functions leave the collector alone, :func:`doorkeep.policy.gc_paused` is there for the applications, and
the edge's policy cache (like the server's publisher) uses it around its own big operation.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from datetime import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import edge.policy_cache as policy_cache
from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, Person, Schedule, Site, TimeWindow
from doorkeep.policy import (
    compile_policy,
    decode_value,
    encode_value,
    gc_paused,
    policy_text,
    sign_policy,
    site_from_dict,
    site_to_dict,
    verify_policy,
)

SITE_ID = "t"
DEVICE = "pi-a"


def _site() -> Site:
    always = Schedule("always", "Always", (TimeWindow(frozenset({"mon", "sat"}), time(0, 0), None),))
    return Site(
        SITE_ID, "Test", "Europe/London",
        areas={"outside": Area("outside", "Outside"), "lobby": Area("lobby", "Lobby")},
        doors={"lobby_in": Door("lobby_in", "Lobby entrance", "outside", "lobby")},
        schedules={"always": always},
        access_levels={"staff": AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"),))},
        people={"alice": Person("alice", "Alice", access_levels=("staff",))},
        credentials={"ab" * 32: Credential("ab" * 32, "1234", "em4100", "alice")},
    )


@pytest.fixture()
def collector_enabled() -> Iterator[None]:
    """Each test starts with the collector on and leaves it on, whatever it asserted."""
    was = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        else:
            gc.disable()


@pytest.fixture()
def disables(monkeypatch: pytest.MonkeyPatch, collector_enabled: None) -> list[str]:
    """Every call of gc.disable() from now on, by the function that made it (the real one is not called)."""
    calls: list[str] = []

    def spy() -> None:
        caller = sys._getframe(1)
        calls.append(f"{caller.f_globals.get('__name__')}.{caller.f_code.co_qualname}")

    monkeypatch.setattr(gc, "disable", spy)
    return calls


def test_no_policy_function_switches_the_collector_off(disables: list[str]) -> None:
    key = Ed25519PrivateKey.generate()
    site = _site()
    subset = compile_policy(site, ["lobby_in"])
    data = site_to_dict(subset)
    assert site_from_dict(data) == subset
    assert decode_value(encode_value(subset, Site, root="site"), Site, root="site") == subset
    text = policy_text(subset)
    payload = sign_policy(subset, site_id=SITE_ID, device=DEVICE, version=1, issued_at=1.0, key=key, text=text)
    verified = verify_policy(payload, key.public_key(), site_id=SITE_ID, device=DEVICE)
    assert verified.site == subset
    assert disables == [], f"doorkeep.policy paused the collector itself: {disables}"
    assert gc.isenabled()


def test_gc_paused_pauses_and_restores_what_the_application_had(collector_enabled: None) -> None:
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failure inside still re-enables it")
    assert gc.isenabled()
    gc.disable()  # an application that manages the collector itself keeps it off
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_the_edge_pauses_the_collector_around_its_own_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             collector_enabled: None) -> None:
    key = Ed25519PrivateKey.generate()
    enabled_during: list[bool] = []
    real = policy_cache.verify_policy

    def spy(*args: object, **kwargs: object) -> object:
        enabled_during.append(gc.isenabled())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(policy_cache, "verify_policy", spy)
    payload = sign_policy(_site(), site_id=SITE_ID, device=DEVICE, version=2, issued_at=1.0, key=key)
    path = tmp_path / "policy.json"
    assert policy_cache.PolicyCache(path, key.public_key(), site_id=SITE_ID, device=DEVICE).offer(payload)
    assert gc.isenabled(), "the offer re-enabled the collector"
    assert policy_cache.PolicyCache(path, key.public_key(), site_id=SITE_ID, device=DEVICE).load()
    assert gc.isenabled(), "the load re-enabled the collector"
    with pytest.raises(policy_cache.PolicyError):
        policy_cache.PolicyCache(path, key.public_key(), site_id=SITE_ID, device=DEVICE).offer(b"{}")
    assert gc.isenabled(), "a refused policy re-enabled the collector too"
    assert enabled_during == [False, False, False]
