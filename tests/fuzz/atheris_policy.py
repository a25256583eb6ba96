"""atheris harness: signed policies (doorkeep/policy.py).

First byte picks the mode: 0 the bytes as a policy envelope; 1 the bytes as the body text, signed
with the site's real key (so the fuzzer reaches the body checks and the site decoder); 2 the bytes
as JSON for site_from_dict. Anything but PolicyError is a crash.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from doorkeep.config import load_site_dir
    from doorkeep.policy import PolicyError, compile_policy, sign_policy, site_from_dict, verify_policy

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fuzz.guard import only_raises
from tests.fuzz.harness import ROOT, run

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
SITE = load_site_dir(Path(ROOT) / "doorkeep" / "sites" / "demo").site
SIGNED = sign_policy(compile_policy(SITE, ["lobby_in", "lobby_out"]), site_id="demo", device="pi-lobby",
                     version=3, issued_at=1_772_441_700.0, key=KEY)


def _envelope(body: bytes) -> bytes:
    text = body.decode("utf-8", "surrogatepass")
    signature = base64.b64encode(KEY.sign(text.encode("utf-8", "surrogatepass"))).decode()
    return json.dumps({"schema": "doorkeep.policy/1", "signed": text, "signature": signature}).encode()


def test_one(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    with only_raises("policy", PolicyError):
        if mode == 0:
            verify_policy(rest, PUBLIC, site_id="demo", device="pi-lobby")
        elif mode == 1:
            try:
                payload = _envelope(rest)
            except UnicodeDecodeError:
                return
            verify_policy(payload, PUBLIC, site_id="demo", device="pi-lobby", min_version=2)
        else:
            try:
                value = json.loads(rest)
            except (ValueError, RecursionError):
                return
            site_from_dict(value)


BODY = json.loads(SIGNED)["signed"].encode()
SEEDS = [b"\x00" + SIGNED, b"\x01" + BODY, b"\x02" + json.dumps(json.loads(BODY)["policy"]).encode()]

if __name__ == "__main__":
    run("policy", test_one, SEEDS)
