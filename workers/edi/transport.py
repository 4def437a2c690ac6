"""File-drop transport: one folder per partner with ``inbound/``, ``outbound/``, ``processed/``,
``failed/``.

* A file is taken only after its final rename: names starting with ``.`` and
  ending in ``.tmp``, ``.part`` or ``.processing`` are never read (partners
  write under such a name and rename), and, when the profile asks for it, a
  file must also be unchanged for ``settle_seconds``.
* It is claimed by a rename to ``<name>.<token>.processing`` in ``inbound/``:
  of two workers racing for it, one rename wins and the other gets
  ``FileNotFoundError`` and moves on.  The claim's mtime is set to the time of the
  claim; a claim older than the claim timeout (its worker died) is taken over by
  another rename, which again only one worker wins.
* Nothing is ever deleted or overwritten: a claimed file ends in
  ``processed/`` or ``failed/`` under its own name (``name.1``, ``name.2``...
  when taken); outbound files are written under a temporary dot-name,
  fsynced, and given their final name by ``os.link``, which refuses an
  existing name, so a file the partner may be reading is never replaced.

Fault injection (tests only, off unless set): ``COEXIST_FAULT_EDI_KILL_BEFORE_RENAME=810``
(a document type, or ``any``) makes the process SIGKILL itself right before it gives an
outbound file of that type its final name, after its control numbers were committed and
its bytes fsynced under the temporary name: the crash test kills a real ``coexist worker``
exactly there.  ``COEXIST_FAULT_EDI_KILL_AFTER_RENAME`` (same values) kills it right
after the final name was given, before the state says ``written``: the partner may have
taken the file already, and the next run must not write it again.

Publishing without a second copy (``stage_many`` / ``publish_many``, used by
``flush_pending`` under its flush lock): a file is first written and fsynced under a
deterministic stage name ``.NAME.stage.tmp`` and the state row marked ``staged`` (committed);
then the stage is renamed to the final name by one atomic rename that refuses an existing
name (``renameat2(RENAME_NOREPLACE)``; where the kernel or filesystem lacks it, ``link``
then ``unlink``).  A ``staged`` row whose stage file is gone was published: the file is
the partner's now (it may have moved it away already) and is never written again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TypeVar

#: Suffixes of files that are still being written (ours or the partner's).
TEMP_SUFFIXES = (".tmp", ".part", ".processing")
CLAIM_SUFFIX = ".processing"
FOLDERS = ("inbound", "outbound", "processed", "failed")

T = TypeVar("T")


#: The fault-injection point's setting (see the module docstring).
FAULT_KILL_BEFORE_RENAME = "COEXIST_FAULT_EDI_KILL_BEFORE_RENAME"
FAULT_KILL_AFTER_RENAME = "COEXIST_FAULT_EDI_KILL_AFTER_RENAME"
#: Suffix of an outbound file's stage name (``.NAME.stage.tmp``): a dot-name, never read.
STAGE_SUFFIX = ".stage.tmp"


def _fault_before_final_name(name: str, setting: str = FAULT_KILL_BEFORE_RENAME) -> None:
    """SIGKILL this process here when ``setting`` names the type of ``name``
    (``ACME-000000001-810.x12``) or ``any``; nothing when it is unset."""
    wanted = os.environ.get(setting)
    if wanted and (wanted == "any" or name.endswith(f"-{wanted}.x12")):
        os.kill(os.getpid(), signal.SIGKILL)


class OutboundExists(FileExistsError):
    """An outbound name already holds different bytes; nothing was written."""


@dataclass(frozen=True, slots=True)
class Claimed:
    #: The name the partner gave the file.
    name: str
    #: Where the claim is: a local path, or the remote path on an SFTP server.
    path: PurePath
    #: Reads the claimed file's bytes (SFTP); a local claim reads ``path``.
    reader: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)

    def read_bytes(self) -> bytes:
        return self.reader() if self.reader is not None else Path(self.path).read_bytes()

    @property
    def claim_name(self) -> str:
        return self.path.name

    @property
    def first_claim_name(self) -> str:
        """The name of the file's first claim: a claim taken over from a dead worker keeps
        that worker's token in front of its own (``name.TOKEN-TOKEN2.processing``), so the
        interchange it recorded is found again."""
        token = self.path.name[: -len(CLAIM_SUFFIX)].rsplit(".", 1)[-1]
        return f"{self.name}.{token.split('-', 1)[0]}{CLAIM_SUFFIX}"


class DropFolder:
    def __init__(self, root: str | Path, *, settle_seconds: float = 0.0) -> None:
        self.root = Path(root)
        self.settle_seconds = settle_seconds
        self.inbound, self.outbound, self.processed, self.failed = (
            self.root / name for name in FOLDERS)

    def ensure(self) -> DropFolder:
        for name in FOLDERS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return self

    # ------------------------------------------------------------------ inbound

    def ready(self) -> list[str]:
        """Names in ``inbound/`` that are complete, oldest name first."""
        now = time.time()
        out = []
        try:
            entries = list(os.scandir(self.inbound))
        except FileNotFoundError:
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(TEMP_SUFFIXES) or not entry.is_file():
                continue
            if self.settle_seconds and now - entry.stat().st_mtime < self.settle_seconds:
                continue
            out.append(name)
        return sorted(out)

    def claim(self, name: str) -> Claimed | None:
        """Take ``name`` by renaming it; ``None`` when another worker took it first."""
        src = self.inbound / name
        dst = self.inbound / f"{name}.{uuid.uuid4().hex[:12]}{CLAIM_SUFFIX}"
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            return None
        _touch(dst)
        return Claimed(name, dst)

    def abandoned_claims(self, older_than_s: float) -> list[Claimed]:
        """Claims a crashed worker left behind (older than ``older_than_s``)."""
        now = time.time()
        out = []
        try:
            entries = list(os.scandir(self.inbound))
        except FileNotFoundError:
            return []
        for entry in sorted(entries, key=lambda e: e.name):
            try:
                old = entry.name.endswith(CLAIM_SUFFIX) and (
                    now - entry.stat().st_mtime >= older_than_s)
            except FileNotFoundError:
                continue  # another worker re-claimed it just now
            if not old:
                continue
            original, token = entry.name[: -len(CLAIM_SUFFIX)].rsplit(".", 1)
            # Re-claimed by a rename too: of two workers finding the same abandoned claim,
            # one takes it (and its new mtime tells the other it is held again).
            first = token.split("-", 1)[0]
            dst = self.inbound / f"{original}.{first}-{uuid.uuid4().hex[:12]}{CLAIM_SUFFIX}"
            try:
                os.rename(entry.path, dst)
            except FileNotFoundError:
                continue
            _touch(dst)
            out.append(Claimed(original, dst))
        return out

    def finish(self, claimed: Claimed, *, ok: bool, sync_dir: bool = True) -> Path:
        """Move a claimed file to ``processed/`` (ok) or ``failed/``, never overwriting.

        ``sync_dir=False`` leaves the directory fsync to one ``sync_dirs()`` for a batch.
        """
        target_dir = self.processed if ok else self.failed
        target_dir.mkdir(parents=True, exist_ok=True)
        return _link_free(Path(claimed.path), target_dir, claimed.name, move=True, sync=sync_dir)

    def waiting(self) -> list[tuple[str, float]]:
        """(name, mtime) of every complete file in ``inbound/`` (``coexist status``)."""
        out = []
        for name in self.ready():
            try:
                out.append((name, (self.inbound / name).stat().st_mtime))
            except FileNotFoundError:
                continue
        return out

    def count(self, which: str, keep: Callable[[str], bool]) -> int:
        """How many names in ``inbound/`` or ``failed/`` ``keep`` accepts."""
        try:
            return sum(1 for name in os.listdir(self.root / which) if keep(name))
        except FileNotFoundError:
            return 0

    def sync_outbound(self) -> None:
        """fsync ``outbound/``: the names ``publish_many`` gave are durable."""
        _fsync_dir(self.outbound)

    def sync_dirs(self) -> None:
        """fsync every folder, making a batch's renames durable (one call per batch)."""
        for name in FOLDERS:
            if (self.root / name).is_dir():
                _fsync_dir(self.root / name)

    # ------------------------------------------------------------------ outbound

    def write_outbound(self, name: str, content: bytes, *, sync_dir: bool = True
                       ) -> tuple[Path, bool]:
        """Write ``content`` as ``outbound/name``; returns (path, written now).

        An existing file of that name with the same bytes is left alone (a
        resumed write); one with other bytes raises ``OutboundExists``.  The
        file's bytes are always fsynced; ``sync_dir=False`` leaves the fsync of
        the directory (which makes the name durable) to ``sync_dirs()``.
        """
        self.outbound.mkdir(parents=True, exist_ok=True)
        final = self.outbound / name
        if final.exists():
            if final.read_bytes() == content:
                return final, False
            raise OutboundExists(f"{final} already exists with other content; not overwritten")
        tmp = self.outbound / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            _fault_before_final_name(name)
            try:
                os.link(tmp, final)
            except FileExistsError:
                if final.read_bytes() == content:
                    return final, False
                raise OutboundExists(f"{final} appeared with other content; not "
                                     "overwritten") from None
        finally:
            tmp.unlink(missing_ok=True)
        if sync_dir:
            _fsync_dir(self.outbound)
        return final, True

    def stage_path(self, name: str) -> Path:
        return self.outbound / f".{name}{STAGE_SUFFIX}"

    def stage_many(self, items: Sequence[tuple[str, bytes]]) -> list[bool | OutboundExists]:
        """Write each item's bytes under its stage name and fsync them (and the folder);
        per item: True (staged), False (its final name already holds these bytes: nothing
        to stage) or the ``OutboundExists`` it met.  The caller holds the flush lock, so a
        stage file is only ever ours (a leftover of a crash is overwritten)."""
        self.outbound.mkdir(parents=True, exist_ok=True)
        out: list[bool | OutboundExists] = []
        staged: list[Path] = []
        for name, content in items:
            final = self.outbound / name
            if final.exists():
                out.append(False if final.read_bytes() == content else OutboundExists(
                    f"{final} already exists with other content; not overwritten"))
                continue
            stage = self.stage_path(name)
            with open(stage, "wb") as fh:
                fh.write(content)
            staged.append(stage)
            out.append(True)
        if staged:
            list(_fsync_pool().map(_fsync_file, staged))
            _fsync_dir(self.outbound)
        return out

    def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[Path | OutboundExists]:
        """Give each staged item its final name, in order (the directory fsync is left to
        ``sync_outbound``).  An item whose stage file is gone was published before (a crash
        after the rename): nothing is written again, whether or not the partner has taken
        the file."""
        out: list[Path | OutboundExists] = []
        for name, content in items:
            stage, final = self.stage_path(name), self.outbound / name
            try:
                st = os.stat(stage)
            except FileNotFoundError:
                out.append(final)  # published already
                continue
            _fault_before_final_name(name)
            if st.st_nlink > 1:  # link() done, unlink() not (the fallback, then a crash)
                stage.unlink()
                out.append(final)
                continue
            try:
                _rename_noreplace(stage, final)
            except FileNotFoundError:  # another flusher renamed it just now
                out.append(final)
                continue
            except FileExistsError:
                if final.read_bytes() == content:
                    stage.unlink(missing_ok=True)
                    out.append(final)
                else:
                    out.append(OutboundExists(f"{final} appeared with other content; not "
                                              "overwritten"))
                continue
            _fault_before_final_name(name, FAULT_KILL_AFTER_RENAME)
            out.append(final)
        return out

    def write_outbound_copy(self, name: str, content: bytes) -> Path:
        """Write ``content`` under ``name`` or, when taken, ``name.resend-N`` (a resend)."""
        return write_copy(self.write_outbound, name, content)


