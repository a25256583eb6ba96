"""Policy snapshots: the generic codec, what one device gets, and the signed envelope."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from enum import Enum
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.config import SiteBundle, load_site_dir, with_people
from doorkeep.errors import DoorkeepError
from doorkeep.model import (
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    CredentialState,
    Door,
    DoorMode,
    OfflineMode,
    Person,
    PersonKind,
    PersonState,
    Rules,
    Schedule,
    Site,
    TimeWindow,
)
from doorkeep.policy import (
    PolicyError,
    VerifiedPolicy,
    compile_policy,
    decode_value,
    encode_value,
    generate_signing_key,
    load_private_key,
    load_public_key,
    sign_policy,
    site_from_dict,
    site_to_dict,
    verify_policy,
)

DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"
ISSUED = 1_767_225_600.123  # 2026-01-01T00:00:00.123Z


@pytest.fixture(scope="module")
def bundle() -> SiteBundle:
    return load_site_dir(DEMO)


@pytest.fixture(scope="module")
def demo(bundle: SiteBundle) -> Site:
    return with_people(bundle.site, bundle.people, bundle.cards, key=b"k" * 32)


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def through_json(data: object) -> object:
    return json.loads(json.dumps(data))


def full_site() -> Site:
    """A hand-built site with a value of every supported kind, defaults and non-defaults alike."""
    weekdays = frozenset({"mon", "tue", "wed", "thu", "fri"})
    return Site(
        id="hq", name="Head office — Zürich", timezone="Europe/Zurich",
        areas={
            "outside": Area("outside", "Outside"),
            "vault": Area("vault", "Vault", restricted=True, clearance=7, escort_required=True, two_person=True,
                          anti_passback=AntiPassback.HARD, anti_passback_reset_min=90.5, max_occupancy=4),
        },
        doors={
            "vault_in": Door("vault_in", "Vault door", "outside", "vault", unlock_s=3, held_open_s=12.5,
                             decision_timeout_ms=750, offline=OfflineMode.CACHE, pin_required=True,
                             mode=DoorMode.UNLOCKED_ON_SCHEDULE, unlock_schedule="day", first_person_in=True),
        },
        schedules={
            "day": Schedule("day", "Day", (TimeWindow(weekdays, time(7, 30), time(19, 0, 0, 250000)),
                                           TimeWindow(frozenset({"sat"}), time(22, 0), None)),
                            frozenset({date(2026, 12, 25), date(2027, 1, 1)})),
            "never": Schedule("never", "Never", ()),
        },
        access_levels={"vault": AccessLevel("vault", "Vault staff", (AccessEntry("vault", "day"),))},
        people={
            "ann": Person("ann", "Ann", clearance=7, access_levels=("vault",), roles=frozenset({"escort", "responder"}),
                          pin_hash="ab" * 32),
            "vic": Person("vic", "Vic", kind=PersonKind.VISITOR, state=PersonState.SUSPENDED,
                          valid_from=1_767_000_000.5, valid_until=1_767_030_000.0, host="ann", company="Acme",
                          allowed_areas=("vault", "outside"), escort_required=False),
        },
        credentials={
            "h1": Credential("h1", "1234", "em4100", "ann"),
            "h2": Credential("h2", "9876", "ascii", "vic", CredentialState.REVOKED),
        },
        rules=Rules(escort_window_s=45.0, two_person_window_s=20.0, pin_max_attempts=5, pin_lockout_s=600.0),
    )


# ---------------------------------------------------------------- codec


def test_demo_site_with_people_survives_a_round_trip_through_json(demo: Site) -> None:
    assert demo.credentials, "the demo site should have hashed cards"
    assert site_from_dict(through_json(site_to_dict(demo))) == demo


def test_hand_built_site_with_every_supported_type_survives_a_round_trip() -> None:
    site = full_site()
    back = site_from_dict(through_json(site_to_dict(site)))
    assert back == site
    assert back.areas["vault"].anti_passback is AntiPassback.HARD
    assert back.schedules["day"].windows[1].end is None
    assert back.schedules["day"].windows[0].end == time(19, 0, 0, 250000)
    assert back.schedules["day"].holidays == frozenset({date(2026, 12, 25), date(2027, 1, 1)})
    assert isinstance(back.people["ann"].roles, frozenset)
    assert isinstance(back.people["vic"].allowed_areas, tuple)
    assert back.people["ann"].valid_from is None and back.people["vic"].valid_from == 1_767_000_000.5
    assert back.doors["vault_in"].unlock_s == 3.0 and isinstance(back.doors["vault_in"].unlock_s, float)


def test_empty_site_survives_a_round_trip() -> None:
    site = Site("empty", "Empty", "UTC")
    assert site_from_dict(through_json(site_to_dict(site))) == site


def test_equal_sites_encode_to_equal_json_whatever_the_set_order() -> None:
    a = full_site()
    roles = frozenset(["responder", "escort"])
    b = dataclasses.replace(a, people={**a.people, "ann": dataclasses.replace(a.people["ann"], roles=roles)})
    assert json.dumps(site_to_dict(a)) == json.dumps(site_to_dict(b))


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Leaf:
    name: str
    colour: Colour = Colour.RED


@dataclass(frozen=True)
class Everything:
    """Stands in for a model dataclass another engineer extends: every supported field type."""

    text: str
    number: int
    ratio: float
    flag: bool
    nothing: None
    maybe_text: str | None
    maybe_ratio: float | None
    colour: Colour
    tags: frozenset[str]
    loose_tags: set[str]
    order: tuple[str, ...]
    leaves: tuple[Leaf, ...]
    by_name: dict[str, Leaf]         # keys equal a field: sent once
    by_alias: dict[str, Leaf]        # keys unlike any field: sent as a list
    labels: dict[str, str]
    day: date
    at: time
    until: time | None
    stamp: datetime
    maybe_leaf: Leaf | None = None
    extra: int = 7
    later: tuple[str, ...] = field(default_factory=tuple)


def everything() -> Everything:
    return Everything(
        text="é✓", number=-3, ratio=0.25, flag=True, nothing=None, maybe_text=None, maybe_ratio=2.5,
        colour=Colour.BLUE, tags=frozenset({"b", "a"}), loose_tags={"x"}, order=("z", "a"),
        leaves=(Leaf("l1"), Leaf("l2", Colour.BLUE)), by_name={"n1": Leaf("n1"), "n2": Leaf("n2", Colour.BLUE)},
        by_alias={"alias": Leaf("real")}, labels={"k": "v"}, day=date(2026, 3, 29), at=time(1, 59, 59),
        until=None, stamp=datetime(2026, 3, 29, 1, 0, tzinfo=UTC), maybe_leaf=Leaf("m"),
    )


def test_codec_is_generic_over_every_supported_field_type() -> None:
    value = everything()
    data = through_json(encode_value(value, Everything))
    back = decode_value(data, Everything)
    assert back == value
    assert isinstance(back.loose_tags, frozenset), "set[str] is read back as a frozenset"
    assert data["by_name"]["keys"] == "name" and data["by_alias"]["keys"] == ["alias"]


def test_a_key_the_sender_does_not_know_yet_takes_the_fields_default() -> None:
    data = through_json(encode_value(everything(), Everything))
    del data["extra"], data["later"]
    i = data["by_name"]["fields"].index("colour")
    del data["by_name"]["fields"][i], data["by_name"]["columns"][i]
    back = decode_value(data, Everything)
    assert back.extra == 7 and back.later == ()
    assert back.by_name["n2"].colour is Colour.RED


def column(table: dict, name: str) -> list:
    """One column of an encoded ``dict[str, dataclass]`` table, found by field name."""
    return table["columns"][table["fields"].index(name)]


@pytest.mark.parametrize("mutate, where", [
    (lambda d: column(d["credentials"], "state").__setitem__(1, "stolen"), "credentials['h2'].state"),
    (lambda d: column(d["areas"], "clearance").__setitem__(1, "7"), "areas['vault'].clearance"),
    (lambda d: column(d["doors"], "unlock_s").__setitem__(0, True), "doors['vault_in'].unlock_s"),
    (lambda d: column(d["schedules"], "windows")[0][0].__setitem__("start", "25:00"),
     "schedules['day'].windows[0].start"),
    (lambda d: column(d["people"], "kind").__setitem__(0, None), "people['ann'].kind"),
    (lambda d: column(d["people"], "roles").__setitem__(0, ["escort", 3]), "people['ann'].roles[1]"),
    (lambda d: d["rules"].__setitem__("surprise", 1), "rules"),
    (lambda d: d["people"]["fields"].__setitem__(1, "nickname"), "people"),
    (lambda d: d.__delitem__("timezone"), "site"),
    (lambda d: d["people"]["columns"][0].append("extra"), "people"),
    (lambda d: d["credentials"].__setitem__("keys", "state"), "credentials"),
    (lambda d: d["rules"].__setitem__("pin_max_attempts", 2.5), "rules.pin_max_attempts"),
])
def test_malformed_site_data_is_refused_naming_where(mutate, where: str) -> None:
    data = through_json(site_to_dict(full_site()))
    mutate(data)
    with pytest.raises(PolicyError) as err:
        site_from_dict(data)
    assert where in str(err.value)


def test_site_data_with_random_values_swapped_in_gives_a_well_typed_site_or_a_policy_error() -> None:
    rng = random.Random(7)
    junk = [None, True, 0, -1, 1.5, "", "x", "hard", [], [1], ["a"], {}, {"a": 1}, [[]], "2026-01-01", "07:00"]
    original = through_json(site_to_dict(full_site()))

    def slots(node: object, out: list) -> list:
        for key in (range(len(node)) if isinstance(node, list) else node if isinstance(node, dict) else ()):
            out.append((node, key))
            slots(node[key], out)
        return out

    for _ in range(400):
        data = json.loads(json.dumps(original))
        for container, key in rng.sample(slots(data, []), 2):
            container[key] = rng.choice(junk)
        try:
            site = site_from_dict(data)
        except PolicyError:
            continue
        site_to_dict(site)  # whatever decodes is well-typed: it encodes again without complaint


@dataclass(frozen=True)
class Node:
    name: str
    children: tuple[Node, ...] = ()


def test_a_dataclass_that_contains_itself_round_trips() -> None:
    tree = Node("root", (Node("a"), Node("b", (Node("c"),))))
    assert decode_value(through_json(encode_value(tree, Node)), Node) == tree


def test_duplicate_keys_in_a_table_are_refused() -> None:
    data = through_json(site_to_dict(full_site()))
    data["people"]["keys"] = ["ann", "ann"]
    with pytest.raises(PolicyError, match="duplicate"):
        site_from_dict(data)


def test_encoding_a_wrongly_typed_value_names_the_field() -> None:
    site = full_site()
    bad = dataclasses.replace(site, doors={"vault_in": dataclasses.replace(site.doors["vault_in"], unlock_s="5")})
    with pytest.raises(PolicyError, match=r"doors\['vault_in'\].unlock_s"):
        site_to_dict(bad)


def test_an_unsupported_field_type_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Odd:
        blob: bytes

    with pytest.raises(TypeError, match="bytes"):
        encode_value(Odd(b"x"), Odd)


# -------------------------------------------------------------- compile


def test_floor7_policy_holds_the_lab_team_and_nothing_of_the_lobby(bundle: SiteBundle, demo: Site) -> None:
    policy = compile_policy(demo, ["lab"])  # a device with the lab door alone
    assert set(policy.doors) == {"lab"}
    assert not set(policy.doors) & set(bundle.devices["pi-lobby"].doors)
    assert set(policy.people) == {"alice", "chen"}  # lab level; bob, dana and eli hold only staff
    assert {c.person for c in policy.credentials.values()} == {"alice", "chen"}
    expected = {h for h, c in demo.credentials.items() if c.person in {"alice", "chen"}}
    assert set(policy.credentials) == expected
    assert set(policy.access_levels) == {"lab"}
    assert set(policy.schedules) == {"business_hours"}
    assert policy.areas == demo.areas and policy.rules == demo.rules


def test_a_lift_policy_holds_what_every_floor_needs(bundle: SiteBundle, demo: Site) -> None:
    """pi-floor7 also drives the lift, whose floors are the lobby, the office and floor 7: its policy holds the
    levels into each floor, their holders and the public floors' schedule."""
    policy = compile_policy(demo, bundle.devices["pi-floor7"].doors)
    assert set(policy.doors) == {"lab", "lift"}
    assert policy.doors["lift"].floors == demo.doors["lift"].floors
    assert set(policy.access_levels) == {"lab", "staff"}
    assert set(policy.schedules) == {"business_hours", "always"}
    assert set(policy.people) == {"alice", "bob", "chen", "dana", "eli"}


