"""The visitor pass token (doorkeep/visitor_pass.py): round trip, strict parsing, every bit flip refused."""

from __future__ import annotations

import base64

import pytest
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.credentials import card_hash
from doorkeep.policy import PolicyError, sign_policy, verify_policy
from doorkeep.model import Site
from doorkeep.visitor_pass import (
    FORMAT,
    MAX_TOKEN_CHARS,
    PREFIX,
    PassClaims,
    PassError,
    key_id,
    looks_like_pass,
    parse_pass,
    public_key_text,
    read_pass,
    sign_pass,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEYS = {key_id(KEY.public_key()): KEY.public_key()}
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
CLAIMS = PassClaims("v-0123456789ab", 1_765_000_000, 1_765_030_000, 1)
TOKEN = sign_pass(CLAIMS, KEY)

visits = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
windows = st.tuples(st.integers(0, 2**32 - 2), st.integers(1, 2**32 - 1)).filter(lambda w: w[0] < w[1])


@settings(max_examples=200, deadline=None)
@given(visit=visits, window=windows, serial=st.integers(0, 0xFFFF))
def test_a_signed_pass_reads_back_as_the_same_claims(visit: str, window: tuple[int, int], serial: int) -> None:
    text = sign_pass(PassClaims(visit, window[0], window[1], serial), KEY)
    assert text.startswith(PREFIX) and len(text) <= MAX_TOKEN_CHARS
    assert text.isalnum() and text == text.upper()  # QR alphanumeric, and an ASCII reader's line as it is
    got = read_pass(text, KEYS).claims
    assert (got.visit, got.not_before, got.not_after, got.serial) == (visit, window[0], window[1], serial)
    assert got.key_id == key_id(KEY.public_key())


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_bit_flipped_in_the_text_is_refused(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(TOKEN) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = TOKEN[:i] + chr(ord(TOKEN[i]) ^ (1 << bit)) + TOKEN[i + 1:]
    with pytest.raises(PassError):
        read_pass(flipped, KEYS)


def test_every_bit_of_the_signed_bytes_matters() -> None:
    """Exhaustive over the binary pass: each of its bits flipped is refused (form or signature)."""
    raw = base64.b32decode(TOKEN[len(PREFIX):] + "=" * (-len(TOKEN[len(PREFIX):]) % 8))
    for i in range(len(raw) * 8):
        altered = bytearray(raw)
        altered[i // 8] ^= 1 << (i % 8)
        text = PREFIX + base64.b32encode(bytes(altered)).decode().rstrip("=")
        with pytest.raises(PassError):
            read_pass(text, KEYS)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=200).map(lambda b: PREFIX + b.hex().upper()),
                      st.binary(max_size=200).map(lambda b: PREFIX + base64.b32encode(b).decode().rstrip("="))))
def test_garbage_is_a_clear_error_never_another_exception(text: str) -> None:
    with pytest.raises(PassError) as err:
        read_pass(text, KEYS)
    assert err.value.reason in ("malformed", "unknown_key", "bad_signature") and str(err.value)


@pytest.mark.parametrize("text, words", [
    ("", "starts with DKP1"),
    ("DKP1", "base32"),
    (TOKEN.lower(), "starts with DKP1"),
    (PREFIX + TOKEN[len(PREFIX):].lower(), "upper-case"),
    (TOKEN + "A", "length"),
    (TOKEN + "A" * 40, "at most"),
    (TOKEN[:-20], "bytes"),
], ids=["empty", "prefix-only", "lower-prefix", "lower-body", "odd-length", "too-long", "truncated"])
def test_malformed_tokens_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(PassError) as err:
        parse_pass(text)
    assert err.value.reason == "malformed" and words in str(err.value)


def test_a_pass_signed_by_another_key_is_refused_as_unknown_key() -> None:
    with pytest.raises(PassError) as err:
        read_pass(sign_pass(CLAIMS, OTHER), KEYS)
    assert err.value.reason == "unknown_key"
    # The same key id with another key (a forged id) fails the signature.
    forged = {key_id(OTHER.public_key()): KEY.public_key()}
    with pytest.raises(PassError) as err:
        read_pass(sign_pass(CLAIMS, OTHER), forged)
    assert err.value.reason == "bad_signature"


def test_the_window_is_checked_in_integer_seconds_end_excluded() -> None:
    p = parse_pass(TOKEN)
    assert p.window_reason(CLAIMS.not_before - 0.5) == "not_yet_valid"
    assert p.window_reason(CLAIMS.not_before) is None
    assert p.window_reason(CLAIMS.not_after - 0.001) is None
    assert p.window_reason(CLAIMS.not_after) == "expired"


@pytest.mark.parametrize("claims", [
    PassClaims("", 1, 2), PassClaims("a b", 1, 2), PassClaims("v" * 33, 1, 2), PassClaims("v", 2, 2),
    PassClaims("v", -1, 2), PassClaims("v", 1, 2**32), PassClaims("v", 1, 2, 70000),
], ids=["empty-visit", "space", "long-visit", "empty-window", "negative", "after-2106", "serial"])
def test_claims_no_pass_may_carry_are_refused_at_signing(claims: PassClaims) -> None:
    with pytest.raises(PassError):
        sign_pass(claims, KEY)


def test_the_pass_carries_no_name_and_hashes_like_a_card_of_its_own_family() -> None:
    p = read_pass(TOKEN, KEYS)
    assert p.credential_number == "1/v-0123456789ab"
    key = bytes(32)
    assert card_hash(key, FORMAT, p.credential_number) != card_hash(key, "ascii", p.credential_number)
    assert looks_like_pass(TOKEN) and not looks_like_pass("0012345678")


def test_a_typical_pass_fits_a_version_7_qr_at_error_correction_m() -> None:
    qr = segno.make_qr(TOKEN, error="m", boost_error=False)
    assert qr.mode == "alphanumeric" and qr.version <= 7 and qr.symbol_size(border=0) == (45, 45)


def test_the_signed_policy_carries_the_pass_keys_and_refuses_a_wrong_id() -> None:
    site = Site("s", "S", "UTC")
    signer = Ed25519PrivateKey.generate()
    kid = key_id(KEY.public_key())
    payload = sign_policy(site, site_id="s", device="d", version=1, issued_at=1.0, key=signer,
                          pass_keys={kid: public_key_text(KEY.public_key())})
    held = verify_policy(payload, signer.public_key(), site_id="s", device="d")
    assert held.pass_keys is not None and read_pass(TOKEN, held.pass_keys).claims.visit == CLAIMS.visit
    assert verify_policy(sign_policy(site, site_id="s", device="d", version=1, issued_at=1.0, key=signer),
                         signer.public_key(), site_id="s", device="d").pass_keys is None
    with pytest.raises(PolicyError, match="not the key's"):
        sign_policy(site, site_id="s", device="d", version=1, issued_at=1.0, key=signer,
                    pass_keys={"00000000": public_key_text(KEY.public_key())})
