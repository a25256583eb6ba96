"""A server built from the environment, for ``uvicorn --factory server.web.app:create_app`` (docs/desk.md).

``DOORKEEP_SITE``   the site directory (default: the demo site, doorkeep/sites/demo)
``DOORKEEP_DATA``   the server's data directory (default: var/SITE_ID, as ``doorkeep server``)
``DOORKEEP_BROKER`` the broker URL (default mqtts://127.0.0.1:8883, as ``doorkeep desk``)
``DOORKEEP_CA``, ``DOORKEEP_CERT``, ``DOORKEEP_KEY``  with mqtts://: the site CA and the server's certificate
                    and key (default SITE/pki/ca.crt, server.crt, server.key)
``DOORKEEP_ALLOW_PLAIN_MQTT=1``  allow a plain mqtt:// broker (development only; a WARNING at start)

The demo site ships without keys; with the default site and no ``keys/`` directory the server runs on
keys made up in memory (logged as a warning): enough to try the desk, not to serve real edges.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.sites import DEMO_SITE
from server.app import Server, bootstrap

log = logging.getLogger("doorkeep.server.desk")

DEFAULT_BROKER = "mqtts://127.0.0.1:8883"


def _broker(env: Mapping[str, str], site_dir: Path) -> BrokerConfig:
    """The broker as ``doorkeep desk`` reaches it: mutual TLS as ``server`` unless plain is explicitly allowed."""
    url = env.get("DOORKEEP_BROKER") or DEFAULT_BROKER
    if not BrokerConfig(url).tls:
        return BrokerConfig(url, allow_plain=env.get("DOORKEEP_ALLOW_PLAIN_MQTT", "") in ("1", "true", "yes"))
    pki = site_dir / "pki"
    return BrokerConfig(url, ca_file=Path(env.get("DOORKEEP_CA") or pki / "ca.crt"),
                        cert_file=Path(env.get("DOORKEEP_CERT") or pki / "server.crt"),
                        key_file=Path(env.get("DOORKEEP_KEY") or pki / "server.key"))


def server_from_env(environ: Mapping[str, str] | None = None) -> Server:
    env = os.environ if environ is None else environ
    site_dir = Path(env.get("DOORKEEP_SITE") or DEMO_SITE)
    bundle = load_site_dir(site_dir)
    data = Path(env.get("DOORKEEP_DATA") or Path("var") / bundle.site.id)
    broker = _broker(env, site_dir)
    keys: dict[str, Any] = {}
    if not env.get("DOORKEEP_SITE") and not (bundle.dir / "keys").exists():
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from doorkeep.envelope import SnapshotKeys

        log.warning("DOORKEEP_SITE is not set: the desk runs the demo site %s with keys made up in memory "
                    "(set DOORKEEP_SITE to a site directory with keys/ to serve real edges)", bundle.dir)
        keys = {"key": secrets.token_bytes(32), "signing_key": Ed25519PrivateKey.generate(),
                "snapshot_keys": SnapshotKeys.generate()}
    return bootstrap(bundle, data, broker, **keys)