def test_lobby_policy_holds_the_staff_level_holders(bundle: SiteBundle, demo: Site) -> None:
    policy = compile_policy(demo, bundle.devices["pi-lobby"].doors)
    assert set(policy.doors) == {"lobby_in", "lobby_out", "gate_in", "gate_out"}
    assert set(policy.people) == {"alice", "bob", "chen", "dana", "eli"}
    assert set(policy.access_levels) == {"staff"} and set(policy.schedules) == {"always"}


def test_visitors_for_the_area_their_hosts_escorts_and_responders_are_included(demo: Site) -> None:
    people = dict(demo.people)
    people["vera"] = Person("vera", "Vera", kind=PersonKind.VISITOR, host="bob", allowed_areas=("floor7",))
    people["walt"] = Person("walt", "Walt", kind=PersonKind.VISITOR, host="dana", allowed_areas=("lobby",))
    people["esme"] = Person("esme", "Esme", roles=frozenset({"escort"}))
    people["rory"] = Person("rory", "Rory", roles=frozenset({"responder"}))
    creds = dict(demo.credentials)
    for pid in ("vera", "walt", "esme", "rory"):
        creds[f"hash-{pid}"] = Credential(f"hash-{pid}", "0000", "em4100", pid)
    site = dataclasses.replace(demo, people=people, credentials=creds)
    policy = compile_policy(site, ["lab"])
    assert set(policy.people) == {"alice", "chen", "vera", "bob", "esme", "rory"}
    assert "hash-walt" not in policy.credentials and "hash-vera" in policy.credentials