def write_copy(write_outbound: Callable[[str, bytes], Sequence[T]], name: str,
               content: bytes) -> T:
    """``write_outbound(name, content)``, or under ``name.resend-N`` for the first N not
    taken: a resend never overwrites (both transports' ``write_outbound_copy``)."""
    n = 0
    while True:
        candidate = name if n == 0 else f"{name}.resend-{n}"
        try:
            return write_outbound(candidate, content)[0]
        except OutboundExists:
            n += 1


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2 = None


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    return _renameat2 or None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically unless ``dst`` exists (``FileExistsError``)."""
    import ctypes
    import errno

    fn = _libc_renameat2()
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src))
    os.link(src, dst)  # refuses an existing name; a crash before the unlink: nlink 2
    os.unlink(src)


def _link_free(src: Path, folder: Path, name: str, *, move: bool, sync: bool = True) -> Path:
    n = 0
    while True:
        dst = folder / (name if n == 0 else f"{name}.{n}")
        try:
            os.link(src, dst)
        except FileExistsError:
            if dst.exists() and os.path.samefile(src, dst):
                break  # a resumed move: already linked
            n += 1
            continue
        break
    if sync:
        _fsync_dir(folder)
    if move:
        src.unlink()
        if sync:
            _fsync_dir(src.parent)
    return dst


#: Threads that fsync a batch's outbound files at once (``stage_many``).
FSYNC_THREADS = 16
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="edi-fsync")
        return _POOL


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _touch(path: Path) -> None:
    """A claim's mtime is when it was claimed (a partner's file may carry an old one, which
    would make a fresh claim look abandoned to another worker)."""
    os.utime(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
