"""The sites shipped inside the package: today the demo site, which ``doorkeep demo`` runs, the desk falls
back to without ``DOORKEEP_SITE``, and a scenario without ``site:`` uses.

It is package data of the core rather than a folder of the checkout, so that a wheel installed anywhere
carries it (issue 14) and both the server and the simulators reach it without importing each other.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The demo site's directory (site.toml, people.toml, devices/). pip installs packages unpacked, so the
#: resource is a real directory that the config loader can read like any site directory.
DEMO_SITE: Path = Path(str(files(__name__).joinpath("demo")))
