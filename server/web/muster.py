"""The desk's muster list: who is in which area now, visitors with their hosts; printable for a roll call.

Presence is what the doors saw (``Directory.muster()``: the last area each person badged into, kept by
the server and by edges deciding on their own), so someone who tailgated out still shows where they
badged last; a roll call is what settles it. The page prints on its own (print CSS hides the navigation
and buttons), the same list ``doorkeep muster`` prints on a terminal. Roles: admin and desk.
"""

from __future__ import annotations


from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field

from server.sessions import Principal
from server.web.access import require
from server.web.alarms import install_filters
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
OUTSIDE = "outside"


route = Routes()


def install(app: FastAPI) -> None:
    install_filters(app.state.desk.templates)
    route.install(app)


class MusterPersonOut(BaseModel):
    person: str
    name: str
    kind: str = Field(description="employee, contractor or visitor")
    host: str | None = Field(description="a visitor's host (name)")
    since: float = Field(description="when they entered the area (epoch seconds)")


class MusterAreaOut(BaseModel):
    id: str
    name: str
    people: list[MusterPersonOut]


class MusterOut(BaseModel):
    at: float = Field(description="when the list was taken")
    total: int
    visitors: int
    areas: list[MusterAreaOut] = Field(description="areas with someone in them, by name")


def muster(request: Request) -> MusterOut:
    server = request.app.state.desk.server
    # "outside" is where an exit leads: not on site (as ``doorkeep muster`` counts it).
    rows = [r for r in server.directory.muster() if r["area"] != OUTSIDE]
    areas: dict[str, MusterAreaOut] = {}
    for r in rows:
        area = areas.setdefault(r["area"], MusterAreaOut(id=r["area"], name=r["area_name"], people=[]))
        area.people.append(MusterPersonOut(person=r["person"], name=r["name"], kind=r["kind"], host=r["host"],
                                           since=r["since"]))
    for a in areas.values():
        a.people.sort(key=lambda p: p.name.lower())
    return MusterOut(at=server.directory.clock.wall(), total=len(rows),
                     visitors=sum(1 for r in rows if r["kind"] == "visitor"),
                     areas=sorted(areas.values(), key=lambda a: a.name.lower()))


@route(API_PREFIX + "/muster", "GET", response_model=MusterOut, tags=["muster"],
       dependencies=[Depends(require(ADMIN, DESK))], summary="Who is in which area now, visitors with their hosts")
def api_muster(request: Request) -> MusterOut:
    return muster(request)


@route("/muster", "GET", include_in_schema=False)
def muster_page(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    from server.web.pages import render

    site = request.app.state.desk.server.site
    return render(request, "muster.html", who, muster=muster(request), site=site, tz=site.timezone)
