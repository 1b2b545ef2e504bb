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
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from features.atomic import atomic_write_json, remove_stale_temporaries, write_error
from features.integrity import (
    ArtifactError,
    read_json_object,
    resolve_inside,
    sha256_file,
    short_digest,
)
from pipelines.config import config_hash

log = logging.getLogger("vidrec")

__all__ = [
    "PROVENANCE_FILE",
    "RunDir",
    "RunDirError",
    "RunIntegrityError",
    "StageResult",
    "check_index_matches_model",
    "package_versions",
    "runtime_settings",
    "sha256_file",
]

_PACKAGES = ("vidrec", "torch", "numpy", "pandas", "pyarrow", "annoy", "lightgbm", "scikit-learn")
PROVENANCE_FILE = "provenance.json"
# manifest key: stages whose directories hold an attempt that must not be continued
_DISCARD = "discard_before_running"


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float


class RunDir:
    """A run directory bound to one resolved config."""

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        self.config = config
        self.config_hash = config_hash(config)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self.manifest_path = self.path / "manifest.json"
        self._verified: dict[str, str] = {}  # stage -> digest checked against the files
        self.manifest = self._load_or_init()

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Return the existing run directory at `path`, bound to the config in its manifest.

        Nothing is written. Raises RunDirError when `path` holds no manifest and
        ArtifactError when the manifest is damaged.
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
        self.manifest = m
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
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(d, exc) from None
        return d

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
        d = self.path / name
        artifacts = {}
        if d.exists():
            for p in sorted(d.rglob("*")):
                if p.is_file() and not p.name.startswith("."):
                    artifacts[str(p.relative_to(self.path))] = sha256_file(p)
        self.manifest["stages"][name] = {
            "status": "done",
            "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
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
            if (self.path / name).is_dir():
                log.info("stage %s: discarding the files of its previous attempt", name)
                shutil.rmtree(self.path / name)
            self.manifest[_DISCARD].remove(name)
        self.manifest["stages"][name] = {"status": "running"}
        self.save()
        out = self.stage_dir(name)
        for p in remove_stale_temporaries(out):
            log.info("removed %s, left by an interrupted write", p)
        t0 = time.perf_counter()
        info = fn(out)
        dt = time.perf_counter() - t0
        self._write_provenance(name, lineage or {})
        self.record(name, dt, info, lineage)
        log.info("stage %-16s done in %.1f s (peak RSS %.0f MB)", name, dt, peak_rss_mb())
        return StageResult(name, False, dt)


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
