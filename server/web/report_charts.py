"""Chart geometry for the report pages (server/web/reports.py): numbers in, shapes out; the templates
(templates/reports_charts.html) draw them as inline SVG.

No JavaScript library and nothing fetched: each chart is SVG the server renders, in a ``viewBox`` so it
scales to a 360 px phone, coloured with the theme's CSS variables through classes (static/reports.css) so the
dark theme needs nothing more. Colour is never the only signal: refusals are hatched bars and crosses where
grants are plain bars and dots; every mark has a ``<title>``, every chart a title and a description, and the
page shows the same numbers in a table beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Sequence

from server.reports import WEEKDAYS, Badge, Bucket, Occupancy

WIDTH = 720  # the viewBox's width: the charts scale from it
LEFT = 44     # room for the y axis's numbers
TOP = 12


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    cls: str
    title: str = ""


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "middle"
    cls: str = ""


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    cls: str = "grid"


@dataclass(frozen=True)
class Mark:
    """A point of the timeline: a dot (granted) or a cross (refused), with its title."""

    x: float
    y: float
    refused: bool
    title: str


@dataclass
class Chart:
    """One SVG: its id (unique on the page), size, accessible title and description, and its shapes."""

    cid: str
    title: str
    desc: str
    width: float = WIDTH
    height: float = 240
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    path: str = ""  # the occupancy step line
    legend: bool = False  # granted / refused keys under the chart


def _ticks(top: int) -> list[int]:
    """Up to five round y-axis values from 0 to at least ``top``."""
    if top <= 0:
        return [0, 1]
    step = 1
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000):
        step = s
        if top / s <= 4:
            break
    else:
        step = max(1, top // 4)
    return list(range(0, top + step, step))[:6] if top > 0 else [0]


def bars(cid: str, title: str, buckets: Sequence[Bucket]) -> Chart:
    """Grants and refusals per bucket, stacked (grants below, refusals hatched above); at most 12 labels."""
    every = max(1, -(-len(buckets) // 12))
    height, bottom = 240, 200
    chart = Chart(cid, title, f"{sum(b.granted for b in buckets)} granted and {sum(b.denied for b in buckets)} "
                              f"refused badges in {len(buckets)} bars", height=height, legend=True)
    ticks = _ticks(max((b.total for b in buckets), default=0))
    scale = (bottom - TOP) / ticks[-1]
    for t in ticks:
        y = bottom - t * scale
        chart.lines.append(Line(LEFT, y, WIDTH, y))
        chart.texts.append(Text(LEFT - 6, y + 4, str(t), "end"))
    slot = (WIDTH - LEFT) / max(1, len(buckets))
    width = max(1.0, slot * 0.7)
    for i, b in enumerate(buckets):
        x = LEFT + i * slot + (slot - width) / 2
        g = b.granted * scale
        d = b.denied * scale
        if b.granted:
            chart.rects.append(Rect(x, bottom - g, width, g, "bar-granted", f"{b.label}: {b.granted} granted"))
        if b.denied:
            chart.rects.append(Rect(x, bottom - g - d, width, d, "bar-denied", f"{b.label}: {b.denied} refused"))
        if i % every == 0:
            chart.texts.append(Text(x + width / 2, bottom + 16, _short(b)))
    chart.lines.append(Line(LEFT, bottom, WIDTH, bottom, "axis"))
    return chart


def _short(b: Bucket) -> str:
    """A bar's axis label: ``30 Nov`` for a day, ``Mon 09h`` for an hour."""
    if len(b.key) == 10:
        return _day_label(b.key)[4:]
    parts = b.label.split(" ")
    return f"{parts[0]} {parts[1][:2]}h" if len(parts) > 1 else b.label


def hbars(cid: str, title: str, items: Sequence[tuple[str, int]], cls: str = "bar-denied") -> Chart:
    """One horizontal bar per ``(label, count)``, the label above its bar (long reason texts stay readable)."""
    row, width = 38, 420  # narrower than the others: it shares the row with its pair, text near 1:1
    chart = Chart(cid, title, ", ".join(f"{label}: {n}" for label, n in items) or "nothing", width=width,
                  height=max(row, row * len(items) + 8))
    top = max((n for _, n in items), default=1) or 1
    span = width - 60
    for i, (label, n) in enumerate(items):
        y = i * row
        chart.texts.append(Text(0, y + 13, label, "start"))
        w = max(2.0, span * n / top)
        chart.rects.append(Rect(0, y + 18, w, 14, cls, f"{label}: {n}"))
        chart.texts.append(Text(w + 6, y + 30, str(n), "start"))
    return chart


