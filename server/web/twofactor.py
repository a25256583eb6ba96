"""The enrolment page's QR image of an operator's new TOTP secret (docs/desk.md "Two-factor login").

The second factor's rules (secrets, codes, recovery codes, single use) are the operator service's,
server/operators.py ``TwoFactor``; this module only draws its ``otpauth://`` URI for the browser.
"""

from __future__ import annotations

import base64


def qr_png(uri: str) -> bytes | None:
    """The otpauth URI as a QR code PNG (OpenCV's encoder), or None when OpenCV cannot make one."""
    try:
        import cv2

        matrix = cv2.QRCodeEncoder.create().encode(uri)
        if matrix is None or not matrix.size:
            return None
        scale = 6
        big = cv2.resize(matrix, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        padded = cv2.copyMakeBorder(big, 4 * scale, 4 * scale, 4 * scale, 4 * scale, cv2.BORDER_CONSTANT, value=255)
        ok, png = cv2.imencode(".png", padded)
        return bytes(png) if ok else None
    except Exception:  # a QR image is a convenience: the secret and the URI are on the page anyway
        return None


def qr_data_uri(uri: str) -> str | None:
    png = qr_png(uri)
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else None