def test_a_doors_unlock_schedule_is_included(demo: Site) -> None:
    door = dataclasses.replace(demo.doors["lobby_in"], mode=DoorMode.UNLOCKED_ON_SCHEDULE,
                               unlock_schedule="business_hours")
    site = dataclasses.replace(demo, doors={**demo.doors, "lobby_in": door})
    assert set(compile_policy(site, ["lobby_in"]).schedules) == {"always", "business_hours"}


def test_compiling_for_an_unknown_door_is_refused(demo: Site) -> None:
    with pytest.raises(PolicyError, match="nope"):
        compile_policy(demo, ["lab", "nope"])


def test_no_card_number_ever_appears_in_a_signed_policy(bundle: SiteBundle, demo: Site,
                                                        key: Ed25519PrivateKey) -> None:
    payload = sign_policy(compile_policy(demo, ["lab", "lobby_in"]), site_id="demo", device="pi-floor7",
                          version=1, issued_at=ISSUED, key=key)
    text = payload.decode()
    for card in bundle.cards:
        assert card.number not in text and card.number.lower() not in text


# ------------------------------------------------------------- envelope


def signed(site: Site, key: Ed25519PrivateKey, *, device: str = "pi-floor7", version: int = 5,
           site_id: str = "demo") -> bytes:
    return sign_policy(site, site_id=site_id, device=device, version=version, issued_at=ISSUED, key=key)


