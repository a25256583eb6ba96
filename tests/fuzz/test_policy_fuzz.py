"""Fuzz the signed policy (doorkeep/policy.py): verify_policy and site_from_dict raise PolicyError and
nothing else, on tampered envelopes and on bodies the server's own key signed with hostile content."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from doorkeep.config import load_site_dir
from doorkeep.model import Site
from doorkeep.policy import PolicyError, compile_policy, sign_policy, site_from_dict, site_to_dict, verify_policy
from simulators.site import DEMO_SITE
from tests.fuzz.conftest import fuzz
from tests.fuzz.guard import only_raises
from tests.fuzz.strategies import dumps, hostile_values, mutated_mapping, mutated_tree, parsed

KEY = Ed25519PrivateKey.generate()
SITE = load_site_dir(DEMO_SITE).site
SUBSET = compile_policy(SITE, ["lobby_in", "lobby_out"])
SIGNED = sign_policy(SUBSET, site_id="demo", device="pi-lobby", version=3, issued_at=1_772_441_700.0, key=KEY)
ENVELOPE = json.loads(SIGNED)
BODY = json.loads(ENVELOPE["signed"])
SITE_DICT = site_to_dict(SITE)


def _verify(payload: bytes, min_version: int | None = None) -> None:
    result = None
    with only_raises("policy", PolicyError):
        result = verify_policy(payload, KEY.public_key(), site_id="demo", device="pi-lobby", min_version=min_version)
    if result is not None:
        assert isinstance(result.site, Site) and result.site.id == "demo"
        assert min_version is None or result.version >= min_version


def _sign_text(body_text: bytes) -> bytes:
    """An envelope around exactly these body bytes, signed with the site's real key."""
    text = body_text.decode("utf-8", "surrogatepass")
    raw = text.encode("utf-8", "surrogatepass")
    envelope = {"schema": "doorkeep.policy/1", "signed": text, "signature": base64.b64encode(KEY.sign(raw)).decode()}
    return json.dumps(envelope).encode()


def test_the_signed_policy_fuzzed_below_verifies() -> None:
    assert verify_policy(SIGNED, KEY.public_key(), site_id="demo", device="pi-lobby").version == 3


@st.composite
def tampered_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(0, max(0, len(out) - 1)))
        how = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if how == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and out:
            out[i] = draw(st.integers(0, 255))
        elif how == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete" and out:
            del out[i:i + draw(st.integers(1, 8))]
        elif how == "truncate":
            del out[i:]
    return bytes(out)


@fuzz(scale=2)
@given(payload=tampered_bytes(SIGNED))
def test_tampered_policy_bytes_raise_policy_error(payload: bytes) -> None:
    _verify(payload)


@fuzz(scale=2)
@given(payload=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_random_bytes_raise_policy_error(payload: bytes) -> None:
    _verify(payload)


@fuzz()
@given(data=st.data())
def test_envelope_with_fields_mutated_raises_policy_error(data: st.DataObject) -> None:
    _verify(dumps(data.draw(mutated_mapping(ENVELOPE))))


@fuzz()
@given(data=st.data(), min_version=st.none() | st.integers(min_value=-5, max_value=10))
def test_body_fields_mutated_and_signed_with_the_real_key_verify_or_raise_policy_error(
        data: st.DataObject, min_version: int | None) -> None:
    _verify(_sign_text(dumps(data.draw(mutated_mapping(BODY)))), min_version)


@fuzz(scale=2)
@given(data=st.data())
def test_policy_mutated_deep_inside_and_signed_with_the_real_key_verifies_or_raises_policy_error(
        data: st.DataObject) -> None:
    body = dict(BODY, policy=data.draw(mutated_tree(BODY["policy"])))
    _verify(_sign_text(dumps(body)))


@fuzz(scale=2)
@given(data=st.data())
def test_site_from_dict_on_a_mutated_site_raises_only_policy_error(data: st.DataObject) -> None:
    mutated: Any = parsed(data.draw(mutated_tree(SITE_DICT)))
    with only_raises("policy", PolicyError):
        site_from_dict(mutated)


@fuzz()
@given(value=hostile_values)
def test_site_from_dict_on_anything_raises_only_policy_error(value: Any) -> None:
    with only_raises("policy", PolicyError):
        site_from_dict(parsed(value))