def timeline(cid: str, title: str, days: Sequence[str], badges: Sequence[Badge]) -> Chart:
    """A strip per local day (rows), hours 0-24 across; a dot per grant, a cross per refusal."""
    row, label_w = 26, 96
    span = WIDTH - label_w - 8
    refused = sum(1 for b in badges if b.decision == "denied")
    chart = Chart(cid, title, f"{len(badges) - refused} granted and {refused} refused badges over {len(days)} days",
                  height=row * len(days) + 30, legend=True)
    index = {d: i for i, d in enumerate(days)}
    for h in range(0, 25, 3):
        x = label_w + span * h / 24
        chart.lines.append(Line(x, 0, x, row * len(days)))
        chart.texts.append(Text(x, row * len(days) + 18, f"{h:02d}:00"))
    for d, i in index.items():
        chart.texts.append(Text(label_w - 8, i * row + row / 2 + 4, _day_label(d), "end"))
        chart.lines.append(Line(label_w, i * row + row, WIDTH - 8, i * row + row))
    for b in badges:
        i = index.get(b.date)
        if i is None:
            continue
        verdict = "refused: " + b.reason_label if b.decision == "denied" else "granted"
        chart.marks.append(Mark(label_w + span * b.hours / 24, i * row + row / 2, b.decision == "denied",
                                f"{b.date} {b.time} {b.zone}, {b.door_name}: {verdict}"))
    return chart


def _day_label(day: str) -> str:
    try:
        return datetime.fromisoformat(day).strftime("%a %d %b")
    except ValueError:
        return day


def heatmap(cid: str, title: str, grid: Sequence[Sequence[int]]) -> Chart:
    """Day of week (rows) by hour of day (columns); darker is busier. Numbers are in the table beside it."""
    label_w, cell_w, cell_h = 44, (WIDTH - 44) / 24, 24
    top = max((max(r) for r in grid), default=0)
    chart = Chart(cid, title, f"{sum(map(sum, grid))} badges; the busiest hour has {top}", height=cell_h * 7 + 24)
    for d, counts in enumerate(grid):
        chart.texts.append(Text(label_w - 6, d * cell_h + cell_h / 2 + 4, WEEKDAYS[d][:3], "end"))
        for h, n in enumerate(counts):
            level = 0 if not n or not top else 1 + min(4, int(5 * n / (top + 1)))
            chart.rects.append(Rect(label_w + h * cell_w, d * cell_h, cell_w - 1, cell_h - 1, f"heat heat-{level}",
                                    f"{WEEKDAYS[d]} {h:02d}:00-{h:02d}:59: {n} badges"))
    for h in range(0, 24, 3):
        chart.texts.append(Text(label_w + h * cell_w + cell_w / 2, cell_h * 7 + 16, f"{h:02d}"))
    return chart


def steps(cid: str, title: str, occ: Occupancy) -> Chart:
    """The area's occupancy through the day as a step line (x: local time, y: people)."""
    height, bottom = 240, 200
    chart = Chart(cid, title, f"{occ.at_start} at the start of the day, {occ.peak} at most, {occ.at_end} at its "
                              f"end; {len(occ.steps)} changes", height=height)
    ticks = _ticks(max(occ.peak, occ.limit or 0, 1))
    scale = (bottom - TOP) / ticks[-1]
    for t in ticks:
        y = bottom - t * scale
        chart.lines.append(Line(LEFT, y, WIDTH, y))
        chart.texts.append(Text(LEFT - 6, y + 4, str(t), "end"))
    length = (occ.end - occ.start).total_seconds()
    span = WIDTH - LEFT

    def x_of(t: datetime) -> float:
        return LEFT + span * (t - occ.start).total_seconds() / length

    hours = int(length // 3600)
    for h in range(0, hours + 1, 3):
        x = LEFT + span * h * 3600 / length
        chart.texts.append(Text(x, bottom + 16, f"+{h}h" if hours != 24 else f"{h:02d}:00"))
    y = bottom - occ.at_start * scale
    parts = [f"M{LEFT:.1f},{y:.1f}"]
    x = float(LEFT)
    for s in occ.steps:
        x = x_of(s.local)
        parts.append(f"H{x:.1f}")
        y = bottom - s.count * scale
        parts.append(f"V{y:.1f}")
    parts.append(f"H{max(x, x_of(occ.now)) if occ.now else WIDTH:.1f}")  # today: up to now, not the future
    chart.path = " ".join(parts)
    if occ.limit:
        ly = bottom - occ.limit * scale
        chart.lines.append(Line(LEFT, ly, WIDTH, ly, "limit"))
        chart.texts.append(Text(WIDTH - 4, ly - 4, f"limit {occ.limit}", "end"))
    chart.lines.append(Line(LEFT, bottom, WIDTH, bottom, "axis"))
    return chart