def test_sign_then_verify_gives_back_the_policy(demo: Site, key: Ed25519PrivateKey) -> None:
    policy = compile_policy(demo, ["lab"])
    payload = signed(policy, key)
    envelope = json.loads(payload)
    assert envelope["schema"] == "doorkeep.policy/1" and set(envelope) == {"schema", "signed", "signature"}
    body = json.loads(envelope["signed"])
    assert body["issued_at"] == "2026-01-01T00:00:00.123Z" and len(body["nonce"]) == 32
    got = verify_policy(payload, key.public_key(), site_id="demo", device="pi-floor7")
    assert isinstance(got, VerifiedPolicy)
    assert got.site == policy and got.version == 5 and got.nonce == body["nonce"]
    assert got.issued_at == pytest.approx(ISSUED, abs=1e-3)


def test_every_signature_carries_a_fresh_nonce(demo: Site, key: Ed25519PrivateKey) -> None:
    a, b = (json.loads(json.loads(signed(demo, key))["signed"])["nonce"] for _ in range(2))
    assert a != b


def with_signed(payload: bytes, change) -> bytes:
    envelope = json.loads(payload)
    envelope["signed"] = change(envelope["signed"])
    return json.dumps(envelope).encode()


@pytest.mark.parametrize("change", [
    lambda s: s.replace('"version":5', '"version":6'),
    lambda s: s.replace('"alice"', '"alicf"', 1),
    lambda s: s.replace('"business_hours"', '"business_hourz"', 1),
    lambda s: s[:40] + ("x" if s[40] != "x" else "y") + s[41:],
])
def test_changing_one_character_of_the_signed_text_is_refused(demo: Site, key: Ed25519PrivateKey, change) -> None:
    payload = signed(compile_policy(demo, ["lab"]), key)
    tampered = with_signed(payload, change)
    assert tampered != payload
    with pytest.raises(PolicyError, match="signature does not match"):
        verify_policy(tampered, key.public_key(), site_id="demo", device="pi-floor7")


