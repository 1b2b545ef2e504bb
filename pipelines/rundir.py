"""The run directory: stage bookkeeping, artifact hashes and the manifest.

Layout of RUN_DIR:
    manifest.json          config, config hash, seed, package versions, git commit, and per stage:
                           status, wall time, peak memory, artifacts with sha256
    config.json            the resolved config (also inside every artifact's metadata)
    <stage>/...            each stage's artifacts (written atomically)
    report.json|md|html    the report

A stage counts as finished when the manifest lists it as done under the same config hash and
every artifact it listed still has the recorded hash; a rerun skips finished stages and an
interrupted stage starts again (trainers resume from their own checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from features.atomic import atomic_write_json
from features.integrity import resolve_inside
from pipelines.config import config_hash

log = logging.getLogger("vidrec")

_PACKAGES = ("vidrec", "torch", "numpy", "pandas", "pyarrow", "annoy", "lightgbm", "scikit-learn")


class RunDirError(RuntimeError):
    """The run directory does not match what is asked of it."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def git_commit() -> str | None:
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
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.path / "manifest.json"
        self.manifest = self._load_or_init()

    def _load_or_init(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            try:
                m = json.loads(self.manifest_path.read_text("utf-8"))
            except ValueError as exc:
                raise RunDirError(
                    f"{self.manifest_path} is not valid JSON ({exc}); delete the run "
                    "directory or choose another --out"
                ) from None
            if m.get("config_hash") != self.config_hash:
                log.warning(
                    "run directory %s was made with another config (hash %s, now %s): "
                    "all stages will run again",
                    self.path,
                    m.get("config_hash"),
                    self.config_hash,
                )
                m = self._fresh()
            return m
        return self._fresh()

    def _fresh(self) -> dict[str, Any]:
        return {
            "kind": "vidrec-run",
            "config": self.config,
            "config_hash": self.config_hash,
            "seed": self.config.get("seed"),
            "packages": package_versions(),
            "git_commit": git_commit(),
            "command": sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stages": {},
        }

    def save(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)
        atomic_write_json(self.path / "config.json", self.config)

    def stage_dir(self, name: str) -> Path:
        d = self.path / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def is_done(self, name: str) -> bool:
        st = self.manifest["stages"].get(name)
        if not st or st.get("status") != "done":
            return False
        for rel, digest in st.get("artifacts", {}).items():
            p = resolve_inside(self.path, rel, "manifest artifact path")
            if not p.exists() or sha256_file(p) != digest:
                log.warning(
                    "stage %s: artifact %s is missing or changed; running it again", name, rel
                )
                return False
        return True

    def _write_provenance(self, name: str) -> None:
        """provenance.json in the stage directory: the config and the data its artifacts came from."""
        data_stage = self.manifest["stages"].get("data", {})
        atomic_write_json(
            self.path / name / "provenance.json",
            {
                "stage": name,
                "config_hash": self.config_hash,
                "config": self.config,
                "git_commit": self.manifest.get("git_commit"),
                "data_artifacts": data_stage.get("artifacts", {})
                if name != "data"
                else "this stage",
            },
        )

    def forget(self, name: str) -> None:
        """Mark a stage as not done so that it runs again."""
        if self.manifest["stages"].pop(name, None) is not None:
            self.save()

    def record(self, name: str, seconds: float, info: dict[str, Any] | None = None) -> None:
        """Mark a stage done, hashing every file under its directory."""
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
            "artifacts": artifacts,
            **(info or {}),
        }
        self.save()

    def run_stage(self, name: str, fn: Callable[[Path], dict[str, Any] | None]) -> StageResult:
        """Run `fn(stage_dir)` unless the stage is already done; record time, memory, hashes."""
        if self.is_done(name):
            log.info("stage %-16s already done, skipped", name)
            return StageResult(name, True, 0.0)
        log.info("stage %-16s running", name)
        self.manifest["stages"][name] = {"status": "running"}
        self.save()
        t0 = time.perf_counter()
        info = fn(self.stage_dir(name))
        dt = time.perf_counter() - t0
        self._write_provenance(name)
        self.record(name, dt, info)
        log.info("stage %-16s done in %.1f s (peak RSS %.0f MB)", name, dt, peak_rss_mb())
        return StageResult(name, False, dt)
