"""Several broker addresses: `[broker] url` as a list (or `--broker A,B`), its errors, and how the edge's link
walks the list (docs/scale.md, "Several broker addresses")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from doorkeep.config import BrokerConfig, check, load_device
from doorkeep.errors import ConfigError
from simulators.brokers import free_port
from simulators.wait import wait_until
from tests.unit.test_config import DEVICE, make_site

TLS_FILES = 'ca_file = "ca.crt"\ncert_file = "pi-a.crt"\nkey_file = "pi-a.key"\n'


def broker_errors(tmp_path: Path, table: str) -> list[ConfigError]:
    return check(make_site(tmp_path / "s", devices={"pi-a": DEVICE + "\n[broker]\n" + table}))


def test_a_list_of_urls_is_tried_in_the_order_written(tmp_path: Path) -> None:
    table = 'url = ["mqtts://mqtt-1.lan:8883", "mqtts://mqtt-2.lan"]\n' + TLS_FILES
    dev, _ = load_device(make_site(tmp_path / "s", devices={"pi-a": DEVICE + "\n[broker]\n" + table})
                         / "devices" / "pi-a.toml")
    assert dev.broker.urls == ("mqtts://mqtt-1.lan:8883", "mqtts://mqtt-2.lan")
    assert dev.broker.addresses == (("mqtt-1.lan", 8883), ("mqtt-2.lan", 8883))
    assert dev.broker.tls and (dev.broker.host, dev.broker.port) == ("mqtt-1.lan", 8883)


def test_one_url_as_a_string_works_as_before(tmp_path: Path) -> None:
    dev, _ = load_device(make_site(tmp_path / "s", devices={
        "pi-a": DEVICE + '\n[broker]\nurl = "mqtt://10.0.0.5:1884"\nallow_plain_mqtt = true\n'}) / "devices" / "pi-a.toml")
    assert dev.broker.url == "mqtt://10.0.0.5:1884" and dev.broker.addresses == (("10.0.0.5", 1884),)


@pytest.mark.parametrize("url, problem", [
    ('["mqtts://a.lan:8883", "mqtt://b.lan:1883"]', "mixes mqtts:// and plain mqtt://"),
    ('["mqtts://a.lan:8883", "mqtts://a.lan"]', "is listed twice"),
    ('["mqtts://a.lan:8883", "b.lan:8883"]', "'b.lan:8883' is not a broker URL"),
    ('["mqtts://a.lan:8883", 8883]', "must hold only strings"),
    ("[]", "no broker URL given"),
    ('["mqtts://a.lan:70000"]', "port 70000 is out of range"),
    ('"mqtts://a.lan:8883,"', "'' is not a broker URL"),
], ids=["mixed-schemes", "duplicate", "no-scheme", "not-a-string", "empty", "port", "trailing-comma"])
def test_a_bad_list_is_an_error_naming_the_file_key_and_fix(tmp_path: Path, url: str, problem: str) -> None:
    errors = broker_errors(tmp_path, f"url = {url}\n" + (TLS_FILES if "mqtts" in url else ""))
    assert [e.key for e in errors] == ["broker.url"], [str(e) for e in errors]
    assert problem in errors[0].problem and errors[0].fix
    assert errors[0].file.endswith("pi-a.toml")


def test_the_command_line_form_is_comma_separated_and_checked_when_used() -> None:
    assert BrokerConfig("mqtts://a.lan:8883, mqtts://b.lan:8884").addresses == (("a.lan", 8883), ("b.lan", 8884))
    with pytest.raises(ConfigError, match="mixes mqtts://"):
        BrokerConfig("mqtts://a.lan:8883,mqtt://b.lan:1883").urls


def test_the_edge_tries_the_next_address_at_once_and_backs_off_only_after_a_full_round() -> None:
    from edge.link import RECONNECT_MIN_S, Link

    # Two loopback ports nobody listens on: each try is refused at once.
    ports = free_port(), free_port()
    broker = BrokerConfig(f"mqtt://127.0.0.1:{ports[0]},mqtt://127.0.0.1:{ports[1]}", allow_plain=True)
    link = Link("t", "pi-a", broker, on_decision=lambda door, payload: None, state_payload=lambda: b"{}")
    started = time.monotonic()
    link.start()
    try:
        # A then B within well under the backoff: the second address did not wait for it.
        assert wait_until(lambda: link.connect_failures >= 2, RECONNECT_MIN_S * 0.8), link.connect_failures
        assert link.address_moves >= 2 and link.address_index == 0  # back at A: the round is over
        # The third try (A again) waits for the backoff: a full round failed.
        assert wait_until(lambda: link.connect_failures >= 3, RECONNECT_MIN_S * 3)
        assert time.monotonic() - started >= RECONNECT_MIN_S
    finally:
        link.stop()