def test_a_signature_from_another_key_is_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    payload = signed(demo, Ed25519PrivateKey.generate())
    with pytest.raises(PolicyError, match="signature does not match"):
        verify_policy(payload, key.public_key(), site_id="demo", device="pi-floor7")


def test_a_policy_with_its_signature_removed_or_swapped_is_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    one, other = json.loads(signed(demo, key)), json.loads(signed(demo, key, version=6))
    for bad, message in [
        ({"schema": one["schema"], "signed": one["signed"]}, "missing signature"),
        ({**one, "signature": ""}, "signature is missing"),
        ({**one, "signature": other["signature"]}, "signature does not match"),
        ({**one, "signature": "not base64!"}, "not base64"),
        ({**one, "signature": base64.b64encode(b"x" * 63).decode()}, "63 bytes"),
    ]:
        with pytest.raises(PolicyError, match=message):
            verify_policy(json.dumps(bad).encode(), key.public_key(), site_id="demo", device="pi-floor7")


def test_a_policy_for_another_device_is_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    with pytest.raises(PolicyError, match="device 'pi-lobby'"):
        verify_policy(signed(demo, key, device="pi-lobby"), key.public_key(), site_id="demo", device="pi-floor7")


def test_a_policy_for_another_site_is_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    other = dataclasses.replace(demo, id="elsewhere")
    with pytest.raises(PolicyError, match="site 'elsewhere'"):
        verify_policy(signed(other, key, site_id="elsewhere"), key.public_key(), site_id="demo", device="pi-floor7")


def test_signing_a_site_under_another_sites_name_is_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    with pytest.raises(PolicyError, match="elsewhere"):
        signed(demo, key, site_id="elsewhere")


def test_an_older_version_is_refused_as_a_replay(demo: Site, key: Ed25519PrivateKey) -> None:
    with pytest.raises(PolicyError, match="older"):
        verify_policy(signed(demo, key, version=4), key.public_key(), site_id="demo", device="pi-floor7",
                      min_version=5)


def test_the_same_version_passes_as_a_redelivery(demo: Site, key: Ed25519PrivateKey) -> None:
    got = verify_policy(signed(demo, key, version=5), key.public_key(), site_id="demo", device="pi-floor7",
                        min_version=5)
    assert got.version == 5


