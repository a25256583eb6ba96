""""Why not?" on the desk: one event's page and the explanation of a refusal (issue 16, docs/desk.md).

``GET /api/v1/events/{id}/why`` answers the explanation as JSON; ``GET /events/{id}`` is the event's page
(when, door, person, decision, the snapshot) with a section ``#why`` that says which rule refused the badge
and what would have let the person through. Both are for the roles that see events (admin, desk). The work
is :class:`server.why.WhyService`'s; this module only maps it to HTTP.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from doorkeep import vocabulary
from server.sessions import Principal
from server.web.access import require
from server.web.api import ERRORS, ErrorOut
from server.web.live import API_PREFIX, EVENT_ID, stored_row
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes
from server.why import Why, WhyService

route = Routes()


class ExplanationOut(BaseModel):
    reason: str = Field(description="the reason code explained (docs/reason-codes.md)")
    reason_label: str | None = Field(description="the code as the desk shows it")
    summary: str = Field(description="the refusal in one sentence, with names")
    rule: str = Field(description="the rule that refused, in the order of docs/reason-codes.md")
    would_allow: list[str] = Field(description="what would have let the person through")
    notes: list[str] = Field(description="what the explanation cannot vouch for")


class WhyOut(BaseModel):
    event_id: str
    refused: bool = Field(description="a denied badge; anything else has nothing to explain")
    explanation: ExplanationOut | None
    basis: str = Field(description="which site the explanation was computed on, in words")
    site_revision: int | None = Field(description="the site revision in force at the badge; null: the current site")
    event_url: str = Field(description="the event's page on the desk")


def install(app: FastAPI) -> None:
    app.state.why = WhyService.for_server(app.state.desk.server)
    route.install(app)


def _service(request: Request) -> WhyService:
    service: WhyService = request.app.state.why
    return service


def why_out(why: Why) -> WhyOut:
    ex = why.explanation
    out = ExplanationOut(reason=ex.reason, reason_label=vocabulary.reason_label(ex.reason), summary=ex.summary,
                         rule=ex.rule, would_allow=list(ex.would_allow), notes=list(ex.notes)) if ex else None
    event_id = str(why.event["id"])
    return WhyOut(event_id=event_id, refused=why.refused, explanation=out, basis=why.basis,
                  site_revision=why.revision, event_url=f"/events/{event_id}")


@route(API_PREFIX + "/events/{event_id}/why", "GET", dependencies=[Depends(require(ADMIN, DESK))],
       response_model=WhyOut, responses={**ERRORS, 404: {"model": ErrorOut}}, tags=["desk"],
       summary="Why a badge was refused: the rule in words and what would have let the person through")
def why_api(request: Request, event_id: str = Path(pattern=EVENT_ID)) -> Response | WhyOut:
    why = _service(request).why(event_id)
    if why is None:
        return JSONResponse({"error": f"no event {event_id!r} (removed by retention, or never stored)",
                             "detail": None}, status_code=404)
    return why_out(why)


@route("/events/{event_id}", "GET", include_in_schema=False)
def event_page(request: Request, event_id: str = Path(pattern=EVENT_ID),
               who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    from server.web.pages import render

    desk = request.app.state.desk
    why = _service(request).why(event_id)
    row = stored_row(desk.events, desk.server.site, event_id) if why is not None else None
    if why is None or row is None:
        raise HTTPException(404, f"there is no event {event_id!r}: retention may have removed it")
    kind = "Badge" if row.type == "access" else row.type.replace("_", " ").capitalize()
    return render(request, "event.html", who, row=row, why=why_out(why), kind_label=kind)


__all__ = ["ExplanationOut", "WhyOut", "install", "why_out"]
