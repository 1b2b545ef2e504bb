"""The run directory: stage bookkeeping, artifact hashes, lineage and the manifest.

Layout of RUN_DIR:
    manifest.json          config, config hash, run id, seed, package versions, git commit, and
                           per stage: status, wall time, peak memory, runtime settings (threads,
                           devices, determinism flags), the stages it was built from (`inputs`:
                           their digests) and its artifacts with sha256
    config.json            the resolved config (also inside every stage's provenance.json)
    <stage>/...            each stage's artifacts (written atomically), and provenance.json
                           (run id, config hash, the digests of the stages it was built from)
    report.json|md|html    the report

A stage counts as finished when the manifest lists it as done under the same config hash. Before
a finished stage is skipped or its artifacts are used, they are checked (once per process):

- its provenance.json names this run (run id and config hash): a stage directory copied in from
  another run is refused;
- every artifact still has the sha256 the manifest recorded: a file edited, damaged or replaced
  (a vocabulary or an index from another run) is refused;
- the stages it was built from still have the digests it recorded: a stage built from an
  earlier output of a stage that was redone since (`--redo candidate_gen`) is stale; a run
  reruns it, serving refuses it.

Refusals are one `RunIntegrityError` naming the artifact, what was expected, what was found and
the command that rebuilds it (`--redo STAGE`). An interrupted stage (status "running") starts
again; its trainers resume from their own checkpoints. A stage that runs for any other reason
(first run of a new config in an old directory, `--redo`, stale inputs) first has the files of
its previous attempt removed, so that no trainer resumes from a checkpoint of other inputs.

Ownership. vidrec writes only into directories it created, and deletes only files it wrote:

- `.vidrec-run` (written first, when vidrec creates the directory or takes an empty one) marks a
  run directory. An existing, non-empty `--out` without it is refused (a directory written by an
  older vidrec, with its manifest, is adopted once);
- `.vidrec-files` is the ledger of every file and directory the run wrote (every write goes
  through `features.atomic`, which reports it). A stage's previous attempt is discarded by
  deleting the ledger's files under its directory, nothing else; a stage records (hashes) only
  ledger files as its artifacts, so a stranger's file put inside is never taken for one;
- a write whose path leaves the run directory through a symbolic link is refused before it
  happens, and so is a stage directory that is a link;
- `.vidrec-lock` holds an OS lock (flock) for the writer's life: a second writer is refused
  with the holder's pid, host, start time and command; a lock left by a killed process is
  released by the OS and taken over (the takeover is logged). Readers (`Recommender.load`,
  `vidrec ab`) take a shared lock while they load, so they never read a run while it is
  written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import shlex
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vidrec.features.atomic import (
    TEMP_SUFFIX,
    add_write_observer,
    atomic_write_json,
    make_dirs,
    remove_write_observer,
    write_error,
)
from vidrec.features.integrity import (
    ArtifactError,
    read_json_object,
    resolve_inside,
    sha256_file,
    short_digest,
)
from vidrec.pipelines.config import config_hash, index_kind
from vidrec.pipelines.peak_rss import peak_rss_mb

log = logging.getLogger("vidrec")

__all__ = [
    "PROVENANCE_FILE",
    "RunDir",
    "RunDirError",
    "RunIntegrityError",
    "StageResult",
    "check_index_matches_model",
    "serving_cg_dir",
    "package_versions",
    "runtime_settings",
    "sha256_file",
]

MARKER_FILE = ".vidrec-run"
LOCK_FILE = ".vidrec-lock"
LEDGER_FILE = ".vidrec-files"
# names vidrec writes at the top level of a run directory besides the stage directories
_TOP_LEVEL = ("manifest.json", "config.json", "report.json", "report.md", "report.html",
              "report_figures")
_PACKAGES = (
    "vidrec",
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "annoy",
    "faiss-cpu",
    "lightgbm",
    "scikit-learn",
)
PROVENANCE_FILE = "provenance.json"
# manifest key: stages whose directories hold an attempt that must not be continued
_DISCARD = "discard_before_running"
#: the folders the trainers keep resumable checkpoints in (pipelines.run, pipelines.stages_rank):
#: removed once their stage is done
CHECKPOINT_DIRS = frozenset({"checkpoints", "serving_checkpoints"})


class RunDirError(RuntimeError):
    """The run directory does not match what is asked of it."""


class RunIntegrityError(ArtifactError):
    """A run directory's artifacts do not belong together (edited, copied in, or stale)."""


