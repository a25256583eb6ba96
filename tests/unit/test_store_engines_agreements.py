"""server/store_agreements.py on both engines: agreement versions, what visits need, acceptances (a drawn
signature encrypted, re-wrapped by a key rotation), watchlist holds, and what goes with a visit.

PostgreSQL comes from tests/pg.py (a fresh database per test; skipped with the reason when none answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.envelope import init_data_keys, load_snapshot_keys
from server.store import Store
from tests.pg import engine_url, pg_url  # noqa: F401  (fixtures)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


@pytest.fixture
def store(engine_url: str | None, tmp_path: Path) -> Iterator[Store]:  # noqa: F811
    init_data_keys(tmp_path / "keys")
    s = Store(tmp_path / "data", keys=load_snapshot_keys(tmp_path / "keys", source="test"), url=engine_url)
    for vid in ("v-1", "v-2"):
        s.save_visitor(vid, name="Grace", status="registered", registered_at=1.0)
    yield s
    s.close()


def test_versions_number_per_kind_and_requirements_replace(store: Store) -> None:
    assert store.add_agreement_version("nda", "NDA", "text 1", "ann", 1.0) == 1
    assert store.add_agreement_version("safety", "Safety", "wear a hat", "ann", 1.0) == 1
    assert store.add_agreement_version("nda", "NDA", "text 2", "ann", 2.0) == 2
    assert [(r["kind"], r["version"], r["text"]) for r in store.agreement_versions()] == [
        ("nda", 1, "text 1"), ("nda", 2, "text 2"), ("safety", 1, "wear a hat")]
    assert [r["version"] for r in store.agreement_versions("nda")] == [1, 2]
    store.set_agreement_required("site", ["safety", "nda", "safety"])
    assert store.agreement_required("site") == ["nda", "safety"]
    store.set_agreement_required("site", ["nda"])
    store.set_agreement_required("v-1", [])
    assert (store.agreement_required("site"), store.agreement_required("v-1")) == (["nda"], [])


def test_acceptances_typed_and_drawn_and_a_rotation_rewraps_the_signature(store: Store) -> None:
    keys = store.keys
    assert keys is not None
    typed = store.add_acceptance("v-1", "nda", 1, method="typed", typed_name="Grace H", operator="ann", at=2.0,
                                 site="demo")
    drawn = store.add_acceptance("v-1", "safety", 1, method="drawn", typed_name=None, operator="kiosk", at=1.0,
                                 site="demo", signature_png=PNG)
    rows = store.acceptances("v-1")
    assert [(r["id"], r["kind"], r["has_signature"]) for r in rows] == [(drawn, "safety", 1), (typed, "nda", 0)]
    assert all(type(r["has_signature"]) is int for r in rows)  # 1/0 on both engines, never a boolean
    assert store.acceptance_signature(drawn) == PNG and store.acceptance_signature(typed) is None
    old = keys.keyring.current()[0]
    keys.keyring.rotate()
    assert store.rewrap_snapshot_keys() == (1, [old])
    assert store.acceptance_signature(drawn) == PNG


def test_holds_are_set_replaced_and_resolved_once(store: Store) -> None:
    assert store.visit_hold("v-1") is None
    store.put_visit_hold("v-1", state="held", entries=[3, 1, 3], stage="check_in", at=1.0)
    hold = store.visit_hold("v-1")
    assert (hold["state"], hold["entries"], hold["resolved_by"]) == ("held", [1, 3], None)
    store.put_visit_hold("v-1", state="held", entries=[2], stage="register", at=2.0)
    assert (store.visit_hold("v-1")["entries"], store.visit_hold("v-1")["stage"]) == ([2], "register")
    assert store.resolve_visit_hold("v-1", "overridden", "ann", "known visitor", 3.0)
    assert not store.resolve_visit_hold("v-1", "refused", "ann", "again", 4.0)
    hold = store.visit_hold("v-1")
    assert (hold["state"], hold["resolved_by"], hold["resolved_at"], hold["reason"]) == (
        "overridden", "ann", 3.0, "known visitor")
    store.put_visit_hold("v-2", state="overridden", entries=[], stage=None, at=5.0, resolved_by="ann", reason="r")
    assert store.visit_hold("v-2")["resolved_at"] == 5.0


def test_what_a_visit_agreed_goes_with_the_visit(store: Store) -> None:
    for vid in ("v-1", "v-2"):
        store.add_acceptance(vid, "nda", 1, method="typed", typed_name="x", operator="ann", at=1.0, site="demo")
        store.set_agreement_required(vid, ["nda"])
        store.put_visit_hold(vid, state="held", entries=[1], stage=None, at=1.0)
    store.set_agreement_required("site", ["nda"])
    assert store.delete_visit_agreements([]) == 0
    assert store.delete_visit_agreements(["v-1"]) == 1
    assert store.acceptances("v-1") == [] and store.visit_hold("v-1") is None and store.agreement_required("v-1") == []
    store.delete("visitors", "v-2")
    assert store.delete_orphan_agreements() == 3  # v-2's acceptance, requirement and hold; the site's stays
    assert store.agreement_required("site") == ["nda"] and store.acceptances("v-2") == []
