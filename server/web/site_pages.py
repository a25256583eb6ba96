"""The desk's admin pages for the site model: areas, doors, schedules (with a week grid) and access levels (a
matrix of levels x areas), created, edited and deleted without a restart (docs/administration.md).

A table of endpoints calling the site service, :meth:`server.siteadmin.SiteAdmin.change`, and nothing more;
the forms' text becomes structured edits in :mod:`server.web.site_forms`. Every form carries the session's
CSRF token (checked by ``require``) and the revision it was rendered at (``base``), so:

- saved: 303 to the page, which names the new revision;
- a broken rule of ``doorkeep config check`` (422): the form again, the operator's input kept, each problem
  (key, problem, fix) beside it;
- a stale edit of something changed since (409): the form again, saying who changed what, the input kept and
  the base moved to the newest revision, so saving again applies it there;
- "Preview effect on the last 30 days": the same edits judged by :func:`server.site_preview.preview_change`
  against the recorded badges, shown above the kept form; nothing is committed.

Deleting asks first (confirm.html). Roles: admin changes; auditor reads the lists and the matrix; the desk
role gets 403, as on /site.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, Callable, Mapping

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from doorkeep.contract import MAX_FLOORS
from server.siteadmin import Revision, RevisionNotFound, SiteAdmin, SiteAdminError, SiteConflict, SiteInvalid
from server.web import site_forms as forms
from server.web.access import require
from server.web.auth import Principal
from server.web.roles import ADMIN, AUDITOR
from server.web.routes import Routes
from server.web.site_forms import ID_PATTERN, Problem

route = Routes(include_in_schema=False)

#: How far back the "Preview effect" button replays recorded badges, in days.
PREVIEW_DAYS = 30


def install(app: FastAPI) -> None:
    route.install(app)


# ------------------------------------------------------------------ the four kinds of object


@dataclass(frozen=True)
class Kind:
    """One kind of site object: its site.toml table, its pages and how its form becomes edits."""

    table: str  # site.toml's table: areas, doors, schedules, access_levels
    noun: str
    title: str
    path: str
    template: str
    edit_page: bool = True  # access levels are edited in their matrix row, not on a page of their own

    def stored(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> forms.FormValues:
        raise NotImplementedError

    def submitted(self, form: Any, site: Mapping[str, Any]) -> forms.FormValues:
        raise NotImplementedError

    def edits(self, prefix: str, values: forms.FormValues,
              old: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
        raise NotImplementedError


@dataclass(frozen=True)
class FieldKind(Kind):
    """Areas and doors: one form field per key of the object's table."""

    fields: tuple[forms.Field, ...] = ()

    def fields_for(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> tuple[forms.Field, ...]:
        """The fields of one object's form (``table``: its stored table; None: the add form)."""
        return self.fields

    def stored(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> forms.FormValues:
        return forms.table_values(table, self.fields)

    def submitted(self, form: Any, site: Mapping[str, Any]) -> forms.FormValues:
        return forms.submitted_values(form, self.fields)

    def edits(self, prefix: str, values: forms.FormValues,
              old: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
        return forms.table_edits(prefix, self.fields, values, old), []


@dataclass(frozen=True)
class ScheduleKind(Kind):
    def stored(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> forms.FormValues:
        return forms.schedule_values(table)

    def submitted(self, form: Any, site: Mapping[str, Any]) -> forms.FormValues:
        return forms.submitted_schedule(form)

    def edits(self, prefix: str, values: forms.FormValues,
              old: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
        return forms.schedule_edits(prefix, values, old)


@dataclass(frozen=True)
class LevelKind(Kind):
    def stored(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> forms.FormValues:
        return forms.level_values(table, _tables(site, "areas"))

    def submitted(self, form: Any, site: Mapping[str, Any]) -> forms.FormValues:
        return forms.submitted_level(form, _tables(site, "areas"))

    def edits(self, prefix: str, values: forms.FormValues,
              old: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
        return forms.level_edits(prefix, values, old), []


@dataclass(frozen=True)
class DoorsKind(FieldKind):
    """Doors, and lifts among them: a lift has a form of its own (server/web/site_forms.py ``LIFT_FIELDS``), so a
    save never writes from/to for it nor drops its floors; a lift is only added in site.toml, where its floors
    are listed beside the device file that wires them."""

    def fields_for(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> tuple[forms.Field, ...]:
        if forms.is_lift(table):
            assert table is not None
            return forms.lift_fields(forms.lift_floors(table), _area_names(site))
        return self.fields

    def stored(self, table: Mapping[str, Any] | None, site: Mapping[str, Any]) -> forms.FormValues:
        if forms.is_lift(table):
            assert table is not None
            return forms.lift_values(table, _area_names(site))
        return super().stored(table, site)

    def submitted(self, form: Any, site: Mapping[str, Any]) -> forms.FormValues:
        values = super().submitted(form, site)
        # A lift's per-floor fields (its other fields are door fields too); only a lift's edits() reads them.
        floor_keys = [k for k in form.keys() if k.split(".", 1)[0] in forms.PER_FLOOR][:2 * MAX_FLOORS]
        values.update({k: str(form.get(k) or "")[:200] for k in floor_keys})
        return values

    def edits(self, prefix: str, values: forms.FormValues,
              old: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
        if forms.is_lift(old):
            assert old is not None
            return forms.lift_edits(prefix, values, old), []
        kind = str(values.get("kind") or "").strip()
        if kind == "lift":
            return {}, [Problem(f"{prefix}.kind", "a lift cannot be added or made here",
                                'add it to site.toml with kind = "lift" and its floors (no from/to), and give its '
                                "device file a relay for each floor (docs/openings.md \"Lifts\"); the desk then "
                                "edits its settings")]
        return super().edits(prefix, values, old)


def _area_names(site: Mapping[str, Any]) -> dict[str, str]:
    return {aid: str(t.get("name") or aid) for aid, t in _tables(site, "areas").items()}


AREAS = FieldKind("areas", "area", "Areas", "/site/areas", "site_areas.html", fields=forms.AREA_FIELDS)
DOORS = DoorsKind("doors", "door", "Doors", "/site/doors", "site_doors.html", fields=forms.DOOR_FIELDS)
SCHEDULES = ScheduleKind("schedules", "schedule", "Schedules and holidays", "/site/schedules", "site_schedules.html")
LEVELS = LevelKind("access_levels", "access level", "Access levels", "/site/levels", "site_levels.html",
                   edit_page=False)
KINDS: tuple[Kind, ...] = (AREAS, DOORS, SCHEDULES, LEVELS)


# ------------------------------------------------------------------ reading the live revision


@dataclass(frozen=True)
class Live:
    """The live revision a page is rendered at: its number (the forms' ``base``) and its parsed site.toml."""

    number: int
    site: dict[str, Any]


def _service(request: Request) -> SiteAdmin:
    admin = request.app.state.desk.server.siteadmin
    if admin is None:  # a server built without the site service: nothing to administer
        raise SiteAdminError("this server keeps no site revisions")
    return admin  # type: ignore[no-any-return]


def _live(admin: SiteAdmin) -> Live:
    current = admin.current()
    if current is None:
        raise SiteAdminError("the site has no revision yet (fix: start the server once, or `doorkeep site import DIR`)")
    return Live(current.number, tomllib.loads(current.site_toml))


def _tables(site: Mapping[str, Any], table: str) -> dict[str, Any]:
    value = site.get(table)
    return {k: v for k, v in value.items() if isinstance(v, dict)} if isinstance(value, dict) else {}


# ------------------------------------------------------------------ rendering


@dataclass
class FormView:
    """A form shown again: which object (None: the add form), the operator's input, what was wrong or what
    the change would do, and the revision a new submission is made against."""

    oid: str | None
    values: forms.FormValues
    base: int
    problems: list[Problem]
    conflict: dict[str, Any] | None = None
    preview: Any = None


def _render(request: Request, who: Principal, kind: Kind, live: Live, *, status: int = 200, editing: str | None = None,
            view: FormView | None = None, message: str | None = None, error: str | None = None) -> Response:
    from server.web.pages import render

    site = live.site
    areas, schedules = _tables(site, "areas"), _tables(site, "schedules")
    if view is None:
        stored = _tables(site, kind.table).get(editing) if editing else None
        view = FormView(editing, kind.stored(stored, site), live.number, [])
    grids = {sid: forms.week_grid(s.get("windows") or []) for sid, s in schedules.items()}
    if kind is SCHEDULES and view.values.get("windows") is not None:
        grids[""] = forms.week_grid(view.values["windows"])  # the form's own windows, as typed
    levels = {lid: LEVELS.stored(t, site) for lid, t in _tables(site, "access_levels").items()}
    stored_table = _tables(site, kind.table).get(editing) if editing else None
    fields = kind.fields_for(stored_table, site) if isinstance(kind, FieldKind) else ()
    return render(request, kind.template, who, status, kind=kind, kinds=KINDS, current=live.number,
                  areas=areas, doors=_tables(site, "doors"), schedules=schedules,
                  levels=_tables(site, "access_levels"), level_rows=levels, grids=grids, editing=editing,
                  view=view, field_problems=_by_field(kind, view), message=message, error=error,
                  can_change=who.role == ADMIN, tz=str(site.get("site", {}).get("timezone", "")),
                  days=forms.WEEKDAYS, day_names=forms.DAY_NAMES, spare_rows=forms.SPARE_ROWS,
                  preview_days=PREVIEW_DAYS, fields=fields, lift=forms.is_lift(stored_table))


def _by_field(kind: Kind, view: FormView) -> dict[str, list[Problem]]:
    """The problems that belong to one field of the form shown (``doors.lab.unlock_s`` -> ``unlock_s``)."""
    out: dict[str, list[Problem]] = {}
    prefix = f"{kind.table}.{view.oid or view.values.get('_id', '')}."
    for p in view.problems:
        if not p.file and p.key.startswith(prefix):
            parts = p.key[len(prefix):].split("[")[0].split(".")
            # a lift's per-floor settings are fields of their own: public_floors.lobby
            name = ".".join(parts[:2]) if parts[0] in forms.PER_FLOOR and len(parts) > 1 else parts[0]
            out.setdefault(name, []).append(p)
    return out


def _status_message(admin: SiteAdmin, saved: int, unchanged: int) -> str | None:
    if unchanged:
        return f"Nothing to save: revision {unchanged} is still live."
    if not saved:
        return None
    try:
        rev = admin.revision(saved)
    except RevisionNotFound:
        return None
    return f"Saved as revision {rev.number}, live at the doors: {rev.summary} (by {rev.actor})."


def _problems(exc: SiteInvalid, site_dir: FilePath) -> list[Problem]:
    out = []
    for e in exc.errors:
        where = FilePath(e.file)
        file = "" if where.name == "site.toml" else (str(where.relative_to(site_dir)) if where.is_relative_to(site_dir)
                                                    else where.name)
        out.append(Problem(e.key, e.problem, e.fix, file))
    return out


def _conflict(exc: SiteConflict) -> dict[str, Any]:
    return {"text": str(exc), "base": exc.base, "current": exc.current, "clashing": sorted(exc.clashing),
            "since": [{"number": r["number"], "actor": r["actor"], "summary": r["summary"]}
                      for r in sorted(exc.since, key=lambda r: r["number"])]}


# ------------------------------------------------------------------ the flow every form shares


def _base(form: Any) -> int | None:
    try:
        value = int(str(form.get("base", "")))
    except ValueError:
        return None
    return value if 0 <= value <= 2**62 else None


def _submit(request: Request, who: Principal, kind: Kind, editing: str | None, form: Any) -> Response:
    """Save (or preview) one form: the add form (``editing`` None, the new id in the form) or an object's own."""
    admin = _service(request)
    live = _live(admin)
    existing = _tables(live.site, kind.table)
    if editing is not None and editing not in existing:
        return _render(request, who, kind, live, status=404,
                       error=f"There is no {kind.noun} {editing!r} any more: someone deleted it or it was never there.")
    values = kind.submitted(form, live.site)
    if editing is None:
        oid = str(form.get("id") or "").strip()[:100]
        values["_id"] = oid
        problems = forms.new_id_problems(kind.table, oid, existing)
    else:
        oid, problems = editing, []
    base = _base(form)
    if base is None:
        problems.append(Problem("base", "the form does not say which revision it was made against",
                                "reload the page and make the change again"))
    view = FormView(editing, values, base if base is not None else live.number, problems)
    if problems or base is None:
        return _render(request, who, kind, live, status=422, editing=editing, view=view)
    edits, problems = kind.edits(f"{kind.table}.{oid}", values, existing.get(oid) if editing else None)
    if problems:
        view.problems = problems
        return _render(request, who, kind, live, status=422, editing=editing, view=view)
    try:
        if str(form.get("action") or "") == "preview":
            return _preview(request, who, kind, live, editing, view, edits)
        if not edits:
            return RedirectResponse(f"{kind.path}?unchanged={live.number}", status_code=303)
        rev = admin.change(edits, base=base, actor=f"desk:{who.name}")
    except SiteInvalid as exc:
        view.problems = _problems(exc, admin.site_dir)
        return _render(request, who, kind, live, status=422, editing=editing, view=view)
    except SiteConflict as exc:
        view.conflict, view.base = _conflict(exc), exc.current
        return _render(request, who, kind, _live(admin), status=409, editing=editing, view=view)
    except SiteAdminError as exc:
        view.problems = [Problem(f"{kind.table}.{oid}", str(exc), "change the form and save again")]
        return _render(request, who, kind, live, status=422, editing=editing, view=view)
    return _saved(kind, rev, live, oid)


def _preview(request: Request, who: Principal, kind: Kind, live: Live, editing: str | None, view: FormView,
             edits: dict[str, Any]) -> Response:
    """The form again, with what its change would have done to the last PREVIEW_DAYS days of badges above it."""
    try:
        from server.site_preview import preview_change
    except ImportError:
        return _render(request, who, kind, live, status=503, editing=editing, view=view,
                       error="The impact preview is not available on this server: nothing was saved.")
    view.preview = preview_change(request.app.state.desk.server, edits, base=view.base, days=PREVIEW_DAYS)
    return _render(request, who, kind, live, editing=editing, view=view)


def _saved(kind: Kind, rev: Revision, live: Live, oid: str) -> Response:
    if rev.number <= live.number:
        return RedirectResponse(f"{kind.path}?unchanged={rev.number}", status_code=303)
    return RedirectResponse(f"{kind.path}?saved={rev.number}#{kind.noun.replace(' ', '-')}-{oid}", status_code=303)


# ------------------------------------------------------------------ the endpoints, per kind


def _list_page(kind: Kind) -> Callable[..., Response]:
    def page(request: Request, saved: int = Query(0, ge=0, le=2**62), unchanged: int = Query(0, ge=0, le=2**62),
             who: Principal = Depends(require(ADMIN, AUDITOR))) -> Response:
        admin = _service(request)
        return _render(request, who, kind, _live(admin), message=_status_message(admin, saved, unchanged))
    return page


def _edit_page(kind: Kind) -> Callable[..., Response]:
    def page(request: Request, oid: str = Path(pattern=ID_PATTERN), who: Principal = Depends(require(ADMIN))) -> Response:
        live = _live(_service(request))
        if oid not in _tables(live.site, kind.table):
            return _render(request, who, kind, live, status=404, error=f"There is no {kind.noun} {oid!r}.")
        return _render(request, who, kind, live, editing=oid)
    return page


def _create_form(kind: Kind) -> Callable[..., Any]:
    async def create(request: Request, who: Principal = Depends(require(ADMIN))) -> Response:
        form = await request.form()
        return await run_in_threadpool(_submit, request, who, kind, None, form)
    return create


def _save_form(kind: Kind) -> Callable[..., Any]:
    async def save(request: Request, oid: str = Path(pattern=ID_PATTERN),
                   who: Principal = Depends(require(ADMIN))) -> Response:
        form = await request.form()
        return await run_in_threadpool(_submit, request, who, kind, oid, form)
    return save


def _delete_confirm(kind: Kind) -> Callable[..., Response]:
    def confirm(request: Request, oid: str = Path(pattern=ID_PATTERN), who: Principal = Depends(require(ADMIN))) -> Response:
        from server.web.pages import render

        live = _live(_service(request))
        table = _tables(live.site, kind.table).get(oid)
        if table is None:
            return _render(request, who, kind, live, status=404, error=f"There is no {kind.noun} {oid!r}.")
        name = str(table.get("name", oid))
        return render(request, "confirm.html", who, title=f"Delete {kind.noun} {name} ({oid})?",
                      text=f"The {kind.noun} is removed from the site as the revision after {live.number}, live at the "
                           "doors within seconds. If anything still names it (a door, an access level, a device "
                           "file), nothing changes and the page says what. The site history keeps it: a rollback "
                           "brings it back.",
                      action=f"{kind.path}/{oid}/delete", fields={"base": live.number},
                      button=f"Delete {kind.noun} {oid}", back=kind.path, danger=True)
    return confirm


def _delete_form(kind: Kind) -> Callable[..., Response]:
    def delete(request: Request, oid: str = Path(pattern=ID_PATTERN), base: int = Form(..., ge=0, le=2**62),
               who: Principal = Depends(require(ADMIN))) -> Response:
        admin = _service(request)
        live = _live(admin)
        view = FormView(None, kind.stored(None, live.site), live.number, [])
        try:
            rev = admin.change({f"{kind.table}.{oid}": None}, base=base, actor=f"desk:{who.name}")
        except SiteInvalid as exc:
            view.problems = _problems(exc, admin.site_dir)
            return _render(request, who, kind, live, status=422, view=view,
                           error=f"The {kind.noun} {oid} was not deleted: something still needs it (below).")
        except SiteConflict as exc:
            return _render(request, who, kind, _live(admin), status=409,
                           error=f"The {kind.noun} {oid} was not deleted: {exc}")
        return _saved(kind, rev, live, oid)
    return delete


for _kind in KINDS:
    _name = _kind.table
    for _path, _method, _make in (("", "GET", _list_page), ("", "POST", _create_form),
                                  ("/{oid}", "GET", _edit_page if _kind.edit_page else None),
                                  ("/{oid}", "POST", _save_form), ("/{oid}/delete", "GET", _delete_confirm),
                                  ("/{oid}/delete", "POST", _delete_form)):
        if _make is not None:
            _endpoint = _make(_kind)
            _endpoint.__name__ = f"site_{_name}_{_make.__name__.strip('_')}"
            route(_kind.path + _path, _method)(_endpoint)