def package_versions() -> dict[str, str]:
    """Return {package: version} of Python and the packages a run depends on."""
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def cpu_model() -> str:
    """Return the CPU model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a run's figures depend on besides code and data: CPU model, cores and platform."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()}


@functools.cache
def git_commit() -> str | None:
    """Return the commit of the code that runs, or None outside a git checkout.

    Asked once per process (every stage records it): the code a process runs is the code it
    imported, even if the checkout moves on while it runs."""
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def runtime_settings() -> dict[str, Any]:
    """Return the settings that decide whether a stage's numbers are bit-reproducible.

    torch's intra-op thread count (float sums are split by thread), whether a CUDA device was
    visible (config device "auto" then trains on it), and torch's determinism switches.
    """
    import torch  # lazily: `vidrec validate` does not need torch

    cuda = torch.cuda.is_available()
    return {
        "torch_threads": int(torch.get_num_threads()),
        "cuda_available": bool(cuda),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def _digest(artifacts: dict[str, str]) -> str:
    """Return the digest of a stage: sha256 over its sorted {artifact path: sha256}."""
    blob = json.dumps(sorted(artifacts.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------- ownership, locking
def _inside(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or below it (both taken as they are: resolve them first)."""
    return path == root or root in path.parents


def check_data_outside_run(data_dir: str | Path | None, out: str | Path) -> None:
    """Refuse a data directory inside the run directory, or a run directory inside the data.

    A run discards and rewrites its own stage directories (one is called `data`): a user's
    tables inside `--out` could be taken for its files, and a run inside `--data` would write
    into the user's data directory. Raises RunDirError; nothing is written.
    """
    if data_dir is None:
        return
    data, run = Path(data_dir).resolve(), Path(out).resolve()
    if _inside(data, run):
        raise RunDirError(
            f"the data directory {data_dir} lies inside the run directory --out {out}: vidrec "
            "rewrites what is inside its run directory, so it never runs there; choose an --out "
            "outside the data directory (e.g. a sibling: --out runs/NAME)"
        )
    if _inside(run, data):
        raise RunDirError(
            f"the run directory --out {out} lies inside the data directory {data_dir}: vidrec "
            "does not write into a user's data directory; choose an --out outside it"
        )


def _lock_holder(fh: Any) -> dict[str, Any]:
    """What the lock file says of its holder (empty when it says nothing readable)."""
    try:
        fh.seek(0)
        info = json.loads(fh.read() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe_holder(info: dict[str, Any]) -> str:
    if not info:
        return "a process that left no details"
    cmd = info.get("command")
    cmd_s = f", command `{shlex.join(cmd)}`" if isinstance(cmd, list) else ""
    return (
        f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
        f"{cmd_s}"
    )


class _Lock:
    """One flock on a run directory's lock file, shared by every user of it in this process."""

    def __init__(self, root: Path, fh: Any, exclusive: bool) -> None:
        self.root, self.fh, self.exclusive, self.users = root, fh, exclusive, 1


_HELD: dict[Path, _Lock] = {}  # resolved run directory -> the lock this process holds on it


def _acquire(root: Path, exclusive: bool) -> _Lock:
    """Take the run directory's lock (exclusive for a writer, shared for a reader) or refuse.

    flock locks belong to the open file: the OS releases them when the holder dies, so a lock
    file left by a killed run is simply taken over. Within one process a lock is reference
    counted (a reader inside the writing process reads its own consistent state)."""
    key = root.resolve()
    held = _HELD.get(key)
    if held is not None:
        if exclusive and not held.exclusive:
            raise RunDirError(
                f"run directory {root} is open for reading in this process; cannot write it"
            )
        held.users += 1
        return held
    path = root / LOCK_FILE
    # a reader creates nothing: no lock file means no vidrec writer has ever held the directory
    flags = (os.O_RDWR | os.O_CREAT) if exclusive else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if exclusive:
            raise RunDirError(f"run directory {root} does not exist") from None
        return _Lock(key, None, False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(
                f"{path} is a symbolic link; vidrec never writes through a link out of its run "
                "directory: remove the link"
            ) from None
        if not exclusive and exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            return _Lock(key, None, False)  # a read-only copy of a run: nobody writes it
        raise write_error(path, exc) from None
    fh = os.fdopen(fd, "r+" if exclusive else "r", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe_holder(_lock_holder(fh))
        fh.close()
        if exclusive:
            raise RunDirError(
                f"run directory {root} is in use by another vidrec process ({holder}); one "
                "process writes a run directory at a time: wait for it to finish, or choose "
                "another --out"
            ) from None
        raise RunDirError(
            f"run directory {root} is being written by a vidrec run ({holder}); wait for it to "
            "finish before reading it"
        ) from None
    if exclusive:
        previous = _lock_holder(fh)
        if previous.get("pid") is not None:
            log.info(
                "run directory %s: taking over the lock left by %s, which no longer holds it "
                "(the process ended or was killed)",
                root,
                _describe_holder(previous),
            )
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": [str(a) for a in sys.argv],
                }
            )
        )
        fh.flush()
    lock = _Lock(key, fh, exclusive)
    _HELD[key] = lock
    return lock


