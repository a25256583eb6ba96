"""Fuzz the configuration loader (doorkeep/config.py): ``check(path)`` on the demo site with one file
mutated never raises; it returns ConfigErrors (or nothing, when the mutation happened to be harmless)."""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from doorkeep.config import check
from doorkeep.errors import ConfigError
from simulators.site import DEMO_SITE
from tests.fuzz.conftest import fuzz
from tests.fuzz.guard import only_raises
from tests.fuzz.strategies import mutated_lines, mutated_tree, toml_garbage, toml_text, toml_values

FILES = ("site.toml", "people.toml", "devices/pi-lobby.toml", "devices/pi-floor7.toml")
TEXT = {name: (DEMO_SITE / name).read_text(encoding="utf-8") for name in FILES}
TREES = {name: tomllib.loads(text) for name, text in TEXT.items()}
files = st.sampled_from(FILES)
# What an operator runs: the directory, its site.toml, or one device file.
targets = st.sampled_from(["", "site.toml", "devices/pi-lobby.toml", "devices/pi-floor7.toml"])


@contextmanager
def demo_copy(name: str, content: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="doorkeep-fuzz-") as tmp:
        site = Path(tmp) / "demo"
        shutil.copytree(DEMO_SITE, site, ignore=shutil.ignore_patterns("keys"))
        (site / name).write_bytes(content)
        yield site


def _check(site: Path, target: str) -> None:
    errors = None
    with only_raises("config"):
        errors = check(site / target if target else site)
    if errors is not None:
        assert isinstance(errors, list)
        for e in errors:
            assert isinstance(e, ConfigError), f"check() returned {e!r}"
            assert isinstance(e.file, str) and str(e)


def test_the_demo_site_fuzzed_below_is_clean() -> None:
    for target in ("", "site.toml"):
        assert check(DEMO_SITE / target if target else DEMO_SITE) == []
    for target in ("devices/pi-lobby.toml", "devices/pi-floor7.toml"):
        # Clean but for the Pi's own TLS files under /etc/doorkeep/pki/, which exist only on the Pi.
        errors = check(DEMO_SITE / target)
        assert {e.key for e in errors} == {"broker.ca_file", "broker.cert_file", "broker.key_file"}, errors
        assert all("/etc/doorkeep/pki/" in e.problem for e in errors)


@fuzz(scale=1)
@given(data=st.data(), name=files, target=targets)
def test_check_with_lines_deleted_duplicated_or_garbled_returns_config_errors(data: st.DataObject, name: str,
                                                                             target: str) -> None:
    text = data.draw(mutated_lines(TEXT[name], toml_garbage))
    with demo_copy(name, text.encode("utf-8", "surrogatepass")) as site:
        _check(site, target)


@fuzz(scale=1)
@given(data=st.data(), name=files, target=targets)
def test_check_with_values_changed_anywhere_returns_config_errors(data: st.DataObject, name: str, target: str) -> None:
    tree = data.draw(mutated_tree(TREES[name], values=toml_values))
    text = toml_text(tree) if isinstance(tree, dict) else toml_text({"x": tree})
    with demo_copy(name, text.encode("utf-8", "surrogatepass")) as site:
        _check(site, target)


@fuzz(scale=0.5)
@given(name=files, target=targets, content=st.binary(max_size=200),
       splice=st.tuples(st.integers(min_value=0, max_value=5000), st.binary(min_size=1, max_size=12)))
def test_check_with_random_bytes_in_a_file_returns_config_errors(name: str, target: str, content: bytes,
                                                                splice: tuple[int, bytes]) -> None:
    with demo_copy(name, content) as site:
        _check(site, target)
    original = TEXT[name].encode()
    at = splice[0] % (len(original) + 1)
    with demo_copy(name, original[:at] + splice[1] + original[at:]) as site:
        _check(site, target)
