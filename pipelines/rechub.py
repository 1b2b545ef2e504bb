"""torch-rechub's YoutubeDNN as a reference model, run in a separate virtual environment.

torch-rechub is never a dependency of vidrec. Its side is `pipelines/rechub_worker.py`, started
with the interpreter of a separate virtual environment that has torch-rechub installed
(`--rechub-python PATH`, default /tmp/rechub-venv/bin/python):

    python3 -m venv /tmp/rechub-venv
    /tmp/rechub-venv/bin/pip install -c constraints.txt torch-rechub

The worker is a live process that this side sends one command per line and that answers one
JSON line each (the protocol is in the worker's docstring), so that a driver can interleave
its own work with the worker's epochs (`benchmarks/rechub_compare.py`) or score the worker's
model after every epoch (`pipelines/experiments_loo.py`). Data goes through plain .npz files
written here from our featurizer's arrays (no pickles): the training examples
(`export_examples`) and the users to rank with the item codes to exclude per user
(`export_queries`). Item codes are our featurizer's item id codes (1.., 0 = unknown).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from vidrec.features.atomic import atomic_path
from vidrec.features.examples import CandidateExamples, UserFeatures

__all__ = [
    "DEFAULT_RECHUB_PYTHON",
    "RECHUB_TEMPERATURE",
    "RechubWorker",
    "export_examples",
    "export_queries",
    "rechub_python",
    "rechub_version",
]

DEFAULT_RECHUB_PYTHON = Path("/tmp/rechub-venv/bin/python")
WORKER = Path(__file__).resolve().with_name("rechub_worker.py")
RECHUB_TEMPERATURE = 0.02  # torch-rechub's YoutubeDNN example (examples/matching)


def rechub_python(path: str | Path | None) -> Path:
    """Return the separate environment's interpreter, refusing one without torch-rechub."""
    p = Path(path) if path is not None else DEFAULT_RECHUB_PYTHON
    if not p.is_file():
        raise FileNotFoundError(
            f"no Python interpreter at {p}; create the separate virtual environment first: "
            "python3 -m venv /tmp/rechub-venv && /tmp/rechub-venv/bin/pip install "
            "-c constraints.txt torch-rechub (never add torch-rechub to pyproject.toml), "
            "or pass --rechub-python PATH"
        )
    probe = subprocess.run(
        [str(p), "-c", "import torch_rechub, torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise RuntimeError(
            f"{p} cannot import torch_rechub ({probe.stderr.strip().splitlines()[-1:]}); "
            f"install it there: {p.parent / 'pip'} install -c constraints.txt torch-rechub"
        )
    return p


def rechub_version(python: Path) -> str | None:
    """Return the torch-rechub version installed for `python` (None if unknown)."""
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('torch-rechub'))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or None


def feature_arrays(features: UserFeatures, prefix: str = "") -> dict[str, np.ndarray]:
    """Return the user-side arrays the worker reads: watch-history and search-token bags
    (0-padded codes), user attribute codes, continuous features with the example age."""
    return {
        f"{prefix}history": features.history,  # (N, L) left-aligned, 0-padded
        f"{prefix}search_tokens": features.search_tokens,  # (N, S)
        f"{prefix}categorical": features.categorical,  # (N, C)
        f"{prefix}dense": np.concatenate(
            [features.continuous, features.example_age], axis=1
        ),  # (N, 3K+3)
    }


def export_examples(
    path: Path,
    examples: CandidateExamples,
    valid: CandidateExamples,
    *,
    embedding_dim: int,
    user_layers: tuple[int, ...],
) -> None:
    """Write training and validation examples as plain arrays for the worker (one .npz)."""
    schema = examples.featurizer.schema()
    payload: dict[str, Any] = {
        "label": examples.label_code.astype(np.int64),  # (N,) item id codes, 1.. (0 = OOV)
        **feature_arrays(examples.features),
        "valid_label": valid.label_code.astype(np.int64),
        **feature_arrays(valid.features, "valid_"),
        "embedding_dim": np.int64(embedding_dim),
        "n_item_codes": np.int64(schema["n_item_codes"]),
        "n_token_codes": np.int64(schema["n_token_codes"]),
        "categorical_cardinalities": np.asarray(
            schema["user_categorical_cardinalities"], dtype=np.int64
        ),
        "user_layers": np.asarray(user_layers, dtype=np.int64),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **payload)


def export_queries(path: Path, features: UserFeatures, exclude: Sequence[np.ndarray]) -> None:
    """Write the users to rank for the worker's "rank" command: their features and, per user,
    the item codes never to return (CSR: `exclude_ptr` (N+1,), `exclude_codes`)."""
    if len(exclude) != len(features):
        raise ValueError(f"one exclusion list per user: {len(exclude)} for {len(features)} users")
    lengths = np.fromiter((len(e) for e in exclude), np.int64, len(exclude))
    ptr = np.zeros(len(exclude) + 1, np.int64)
    np.cumsum(lengths, out=ptr[1:])
    codes = np.concatenate([np.zeros(0, np.int64), *(np.asarray(e, np.int64) for e in exclude)])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            **feature_arrays(features),
            exclude_ptr=ptr,
            exclude_codes=codes,
        )


class RechubWorker:
    """The torch-rechub side: a live worker process answering one JSON line per command."""

    def __init__(self, python: Path, data: Path, args: dict[str, Any], log: IO[str]) -> None:
        cmd = [str(python), str(WORKER), "--data", str(data)]
        for key, value in args.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": ""}
        self.log = log
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        if self.proc.stdin is None or self.proc.stdout is None:
            raise RuntimeError("could not open pipes to the torch-rechub worker")
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.flush()
            tail = Path(self.log.name).read_text()[-1500:] if hasattr(self.log, "name") else ""
            raise RuntimeError(
                f"the torch-rechub worker exited (code {self.proc.returncode}): {tail}"
            )
        reply = dict(json.loads(line))
        if "error" in reply:
            raise RuntimeError(f"torch-rechub worker: {reply['error']}")
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        """Return the worker's reply to `command` ("epoch", "eval" or a JSON command)."""
        self.stdin.write(command + "\n")
        self.stdin.flush()
        return self._read()

    def rank(self, queries: Path, out: Path, k: int) -> np.ndarray:
        """Return the top-k item codes (N, k) int64 of the users in `queries` (written by
        `export_queries`), best first; 0 pads a row with fewer than k rankable items."""
        self.ask(json.dumps({"rank": {"queries": str(queries), "out": str(out), "k": int(k)}}))
        with np.load(out, allow_pickle=False) as z:
            return np.asarray(z["codes"], np.int64)

    def __enter__(self) -> RechubWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker (it exits on "quit" or at the end of its input)."""
        if self.proc.poll() is None:
            try:
                self.stdin.write("quit\n")
                self.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
