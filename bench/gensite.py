"""A generated site for the load benchmarks: the demo site plus N doors spread over simulated devices.

The capacity curve (many doors badging at once) and the revocation bench (100 edges each holding a
signed policy) need far more doors and devices than the demo has. They are written as ordinary site
files (site.toml, people.toml, devices/*.toml) and read back with ``load_site_dir``, so the server
checks them exactly as it checks a real site.

``cardholders``: the campus bench (bench/campus.py) also needs a campus's population, not the demo's three
staff cards (every decision of one person takes that person's lock on shared decisions, so three people
serialise any number of server workers). They are appended to people.toml as ordinary people with one EM4100
card each, so the server's directory imports them at its first start as it would a real site's.

``buildings``: with cardholders, where they may go. 0: every generated door leads into the demo's lobby and
every cardholder holds the demo's "staff" level, so every edge's signed policy carries every cardholder (at
1,000 edges and 10,000 cardholders: 2.1 MB and ~130 ms to compile and sign per edge, over three minutes of
signing at the server's first start). B >= 1: the devices are split into B buildings in order, each an area
(``building_id(k)``, no occupancy limit) entered by its devices' doors with an access level of the same id, and
cardholder ``i`` holds the level of building ``cardholder_building(i, B)`` only, so an edge's policy carries
its building's people, as a campus's would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from doorkeep.config import SiteBundle, load_site_dir

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "doorkeep" / "sites" / "demo"

#: Cards of the demo's staff (access level "staff": lobby and outside, always), granted at every generated door.
STAFF_CARDS = ("0F00A1B2C3", "0F00B0B0B0", "0F00C4C4C4")


#: The generated cardholders' access level: the demo's "staff" (lobby, office and outside, always).
CARDHOLDER_LEVEL = "staff"


def cardholder_id(i: int) -> str:
    return f"ch{i:05d}"


def cardholder_card(i: int) -> str:
    """The EM4100 card (10 hex digits) of cardholder ``i``: deterministic, distinct for every ``i`` below 16**8,
    and apart from the demo's cards ("0F..") and the unknown cards the benches badge ("0E..")."""
    return f"1C{i:08X}"


def building_id(k: int) -> str:
    """Building ``k``'s area and access level."""
    return f"gb{k:03d}"


def cardholder_building(i: int, buildings: int) -> int:
    """The building whose level cardholder ``i`` holds: round robin, so every building has its share."""
    return i % buildings


def door_id(i: int) -> str:
    return f"gd{i:04d}"


def device_id(j: int) -> str:
    return f"gen-{j:04d}"


def generate_site(dest: Path, doors: int, doors_per_device: int, cardholders: int = 0,
                  buildings: int = 0) -> SiteBundle:
    """Write the demo site plus ``doors`` doors (offline "cache") on generated devices, and the demo's people plus
    ``cardholders`` people (``cardholder_id(i)``, card ``cardholder_card(i)``).

    ``buildings`` 0: the doors lead outside -> lobby and the cardholders hold ``CARDHOLDER_LEVEL``; B: outside ->
    the building of their device (B buildings of consecutive devices), each cardholder the level of
    ``cardholder_building(i, B)`` (module docstring)."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "devices").mkdir(parents=True)
    devices = -(-doors // doors_per_device)
    if buildings > devices:
        raise ValueError(f"{buildings} buildings need at least as many devices ({devices})")
    people = [(DEMO_DIR / "people.toml").read_text(encoding="utf-8")]
    for i in range(cardholders):
        level = building_id(cardholder_building(i, buildings)) if buildings else CARDHOLDER_LEVEL
        people.append(f'\n[people.{cardholder_id(i)}]\nname = "Cardholder {i}"\nkind = "employee"\n'
                      f'access_levels = ["{level}"]\n'
                      f'cards = [{{ format = "em4100", number = "{cardholder_card(i)}" }}]\n')
    # [people.X] tables after the demo's [visitor_pool] table: TOML allows any order of tables.
    (dest / "people.toml").write_text("".join(people), encoding="utf-8")
    for dev in (DEMO_DIR / "devices").glob("*.toml"):
        shutil.copy(dev, dest / "devices" / dev.name)
    site_text = (DEMO_DIR / "site.toml").read_text(encoding="utf-8")
    extra = []
    for k in range(buildings):
        b = building_id(k)
        extra.append(f'\n[areas.{b}]\nname = "Generated building {k}"\n'
                     f'\n[access_levels.{b}]\nname = "Generated building {k}"\n'
                     f'entries = [{{ area = "{b}", schedule = "always" }}]\n')
    for i in range(doors):
        to = building_id(i // doors_per_device * buildings // devices) if buildings else "lobby"
        extra.append(f'\n[doors.{door_id(i)}]\nname = "Generated door {i}"\nfrom = "outside"\nto = "{to}"\n'
                     f'unlock_s = 5\nheld_open_s = 20\ndecision_timeout_ms = 1000\noffline = "cache"\n')
    # Doors (and buildings) must come before the tables that follow them in the demo file only by TOML's rules,
    # which allow any order of [doors.X] (and [areas.X], [access_levels.X]) tables: append at the end.
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
