"""SFTP transport: a partner's ``inbound/``, ``outbound/``, ``processed/`` and ``failed/`` on
its SFTP server (``transport = "sftp"``; asyncssh, the optional extra ``coexist[sftp]``).

The same guarantees as the file drop (``workers/edi/transport.py``), with SFTP's own
operations:

* A file is taken only after its final rename: names starting with ``.`` or ending in
  ``.tmp``, ``.part``, ``.processing`` are never read, nor anything that is not a regular
  file; with ``settle_seconds`` a file must also be that old (its remote mtime).
* It is claimed by a rename to ``<name>.<token>.processing``: SFTP's standard rename
  (version 3, not ``posix-rename``) fails when the source is gone (another worker won) and
  never replaces an existing name.  The claim's mtime is set to the claim time; a claim
  older than the claim timeout is taken over by another rename.
* Nothing is deleted or overwritten: a claimed file is renamed into ``processed/`` or
  ``failed/`` (``name.1``, ``name.2``... when taken), again by the standard rename that
  refuses an existing name; outbound files are written under a temporary dot-name,
  fsynced (``fsync@openssh.com`` when the server offers it), then renamed.  A temporary
  (dot-)file a dropped connection left behind is removed at a later write of the same name
  once it is older than ``LEFTOVER_AGE_S``.
* Interchanges are published as from the file drop (``stage_many`` / ``publish_many``,
  under the flush lock): bytes written and fsynced under the stage name
  ``.NAME.stage.tmp``, the row committed ``staged``, the stage renamed to the final name
  (the standard rename, which never replaces one), the row ``written``.  A ``staged`` row
  whose stage file is gone was renamed before (a worker killed after the rename, or the
  rename's answer lost with the connection): it is never written again, even when the
  partner has taken the file away meanwhile.

SFTP has no directory fsync: once the server answered a rename, its durability is the
server's (``sync_dirs`` is a no-op here).  A dropped connection is a ``TechnicalError``
(the pass is retried; the claim stays, the numbers stay ``allocated``); bad credentials,
an unknown host key or a missing remote folder are a ``SetupError`` naming the partner and
the server, one line, no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from bus.errors import TechnicalError
from workers.edi.transport import (
    CLAIM_SUFFIX,
    FAULT_KILL_AFTER_RENAME,
    STAGE_SUFFIX,
    TEMP_SUFFIXES,
    Claimed,
    OutboundExists,
    _fault_before_final_name,
    write_copy,
)
from workers.errors import SetupError

if TYPE_CHECKING:
    from coexistence.edi.profiles import PartnerProfile, SftpSettings

T = TypeVar("T")


#: A temporary outbound file older than this is a dropped connection's, removed at the next
#: write of its name (a younger one may be another worker's write in progress).
LEFTOVER_AGE_S = 600.0


class SftpUnavailable(TechnicalError):
    """The partner's SFTP server could not be reached or the connection dropped: retry."""


def _asyncssh():
    try:
        import asyncssh
    except ImportError as exc:  # the optional extra is not installed
        raise SetupError("EDI SFTP transport", None, None,
                         "asyncssh is not installed",
                         "install the extra: pip install 'coexist[sftp]'") from exc
    return asyncssh


# ------------------------------------------------------------------ one event loop, sessions

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop in a daemon thread runs every SFTP session of this process."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="edi-sftp", daemon=True).start()
            _LOOP = loop
        return _LOOP


class _Session:
    def __init__(self, conn: Any, sftp: Any) -> None:
        self.conn, self.sftp = conn, sftp
        self.can_fsync = sftp.supports_fsync() if hasattr(sftp, "supports_fsync") else True


_SESSIONS: dict[tuple, _Session] = {}
_SESSIONS_LOCK = threading.Lock()


def close_all() -> None:
    """Close every cached SFTP session (tests; a process that stops)."""
    with _SESSIONS_LOCK:
        sessions = list(_SESSIONS.values())
        _SESSIONS.clear()
    for s in sessions:
        s.conn.close()