def test_a_signed_body_that_is_not_a_site_is_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    body = json.loads(json.loads(signed(demo, key))["signed"])
    column(body["policy"]["doors"], "offline")[0] = "sometimes"
    text = json.dumps(body)
    payload = json.dumps({"schema": "doorkeep.policy/1", "signed": text,
                          "signature": base64.b64encode(key.sign(text.encode())).decode()}).encode()
    with pytest.raises(PolicyError, match=r"policy.doors\['lobby_in'\].offline: unknown value 'sometimes'"):
        verify_policy(payload, key.public_key(), site_id="demo", device="pi-floor7")


def test_signed_bodies_missing_fields_or_with_bad_ones_are_refused(demo: Site, key: Ed25519PrivateKey) -> None:
    good = json.loads(json.loads(signed(demo, key))["signed"])
    cases = [
        ({k: v for k, v in good.items() if k != "nonce"}, "missing nonce"),
        ({**good, "extra": 1}, "unexpected field"),
        ({**good, "version": "5"}, "version must be"),
        ({**good, "version": -1}, "version must be"),
        ({**good, "issued_at": "yesterday"}, "issued_at"),
        ({**good, "issued_at": "2026-01-01T00:00:00"}, "issued_at"),
        ({**good, "nonce": "XYZ"}, "nonce"),
        ([good], "must be a JSON object"),
    ]
    for body, message in cases:
        text = json.dumps(body)
        payload = json.dumps({"schema": "doorkeep.policy/1", "signed": text,
                              "signature": base64.b64encode(key.sign(text.encode())).decode()}).encode()
        with pytest.raises(PolicyError, match=message):
            verify_policy(payload, key.public_key(), site_id="demo", device="pi-floor7")


def test_the_snapshot_key_travels_signed_and_is_checked_strictly(demo: Site, key: Ed25519PrivateKey) -> None:
    from doorkeep.envelope import SnapshotKeys

    recipient = SnapshotKeys.generate().recipient
    payload = sign_policy(demo, site_id="demo", device="pi-floor7", version=5, issued_at=ISSUED, key=key,
                          snapshot_key=recipient)
    assert verify_policy(payload, key.public_key(), site_id="demo", device="pi-floor7").snapshot_key == recipient
    assert verify_policy(signed(demo, key), key.public_key(), site_id="demo", device="pi-floor7").snapshot_key is None
    good = json.loads(json.loads(payload)["signed"])
    other = SnapshotKeys.generate().recipient.to_policy()
    for bad in ({**good["snapshot_key"], "id": other["id"]}, {"x25519": other["x25519"]}, "key"):
        text = json.dumps({**good, "snapshot_key": bad})
        forged = json.dumps({"schema": "doorkeep.policy/1", "signed": text,
                             "signature": base64.b64encode(key.sign(text.encode())).decode()}).encode()
        with pytest.raises(PolicyError, match="snapshot_key"):
            verify_policy(forged, key.public_key(), site_id="demo", device="pi-floor7")
    # Swapping in another key without re-signing breaks the signature, as for any field.
    tampered = with_signed(payload, lambda s: s.replace(recipient.to_policy()["x25519"], other["x25519"]))
    with pytest.raises(PolicyError, match="signature does not match"):
        verify_policy(tampered, key.public_key(), site_id="demo", device="pi-floor7")


