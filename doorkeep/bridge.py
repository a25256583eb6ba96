"""A building broker bridged to the campus broker: the ``connection`` section of the building's mosquitto.conf
and the campus ACL lines of the bridge's certificate (``doorkeep broker config --bridge``; docs/scale.md).

Why a bridge: the building's devices keep their broker (and so their cache, their last wills and each
other's availability) when the building's uplink drops, and what they publish meanwhile waits in the
building broker's persistent store, QoS 1, until the uplink returns. The bridge is one MQTT client of the
campus broker with a certificate of the site CA (role ``bridge``, doorkeep.pki); the devices it carries are
recorded with that certificate in ``index.json``, so the building's ``topic`` lines and the campus ACL come
from one list and cannot disagree. Pure text generation: the caller writes the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from doorkeep.config import SEGMENT
from doorkeep.errors import DoorkeepError

#: A bridge certificate's name is ``bridge-BUILDING``: the CN the campus ACL knows it by.
PREFIX = "bridge-"
#: Seconds between keepalives on the uplink: a dead uplink is noticed within 1.5 times this.
KEEPALIVE_S = 15
#: Reconnection back-off of the bridge (Mosquitto 2.0 ``restart_timeout BASE CAP``): the first retry after
#: about a second, never more than CAP apart, so a building catches up soon after its uplink returns.
RESTART_BASE_S, RESTART_CAP_S = 1, 10


class BridgeError(DoorkeepError, ValueError):
    """A ``--bridge`` value or a bridge certificate is wrong; the message names the fix."""


def parse_bridge(value: str) -> tuple[str, str, int]:
    """``BUILDING=HOST:PORT`` -> (building, host, port); the certificate is then ``bridge-BUILDING``."""
    name, sep, address = value.partition("=")
    host, colon, port_text = address.rpartition(":")
    if not sep or not colon or not host or not SEGMENT.match(name):
        raise BridgeError(f"--bridge {value!r} is not BUILDING=HOST:PORT (fix: e.g. --bridge east=campus.example:8883)")
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise BridgeError(f"--bridge {value!r}: {port_text!r} is not a TCP port (fix: 1-65535, usually 8883)")
    return name, host.strip("[]"), port


def bridge_name(building: str) -> str:
    """The bridge certificate's name (its CN) for ``building``."""
    return f"{PREFIX}{building}"


def device_topics(site_id: str, devices: Iterable[str]) -> list[str]:
    """The subtrees a bridge carries: each building device's whole subtree (availability, state, requests,
    decisions, events, snapshots, policy, commands and results)."""
    out = []
    for device in sorted(set(devices)):
        if not SEGMENT.match(device):
            raise BridgeError(f"device id {device!r} is not a topic segment (fix: letters, digits, '_' and '-')")
        out.append(f"doorkeep/v1/{site_id}/{device}/#")
    if not out:
        raise BridgeError("a bridge with no device carries nothing (fix: `doorkeep pki issue bridge-BUILDING "
                          "--role bridge --device ID …`)")
    return out


def bridge_section(site_id: str, building: str, host: str, port: int, devices: Iterable[str], pki: Path) -> str:
    """The ``connection`` section appended to the building broker's mosquitto.conf.

    QoS 1 both ways on each device's subtree and inward on the server's availability (so the building's
    devices still hear whether the server is up); ``cleansession false`` keeps the bridge's session on
    both brokers, so a message published on either side while the uplink is down waits there (the
    building's with its ``persistence``) and is delivered when it returns; TLS 1.2+ verified against the
    site CA, the campus broker's name checked (``bridge_insecure false``); ``try_private`` so neither
    broker echoes a message back across. Notifications stay local: the campus ACL gives the bridge no
    ``$SYS`` topic, and a forbidden publish would close the uplink.
    """
    name = bridge_name(building)
    pki = pki.resolve()
    base = f"doorkeep/v1/{site_id}"
    lines = [
        f"# Bridge of building {building} to the campus broker (doorkeep broker config --bridge; docs/scale.md).",
        "# The building keeps deciding from its devices' caches while the uplink is down; QoS 1 messages",
        "# wait in both brokers' persistent sessions and cross once it returns.",
        f"connection {name}",
        f"address {host}:{port}",
        f"remote_clientid {name}",
        f"local_clientid local.{name}",
        "bridge_protocol_version mqttv311",
        "try_private true",
        "cleansession false",
        "start_type automatic",
        f"keepalive_interval {KEEPALIVE_S}",
        f"restart_timeout {RESTART_BASE_S} {RESTART_CAP_S}",
        "notifications true",
        "notifications_local_only true",
        f"bridge_cafile {pki / 'ca.crt'}",
        f"bridge_certfile {pki / (name + '.crt')}",
        f"bridge_keyfile {pki / (name + '.key')}",
        "bridge_insecure false",
        "bridge_tls_version tlsv1.2",
        *(f"topic {t} both 1" for t in device_topics(site_id, devices)),
        f"topic {base}/server/availability in 1",
        "",
    ]
    return "\n".join(lines)


def bridge_acl_lines(site_id: str, name: str, devices: Iterable[str], *, deny_own: bool) -> list[str]:
    """A bridge's rights on the campus broker: its building's device subtrees to read and write and the
    server's availability to read; never another device's topics, the server's integration API or
    Home Assistant's. ``deny_own``: take away the subtree the one-site device pattern gives its CN."""
    base = f"doorkeep/v1/{site_id}"
    lines = [f"topic deny {base}/{name}/#"] if deny_own else []
    return [*lines, *(f"topic readwrite {t}" for t in device_topics(site_id, devices)),
            f"topic read {base}/server/availability"]
