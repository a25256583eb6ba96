"""A generated site for the load benchmarks: the demo site plus N doors spread over simulated devices.

The capacity curve (many doors badging at once) and the revocation bench (100 edges each holding a
signed policy) need far more doors and devices than the demo has. They are written as ordinary site
files (site.toml, people.toml, devices/*.toml) and read back with ``load_site_dir``, so the server
checks them exactly as it checks a real site.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from doorkeep.config import SiteBundle, load_site_dir

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "doorkeep" / "sites" / "demo"

#: Cards of the demo's staff (access level "staff": lobby and outside, always), granted at every generated door.
STAFF_CARDS = ("0F00A1B2C3", "0F00B0B0B0", "0F00C4C4C4")


def door_id(i: int) -> str:
    return f"gd{i:04d}"


def device_id(j: int) -> str:
    return f"gen-{j:04d}"


def generate_site(dest: Path, doors: int, doors_per_device: int) -> SiteBundle:
    """Write the demo site plus ``doors`` doors (outside -> lobby, offline "cache") on generated devices."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "devices").mkdir(parents=True)
    shutil.copy(DEMO_DIR / "people.toml", dest / "people.toml")
    for dev in (DEMO_DIR / "devices").glob("*.toml"):
        shutil.copy(dev, dest / "devices" / dev.name)
    site_text = (DEMO_DIR / "site.toml").read_text(encoding="utf-8")
    extra = []
    for i in range(doors):
        extra.append(f'\n[doors.{door_id(i)}]\nname = "Generated door {i}"\nfrom = "outside"\nto = "lobby"\n'
                     f'unlock_s = 5\nheld_open_s = 20\ndecision_timeout_ms = 1000\noffline = "cache"\n')
    # Doors must come before the tables that follow them in the demo file only by TOML's rules, which
    # allow any order of [doors.X] tables: append at the end.
    (dest / "site.toml").write_text(site_text + "".join(extra), encoding="utf-8")
    for j in range(0, doors, doors_per_device):
        dev = device_id(j // doors_per_device)
        lines = [f'device = "{dev}"', 'site = "demo"', 'site_file = "../site.toml"', 'gpio_factory = "mock"',
                 '[broker]', 'url = "mqtt://127.0.0.1:1883"']
        for k, i in enumerate(range(j, min(j + doors_per_device, doors))):
            lines += [f'[doors.{door_id(i)}]',
                      f'reader = {{ url = "/dev/null{k}", protocol = "em4100" }}',
                      f'lock = {{ pin = {2 + k}, active_high = true, fail = "secure" }}']
        (dest / "devices" / f"{dev}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_site_dir(dest)