@pytest.mark.parametrize("payload, message", [
    (b"", "not JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[1, 2]", "JSON object"),
    (b'{"schema": "doorkeep.policy/0", "signed": "{}", "signature": "AA=="}', "schema"),
    (b'{"schema": "doorkeep.policy/1", "signed": "{}"}', "missing signature"),
    (b'{"schema": "doorkeep.policy/1", "signed": 5, "signature": "AA=="}', "'signed' must be"),
    (b'{"schema": "doorkeep.policy/1", "signed": "{}", "signature": "AA==", "x": 1}', "unexpected"),
    (b'{"schema": NaN}', "not JSON"),
    (b"[" * 100_000, "not JSON"),
])
def test_malformed_envelopes_are_refused_saying_why(key: Ed25519PrivateKey, payload: bytes, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        verify_policy(payload, key.public_key(), site_id="demo", device="pi-floor7")


def test_garbage_payloads_raise_only_policy_errors(demo: Site, key: Ed25519PrivateKey) -> None:
    rng = random.Random(20260101)
    public = key.public_key()
    for _ in range(500):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        with pytest.raises(PolicyError):
            verify_policy(payload, public, site_id="demo", device="pi-floor7")
    good = signed(compile_policy(demo, ["lab"]), key)
    expected = verify_policy(good, public, site_id="demo", device="pi-floor7").site
    for _ in range(500):
        mutated = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            got = verify_policy(bytes(mutated), public, site_id="demo", device="pi-floor7")
        except PolicyError:
            continue
        # Only a change outside the signed text that keeps its meaning (e.g. base64 padding bits) may pass.
        assert got.site == expected


def test_policy_errors_are_doorkeep_errors_and_value_errors() -> None:
    assert issubclass(PolicyError, DoorkeepError) and issubclass(PolicyError, ValueError)


# ------------------------------------------------------------ key files


def test_signing_key_files_are_written_private_and_load_back(tmp_path: Path, demo: Site) -> None:
    path = tmp_path / "keys" / "policy-signing.key"
    generate_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.with_suffix(".pub").exists()
    private, public = load_private_key(path), load_public_key(path.with_suffix(".pub"))
    payload = signed(demo, private)
    assert verify_policy(payload, public, site_id="demo", device="pi-floor7").site == demo


def test_an_existing_signing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "policy.key"
    generate_signing_key(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_signing_key(path)
    assert path.read_bytes() == before


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.key"
    generate_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(PolicyError, match=re.escape(f"chmod 600 {path}")):
        load_private_key(path)


def test_missing_or_invalid_key_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    with pytest.raises(PolicyError, match=re.escape(str(missing)) + ".*doorkeep key init-signing"):
        load_private_key(missing)
    with pytest.raises(PolicyError, match="nowhere.pub.*init-signing"):
        load_public_key(tmp_path / "nowhere.pub")
    junk = tmp_path / "junk.key"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(PolicyError, match="junk.key.*init-signing"):
        load_private_key(junk)
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(PolicyError, match="junk.pub"):
        load_public_key(tmp_path / "junk.pub")


def test_an_edge_policy_names_no_one(demo: Site, key: Ed25519PrivateKey) -> None:
    """Decisions need ids, levels and states: names and employers stay on the server (docs/privacy.md)."""
    compiled = compile_policy(demo, ["lobby_in", "lab"])
    assert compiled.people and all(p.name == p.id and p.company is None for p in compiled.people.values())
    text = signed(compiled, key).decode()
    for person in demo.people.values():
        assert person.name not in text or person.name == person.id


@pytest.mark.parametrize("piece", [1, 2, 3, 1000])
def test_a_policy_written_in_pieces_is_exactly_the_one_call_text(demo: Site, piece: int) -> None:
    """dumps_in_pieces keeps a large policy from holding the interpreter lock in one call; the text (what is
    signed and what two versions compare by) must be byte for byte what one json.dumps writes."""
    from doorkeep.policy import dumps_in_pieces, site_to_dict

    value = site_to_dict(demo)
    value["extra"] = {"ünïcode": ["a\"b", "\n", "✓" * 700], "nested": [[1, 2, 3, 4], {"k": [None, True, 1.5]}],
                      "empty": {}, "list": []}
    one_call = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert dumps_in_pieces(value, piece=piece) == one_call
    text = "x\"\\\u2028é" * 1000  # a long text is escaped in slices: the same escapes
    assert dumps_in_pieces(text, piece=piece) == json.dumps(text, ensure_ascii=False)
    with pytest.raises(ValueError):
        dumps_in_pieces({"x": [float("nan")] * 5}, piece=piece)
