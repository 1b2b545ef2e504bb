"""HNSW candidate index (faiss): the graph index that keeps its recall on large catalogs.

`HnswIndex` implements `CandidateIndex` with the conventions of `candidate_gen.index` (ids in
and out, per-query exclusions, -1 / -inf padding, index.json written last, memory-mapped
loading, integrity checks); `candidate_gen.index` re-exports it and `load_index` opens it.
faiss is imported with this module, so only a run that serves HNSW loads it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np
import torch

from vidrec.candidate_gen.index import (
    _IDS_FILE,
    INDEX_META_FILE,
    _ApproximateIndex,
    _checked_lookup,
    _exclusion_pairs,
    _IdLookup,
    _load_ids,
    _max_norm,
    _meta_file,
    _mips_max_norm,
    _read_meta,
    _validate_items,
    _validate_k,
    _validate_queries,
)
from vidrec.features.atomic import atomic_path
from vidrec.features.integrity import ArtifactError, require_int

__all__ = ["HnswIndex", "HNSW_METRICS"]

# "mips" (default): L2 over MIPS-augmented vectors (see HnswIndex); "ip": faiss's own inner
# product metric over the raw vectors
HNSW_METRICS: tuple[str, ...] = ("mips", "ip")
_SEED_LIMIT = 1 << 63  # faiss's level generator takes an int64 seed


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _threads(n_threads: int | None) -> int:
    """Return the search threads: `n_threads`, or torch's intra-op thread count when None."""
    if n_threads is None:
        return max(1, int(torch.get_num_threads()))
    return _positive_int("n_threads", n_threads)


@contextlib.contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    """Run faiss with `n` OpenMP threads, then restore the previous count (process-wide)."""
    before = faiss.omp_get_max_threads()
    if n == before:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _view(vector: object, dtype: type) -> np.ndarray:
    """Return a read-only numpy view of a faiss vector (no copy; the owner must stay alive)."""
    n = int(vector.size())  # type: ignore[attr-defined]
    if n == 0:
        return np.zeros(0, dtype=dtype)
    arr = faiss.rev_swig_ptr(vector.data(), n)  # type: ignore[attr-defined]
    arr.flags.writeable = False
    return arr


