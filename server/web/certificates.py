"""The site's certificates and their expiry on the desk (server/certificates.py, docs/operations.md).

A table of endpoints calling the certificate watch and nothing more: every certificate of ``SITE/pki`` (the CA,
the broker, the server, the operator's tools, each device and integration) with its role, expiry, days left
and how to renew it. Admins and auditors read it; an admin may run the expiry check now, so that after a
renewal the ``certificate_expiring`` alarm clears at once instead of at the next daily check.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from doorkeep.pki import EXPIRY_WARN_DAYS
from server.certificates import CertificateStatus, CertificateWatch
from server.web.access import require
from server.web.auth import Principal
from server.web.roles import ADMIN, AUDITOR
from server.web.routes import Routes

API_PREFIX = "/api/v1"

route = Routes()


def install(app: FastAPI) -> None:
    route.install(app)


class CertificateOut(BaseModel):
    name: str = Field(description="the file's name without .crt: ca, broker, server, operator, a device id, "
                                  "an integration's name")
    role: str = Field(description="ca, broker, server, operator, device, integration (unknown: unreadable file)")
    read_only: bool | None = Field(description="integrations only: true when it may publish nothing")
    serial: str | None = Field(description="hex")
    not_after: float | None = Field(description="UTC epoch seconds of its expiry")
    days_left: float | None = Field(description="negative once expired")
    status: str = Field(description="ok, expiring (within warn_days), expired, unreadable")
    error: str | None = Field(description="why the file could not be read")
    fix: str = Field(description="how to renew it")


class CertificatesOut(BaseModel):
    warn_days: float = Field(description="certificates expiring within this many days raise certificate_expiring")
    certificates: list[CertificateOut] = Field(description="the CA first, then by role and name")


def _watch(request: Request) -> CertificateWatch | None:
    return getattr(request.app.state.desk.server, "certificates", None)


def _listing(watch: CertificateWatch | None, found: list[CertificateStatus] | None = None) -> CertificatesOut:
    if watch is None:  # a server built without the watch (some tests): nothing to list
        return CertificatesOut(warn_days=EXPIRY_WARN_DAYS, certificates=[])
    rows = watch.statuses() if found is None else found
    return CertificatesOut(warn_days=watch.warn_days, certificates=[CertificateOut(**s.to_dict()) for s in rows])


@route(API_PREFIX + "/site/certificates", "GET", response_model=CertificatesOut, tags=["site"],
       dependencies=[Depends(require(ADMIN, AUDITOR))], summary="The site's certificates with their expiry")
def list_certificates(request: Request) -> Any:
    return _listing(_watch(request))


@route(API_PREFIX + "/site/certificates/check", "POST", response_model=CertificatesOut, tags=["site"],
       dependencies=[Depends(require(ADMIN))],
       summary="Run the expiry check now: raise certificate_expiring, clear it for renewed certificates")
def check_certificates(request: Request) -> Any:
    watch = _watch(request)
    return _listing(watch, watch.check() if watch is not None else None)


@route("/site/certificates", "GET", include_in_schema=False)
def certificates_page(request: Request, done: str = Query("", max_length=20),
                      who: Principal = Depends(require(ADMIN, AUDITOR))) -> Response:
    from server.web.pages import render

    listing = _listing(_watch(request))
    return render(request, "site_certificates.html", who, listing=listing, done=done, can_check=who.role == ADMIN,
                  tz=request.app.state.desk.server.site.timezone)


@route("/site/certificates/check", "POST", include_in_schema=False)
def certificates_check_form(request: Request, who: Principal = Depends(require(ADMIN))) -> Response:
    check_certificates(request)
    return RedirectResponse("/site/certificates?done=checked", status_code=303)
