"""The decision cache (DESIGN §5): the last verified policy snapshot, persisted.

The server publishes one signed policy per device, retained. The edge's jobs
worker hands each one to :meth:`PolicyCache.offer`, which verifies it (signature,
site, device, not older than the one held), writes it to disk atomically and
swaps it in; the edge's loop reads :attr:`PolicyCache.site` when it has
to decide without the server. At start-up :meth:`PolicyCache.load` reads the
file back and verifies it again — an SD card can be altered while the Pi is
off — and sets a bad file aside as ``*.rejected`` rather than trusting it.

The file holds exactly the bytes the server signed (names and keyed card
hashes, never card numbers) and is written readable by its owner only.

A policy older than one this edge ever accepted is refused on every path: an
offer (a replay, including one a stolen device certificate left retained on
the broker), a load at start-up or on ``sync``, and after the cached file was
lost or set aside. For the last, the highest version accepted is kept in a
second small file (``policy.json.version``, the *floor*), written after the
policy; with no policy held, the floor's own version is taken again (the
broker's retained copy of the policy that was lost). The same version with
other content (another nonce) is never swapped for the one held:
the publisher raises the version on every change, so a second body under one
version can only be a mistake or an attack, and the one held stays.

Deltas (doorkeep/policy_delta.py, :meth:`PolicyCache.offer_delta`): a signed delta is applied only to the
version and digest it names, and only if the result has the digest it signs. The file keeps the full signed
policy the chain starts from (``policy.json``, exactly as signed) and the signed deltas applied since, one
envelope per line (``policy.json.deltas``); at start-up both are verified again and the chain re-applied, so
nothing unsigned is trusted, and the floor holds for the chain's newest version. A full policy taken
replaces both. The retained full policy on the broker is the chain's base, older than the version held: it
is a re-delivery (False), not a replay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import stat
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from doorkeep.model import Site
from doorkeep.policy import PolicyError, VerifiedPolicy, gc_paused, verify_policy
from doorkeep.policy_delta import DeltaBaseMismatch, PolicyDigest, VerifiedDelta, apply_delta, verify_delta

log = logging.getLogger("doorkeep.edge.policy")

#: Versions above this are refused: 2**53 - 1, exact in JSON and doubles (the server never signs more).
MAX_POLICY_VERSION = 2**53 - 1


class PolicyCache:
    def __init__(self, path: Path, public_key: Ed25519PublicKey, *, site_id: str, device: str) -> None:
        self.path = Path(path)
        self.public_key = public_key
        self.site_id = site_id
        self.device = device
        self._current: VerifiedPolicy | None = None
        self._base: tuple[int, str] | None = None  # (version, nonce) of the full policy in the file
        self._deltas: list[bytes] = []             # the signed deltas applied on it since, in order
        self._digest: PolicyDigest | None = None   # the held policy's digest, computed when a delta needs it
        _narrow(self.path.parent, 0o700)  # the edge's state directory: outbox, nonces and this cache
        self._floor = self._read_floor()  # the highest version ever accepted here (0: none)
        self._lock = threading.Lock()        # guards _current: held only to swap or read it
        self._offer_lock = threading.Lock()  # one offer at a time; readers never wait for a verify

    # ------------------------------------------------------------ reading

    @property
    def current(self) -> VerifiedPolicy | None:
        """The policy held now (site, version, issued_at and nonce that belong together)."""
        with self._lock:
            return self._current

    @property
    def site(self) -> Site | None:
        current = self.current
        return None if current is None else current.site

    @property
    def version(self) -> int | None:
        current = self.current
        return None if current is None else current.version

    @property
    def issued_at(self) -> float | None:
        current = self.current
        return None if current is None else current.issued_at

    @property
    def rejected_path(self) -> Path:
        return self.path.with_name(self.path.name + ".rejected")

    @property
    def floor_path(self) -> Path:
        """Where the highest version ever accepted is kept, apart from the policy itself."""
        return self.path.with_name(self.path.name + ".version")

    @property
    def deltas_path(self) -> Path:
        """The signed deltas applied on the full policy in :attr:`path`, one envelope per line."""
        return self.path.with_name(self.path.name + ".deltas")

    @property
    def base_version(self) -> int | None:
        """The version of the full policy the held one was built on (the held one's, without deltas)."""
        return None if self._base is None else self._base[0]

    @property
    def floor(self) -> int:
        """No policy below this version is taken, whatever the cached file holds (0: none accepted yet)."""
        return self._floor

    def _read_floor(self) -> int:
        try:
            text = self.floor_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeError) as e:
            log.error("cannot read the policy version floor %s: %s; relying on the cached policy's version",
                      self.floor_path, e)
            return 0
        if not text.isdigit() or int(text) > MAX_POLICY_VERSION:
            log.error("policy version floor %s holds %r, not a version; relying on the cached policy's version",
                      self.floor_path, text[:40])
            return 0
        return int(text)

    # ------------------------------------------------------------ start-up

    def load(self) -> bool:
        """Load and re-verify the persisted policy; False (never an exception) if there is none usable."""
        with self._offer_lock:
            try:
                payload = self.path.read_bytes()
            except FileNotFoundError:
                log.info("no cached policy at %s yet; waiting for the server's", self.path)
                return False
            except OSError as e:
                log.error("cannot read the cached policy %s: %s", self.path, e)
                return False
            try:
                base = self._verify(payload, None)
                _check_range(base)
                verified, digest, deltas = self._replay_deltas(base)
                if self._floor and verified.version < self._floor:
                    raise PolicyError(f"policy version {verified.version} is older than version {self._floor} "
                                      "already accepted here (a replayed snapshot)")
            except PolicyError as e:
                self._set_aside(e)
                return False
            with self._lock:
                if self._current is not None and self._current.version >= verified.version:
                    return False  # a newer one was offered already, or this one is held (keep the one held)
                self._current = verified
            self._base, self._deltas, self._digest = (base.version, base.nonce), deltas, digest
            self._floor = max(self._floor, verified.version)
        log.info("loaded cached policy version %d for %s (%d people, %d credentials)", verified.version,
                 self.device, len(verified.site.people), len(verified.site.credentials))
        return True

    def _replay_deltas(self, base: VerifiedPolicy) -> tuple[VerifiedPolicy, PolicyDigest | None, list[bytes]]:
        """The persisted deltas re-verified and re-applied on ``base``; the chain stops at the first that does
        not apply (a crash between writing a full policy and clearing the deltas leaves deltas of an older base)."""
        try:
            lines = [line for line in self.deltas_path.read_bytes().splitlines() if line.strip()]
        except FileNotFoundError:
            return base, None, []
        except OSError as e:
            log.error("cannot read the policy deltas %s: %s; starting from the full policy", self.deltas_path, e)
            return base, None, []
        held, digest, applied = base, None, []
        for line in lines:
            try:
                delta = verify_delta(line, self.public_key, site_id=self.site_id, device=self.device)
                if delta.base_version != held.version:
                    break
                if digest is None:
                    with gc_paused():
                        digest = PolicyDigest.of(held.site)
                held, digest = self._applied(held, digest, delta)
            except PolicyError as e:
                log.error("persisted policy delta refused (%s); the chain stops at version %d", e, held.version)
                break
            applied.append(line)
        return held, digest, applied

    @staticmethod
    def _applied(held: VerifiedPolicy, digest: PolicyDigest, delta: VerifiedDelta) -> tuple[VerifiedPolicy, PolicyDigest]:
        site, new_digest = apply_delta(held.site, held.version, digest, delta)
        return dataclasses.replace(held, site=site, version=delta.version, issued_at=delta.issued_at,
                                   nonce=delta.nonce), new_digest

    def _set_aside(self, why: PolicyError) -> None:
        try:
            os.replace(self.path, self.rejected_path)
            where = f"moved to {self.rejected_path}"
        except OSError as e:
            where = f"and could not be moved to {self.rejected_path}: {e}"
        log.error("cached policy %s rejected: %s; %s. The edge will deny offline until the server "
                  "delivers a valid policy", self.path, why, where)

    # ------------------------------------------------------------ updates

    def offer(self, payload: bytes) -> bool:
        """Verify, persist and swap in a policy from the server.

        Returns True if it was taken, False if it is the version already held (a
        re-delivery; the file is not rewritten). Raises PolicyError if refused.
        """
        with self._offer_lock:
            held = self.current
            floor = max(self._floor, 0 if held is None else held.version)
            if self._base is not None and held is not None and held.version > self._base[0]:
                floor = self._base[0]  # the chain's base, retained on the broker, is a re-delivery (below)
            verified = self._verify(payload, floor)
            _check_range(verified)
            if held is not None and verified.version < held.version:
                if self._base is not None and (verified.version, verified.nonce) == self._base:
                    return False  # the full policy under the deltas held, re-delivered
                raise PolicyError(f"policy version {verified.version} is older than version {held.version} "
                                  "already held (a replayed snapshot)")
            if held is not None and verified.version == held.version:
                if verified.nonce != held.nonce:
                    log.warning("policy version %d signed again (nonce %s, held %s); keeping the one held. "
                                "If its content changed, the publisher must raise the version on every change",
                                verified.version, verified.nonce, held.nonce)
                return False
            try:
                self._persist(payload)
            except OSError as e:
                # A revocation must take effect now even if the SD card is full or failing; after a
                # restart the retained message brings this version back.
                log.error("could not persist policy version %d to %s: %s; using it from memory only",
                          verified.version, self.path, e)
            with contextlib.suppress(FileNotFoundError, OSError):
                self.deltas_path.unlink()  # after the full is on disk: a crash between leaves a chain that stops
            with self._lock:
                self._current = verified
            self._base, self._deltas, self._digest = (verified.version, verified.nonce), [], None
            self._floor = verified.version
            try:
                self._write_atomically(self.floor_path, str(verified.version).encode("ascii"))
            except OSError as e:
                log.error("could not persist the policy version floor %d to %s: %s", verified.version,
                          self.floor_path, e)
        log.info("policy version %d accepted (%d people, %d credentials)", verified.version,
                 len(verified.site.people), len(verified.site.credentials))
        return True

    def offer_delta(self, payload: bytes) -> bool:
        """Verify and apply a signed delta to the policy held, persist it, swap the result in.

        True if applied; False for a delta at or below the version held (a re-delivery, or older than a full
        policy taken since). Raises :class:`~doorkeep.policy_delta.DeltaBaseMismatch` when the policy held is
        not its base (a missed delta: a full policy is needed), PolicyError for anything else refused.
        """
        with self._offer_lock:
            delta = verify_delta(payload, self.public_key, site_id=self.site_id, device=self.device)
            held = self.current
            if held is not None and delta.version <= held.version:
                return False
            if held is None or self._base is None:
                raise DeltaBaseMismatch(f"delta {delta.version} applies to version {delta.base_version}, "
                                        "and this edge holds no policy")
            digest = self._digest
            if digest is None:  # first delta on this full policy: hash it once (O(size), on the jobs worker)
                with gc_paused():
                    digest = PolicyDigest.of(held.site)
                self._digest = digest
            result, new_digest = self._applied(held, digest, delta)
            deltas = [*self._deltas, bytes(payload)]
            try:
                self._write_atomically(self.deltas_path, b"\n".join(deltas) + b"\n")
            except OSError as e:
                log.error("could not persist policy delta %d to %s: %s; using it from memory only",
                          delta.version, self.deltas_path, e)
            with self._lock:
                self._current = result
            self._deltas, self._digest = deltas, new_digest
            self._floor = delta.version
            try:
                self._write_atomically(self.floor_path, str(delta.version).encode("ascii"))
            except OSError as e:
                log.error("could not persist the policy version floor %d to %s: %s", delta.version,
                          self.floor_path, e)
        log.info("policy delta %d applied on version %d (%d record(s) changed)", delta.version,
                 delta.base_version, delta.changes.records)
        return True

    def _verify(self, payload: bytes, floor: int | None) -> VerifiedPolicy:
        """:func:`verify_policy` with the collector paused: the edge's own choice, not the library's.

        Decoding a large policy builds hundreds of thousands of objects, none in a cycle, and every
        collection their allocations trigger walks them all again (bench/policy.py: the load takes
        about twice as long without the pause). The pause is process-wide for the length of one verify
        (under a second for 250,000 credentials); doorkeep.policy never pauses it itself.
        """
        with gc_paused():
            return verify_policy(payload, self.public_key, site_id=self.site_id, device=self.device,
                                 min_version=floor or None)

    def _persist(self, payload: bytes) -> None:
        self._write_atomically(self.path, payload)

    @staticmethod
    def _write_atomically(path: Path, data: bytes) -> None:
        """Write, fsync, rename, fsync the directory: a power cut leaves the old file or the new one."""
        directory = path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _check_range(verified: VerifiedPolicy) -> None:
    if verified.version > MAX_POLICY_VERSION:
        raise PolicyError(f"policy version {verified.version} is above {MAX_POLICY_VERSION}, the largest a "
                          "server signs")


def _narrow(path: Path, allowed: int) -> None:
    """Remove the mode bits of an existing ``path`` outside ``allowed``, logging what was open before.

    The state directory holds the outbox (events with names), the command nonces and this cache: no
    other local account may list or read it, whatever the umask of whoever created it."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~allowed:
            os.chmod(path, mode & allowed)
            log.warning("%s was mode %03o, open to other accounts; now %03o", path, mode, mode & allowed)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.error("cannot make %s private to this account: %s (fix: chown it to the doorkeep account, "
                  "chmod 700)", path, e)
