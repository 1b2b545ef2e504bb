"""Atomic artifact writes: write to a temporary file in the same directory, fsync, rename.

A crash at any moment leaves either the old complete file or the new complete file, never a
half-written one. Disk-full and permission errors are re-raised as `ArtifactWriteError` naming
the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class ArtifactWriteError(OSError):
    """An artifact could not be written (disk full, permission denied, ...)."""


def _explain(path: Path, exc: OSError) -> ArtifactWriteError:
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full; free space or choose another --out directory"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "permission denied; choose a directory you can write to"
    else:
        hint = exc.strerror or str(exc)
    return ArtifactWriteError(exc.errno or 0, f"cannot write artifact {path}: {hint}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    Use for writers that want a file name (torch.save, annoy.save, parquet writers):

        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise _explain(final, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _explain(final, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """JSON with sorted keys and 2-space indent, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and paths appear in metrics and configs
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