class SftpFolder:
    """A partner's four folders on its SFTP server, with ``DropFolder``'s interface."""

    def __init__(self, profile: PartnerProfile) -> None:
        assert profile.sftp is not None
        self.partner = profile.id
        self.cfg: SftpSettings = profile.sftp
        self.settle_seconds = profile.settle_seconds
        cfg = self.cfg
        self.inbound, self.outbound, self.processed, self.failed = (
            PurePosixPath(p) for p in (cfg.inbound, cfg.outbound, cfg.processed, cfg.failed))
        self.target = f"sftp://{cfg.user}@{cfg.host}:{cfg.port}"
        self._key = (profile.id, cfg.host, cfg.port, cfg.user, cfg.key_path, cfg.password_env,
                     cfg.known_hosts)

    # -------------------------------------------------------------- plumbing

    def _setup_error(self, problem: str, hint: str | None = None) -> SetupError:
        return SetupError(f"EDI partner {self.partner} SFTP", None, self.target, problem, hint)

    async def _connect(self) -> _Session:
        asyncssh = _asyncssh()
        cfg = self.cfg
        options: dict[str, Any] = {"username": cfg.user, "port": cfg.port,
                                   "connect_timeout": cfg.timeout_s,
                                   "known_hosts": cfg.known_hosts}
        if cfg.known_hosts is None:
            options.pop("known_hosts")  # asyncssh's default: ~/.ssh/known_hosts
        if cfg.key_path:
            options["client_keys"] = [cfg.key_path]
        else:
            options["client_keys"] = None
        if cfg.password_env:
            password = os.environ.get(cfg.password_env)
            if not password:
                raise self._setup_error(f"the password variable {cfg.password_env} is not set")
            options["password"] = password
        options["agent_path"] = None
        try:
            conn = await asyncssh.connect(cfg.host, **options)
        except asyncssh.PermissionDenied:
            raise self._setup_error(
                f"login refused for user {cfg.user!r} (bad credentials)",
                "check sftp.user and the key (sftp.key_path) or password "
                f"({cfg.password_env or 'sftp.password_env'})") from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise self._setup_error(f"host key not verified: {exc}",
                                    "add the server's key to sftp.known_hosts") from None
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise SftpUnavailable(f"EDI partner {self.partner}: {self.target}: cannot "
                                  f"connect: {type(exc).__name__}: {exc}") from None
        try:
            sftp = await conn.start_sftp_client()
        except (OSError, asyncssh.Error) as exc:
            conn.close()
            raise SftpUnavailable(f"EDI partner {self.partner}: {self.target}: no SFTP "
                                  f"subsystem: {exc}") from None
        return _Session(conn, sftp)

    def _call(self, op: Callable[[_Session], Awaitable[T]]) -> T:
        """Run ``op`` on this partner's session (connecting once), from any thread."""
        asyncssh = _asyncssh()
        loop = _loop()

        async def run() -> T:
            with _SESSIONS_LOCK:
                session = _SESSIONS.get(self._key)
            if session is None:
                session = await self._connect()
                with _SESSIONS_LOCK:
                    _SESSIONS[self._key] = session
            return await op(session)

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(self.cfg.timeout_s * 4)
        except (SetupError, SftpUnavailable, OutboundExists):
            raise
        except asyncssh.SFTPPermissionDenied as exc:
            raise self._setup_error(f"permission denied: {exc}") from None
        except (TimeoutError, FutureTimeout, OSError, asyncssh.Error, EOFError) as exc:
            future.cancel()
            self._drop()
            raise SftpUnavailable(f"EDI partner {self.partner}: {self.target}: "
                                  f"{type(exc).__name__}: {exc}") from None

    def _drop(self) -> None:
        with _SESSIONS_LOCK:
            session = _SESSIONS.pop(self._key, None)
        if session is not None:
            session.conn.close()

    # -------------------------------------------------------------- folders

    def ensure(self) -> SftpFolder:
        async def op(s: _Session) -> None:
            asyncssh = _asyncssh()
            for folder in (self.inbound, self.outbound, self.processed, self.failed):
                try:
                    await s.sftp.makedirs(str(folder), exist_ok=True)
                except asyncssh.SFTPError as exc:
                    raise self._setup_error(f"remote folder {folder}: {exc}") from None

        self._call(op)
        return self

    def sync_outbound(self) -> None:
        """No directory fsync in SFTP: the server answered each rename."""

    def sync_dirs(self) -> None:
        """No directory fsync in SFTP: the server answered each rename."""

    async def _entries(self, s: _Session, folder: PurePosixPath) -> list[Any]:
        asyncssh = _asyncssh()
        try:
            return list(await s.sftp.readdir(str(folder)))
        except asyncssh.SFTPNoSuchFile:
            return []

    # -------------------------------------------------------------- inbound

    def ready(self) -> list[str]:
        """Names in ``inbound/`` that are complete, oldest name first."""
        asyncssh = _asyncssh()

        async def op(s: _Session) -> list[str]:
            now = time.time()
            out = []
            for e in await self._entries(s, self.inbound):
                name = e.filename
                if name.startswith(".") or name.endswith(TEMP_SUFFIXES):
                    continue
                if e.attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
                    continue
                if self.settle_seconds and now - (e.attrs.mtime or 0) < self.settle_seconds:
                    continue
                out.append(name)
            return sorted(out)

        return self._call(op)

    def waiting(self) -> list[tuple[str, float]]:
        """(name, mtime) of every complete file in ``inbound/``."""
        asyncssh = _asyncssh()

        async def op(s: _Session) -> list[tuple[str, float]]:
            return sorted((e.filename, float(e.attrs.mtime or 0))
                          for e in await self._entries(s, self.inbound)
                          if not e.filename.startswith(".")
                          and not e.filename.endswith(TEMP_SUFFIXES)
                          and e.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR)

        return self._call(op)

    def count(self, which: str, keep: Callable[[str], bool]) -> int:
        folder = {"inbound": self.inbound, "failed": self.failed}[which]

        async def op(s: _Session) -> int:
            return sum(1 for e in await self._entries(s, folder) if keep(e.filename))

        return self._call(op)

    async def _rename_claim(self, s: _Session, src: str, dst: PurePosixPath) -> bool:
        asyncssh = _asyncssh()
        try:
            await s.sftp.rename(src, str(dst))
        except asyncssh.SFTPNoSuchFile:
            return False  # another worker took it first
        now = time.time()
        await s.sftp.utime(str(dst), (now, now))
        return True

    def _claimed(self, name: str, path: PurePosixPath) -> Claimed:
        return Claimed(name, path, reader=lambda: self.read(path))  # type: ignore[arg-type]

    def claim(self, name: str) -> Claimed | None:
        """Take ``name`` by renaming it; ``None`` when another worker took it first."""
        dst = self.inbound / f"{name}.{uuid.uuid4().hex[:12]}{CLAIM_SUFFIX}"

        async def op(s: _Session) -> bool:
            return await self._rename_claim(s, str(self.inbound / name), dst)

        return self._claimed(name, dst) if self._call(op) else None

    def abandoned_claims(self, older_than_s: float) -> list[Claimed]:
        """Claims a crashed worker (or a dropped connection) left behind."""

        async def op(s: _Session) -> list[tuple[str, PurePosixPath]]:
            now = time.time()
            out = []
            for e in sorted(await self._entries(s, self.inbound), key=lambda e: e.filename):
                if not e.filename.endswith(CLAIM_SUFFIX):
                    continue
                if now - (e.attrs.mtime or 0) < older_than_s:
                    continue
                original, token = e.filename[: -len(CLAIM_SUFFIX)].rsplit(".", 1)
                first = token.split("-", 1)[0]
                dst = self.inbound / f"{original}.{first}-{uuid.uuid4().hex[:12]}{CLAIM_SUFFIX}"
                if await self._rename_claim(s, str(self.inbound / e.filename), dst):
                    out.append((original, dst))
            return out

        return [self._claimed(name, path) for name, path in self._call(op)]

    def read(self, path: PurePosixPath) -> bytes:
        async def op(s: _Session) -> bytes:
            async with s.sftp.open(str(path), "rb") as fh:
                return await fh.read()

        return self._call(op)

    def finish(self, claimed: Claimed, *, ok: bool, sync_dir: bool = True) -> PurePosixPath:
        """Rename a claimed file into ``processed/`` (ok) or ``failed/``, never over a name."""
        target_dir = self.processed if ok else self.failed
        asyncssh = _asyncssh()

        async def op(s: _Session) -> PurePosixPath:
            n = 0
            while True:
                dst = target_dir / (claimed.name if n == 0 else f"{claimed.name}.{n}")
                try:
                    await s.sftp.rename(str(claimed.path), str(dst))
                    return dst
                except asyncssh.SFTPNoSuchFile:
                    if not await s.sftp.exists(str(claimed.path)):
                        # A resumed move: the rename went through, its answer was lost.
                        return dst
                    raise
                except (asyncssh.SFTPFileAlreadyExists, asyncssh.SFTPFailure):
                    # Taken (OpenSSH answers a plain failure for an existing name).
                    if not await s.sftp.exists(str(dst)):
                        raise
                    n += 1

        return self._call(op)

    # -------------------------------------------------------------- outbound

    async def _write_one(self, s: _Session, name: str, content: bytes,
                         leftovers: Sequence[str]) -> tuple[PurePosixPath, bool]:
        asyncssh = _asyncssh()
        final = self.outbound / name
        for left in leftovers:  # a temporary file a dropped connection left behind
            if (left.startswith(f".{name}.") and left.endswith(".tmp")
                    and not left.endswith(STAGE_SUFFIX)):  # a stage is the flusher's
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await s.sftp.remove(str(self.outbound / left))
        if await s.sftp.exists(str(final)):
            if await self._same(s, final, content):
                return final, False
            raise OutboundExists(f"{self.target}{final} already exists with other content; "
                                 "not overwritten")
        tmp = self.outbound / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        renamed = False
        try:
            await self._write_synced(s, tmp, content, "xb")
            _fault_before_final_name(name)
            try:
                await s.sftp.rename(str(tmp), str(final))
                renamed = True
            except (asyncssh.SFTPFileAlreadyExists, asyncssh.SFTPFailure):
                if await s.sftp.exists(str(final)) and await self._same(s, final, content):
                    return final, False
                raise OutboundExists(f"{self.target}{final} appeared with other content; "
                                     "not overwritten") from None
            return final, True
        finally:
            try:
                if not renamed and await s.sftp.exists(str(tmp)):
                    await s.sftp.remove(str(tmp))
            except (OSError, asyncssh.Error):
                pass  # the connection dropped: the next write of this name removes it

    async def _write_synced(self, s: _Session, path: PurePosixPath, content: bytes,
                            mode: str) -> None:
        """Write ``content`` to ``path`` (``xb``: a new file, ``wb``: replacing one) and
        fsync it when the server offers ``fsync@openssh.com``."""
        asyncssh = _asyncssh()
        async with s.sftp.open(str(path), mode) as fh:
            await fh.write(content)
            if s.can_fsync:
                try:
                    await fh.fsync()
                except asyncssh.SFTPOpUnsupported:
                    s.can_fsync = False

    async def _same(self, s: _Session, path: PurePosixPath, content: bytes) -> bool:
        async with s.sftp.open(str(path), "rb") as fh:
            return await fh.read() == content

    async def _leftovers(self, s: _Session) -> list[str]:
        """Our temporary files older than ``LEFTOVER_AGE_S`` (a dropped connection's): a
        younger one may be another worker's write in progress."""
        now = time.time()
        return [e.filename for e in await self._entries(s, self.outbound)
                if e.filename.startswith(".") and e.filename.endswith(".tmp")
                and e.attrs.mtime is not None and now - e.attrs.mtime > LEFTOVER_AGE_S]

    def write_outbound(self, name: str, content: bytes, *, sync_dir: bool = True
                       ) -> tuple[PurePosixPath, bool]:
        """Write ``content`` as ``outbound/name`` (temporary name, fsync, rename); an
        existing file with the same bytes is left alone, with others ``OutboundExists``."""

        async def op(s: _Session) -> tuple[PurePosixPath, bool]:
            return await self._write_one(s, name, content, await self._leftovers(s))

        return self._call(op)

    def stage_path(self, name: str) -> PurePosixPath:
        return self.outbound / f".{name}{STAGE_SUFFIX}"

    def stage_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool | OutboundExists]:
        """``DropFolder.stage_many`` over SFTP: each item's bytes written (replacing a crashed
        flusher's stage: the caller holds the flush lock) and fsynced under its stage name;
        per item True, False (its final name holds these bytes already) or the
        ``OutboundExists`` it met."""

        async def op(s: _Session) -> list[bool | OutboundExists]:
            out: list[bool | OutboundExists] = []
            for name, content in items:
                final = self.outbound / name
                if await s.sftp.exists(str(final)):
                    out.append(False if await self._same(s, final, content) else OutboundExists(
                        f"{self.target}{final} already exists with other content; "
                        "not overwritten"))
                    continue
                await self._write_synced(s, self.stage_path(name), content, "wb")
                out.append(True)
            return out

        return self._call(op) if items else []

    def publish_many(self, items: Sequence[tuple[str, bytes]]
                     ) -> list[PurePosixPath | OutboundExists]:
        """``DropFolder.publish_many`` over SFTP: each staged item renamed to its final name,
        in order.  An item whose stage file is gone was renamed before: nothing is written
        again, whether or not the partner has taken the file."""
        asyncssh = _asyncssh()

        async def op(s: _Session) -> list[PurePosixPath | OutboundExists]:
            out: list[PurePosixPath | OutboundExists] = []
            for name, content in items:
                stage, final = self.stage_path(name), self.outbound / name
                if not await s.sftp.exists(str(stage)):
                    out.append(final)  # published already
                    continue
                _fault_before_final_name(name)
                try:
                    await s.sftp.rename(str(stage), str(final))
                except asyncssh.SFTPNoSuchFile:
                    out.append(final)  # renamed just now (its answer lost before)
                    continue
                except (asyncssh.SFTPFileAlreadyExists, asyncssh.SFTPFailure):
                    # Taken (OpenSSH answers a plain failure for an existing name).
                    if await s.sftp.exists(str(final)) and await self._same(s, final, content):
                        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                            await s.sftp.remove(str(stage))
                        out.append(final)
                    else:
                        out.append(OutboundExists(f"{self.target}{final} appeared with other "
                                                  "content; not overwritten"))
                    continue
                _fault_before_final_name(name, FAULT_KILL_AFTER_RENAME)
                out.append(final)
            return out

        return self._call(op) if items else []

    def write_outbound_copy(self, name: str, content: bytes) -> PurePosixPath:
        """Write ``content`` under ``name`` or, when taken, ``name.resend-N`` (a resend)."""
        return write_copy(self.write_outbound, name, content)


def describe(cfg: SftpSettings) -> str:
    return f"sftp://{cfg.user}@{cfg.host}:{cfg.port}{posixpath.join('/', cfg.inbound)}"
