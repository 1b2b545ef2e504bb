"""Atomic artifact writes: write to a temporary file in the same directory, fsync, rename.

A crash at any moment (SIGKILL, power loss after the directory is synced) leaves either the old
complete file or the new complete file, never a half-written one; a killed writer may leave its
hidden temporary `.<name>.<random>.tmp` beside the artifact, which `remove_stale_temporaries`
deletes (run directories call it before a stage starts). Disk-full and permission errors are
re-raised as `ArtifactWriteError` naming the path and what to do, after the temporary file is
removed: a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def _process_umask() -> int:
    """The process's umask (read once: setting it back at once is safe while one thread runs)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the mode of every artifact: what open() gives a new file under the process's umask. mkstemp
#: makes its temporary 0600, so without this a run's report and models would be readable by
#: their owner only, whatever the umask (a web server or another serving user could not read them)
FILE_MODE = 0o666 & ~_process_umask()

# Write observers: each is called with (path, kind) before a temporary is created ("check"),
# once it exists ("temporary"), for every directory this module creates ("directory") and after
# the rename ("file"). A run directory registers one so that it knows every file it wrote (and
# deletes only those), and so that a write through a symbolic link out of it is refused
# before anything is written.
WriteObserver = Callable[[Path, str], None]
_OBSERVERS: list[WriteObserver] = []


def add_write_observer(observer: WriteObserver) -> None:
    """Call `observer(path, kind)` for every write of this process (see `_OBSERVERS`)."""
    _OBSERVERS.append(observer)


def remove_write_observer(observer: WriteObserver) -> None:
    """Stop calling `observer` (no error when it was not registered)."""
    with contextlib.suppress(ValueError):
        _OBSERVERS.remove(observer)


def _notify(path: Path, kind: str) -> None:
    for observer in list(_OBSERVERS):
        observer(path, kind)


def make_dirs(directory: str | os.PathLike[str]) -> Path:
    """`mkdir -p directory`, telling the write observers about every directory it creates."""
    d = Path(directory)
    missing = []
    p = d
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        _notify(m, "check")
        try:
            m.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(m, exc) from None
        _notify(m, "directory")
    return d


class ArtifactWriteError(OSError):
    """An artifact could not be written (disk full, permission denied, ...)."""

    def __str__(self) -> str:
        # the message already names the cause; OSError would prefix "[Errno 28] "
        return str(self.strerror)


def write_error(path: Path, exc: OSError) -> ArtifactWriteError:
    """Return the error a user sees for a failed write of `path` (the cause and what to do)."""
    if isinstance(exc, ArtifactWriteError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "no space left on the device (disk full or quota exceeded); free space or choose another --out directory"
    elif exc.errno == errno.EROFS:
        hint = "the file system is read-only; choose another --out directory"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = f"permission denied; make {path.parent} writable or choose another --out directory"
    else:
        hint = exc.strerror or str(exc)
    err = ArtifactWriteError(
        exc.errno or 0,
        f"cannot write artifact {path}: {hint} (nothing was written; an earlier version of "
        "the file, if any, is unchanged)",
    )
    err.filename = str(path)
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    Use for writers that want a file name (torch.save, annoy.save, parquet writers):

        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    final = Path(path)
    _notify(final, "check")
    make_dirs(final.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent
        )
        os.close(fd)
    except OSError as exc:
        raise write_error(final, exc) from None
    tmp = Path(tmp_name)
    try:
        _notify(tmp, "temporary")
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)
        _fsync_directory(final.parent)
        _notify(final, "file")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(final, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (skipped where the OS cannot)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EACCES, errno.EPERM):
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries that killed atomic writes left under `directory`; return their paths.

    Only files named like `atomic_path` names its temporaries (`.<name>.<random>.tmp`) are
    removed. Call it when no writer is active in `directory` (e.g. before a stage starts).
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.rglob(f".*{TEMP_SUFFIX}")):
        if p.is_file() and not p.is_symlink() and p.name.count(".") >= 3:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` as UTF-8 to `path` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """JSON with sorted keys and 2-space indent, written atomically."""
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    )


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths appear in metrics and configs
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
