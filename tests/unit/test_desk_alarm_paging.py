"""The alarms page pages its open alarms (server/web/alarms.py ``PAGE_SIZE``), most urgent first, keeping the
filter in its links, while the buttons for "all matching" still count and act on every page.

Real parts: a real ``Server`` on the demo site with its SQLite store, alarms raised through the store's API as
supervision raises them, the desk app through FastAPI's TestClient.
"""

from __future__ import annotations

import re
import warnings

import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from server.app import Server
from tests.unit.test_desk_alarm_console import raise_
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    PASSWORDS,
    app,
    client,
    clock,
    form_login,
    hasher,
    server,
)


def test_open_alarms_page_most_urgent_first_and_bulk_by_filter_still_covers_every_page(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.web import alarms as alarm_pages

    monkeypatch.setattr(alarm_pages, "PAGE_SIZE", 2)
    held = [raise_(server, clock, "held_open", n) for n in range(1, 4)]   # medium
    forced = [raise_(server, clock, "forced_open", n) for n in range(4, 6)]  # high
    form_login(client, "dex", PASSWORDS["dex"])

    def shown(query: str) -> tuple[list[str], str]:
        r = client.get("/alarms" + query)
        assert r.status_code == 200, r.text
        return re.findall(r'data-alarm="([^"]+)"', r.text), r.text

    pages = [shown(f"?page={n}") for n in (1, 2, 3)]
    order = [a for ids, _ in pages for a in ids]
    assert order == forced[::-1] + held[::-1]  # high first, newest first within a priority; each alarm once
    first = pages[0][1]
    assert "Open alarms 1–2 of 5" in first and 'href="/alarms?page=2"' in first and "Acknowledge all 5 open" in first
    assert shown("?page=99")[0] == pages[2][0]  # past the end: the last page
    ids, text = shown("?priority=medium&page=2")
    assert ids == [held[0]] and 'href="/alarms?priority=medium&amp;page=1"' in text  # the filter is kept
    assert "Acknowledge all 3 matching" in text
    assert client.get("/alarms?page=0").status_code == 422