def _release(lock: _Lock) -> None:
    lock.users -= 1
    if lock.users > 0:
        return
    _HELD.pop(lock.root, None)
    if lock.fh is None:
        return
    try:
        if lock.exclusive:
            lock.fh.seek(0)
            lock.fh.truncate()  # no holder: the next writer has nothing to take over
        fcntl.flock(lock.fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
    finally:
        lock.fh.close()


@contextlib.contextmanager
def read_lock(path: str | Path) -> Iterator[None]:
    """Hold a shared lock on the run directory `path` while reading it.

    Refuses (RunDirError, naming the writer) while a `vidrec run` writes it, so that a reader
    never loads a half-rewritten run."""
    lock = _acquire(Path(path), exclusive=False)
    try:
        yield
    finally:
        _release(lock)


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def _legacy_manifest(path: Path) -> bool:
    """Whether `path` holds the manifest of a run written before run directories were marked."""
    m = path / "manifest.json"
    if not m.is_file() or m.is_symlink():
        return False
    try:
        data = json.loads(m.read_text("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("kind") == "vidrec-run"


def _refuse_foreign(path: Path) -> None:
    raise RunDirError(
        f"--out {path} exists, is not empty and is not a vidrec run directory (it has no "
        f"{MARKER_FILE} marker): vidrec writes only into directories it created, so that it "
        "never overwrites or deletes files that are not its own; choose a new or an empty --out"
    )


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float


class RunDir:
    """A run directory bound to one resolved config."""

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        """Open (or create) the run directory `path` for writing, bound to `config`.

        Refuses (RunDirError, nothing written) an existing non-empty directory that vidrec did
        not create, and a directory another process is writing. Holds the directory's lock
        until `close()` (or the end of the process)."""
        self.path = Path(path)
        self.config = config
        self.config_hash = config_hash(config)
        self.manifest_path = self.path / "manifest.json"
        self._verified: dict[str, str] = {}  # stage -> digest checked against the files
        self._lock: _Lock | None = None
        self._observer: Callable[[Path, str], None] | None = None
        self._claim()
        try:
            self.manifest = self._load_or_init()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ ownership
    def _claim(self) -> None:
        """Check that the directory is ours (or new, or empty), lock it, mark it, start the
        ledger of what this run writes."""
        p = self.path
        if p.is_symlink() and not p.exists():
            raise RunDirError(f"--out {p} is a broken symbolic link; choose another --out")
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {p} exists and is not a directory; choose another --out")
        marker = p / MARKER_FILE
        adopt = False
        if p.is_dir():
            if marker.is_symlink() or (marker.exists() and not marker.is_file()):
                raise RunDirError(f"{marker} is not a plain file; choose another --out")
            if not marker.is_file():
                adopt = _legacy_manifest(p)
                if not adopt and not _is_empty_dir(p):
                    _refuse_foreign(p)
        else:
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_error(p, exc) from None
        self._root = p.resolve()
        self._lock = _acquire(p, exclusive=True)
        try:
            if not marker.is_file():
                others = {e.name for e in os.scandir(p)} - {LOCK_FILE}
                if others and not adopt:  # filled since the check above
                    _refuse_foreign(p)
            self._ledger_path = p / LEDGER_FILE
            self._ledger = self._read_ledger()
            if adopt and not marker.is_file():
                self._adopt_legacy()
            if not marker.is_file():
                atomic_write_json(
                    marker,
                    {
                        "kind": "vidrec-run-directory",
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "note": "vidrec writes and deletes only the files listed in "
                        f"{LEDGER_FILE}; do not put your own files in the stage directories",
                    },
                )
            self._observer = self._observe
            add_write_observer(self._observer)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop recording writes and release the directory's lock (idempotent)."""
        if self._observer is not None:
            remove_write_observer(self._observer)
            self._observer = None
        if self._lock is not None:
            _release(self._lock)
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_ledger(self) -> set[str]:
        if self._ledger_path.is_symlink():
            raise RunDirError(f"{self._ledger_path} is a symbolic link; remove it")
        if not self._ledger_path.is_file():
            return set()
        try:
            lines = self._ledger_path.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RunDirError(f"cannot read {self._ledger_path}: {exc}") from None
        return {ln for ln in lines if ln and not ln.startswith(("/", "../")) and ".." not in ln.split("/")}

    def _append_ledger(self, rels: Iterable[str]) -> None:
        new = [r for r in rels if r not in self._ledger]
        if not new:
            return
        try:
            fd = os.open(
                self._ledger_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644
            )
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write("".join(r + "\n" for r in new))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(self._ledger_path, exc) from None
        self._ledger.update(new)

    def _rewrite_ledger(self) -> None:
        text = "".join(r + "\n" for r in sorted(self._ledger))
        tmp = self._ledger_path.with_name(f"{LEDGER_FILE}.{os.getpid()}.new")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._ledger_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise write_error(self._ledger_path, exc) from None

    def _adopt_legacy(self) -> None:
        """Take over a run directory an older vidrec wrote (a manifest, no marker): its stage
        directories and top-level files of vidrec's names are taken as vidrec's."""
        m = json.loads(self.manifest_path.read_text("utf-8"))
        names = set(m.get("stages", {})) | set(m.get(_DISCARD, [])) | set(_TOP_LEVEL)
        rels: list[str] = []
        for name in sorted(n for n in names if isinstance(n, str) and "/" not in n):
            top = self.path / name
            if top.is_symlink() or not top.exists():
                continue
            rels.append(name)
            if top.is_dir():
                for dirpath, dirnames, filenames in os.walk(top):  # never follows links
                    base = Path(dirpath).relative_to(self.path).as_posix()
                    rels += [f"{base}/{d}" for d in dirnames if not (Path(dirpath) / d).is_symlink()]
                    rels += [f"{base}/{f}" for f in filenames if not (Path(dirpath) / f).is_symlink()]
        log.info(
            "run directory %s was written by an earlier vidrec: adopting its %d files and "
            "directories",
            self.path,
            len(rels),
        )
        self._append_ledger(rels)

    def _observe(self, path: Path, kind: str) -> None:
        """Write observer: refuse writes that leave the run directory through a link; record
        every file and directory written inside it in the ledger."""
        a = Path(os.path.abspath(path))
        root = Path(os.path.abspath(self.path))
        if not _inside(a, root) or a == root:
            return
        if a.name in (LEDGER_FILE, MARKER_FILE, LOCK_FILE) and a.parent == root:
            return
        if kind == "check":
            anc = a.parent
            while not anc.exists() and anc != root:
                anc = anc.parent
            real = anc.resolve()
            if not _inside(real, self._root):
                raise RunDirError(
                    f"refusing to write {path}: {anc} leads out of the run directory {self.path} "
                    f"(to {real}) through a symbolic link; vidrec writes only inside its run "
                    "directory: remove the link"
                )
            return
        self._append_ledger([a.relative_to(root).as_posix()])

    def _discard(self, name: str, *, checkpoints_only: bool = False) -> None:
        """Delete what this run wrote under stage `name` (its ledger entries), nothing else;
        with `checkpoints_only`, just what it wrote under its training-checkpoint folders."""
        prefix = f"{name}/"
        mine = sorted(
            (
                r
                for r in self._ledger
                if (r == name or r.startswith(prefix))
                and (not checkpoints_only or CHECKPOINT_DIRS & set(r.split("/")[1:]))
            ),
            key=lambda r: (-r.count("/"), r),
        )
        files = dirs = 0
        gone = set()
        for rel in mine:
            p = self.path / rel
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                gone.add(rel)
                continue
            if stat.S_ISREG(st.st_mode):
                p.unlink()
                files += 1
                gone.add(rel)
            elif stat.S_ISDIR(st.st_mode):
                try:
                    p.rmdir()
                    dirs += 1
                    gone.add(rel)
                except OSError:
                    pass  # holds files vidrec did not write: kept
        d = self.path / name
        if checkpoints_only:
            if files:
                log.info("stage %s: removed its %d training checkpoint file(s)", name, files)
        elif d.is_dir() and not d.is_symlink():
            left = sum(len(fs) for _, _, fs in os.walk(d))
            if left:
                log.warning(
                    "stage %s: kept %d file(s) under %s that vidrec did not write",
                    name,
                    left,
                    d,
                )
        if not checkpoints_only:
            log.info("stage %s: discarded the %d file(s) of its previous attempt", name, files)
        if gone:
            self._ledger -= gone
            self._rewrite_ledger()

    def _remove_stale_temporaries(self, name: str) -> None:
        """Delete the temporaries of killed atomic writes of this run under stage `name`."""
        gone = set()
        for p in self._stage_files(name):
            if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX):
                p.unlink(missing_ok=True)
                gone.add(p.relative_to(self.path).as_posix())
                log.info("removed %s, left by an interrupted write", p)
        if gone:
            self._ledger -= gone
            self._rewrite_ledger()

    def _stage_files(self, name: str) -> list[Path]:
        """The regular files this run wrote under stage `name` (its ledger), sorted."""
        prefix = f"{name}/"
        out = []
        for rel in sorted(r for r in self._ledger if r.startswith(prefix)):
            p = self.path / rel
            if p.is_file() and not p.is_symlink():
                out.append(p)
        return out

    @classmethod
    def open(cls, path: str | Path, *, write: bool = False) -> RunDir:
        """Return the existing run directory at `path`, bound to the config in its manifest.

        Nothing is written. Raises RunDirError when `path` holds no manifest and
        ArtifactError when the manifest is damaged. With `write`, the directory's lock is
        taken (refused while another process writes it) and what is written into it is
        recorded, as for a run: for commands that add to a finished run (`vidrec ab`); call
        `close()` when done.
        """
        root = Path(path)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise RunDirError(
                f"{root} is not a vidrec run directory (no manifest.json); run "
                f"`vidrec run --out {root}` first"
            )
        m = read_json_object(manifest_path, f"the manifest of run {root}")
        config, stages = m.get("config"), m.get("stages")
        if not isinstance(config, dict) or not isinstance(stages, dict):
            raise RunIntegrityError(
                f"{manifest_path} has no 'config' object or no 'stages' object; the manifest is "
                "damaged: rerun `vidrec run` into a new --out directory"
            )
        if config_hash(config) != m.get("config_hash"):
            raise RunIntegrityError(
                f"{manifest_path}: its config hashes to {config_hash(config)} but the manifest "
                f"records config_hash {m.get('config_hash')!r}; the manifest was edited, so its "
                "artifacts cannot be trusted: rerun `vidrec run` into a new --out directory"
            )
        self = cls.__new__(cls)
        self.path = root
        self.config = config
        self.config_hash = m["config_hash"]
        self.manifest_path = manifest_path
        self._verified = {}
        self._lock = None
        self._observer = None
        self.manifest = m
        if write:
            if not (root / MARKER_FILE).is_file() and not _legacy_manifest(root):
                _refuse_foreign(root)
            self._lock = _acquire(root, exclusive=True)
            try:
                self._root = root.resolve()
                self._ledger_path = root / LEDGER_FILE
                self._ledger = self._read_ledger()
                self._observer = self._observe
                add_write_observer(self._observer)
            except BaseException:
                self.close()
                raise
        return self

    def _load_or_init(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            try:
                m = json.loads(self.manifest_path.read_text("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise RunDirError(
                    f"{self.manifest_path} is not valid JSON ({exc}); delete the run "
                    "directory or choose another --out"
                ) from None
            except OSError as exc:
                raise RunDirError(f"cannot read {self.manifest_path}: {exc}") from None
            if not isinstance(m, dict) or not isinstance(m.get("stages"), dict):
                raise RunDirError(
                    f"{self.manifest_path} is not a vidrec manifest; delete the run directory "
                    "or choose another --out"
                )
            if m.get("config_hash") != self.config_hash:
                log.warning(
                    "run directory %s was made with another config (hash %s, now %s): "
                    "all stages will run again",
                    self.path,
                    m.get("config_hash"),
                    self.config_hash,
                )
                old = sorted(set(m["stages"]) | set(m.get(_DISCARD, [])))
                m = self._fresh()
                m[_DISCARD] = old
            return m
        return self._fresh()

    def _fresh(self) -> dict[str, Any]:
        return {
            "kind": "vidrec-run",
            "run_id": uuid.uuid4().hex,
            "config": self.config,
            "config_hash": self.config_hash,
            "seed": self.config.get("seed"),
            "packages": package_versions(),
            "machine": machine_info(),
            "git_commit": git_commit(),
            "command": sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stages": {},
        }

    @property
    def run_id(self) -> str | None:
        """Return the run's id (None for a manifest written before run ids existed)."""
        value = self.manifest.get("run_id")
        return value if isinstance(value, str) else None

    def save(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)
        atomic_write_json(self.path / "config.json", self.config)

    def stage_dir(self, name: str) -> Path:
        d = self.path / name
        if d.is_symlink():
            raise RunDirError(
                f"stage directory {d} is a symbolic link (to {os.readlink(d)}); vidrec writes "
                "only inside its run directory and never through a link: remove the link"
            )
        return make_dirs(d)

    # ------------------------------------------------------------------ integrity
    def redo_hint(self, stage: str) -> str:
        """Return the command that rebuilds `stage`: the run's own command, pointed at this
        directory (it may have been moved or copied), plus --redo."""
        argv = self.manifest.get("command")
        here = str(self.path)
        if isinstance(argv, list) and len(argv) > 1 and argv[1] == "run":
            args: list[str] = []
            it = iter(a for a in argv[2:] if isinstance(a, str))
            for a in it:
                if a in ("--redo", "--out"):
                    next(it, None)
                elif not a.startswith(("--redo=", "--out=")):
                    args.append(a)
            return "vidrec run " + shlex.join([*args, "--out", here, "--redo", stage])
        return f"vidrec run --out {shlex.quote(here)} --redo {stage} (with the run's other options)"

    def stage_digest(self, name: str) -> str | None:
        """Return the digest of a finished stage's recorded artifacts (None when not done)."""
        st = self.manifest["stages"].get(name)
        if not st or st.get("status") != "done":
            return None
        return _digest(dict(st.get("artifacts", {})))

    def verify_stage(self, name: str) -> str:
        """Check a finished stage's files against the manifest; return the stage's digest.

        Raises RunIntegrityError when its provenance names another run or an artifact is
        missing or has changed. Each stage is checked once per process (and trusted after
        this process recorded it).
        """
        digest = self.stage_digest(name)
        if digest is None:
            raise RunDirError(
                f"run {self.path}: stage {name} has not finished; finish the run with "
                f"`vidrec run --out {self.path}`"
            )
        if self._verified.get(name) == digest:
            return digest
        artifacts: dict[str, str] = self.manifest["stages"][name].get("artifacts", {})
        fix = f"rebuild the stage: {self.redo_hint(name)}"
        self._check_provenance(name, artifacts, fix)
        for rel, recorded in artifacts.items():
            p = resolve_inside(self.path, rel, "manifest artifact path")
            if not p.is_file():
                raise RunIntegrityError(
                    f"run {self.path}: artifact {rel} of stage {name} is missing (the manifest "
                    f"records it with sha256 {short_digest(recorded)}); restore it, or {fix}"
                )
            found = sha256_file(p)
            if found != recorded:
                raise RunIntegrityError(
                    f"run {self.path}: artifact {rel} of stage {name} has changed since the run "
                    f"wrote it: the manifest records sha256 {short_digest(recorded)}, the file "
                    f"has {short_digest(found)} (edited, damaged, or replaced by a file from "
                    f"another run). Refusing to use it: restore the file, or {fix}"
                )
        self._verified[name] = digest
        return digest

    def _check_provenance(self, name: str, artifacts: dict[str, str], fix: str) -> None:
        rel = f"{name}/{PROVENANCE_FILE}"
        p = self.path / name / PROVENANCE_FILE
        if rel not in artifacts or not p.is_file():
            return  # a stage recorded before provenance files existed; its hashes still count
        try:
            prov = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError):
            return  # unreadable: the hash check names the file
        if not isinstance(prov, dict):
            return
        theirs = (prov.get("run_id"), prov.get("config_hash"))
        mine = (self.run_id, self.config_hash)
        differs = prov.get("config_hash") != self.config_hash or (
            self.run_id is not None
            and prov.get("run_id") is not None
            and prov.get("run_id") != self.run_id
        )
        if differs:
            raise RunIntegrityError(
                f"run {self.path}: stage directory {name}/ was written by another run (run id "
                f"{theirs[0]}, config hash {theirs[1]}), not by this one (run id {mine[0]}, "
                f"config hash {mine[1]}): it was copied in from elsewhere and its artifacts do "
                f"not belong with this run's. Refusing to use it: {fix}"
            )

    def stale_inputs(self, name: str, inputs: Iterable[str]) -> list[str]:
        """Return the upstream stages whose output changed since `name` was built from them.

        Compares the digests `name` recorded for `inputs` with their current digests; a stage
        recorded without lineage (older manifests) has no stale inputs.
        """
        recorded = self.manifest["stages"].get(name, {}).get("inputs")
        if not isinstance(recorded, dict):
            return []
        return [up for up in inputs if recorded.get(up) != self.stage_digest(up)]

    def is_done(self, name: str, inputs: Sequence[str] = ()) -> bool:
        """Return whether stage `name` is finished and current; refuse it when tampered with.

        False when it is not done, or when one of `inputs` (the stages it is built from) has
        changed since (it must run again). Raises RunIntegrityError when its files no longer
        match the manifest or were written by another run.
        """
        st = self.manifest["stages"].get(name)
        if not st or st.get("status") != "done":
            return False
        self.verify_stage(name)
        stale = self.stale_inputs(name, inputs)
        if stale:
            log.warning(
                "stage %s was built from an earlier output of %s (redone since): running it again",
                name,
                ", ".join(stale),
            )
            return False
        return True

    def verify_done(self, stages: Sequence[str]) -> None:
        """Raise RunDirError unless every stage of `stages` is finished (no files are read)."""
        missing = [s for s in stages if self.manifest["stages"].get(s, {}).get("status") != "done"]
        if missing:
            raise RunDirError(
                f"run {self.path} has not finished stage(s) {missing}; rerun `vidrec run` with "
                "the same --out to complete it"
            )

    def verify(self, stages: Sequence[str], inputs: Mapping[str, Sequence[str]]) -> None:
        """Check that `stages` are finished, unchanged, and built from each other's current
        outputs (`inputs[stage]` lists the stages it is built from); raise otherwise.

        For loaders outside a run (serving, A/B): nothing is rerun, every problem is refused.
        """
        self.verify_done(stages)
        for s in stages:
            self.verify_stage(s)
        for s in stages:
            stale = self.stale_inputs(s, inputs.get(s, ()))
            if stale:
                raise RunIntegrityError(
                    f"run {self.path}: stage {s} was built from an earlier output of "
                    f"{', '.join(stale)} (redone after {s} finished), so its artifacts do not "
                    f"belong with the current ones. Refusing to serve a mix: finish the run with "
                    f"the command that made it (stale stages run again), e.g. {self.redo_hint(s)}"
                )

    # ------------------------------------------------------------------ bookkeeping
    def _write_provenance(self, name: str, inputs: dict[str, str]) -> None:
        """provenance.json in the stage directory: run, config and the data its artifacts came from."""
        data_stage = self.manifest["stages"].get("data", {})
        atomic_write_json(
            self.path / name / PROVENANCE_FILE,
            {
                "stage": name,
                "run_id": self.run_id,
                "config_hash": self.config_hash,
                "config": self.config,
                "git_commit": git_commit(),  # the code that built this stage
                "inputs": inputs,
                "data_artifacts": data_stage.get("artifacts", {})
                if name != "data"
                else "this stage",
            },
        )

    def _mark_discard(self, name: str) -> None:
        """Remember (in the manifest, across processes) that `name`'s directory holds an
        attempt that must not be continued: it is cleared before the stage runs again."""
        pending = self.manifest.setdefault(_DISCARD, [])
        if name not in pending:
            pending.append(name)

    def forget(self, name: str) -> None:
        """Mark a stage as not done so that it runs again."""
        self._verified.pop(name, None)
        if self.manifest["stages"].pop(name, None) is not None:
            self._mark_discard(name)
            self.save()

    def record(
        self,
        name: str,
        seconds: float,
        info: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
    ) -> None:
        """Mark a stage done, hashing every file under its directory.

        `inputs` maps the stages it was built from to their digests (its lineage).
        """
        prefix = f"{name}/"
        vanished = {
            r for r in self._ledger if r.startswith(prefix) and not os.path.lexists(self.path / r)
        }
        if vanished:  # renamed temporaries and the like: keep the ledger short
            self._ledger -= vanished
            self._rewrite_ledger()
        artifacts = {}
        for p in self._stage_files(name):  # what this run wrote, never a stranger's file
            if not p.name.startswith("."):
                artifacts[str(p.relative_to(self.path))] = sha256_file(p)
        peak = peak_rss_mb()
        self.manifest["stages"][name] = {
            "status": "done",
            "seconds": round(seconds, 3),
            "peak_rss_mb": None if peak is None else round(peak, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime": runtime_settings(),
            # the code that built this stage: a run resumed after an upgrade mixes commits
            "git_commit": git_commit(),
            **({"inputs": inputs} if inputs is not None else {}),
            "artifacts": artifacts,
            **(info or {}),
        }
        self._verified[name] = _digest(artifacts)
        self.save()

    def run_stage(
        self,
        name: str,
        fn: Callable[[Path], dict[str, Any] | None],
        inputs: Sequence[str] | None = None,
    ) -> StageResult:
        """Run `fn(stage_dir)` unless the stage is done and current; record time, memory, hashes.

        `inputs` are the stages it is built from (all earlier stages of the pipeline): their
        files are checked before it runs, their digests recorded as its lineage, and a change
        of any of them makes it run again. None records no lineage.
        """
        if self.is_done(name, inputs or ()):
            log.info("stage %-16s already done, skipped", name)
            return StageResult(name, True, 0.0)
        if self.manifest["stages"].get(name, {}).get("status") == "done":
            self._mark_discard(name)  # done but stale: its checkpoints saw the old inputs
        lineage = None
        if inputs is not None:
            lineage = {up: self.verify_stage(up) for up in inputs if self.stage_digest(up)}
        log.info("stage %-16s running", name)
        if name in self.manifest.get(_DISCARD, []):
            # an interrupted attempt of this config is continued (trainers resume from their
            # checkpoints); any other attempt's files go, so that nothing resumes from them
            # and the manifest hashes only what this attempt wrote
            self._discard(name)
            self.manifest[_DISCARD].remove(name)
        self.manifest["stages"][name] = {"status": "running"}
        self.save()
        out = self.stage_dir(name)
        self._remove_stale_temporaries(name)
        t0 = time.perf_counter()
        info = fn(out)
        dt = time.perf_counter() - t0
        # the stage is complete: its models stay, the checkpoints it could resume from go
        self._discard(name, checkpoints_only=True)
        self._write_provenance(name, lineage or {})
        self.record(name, dt, info, lineage)
        peak = peak_rss_mb()
        memory = "" if peak is None else f" (peak RSS {peak:.0f} MB)"
        log.info("stage %-16s done in %.1f s%s", name, dt, memory)
        return StageResult(name, False, dt)


def serving_cg_dir(run: str | Path) -> Path:
    """The candidate generator that serves the run's test window and `vidrec recommend`: the
    model refit on everything before `valid_end` when the run made one, else the first model."""
    refit = Path(run) / "candidate_gen" / "serving_model"
    return refit if (refit / "model.pt").is_file() else Path(run) / "candidate_gen" / "model"


def served_index_dir(run: str | Path, config: dict[str, Any]) -> Path:
    """The index the run serves: index/<retrieval.index> ("annoy" for configs without it)."""
    return Path(run) / "index" / index_kind(config["retrieval"])


def load_served_index(run: str | Path, config: dict[str, Any], fix: str) -> tuple[Any, Path]:
    """Return (the index the run serves, its directory), refusing another kind of index there
    (RunIntegrityError ending with `fix`)."""
    from vidrec.candidate_gen.index import load_index

    where = served_index_dir(run, config)
    index = load_index(where)
    if index.kind != where.name:
        raise RunIntegrityError(
            f"{where} holds a {index.kind!r} index, not the {where.name!r} index the run's "
            f"retrieval.index names: {fix}"
        )
    return index, where


def check_index_matches_model(
    run: str | Path,
    index_dir: str | Path,
    index_dim: int,
    index_ids: np.ndarray,
    model_dim: int,
    catalog_ids: np.ndarray,
    fix: str,
) -> None:
    """Refuse an index that another model or catalog built (RunIntegrityError).

    Its vectors must have the candidate generator's embedding dimension, and every item id in
    it must be in the run's catalog: an index copied in from another run fails one or both.
    """
    if int(index_dim) != int(model_dim):
        raise RunIntegrityError(
            f"run {run}: the index in {index_dir} holds {index_dim}-dimensional vectors but the "
            f"candidate generator of this run makes {model_dim}-dimensional ones: the index was "
            f"built by another model and would return wrong candidates; {fix}"
        )
    ids = np.asarray(index_ids)
    unknown = ids[~np.isin(ids, np.asarray(catalog_ids))]
    if len(unknown):
        raise RunIntegrityError(
            f"run {run}: the index in {index_dir} holds {len(unknown)} item id(s) that are not "
            f"in this run's catalog (first: {np.sort(unknown)[:5].tolist()}): it was built on "
            f"another catalog; {fix}"
        )
