"""Opening saved artifacts safely: clear errors for damaged, mismatched or unsafe files.

Where it sits: every loader of a saved artifact (candidate indexes, models, vocabularies)
reads small JSON records that describe the large files beside them. The helpers here read
those records, check that the pieces belong together, and turn every failure into one
`ArtifactError` that names the file and says what to do, instead of a library traceback or,
worse, a model that loads and then returns wrong recommendations.

Safety rules shared by the loaders:
- configs and vocabularies are JSON; weights are read with `torch.load(weights_only=True)`
  and arrays with `numpy.load(allow_pickle=False)`, so no file can run code when loaded;
  `unsafe_pickle_error` words the refusal of a weights file that tries to;
- a path read from a record (`"ids_file": "ids.npy"`) is resolved with `resolve_inside`, which
  refuses absolute paths and anything that leaves the artifact's directory ("../../x",
  symlinks pointing outside);
- a record that names the files its weights must be used with stores their sha256
  (`sha256_file`); `check_digest` refuses a file that is not the one recorded (a vocabulary
  copied in from another run), naming what was expected and what was found.

Torch-free on purpose (the `features` layer): the torch loaders catch torch's exception and
pass it to `unsafe_pickle_error`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "ArtifactError",
    "check_digest",
    "check_match",
    "read_json_object",
    "require_int",
    "resolve_inside",
    "sha256_file",
    "short_digest",
    "unsafe_pickle_error",
]


class ArtifactError(ValueError):
    """A saved artifact is damaged, unsafe, or does not belong with the files beside it."""


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Return the JSON object stored in `path` (`what` names the artifact in messages).

    Raises `ArtifactError` when the file is missing, unreadable, not UTF-8 JSON, or holds
    something other than an object.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(
            f"{p} is missing: {what} is incomplete (its save did not finish?); save or build "
            "it again"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read {p} ({what}): {exc}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{p} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); {what} "
            "is damaged: save or build it again"
        ) from None
    if not isinstance(obj, dict):
        raise ArtifactError(
            f"{p} holds a JSON {type(obj).__name__}, not an object; {what} is damaged: save "
            "or build it again"
        )
    return obj


def require_int(
    record: dict[str, Any], key: str, path: str | os.PathLike[str], *, minimum: int = 0
) -> int:
    """Return `record[key]` as an int >= `minimum`; ArtifactError if absent or of another type."""
    value = record.get(key)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArtifactError(
            f"{path}: {key!r} must be an integer >= {minimum}, got {value!r}; the file is "
            "damaged or was edited: save or build the artifact again"
        )
    return value


def resolve_inside(root: str | os.PathLike[str], relative: object, what: str) -> Path:
    """Return `root / relative` resolved, refusing any path that would leave `root`.

    `relative` comes from a config or record (untrusted): it must be a relative path string
    without NUL bytes whose resolved form (symlinks followed) stays inside `root`.
    """
    base = Path(root).resolve()
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise ArtifactError(f"{what} must be a relative file name, got {relative!r}")
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        raise ArtifactError(
            f"{what} is the absolute path {relative!r}; a saved artifact may only name files "
            f"inside its own directory {base}"
        )
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise ArtifactError(
            f"{what} {relative!r} points outside {base} (to {target}); a saved artifact may "
            "only name files inside its own directory: refusing to read it"
        )
    return target


def check_match(
    what: str, expected: object, found: object, where: str, fix: str = "rebuild it"
) -> None:
    """Raise ArtifactError naming `what` when `found` differs from `expected`."""
    if expected != found:
        raise ArtifactError(f"{where}: {what} is {found!r} but {expected!r} was expected; {fix}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of the file at `path`, read in `chunk`-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_digest(digest: object) -> str:
    """Return the first 12 hex digits of a digest for messages (the full one is in the files)."""
    return f"{digest[:12]}..." if isinstance(digest, str) and len(digest) > 12 else repr(digest)


def check_digest(
    path: str | os.PathLike[str], expected: str, what: str, fix: str = "rebuild it"
) -> None:
    """Raise ArtifactError when the file at `path` is missing or its sha256 is not `expected`.

    `what` says whose record holds `expected` (e.g. "the vocabulary this model was trained
    with, recorded in model.json"); `fix` says what to do.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p} is missing, but {what} lists it; {fix}")
    found = sha256_file(p)
    if found != expected:
        raise ArtifactError(
            f"{p} does not belong here: {what} has sha256 {short_digest(expected)} but the "
            f"file has {short_digest(found)} (it was replaced or edited, e.g. copied in from "
            f"another run); {fix}"
        )


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


class DamagedWeightsError(ArtifactError):
    """A weights file that cannot be read at all (truncated, or not a torch file)."""


def unsafe_pickle_error(path: str | os.PathLike[str], exc: BaseException) -> ArtifactError:
    """Return the error for a weights file that `torch.load(weights_only=True)` refused.

    Such a file references code (a pickled callable such as `os.system`) that plain tensors
    never need; loading it without `weights_only` would run that code.
    """
    found = _GLOBAL_RE.search(str(exc))
    detail = f"it references {found.group(1)}" if found else "it holds more than tensors"
    return ArtifactError(
        f"refusing to load {path}: it is not a plain weights file ({detail}, which would run "
        "code when unpickled). vidrec saves weights as tensors only, so this file was altered "
        "or comes from elsewhere. Do not load it with weights_only=False unless you trust its "
        "source; retrain the model or restore the file from the run that wrote it"
    )
