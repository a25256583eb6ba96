"""OSDP reader keys in device files, card formats in people files, and SCBK key files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from doorkeep.config import check, load_device
from edge.osdp.keys import KeyFileError, load_scbk, write_scbk
from tests.unit.test_config import PEOPLE, SITE, make_site, only

HEAD = 'device = "pi-a"\nsite = "t"\ngpio_factory = "mock"\n'


def _device(*doors: str) -> str:
    return HEAD + "".join(doors)


def _door(name: str, reader: str, pin: int) -> str:
    return f"\n[doors.{name}]\nreader = {{ {reader} }}\nlock = {{ pin = {pin} }}\n"


SITE2 = SITE + '\n[doors.lobby_out]\nname = "Lobby exit"\nfrom = "lobby"\nto = "outside"\n'


def test_an_osdp_reader_is_read_with_its_keys(tmp_path: Path) -> None:
    reader = 'url = "/dev/serial0", protocol = "osdp", address = 3, poll_ms = 50, scbk_file = "keys/a.scbk"'
    d = make_site(tmp_path / "s", devices={"pi-a": _device(_door("lobby_in", reader, 17))})
    dev, _ = load_device(d / "devices" / "pi-a.toml")
    rc = dev.doors["lobby_in"].reader
    assert (rc.protocol, rc.address, rc.poll_ms, rc.secure_channel) == ("osdp", 3, 50, True)
    assert rc.scbk_file == d / "devices" / "keys" / "a.scbk"


@pytest.mark.parametrize(("reader", "key", "words"), [
    ('url = "x", protocol = "osdp", address = 1', "scbk_file", "secure_channel = false"),
    ('url = "x", protocol = "osdp", scbk_file = "k"', "address", "0-126"),
    ('url = "x", protocol = "osdp", address = 127, scbk_file = "k"', "address", "broadcast"),
    ('url = "x", protocol = "osdp", address = 1, scbk_file = "k", poll_ms = 1', "poll_ms", "10-10000"),
    ('url = "x", protocol = "osdp", address = 1, scbk_file = "k", secure_channel = false', "scbk_file",
     "remove one"),
    ('url = "x", protocol = "em4100", address = 1', "address", "remove it"),
])
def test_bad_osdp_keys_name_the_key_and_the_fix(tmp_path: Path, reader: str, key: str, words: str) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": _device(_door("lobby_in", reader, 17))})
    err = only(check(d / "devices" / "pi-a.toml"), f"doors.lobby_in.reader.{key}")
    assert words in err.fix or words in err.problem, str(err)


def test_doors_share_a_url_only_as_osdp_readers_with_different_addresses(tmp_path: Path) -> None:
    osdp = 'url = "/dev/ttyUSB0", protocol = "osdp", scbk_file = "k", address = '
    ok = _device(_door("lobby_in", osdp + "1", 17), _door("lobby_out", osdp + "2", 18))
    d = make_site(tmp_path / "ok", site=SITE2, devices={"pi-a": ok})
    assert check(d) == []
    same = _device(_door("lobby_in", osdp + "1", 17), _door("lobby_out", osdp + "1", 18))
    d = make_site(tmp_path / "same", site=SITE2, devices={"pi-a": same})
    assert "share an address" in only(check(d / "devices" / "pi-a.toml"), "doors").problem
    serial = 'url = "/dev/ttyUSB0", protocol = "em4100"'
    mixed = _device(_door("lobby_in", serial, 17), _door("lobby_out", serial, 18))
    d = make_site(tmp_path / "mixed", site=SITE2, devices={"pi-a": mixed})
    assert "only OSDP readers" in only(check(d / "devices" / "pi-a.toml"), "doors").fix


@pytest.mark.parametrize(("fmt", "number", "good"), [
    ("wiegand26", "12:34567", True), ("wiegand26", "1234567", False), ("wiegand34", "1234:5678", True),
    ("wiegand37", "65000:500000", True), ("osdp_raw", "40:0123456789", True), ("osdp_raw", "40:xyz", False),
])
def test_wiegand_and_raw_card_numbers_in_the_people_file(tmp_path: Path, fmt: str, number: str, good: bool) -> None:
    people = PEOPLE.replace('{ format = "em4100", number = "0F00A1B2C3" }',
                            f'{{ format = "{fmt}", number = "{number}" }}')
    errors = check(make_site(tmp_path / "s", people=people))
    if good:
        assert errors == []
    else:
        assert "FACILITY:CARD" in only(errors, "people.alice.cards[0].number").fix or \
            "BITS:HEX" in only(errors, "people.alice.cards[0].number").fix


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "k" / "door.scbk"
    assert load_scbk(path) is None, "no file yet: the reader needs install-key"
    os.replace(write_scbk(path, bytes(range(16))), path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_scbk(path) == bytes(range(16))
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_scbk(path)
    path.chmod(0o600)
    path.write_text("nothex\n")
    with pytest.raises(KeyFileError, match="not hexadecimal"):
        load_scbk(path)