def _width(need: np.ndarray, k: int, size: int) -> np.ndarray:
    """Return how many results to ask the graph for per query: `need` (k + exclusions) rounded
    up to a quarter-octave grid (queries with similar counts share one faiss call; at most 25%
    more than needed), exactly k without exclusions, and at most the index size."""
    need = np.asarray(need, dtype=np.int64)
    octave = np.floor(np.log2(np.maximum(need, 1))).astype(np.int64)
    step = np.left_shift(1, np.maximum(octave - 2, 0))
    width = -(-need // step) * step
    return np.minimum(np.where(need == k, k, width), size)


class HnswIndex(_ApproximateIndex):
    """Approximate inner-product top-k with faiss's HNSW graph (`IndexHNSWFlat`).

    `metric="mips"` (the default) searches L2 over MIPS-augmented vectors, as `AnnoyIndex`'s
    "mips" does with angles: with M the largest item norm, item v is stored as
    [v, sqrt(M² − |v|²)] and a query u is asked as [u, 0], so |q − x|² = |u|² + M² − 2 u·v and
    the L2 order is exactly the u·v order. `metric="ip"` is faiss's own inner-product HNSW over
    the raw vectors; on clustered and low-rank vectors (as learned embeddings are) its graph
    finds far fewer of the true top-k than the augmented one at the same `ef_search` (on
    isotropic Gaussian vectors it is the other way round).

    `m` is HNSW's M (links per node; 2M on the bottom layer), `ef_construction` the candidate
    list while building, `ef_search` the candidate list while searching (raised to the number
    of results asked for: faiss returns at most ef results). Scores are u·v of the returned
    items computed from the stored vectors (exact in float32, like `ExactIndex`'s), and each
    row is sorted by them.

    Exclusions: query q asks the graph for k + len(exclude[q]) items (rounded up, see
    `_width`) and drops the excluded ones; a query left with fewer than k asks again for twice
    as many, and one that needs the whole index is answered exactly from the stored vectors,
    so a row is padded only when fewer than k items remain.

    Determinism: the graph's levels come from faiss's generator seeded with `seed`, and a build
    with one thread (`n_jobs=1`, the default) inserts the items in a fixed order (in chunks of
    `_ADD_CHUNK`), so the same vectors, seed and parameters give the same graph and the same
    results. With `n_jobs` > 1 faiss inserts the items of a chunk concurrently; faiss does not
    document that the links are then independent of the threads' timing (faiss 1.15 gave the
    same graph in small checks), so a multi-threaded build is not promised to repeat. Searches
    are deterministic for any thread count: each query is searched alone.
    """

    kind: ClassVar[str] = "hnsw"
    HNSW_FILE: ClassVar[str] = "items.faiss"
    _ADD_CHUNK: ClassVar[int] = 1 << 16  # items per faiss add (bounds the augmented copy)
    _SEARCH_ELEMENTS: ClassVar[int] = 1 << 22  # results per faiss search call (queries x width)
    _SCORE_ELEMENTS: ClassVar[int] = 1 << 22  # floats gathered per block when scoring

    def __init__(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        m: int = 32,
        ef_construction: int = 300,
        ef_search: int = 1600,
        seed: int = 0,
        n_jobs: int = 1,
        metric: str = "mips",
    ) -> None:
        if metric not in HNSW_METRICS:
            raise ValueError(f"metric must be one of {HNSW_METRICS}, got {metric!r}")
        self.m = _positive_int("m", m, 2)
        self.ef_construction = _positive_int("ef_construction", ef_construction)
        self.ef_search = _positive_int("ef_search", ef_search)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not 0 <= seed < _SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**63), got {seed}")
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be -1 (all cores) or >= 1, got {n_jobs!r}")
        v, self._ids = _validate_items(vectors, ids)
        self.seed = int(seed)
        self.metric = metric
        self._dim = int(v.shape[1])
        self.max_norm, norms = _mips_max_norm(v) if metric == "mips" else (1.0, None)
        index = self._new_faiss_index()
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        index.hnsw.rng = faiss.RandomGenerator(self.seed)
        threads = (os.cpu_count() or 1) if n_jobs == -1 else n_jobs
        with _omp_threads(threads):
            for c0 in range(0, v.shape[0], self._ADD_CHUNK):
                block = v[c0 : c0 + self._ADD_CHUNK]  # (C, E)
                if norms is not None:
                    extra = np.sqrt(
                        np.maximum(self.max_norm**2 - norms[c0 : c0 + len(block)] ** 2, 0)
                    )
                    block = np.hstack([block, extra[:, None].astype(np.float32)])  # (C, E + 1)
                index.add(np.ascontiguousarray(block, dtype=np.float32))
        self._attach(index)
        self._lookup = _IdLookup(self._ids)

    # -- faiss
    def _stored_dim(self) -> int:
        """Return the dimension of the stored vectors (one more with the MIPS augmentation)."""
        return self._dim + 1 if self.metric == "mips" else self._dim

    def _faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self.metric == "mips" else faiss.METRIC_INNER_PRODUCT

    def _new_faiss_index(self) -> faiss.IndexHNSWFlat:
        return faiss.IndexHNSWFlat(self._stored_dim(), self.m, self._faiss_metric())

    def _attach(self, index: faiss.IndexHNSWFlat) -> None:
        """Keep `index` and a read-only view (N, stored dim) of the vectors it stores."""
        self._index = index
        self._params: dict[int, faiss.SearchParametersHNSW] = {}
        storage = faiss.downcast_index(index.storage)
        n, d = int(storage.ntotal), self._stored_dim()
        flat = faiss.rev_swig_ptr(storage.get_xb(), n * d)
        flat.flags.writeable = False  # a loaded index's vectors are a read-only memory map
        self._stored = flat.reshape(n, d)

    # -- CandidateIndex
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: list[np.ndarray] | None = None,
        *,
        ef_search: int | None = None,
        n_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the approximate top-k (ids (Q, k) int64, scores (Q, k) float32), best first.

        `ef_search` overrides the index's setting for this call. faiss searches the queries of
        one call on `n_threads` OpenMP threads (default: torch.get_num_threads(), as
        `ExactIndex`'s products use); the results do not depend on the thread count, and a
        single query runs on the calling thread.
        """
        q = _validate_queries(queries, self.dim)
        k = _validate_k(k)
        ef = self.ef_search if ef_search is None else _positive_int("ef_search", ef_search)
        threads = _threads(n_threads)
        n_q, n = q.shape[0], self.size
        ex_rows, ex_pos = _exclusion_pairs(
            exclude, n_q, self._lookup.sorted_ids, self._lookup.order
        )
        ex_keys = ex_rows * n + ex_pos  # sorted by query row
        extra = np.bincount(ex_rows, minlength=n_q) if ex_rows.size else np.zeros(n_q, np.int64)
        if self.metric == "mips":
            q = np.hstack([q, np.zeros((n_q, 1), dtype=np.float32)])  # (Q, E + 1)
        out_pos = np.full((n_q, k), -1, dtype=np.int64)
        out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        pending = np.arange(n_q, dtype=np.int64)
        width = _width(k + extra, k, n) if ex_rows.size else np.full(n_q, min(k, n))  # (Q,)
        with _omp_threads(threads if n_q > 1 else faiss.omp_get_max_threads()):
            while pending.size:
                again = []
                for w in np.unique(width[pending]).tolist():
                    rows = pending[width[pending] == w]
                    if w >= n:  # the whole index: exact over the stored vectors
                        self._exhaustive(q, rows, k, ex_rows, ex_pos, out_pos, out_scores)
                        continue
                    short = self._graph(q, rows, k, w, max(ef, w), ex_keys, out_pos, out_scores)
                    width[short] = np.minimum(2 * w, n)
                    again.append(short)
                pending = np.sort(np.concatenate(again)) if again else pending[:0]
        found = out_pos >= 0
        out_ids = np.where(found, self._ids[np.where(found, out_pos, 0)], -1)
        return out_ids, out_scores

    def _graph(
        self,
        q: np.ndarray,
        rows: np.ndarray,
        k: int,
        w: int,
        ef: int,
        ex_keys: np.ndarray,
        out_pos: np.ndarray,
        out_scores: np.ndarray,
    ) -> np.ndarray:
        """Search queries `rows` for `w` items each (candidate list `ef`), drop the excluded,
        write the best k of the rows that kept at least k; return the rows that did not."""
        params = self._params.get(ef)
        if params is None:  # kept per ef: faiss only reads it, and making one costs a query's
            params = faiss.SearchParametersHNSW()  # worth of microseconds
            params.efSearch = int(ef)
            self._params[ef] = params
        n = self.size
        short = []
        block = max(1, self._SEARCH_ELEMENTS // w)
        sub = max(1, self._SCORE_ELEMENTS // (w * self._stored_dim()))
        for b0 in range(0, len(rows), block):
            r = rows[b0 : b0 + block]
            _, pos = self._index.search(q[r], w, params=params)  # (B, w) best first, -1 padded
            keep = pos >= 0
            if ex_keys.size:
                keep &= ~np.isin(r[:, None] * n + pos, ex_keys)
            every = bool(keep.all())
            scores = np.empty(pos.shape, dtype=np.float32)
            for s0 in range(0, len(r), sub):  # u·v of the kept items, from the stored vectors
                s1 = s0 + sub
                at = pos[s0:s1] if every else np.where(keep[s0:s1], pos[s0:s1], 0)
                got = np.matmul(self._stored[at], q[r[s0:s1], :, None])[..., 0]  # (b, w)
                scores[s0:s1] = got if every else np.where(keep[s0:s1], got, -np.inf)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # the graph's order on ties
            best_pos = np.take_along_axis(pos, order, axis=1)
            best_scores = np.take_along_axis(scores, order, axis=1)
            enough = np.full(len(r), True) if every else keep.sum(axis=1) >= k
            if enough.all():
                out_pos[r], out_scores[r] = best_pos, best_scores
            else:
                out_pos[r[enough]], out_scores[r[enough]] = best_pos[enough], best_scores[enough]
                short.append(r[~enough])
        return np.concatenate(short) if short else rows[:0]

    def _exhaustive(
        self,
        q: np.ndarray,
        rows: np.ndarray,
        k: int,
        ex_rows: np.ndarray,
        ex_pos: np.ndarray,
        out_pos: np.ndarray,
        out_scores: np.ndarray,
    ) -> None:
        """Write the exact top-k of queries `rows` (ascending) over every stored vector."""
        n = self.size
        kk = min(k, n)
        block = max(1, self._SCORE_ELEMENTS // n)
        for b0 in range(0, len(rows), block):
            r = rows[b0 : b0 + block]
            scores = q[r] @ self._stored.T  # (B, N)
            lo, hi = np.searchsorted(ex_rows, [r[0], r[-1] + 1])
            sel = np.isin(ex_rows[lo:hi], r)
            scores[np.searchsorted(r, ex_rows[lo:hi][sel]), ex_pos[lo:hi][sel]] = -np.inf
            if kk < n:
                part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
                part.sort(axis=1)  # position order, so that ties keep it
            else:
                part = np.broadcast_to(np.arange(n), scores.shape)
            top = np.take_along_axis(scores, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            pos = np.take_along_axis(part, order, axis=1)
            s = np.take_along_axis(top, order, axis=1)
            valid = np.isfinite(s)
            out_pos[r, :kk] = np.where(valid, pos, -1)
            out_scores[r, :kk] = np.where(valid, s, -np.inf)

    # -- persistence
    def save(self, directory: str | Path) -> Path:
        """Write items.faiss, ids.npy and index.json (last) into `directory`; return it."""
        d = Path(directory)
        path = d / self.HNSW_FILE
        with atomic_path(path) as tmp:
            try:
                faiss.write_index(self._index, str(tmp))
            except RuntimeError as exc:
                raise OSError(f"faiss could not write {path}: {_faiss_message(exc)}") from None
        return self._save_ids_and_meta(
            d,
            {
                "m": self.m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
                "hnsw_file": self.HNSW_FILE,
                "hnsw_file_bytes": path.stat().st_size,
                "faiss_version": getattr(faiss, "__version__", None),
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> HnswIndex:
        """Return the HnswIndex saved in `directory`; its stored vectors are memory-mapped.

        Before faiss reads the file, its size is checked against index.json; after, that it is
        an HNSW index of the recorded dimension, metric, item count and M, and that every link
        of its graph points at an item of a layer the item is on (faiss follows links
        unchecked), and the ids against both. Anything else is an ArtifactError naming the file.
        """
        d = Path(directory)
        meta = _read_meta(d, cls.kind, HNSW_METRICS)
        meta_path = d / INDEX_META_FILE
        size, dim = meta["size"], meta["dim"]
        path = _meta_file(d, meta, "hnsw_file", cls.HNSW_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; rebuild the index")
        m = require_int(meta, "m", meta_path, minimum=2)
        ef_construction = require_int(meta, "ef_construction", meta_path, minimum=1)
        ef_search = require_int(meta, "ef_search", meta_path, minimum=1)
        seed = require_int(meta, "seed", meta_path)
        n_bytes = require_int(meta, "hnsw_file_bytes", meta_path, minimum=1)
        fix = (
            f"the file is damaged or belongs to another index than {INDEX_META_FILE} describes "
            f"(an HNSW index of {size} items of dimension {dim}, M {m}): rebuild the index"
        )
        if path.stat().st_size != n_bytes:
            raise ArtifactError(
                f"{path} has {path.stat().st_size:,} bytes, but {INDEX_META_FILE} says it was "
                f"saved with {n_bytes:,}: {fix}"
            )
        self = cls.__new__(cls)
        self._dim, self.metric = dim, str(meta.get("metric", "dot"))
        self.max_norm = _max_norm(meta, meta_path)
        self.m, self.ef_construction, self.ef_search, self.seed = (
            m,
            ef_construction,
            ef_search,
            seed,
        )
        ids_path = _meta_file(d, meta, "ids_file", _IDS_FILE)
        ids = _load_ids(ids_path, size)
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except (RuntimeError, MemoryError) as exc:
            raise ArtifactError(
                f"faiss cannot read {path} ({_faiss_message(exc)}): {fix}"
            ) from None
        if not isinstance(index, faiss.IndexHNSWFlat):
            raise ArtifactError(
                f"{path} holds a faiss {type(index).__name__}, not an HNSW index: {fix}"
            )
        storage = faiss.downcast_index(index.storage)
        want_d = self._stored_dim()
        if (
            index.d != want_d
            or index.metric_type != self._faiss_metric()
            or index.ntotal != size
            or not isinstance(storage, faiss.IndexFlat)
            or storage.d != want_d
            or storage.ntotal != size
            or storage.code_size != 4 * want_d
        ):
            raise ArtifactError(
                f"{path} holds {index.ntotal} vectors of dimension {index.d} (metric "
                f"{index.metric_type}), not {size} of dimension {want_d} (metric "
                f"{self._faiss_metric()}): {fix}"
            )
        _check_graph(index.hnsw, size, m, path, fix)
        self._ids = ids
        self._attach(index)
        self._lookup = _checked_lookup(ids, ids_path)
        return self


def _faiss_message(exc: BaseException) -> str:
    """Return the gist of a faiss exception (its last line, shortened)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    text = lines[-1].strip()
    return text if len(text) <= 300 else text[:297] + "..."


def _check_graph(hnsw: faiss.HNSW, n: int, m: int, path: Path, fix: str) -> None:
    """Refuse an HNSW graph whose links faiss would follow out of bounds.

    faiss keeps per item its number of layers (`levels`, >= 1), the start of its links
    (`offsets`, N + 1) and the links themselves (`neighbors`; -1 = unused), layer l's links at
    [offset + cum[l], offset + cum[l + 1]) with cum = `cum_nneighbor_per_level` (2M links on
    layer 0, M above). A search starts at `entry_point` on the top layer and, on layer l, reads
    the layer-l links of each item it reaches, so every link must name an item on that layer.
    Read in blocks, vectorized, without copying the (memory-mapped) arrays.
    """
    bad = f"{path}: its HNSW graph is inconsistent"
    levels = _view(hnsw.levels, np.int32)
    offsets = _view(hnsw.offsets, np.uint64)
    cum = _view(hnsw.cum_nneighbor_per_level, np.int32).astype(np.int64)
    neighbors = _view(hnsw.neighbors, np.int32)
    if levels.shape != (n,) or offsets.shape != (n + 1,) or cum.size < 2:
        raise ArtifactError(f"{bad} (its tables do not cover {n} items): {fix}")
    per_layer = np.diff(cum)
    if cum[0] != 0 or per_layer[0] != 2 * m or (per_layer[1:] != m).any():
        raise ArtifactError(f"{bad} (its layers do not hold M = {m} links per item): {fix}")
    if levels.min() < 1 or levels.max() > cum.size - 1:
        raise ArtifactError(f"{bad} (item layer counts out of range): {fix}")
    if offsets[0] != 0 or (np.diff(offsets).astype(np.int64) != cum[levels]).any():
        raise ArtifactError(f"{bad} (link offsets do not match the items' layers): {fix}")
    if int(offsets[-1]) != neighbors.size:
        raise ArtifactError(f"{bad} (the link table has the wrong length): {fix}")
    block = 1 << 24
    for b0 in range(0, neighbors.size, block):
        links = neighbors[b0 : b0 + block]
        if links.size and (links.min() < -1 or links.max() >= n):
            raise ArtifactError(f"{bad} (links point outside the {n} items): {fix}")
    top = int(levels.max()) - 1
    entry = int(hnsw.entry_point)
    if not 0 <= entry < n or int(hnsw.max_level) != top or int(levels[entry]) - 1 != top:
        raise ArtifactError(f"{bad} (its entry point is not an item of the top layer): {fix}")
    for layer in range(1, top + 1):
        items = np.flatnonzero(levels > layer)  # the items on this layer
        start = offsets[items].astype(np.int64) + cum[layer]
        slots = start[:, None] + np.arange(per_layer[layer])[None, :]
        links = neighbors[slots]
        links = links[links >= 0]
        if (levels[links] <= layer).any():
            raise ArtifactError(f"{bad} (layer-{layer} links to items below it): {fix}")
