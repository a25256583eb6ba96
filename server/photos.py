"""Cardholder photos: an admin uploads one per person, the desk shows it beside the door camera's snapshot.

An upload is hostile input until OpenCV has decoded it: it must be a JPEG or PNG of at most
:data:`MAX_UPLOAD_BYTES`, whole (a truncated file is refused, not shown half grey), and of sane dimensions,
read from its header *before* decoding so a small file claiming 50,000 x 50,000 pixels never allocates
gigabytes. What is kept is not the upload but a fresh JPEG of at most :data:`MAX_SIDE` pixels on the long
side, re-encoded by OpenCV: no EXIF, GPS or camera metadata survives (the orientation a phone wrote is
applied first, so the face is upright). It is stored encrypted at rest like snapshots
(server/store_photos.py); erasure and retention delete it with its key, the subject export includes it
(server/subjects.py, server/retention.py). Every upload, replacement and removal is audited with the
operator as actor and the person as a pseudonym; views are not (as snapshot views are not).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from doorkeep.clock import Clock
from server.audit import Auditor, record_audit, subject_ref
from server.errors import ServerError
from server.store import Store

#: The largest upload accepted (the desk's body cap for the photo routes is this plus the form's overhead).
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
#: The stored photo's long side at most, in pixels: enough to recognise a face beside a snapshot.
MAX_SIDE = 512
#: Refused before decoding: more pixels, or a longer side, than any camera or phone makes.
MAX_PIXELS = 50_000_000
MAX_DIMENSION = 12_000
#: Refused after decoding: too small to show a face.
MIN_SIDE = 32
JPEG_QUALITY = 85

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# JPEG markers that carry the frame's size (SOF0..SOF15 but DHT, JPG and DAC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class PhotoError(ServerError, ValueError):
    """An upload that is not a photo the desk keeps; ``status`` is the HTTP answer (413, 415 or 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class NoSuchPerson(ServerError, LookupError):
    """No person with that id in the store (a photo belongs to a person of the site)."""


@dataclass(frozen=True)
class Photo:
    """A photo as it is kept: a JPEG without metadata, and its size."""

    jpeg: bytes
    width: int
    height: int


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise PhotoError("the PNG has no image header (IHDR): the file is damaged or not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int, int]:
    """The frame size from the SOF marker and where the image data starts (the first SOS), walking the
    segments without decoding: an Exif thumbnail inside APP1 is skipped whole, never mistaken for the image."""
    i, size = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise PhotoError("the JPEG's structure is damaged (a segment does not start with a marker)")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker == 0xD9:
            break  # end of image before any image data
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if length < 2:
            raise PhotoError("the JPEG's structure is damaged (a segment length is impossible)")
        if marker in _SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            size = (width, height)
        if marker == 0xDA:
            if size is None:
                break
            return size[0], size[1], i + 2 + length
        i += 2 + length
    raise PhotoError("the JPEG has no frame header and image data: the file is truncated or damaged")


def _declared_size(data: bytes) -> tuple[str, int, int]:
    """The format and the size the file's header declares; refuses what is not a whole JPEG or PNG."""
    if data.startswith(JPEG_MAGIC):
        width, height, scan = _jpeg_size(data)
        kind = "JPEG"
        # Entropy-coded data never holds FF D9 (an FF there is stuffed), so a whole image has its end marker
        # after the scan; some phones append their own data after it, which is fine. libjpeg would decode a
        # cut-off file into a half-grey picture without an error: refuse it here instead.
        if data.find(b"\xff\xd9", scan) < 0:
            raise PhotoError("the JPEG is truncated (its image data has no end-of-image marker): upload the "
                             "whole file again")
    elif data.startswith(PNG_MAGIC):
        kind, (width, height) = "PNG", _png_size(data)
        if not data.endswith(_PNG_END):
            raise PhotoError("the PNG is truncated (it does not end with its IEND chunk): upload the whole file again")
    else:
        raise PhotoError("not a JPEG or PNG image (only those two formats are accepted)", 415)
    if width < 1 or height < 1:
        raise PhotoError(f"the {kind} declares an empty image ({width} x {height} pixels)")
    if width > MAX_DIMENSION or height > MAX_DIMENSION or width * height > MAX_PIXELS:
        raise PhotoError(f"the {kind} is {width} x {height} pixels: at most {MAX_DIMENSION} on a side and "
                         f"{MAX_PIXELS // 1_000_000} megapixels are accepted (scale it down first)")
    return kind, width, height


def prepare(data: bytes) -> Photo:
    """The photo to keep from an upload: checked, decoded by OpenCV, scaled to :data:`MAX_SIDE` and re-encoded
    as a JPEG without metadata. Raises :class:`PhotoError` (with its HTTP status) for anything else."""
    import cv2  # the desk's only image library; imported here so the store and the CLI start without it
    import numpy as np

    if not data:
        raise PhotoError("the file is empty: choose a JPEG or PNG photo")
    if len(data) > MAX_UPLOAD_BYTES:
        raise PhotoError(f"the file is {len(data) / 1048576:.1f} MiB: at most {MAX_UPLOAD_BYTES // 1048576} MiB "
                         "is accepted", 413)
    kind, width, height = _declared_size(data)
    # A large JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (a fraction of the memory and
    # time), as long as the result is still at least MAX_SIDE on its long side.
    flag = cv2.IMREAD_COLOR
    if kind == "JPEG":
        for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if max(width, height) // factor >= MAX_SIDE:
                flag = reduced
                break
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as exc:
        raise PhotoError(f"OpenCV cannot decode this {kind}: {str(exc).strip()[:120]}") from None
    if image is None or image.ndim != 3 or image.size == 0:
        raise PhotoError(f"OpenCV cannot decode this {kind}: the file is damaged")
    h, w = image.shape[:2]
    if min(w, h) < MIN_SIDE:
        raise PhotoError(f"the image is {w} x {h} pixels: too small to show a face (at least {MIN_SIDE} on "
                         "each side)")
    scale = MAX_SIDE / max(w, h)
    if scale < 1:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV encodes any 8-bit BGR image
        raise PhotoError("OpenCV could not re-encode the photo")
    return Photo(encoded.tobytes(), w, h)


class PhotoService:
    """Upload, replace, show and remove cardholder photos; the desk's one way to them (server/web/people.py)."""

    def __init__(self, store: Store, key: bytes, clock: Clock, *, site_id: str,
                 audit: Auditor | None = None) -> None:
        """``key``: the site's credential key, for the pseudonym the audit log names the person by."""
        self.store = store
        self.key = key
        self.clock = clock
        self.site_id = site_id
        self.audit = audit

    def _require_person(self, person: str) -> None:
        if self.store.person_row(person) is None:
            raise NoSuchPerson(f"no person {person!r} on this site (photos belong to people of the site)")

    def upload(self, person: str, data: bytes, *, actor: str) -> dict[str, Any]:
        """Check, re-encode and keep ``data`` as the person's photo (replacing theirs); audited."""
        self._require_person(person)
        photo = prepare(data)
        photo_id, replaced = self.store.put_person_photo(person, photo.jpeg, site=self.site_id, width=photo.width,
                                                         height=photo.height, at=self.clock.wall())
        record_audit(self.audit, actor, "person.photo.replace" if replaced else "person.photo.upload",
                     subject_ref(self.key, person),
                     {"photo": photo_id[:12], "width": photo.width, "height": photo.height, "bytes": len(photo.jpeg),
                      "uploaded_bytes": len(data)})
        return {"id": photo_id, "replaced": replaced, "width": photo.width, "height": photo.height,
                "bytes": len(photo.jpeg)}

    def keep_visitor_photo(self, visit: str, photo: Photo) -> str:
        """Keep a photo the kiosk took of a visitor (already checked by :func:`prepare`) under the visit's id, as
        a cardholder photo is kept; the caller audits it with the visit's reference. Its id."""
        photo_id, _ = self.store.put_person_photo(visit, photo.jpeg, site=self.site_id, width=photo.width,
                                                  height=photo.height, at=self.clock.wall())
        return photo_id

    def delete(self, person: str, *, actor: str) -> bool:
        """Remove the person's photo (and its key) for good; audited; False if they had none."""
        self._require_person(person)
        gone = self.store.delete_person_photo(person)
        if gone:
            record_audit(self.audit, actor, "person.photo.delete", subject_ref(self.key, person), {})
        return gone

    def jpeg(self, person: str) -> bytes | None:
        """The person's photo, decrypted in memory; None if they have none."""
        return self.store.person_photo(person)

    def info(self, person: str) -> dict[str, Any] | None:
        return self.store.person_photo_info(person)

    def photo_id(self, person: str | None) -> str | None:
        return self.store.person_photo_id(person)
