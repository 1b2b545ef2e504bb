"""Inner-product candidate indexes over item embeddings (SPEC §4).

Where it sits: the item tower exports one embedding per catalog item; an index over them
answers "the k items with the largest u·v" for user vectors u. `ExactIndex` is the brute-force
oracle (blocked matrix products, exact); `AnnoyIndex` (annoy's forest over MIPS-augmented
vectors) and `HnswIndex` (faiss's HNSW graph over the same augmentation, in
`candidate_gen.hnsw`, re-exported here and imported on first use) are the sub-linear
approximate indexes a run serves (`retrieval.index`). All implement `CandidateIndex`, so the
retriever and the ANN evaluation (recall of the served index's top-k against the exact top-k)
swap one for another.

Conventions shared by all:
- `ids` are the caller's item ids (int64); results are ids, not row positions.
- `exclude[q]` lists item ids that must not be returned for query q (e.g. already-watched
  items); ids that are not in the index are ignored.
- When fewer than k items remain, rows are padded with id -1 and score -inf.
- `save(dir)` writes every file atomically and `index.json` last, so a directory with an
  `index.json` is complete; `load(dir)` memory-maps the large files; `load_index(dir)` opens
  whichever kind the directory holds.
"""

from __future__ import annotations

import itertools
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import annoy
import numpy as np
import torch

from vidrec.candidate_gen.config import INDEX_KINDS
from vidrec.features.atomic import atomic_path, atomic_write_json
from vidrec.features.integrity import ArtifactError, read_json_object, require_int, resolve_inside

if TYPE_CHECKING:
    from vidrec.candidate_gen.hnsw import HnswIndex

__all__ = [
    "CandidateIndex",
    "ExactIndex",
    "AnnoyIndex",
    "HnswIndex",
    "INDEX_KINDS",
    "make_index",
    "load_index",
    "INDEX_META_FILE",
]

INDEX_META_FILE = "index.json"
_FORMAT_VERSION = 1
_IDS_FILE = "ids.npy"
# "mips" (default): annoy's angular metric over MIPS-augmented vectors (see AnnoyIndex);
# "dot": annoy's own dot metric (indexes saved before "mips" existed)
ANNOY_METRICS: tuple[str, ...] = ("mips", "dot")


def __getattr__(name: str) -> Any:
    # HnswIndex lives in candidate_gen.hnsw (it imports faiss); loaded on first use
    if name == "HnswIndex":
        from vidrec.candidate_gen.hnsw import HnswIndex

        return HnswIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@runtime_checkable
class CandidateIndex(Protocol):
    """An inner-product top-k index over item vectors."""

    @property
    def size(self) -> int:
        """Return the number of indexed items."""
        ...

    @property
    def dim(self) -> int:
        """Return the embedding dimension."""
        ...

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids (Q, k) int64, scores (Q, k) float32), best first, padded with -1/-inf."""
        ...

    def save(self, directory: str | Path) -> Path:
        """Write the index into `directory` and return it."""
        ...

    @classmethod
    def load(cls, directory: str | Path) -> CandidateIndex:
        """Return the index saved in `directory` (large files memory-mapped)."""
        ...


# ----------------------------------------------------------------------------- validation


def _validate_items(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"vectors must be a non-empty 2-D array (items, dim), got shape {v.shape}")
    if not np.issubdtype(v.dtype, np.number):
        raise TypeError(f"vectors must be numeric, got dtype {v.dtype}")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.isfinite(v).all():
        bad = int(np.flatnonzero(~np.isfinite(v).all(axis=1))[0])
        raise ValueError(
            f"vectors contain NaN or infinite values (first at row {bad}); check the exported "
            "item embeddings (a diverged model?)"
        )
    i = np.asarray(ids)
    if i.shape != (v.shape[0],):
        raise ValueError(
            f"ids must be a 1-D array with one id per vector ({v.shape[0]}), got shape {i.shape}"
        )
    if not np.issubdtype(i.dtype, np.integer):
        raise TypeError(f"ids must be integer item ids, got dtype {i.dtype}")
    i = np.ascontiguousarray(i, dtype=np.int64)
    if (i < 0).any():
        raise ValueError(
            f"ids must be >= 0 (-1 marks padding in results); first negative id: {int(i[i < 0][0])}"
        )
    uniq, counts = np.unique(i, return_counts=True)
    if len(uniq) != len(i):
        raise ValueError(
            f"ids must be unique; id {int(uniq[counts > 1][0])} occurs {int(counts.max())} times"
        )
    return v, i


def _validate_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape (Q, {dim}) to match the index, got {q.shape}")
    if not np.issubdtype(q.dtype, np.number):
        raise TypeError(f"queries must be numeric, got dtype {q.dtype}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(q).all():
        bad = int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])
        raise ValueError(f"queries contain NaN or infinite values (first at row {bad})")
    return q


def _validate_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _exclusion_pairs(
    exclude: list[np.ndarray] | None, n_queries: int, sorted_ids: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows, positions) int64 of the excluded (query, item row) pairs, rows ascending.

    `sorted_ids`/`order` are np.sort(ids) and its argsort; unknown item ids are dropped.
    """
    if exclude is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if len(exclude) != n_queries:
        raise ValueError(
            f"exclude must have one array of item ids per query ({n_queries}), got {len(exclude)}"
        )
    arrays = [np.asarray(e).reshape(-1) for e in exclude]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=n_queries)
    if lengths.sum() == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    flat = np.concatenate(arrays)
    if not np.issubdtype(flat.dtype, np.integer):
        raise TypeError(f"exclude must hold integer item ids, got dtype {flat.dtype}")
    flat = flat.astype(np.int64, copy=False)
    rows = np.repeat(np.arange(n_queries, dtype=np.int64), lengths)
    at = np.searchsorted(sorted_ids, flat)
    at_clipped = np.minimum(at, len(sorted_ids) - 1)
    known = sorted_ids[at_clipped] == flat
    return rows[known], order[at_clipped[known]]


def _read_meta(
    directory: Path, kind: str, metrics: tuple[str, ...] = ANNOY_METRICS
) -> dict[str, Any]:
    """Return the checked index.json of `directory` (kind, format, integer size and dim, and a
    metric among `metrics`, "dot" when absent)."""
    meta_path = directory / INDEX_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no {INDEX_META_FILE} in {directory}: not a saved index, or its save did not finish; "
            "rebuild the index"
        )
    meta = read_json_object(meta_path, f"the index in {directory}")
    if meta.get("kind") != kind:
        raise ArtifactError(
            f"{directory} holds a {meta.get('kind')!r} index, not {kind!r}; open it with "
            "vidrec.candidate_gen.index.load_index"
        )
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ArtifactError(
            f"{directory} has index format {meta.get('format_version')!r}; this version reads "
            f"{_FORMAT_VERSION}; rebuild the index"
        )
    if meta.get("metric", "dot") not in metrics:
        raise ArtifactError(
            f"{meta_path} says metric {meta.get('metric')!r}; vidrec {kind} indexes are "
            f"inner-product indexes ({' or '.join(repr(m) for m in metrics)}): rebuild the index"
        )
    meta["size"] = require_int(meta, "size", meta_path, minimum=1)
    meta["dim"] = require_int(meta, "dim", meta_path, minimum=1)
    return meta


def _max_norm(meta: dict[str, Any], meta_path: Path) -> float:
    """Return index.json's 'max_norm' (the MIPS augmentation's M; 1.0 when absent), checked."""
    max_norm = meta.get("max_norm", 1.0)
    if (
        isinstance(max_norm, bool)
        or not isinstance(max_norm, int | float)
        or not (math.isfinite(max_norm) and max_norm > 0)
    ):
        raise ArtifactError(
            f"{meta_path}: 'max_norm' must be a finite number > 0, got {max_norm!r}; "
            "rebuild the index"
        )
    return float(max_norm)


def _mips_max_norm(vectors: np.ndarray) -> tuple[float, np.ndarray]:
    """Return (M, norms (N,) float64): the largest item norm (1.0 for an all-zero catalog, so
    that scores stay finite) and every item's norm, for the MIPS augmentation."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)  # (N,)
    return (float(norms.max()) if norms.size and norms.max() > 0 else 1.0), norms


def _meta_file(directory: Path, meta: dict[str, Any], key: str, default: str) -> Path:
    """Return the file that index.json names under `key`, refusing paths leaving `directory`."""
    return resolve_inside(directory, meta.get(key, default), f"{INDEX_META_FILE} {key!r}")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        # a file handle, not a name: np.save would append ".npy" to the temporary name
        np.save(fh, np.asarray(arr))


def _load_npy(path: Path, what: str) -> np.ndarray:
    """Return the .npy array at `path` memory-mapped read-only (never unpickled)."""
    if not path.is_file():
        raise ArtifactError(f"{path} ({what}) is missing; the index is incomplete, rebuild it")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(
            f"{path} is not a readable .npy array of {what} ({exc}); the index is damaged, "
            "rebuild it"
        ) from None


def _load_ids(path: Path, size: int) -> np.ndarray:
    """Return the (size,) int64 item ids at `path`: unique and >= 0, as when they were saved."""
    ids = _load_npy(path, "item ids")
    if ids.shape != (size,) or ids.dtype != np.int64:
        raise ArtifactError(
            f"{path} holds {ids.dtype} {ids.shape}, but {INDEX_META_FILE} says {size} int64 item "
            "ids; the directory mixes files of different indexes: rebuild it"
        )
    return np.asarray(ids)


def _checked_lookup(ids: np.ndarray, path: Path) -> _IdLookup:
    """Return the id lookup of loaded ids, refusing duplicate or negative ones."""
    lookup = _IdLookup(ids)
    s = lookup.sorted_ids
    if len(s) and (s[0] < 0 or (np.diff(s) <= 0).any()):
        raise ArtifactError(
            f"{path} holds negative or repeated item ids, which a saved index never has; the "
            "file is damaged or was replaced: rebuild the index"
        )
    return lookup


def _check_annoy_file(path: Path, dim: int, n_items: int) -> None:
    """Refuse an .ann file that is not a sound forest over `n_items` items of dimension `dim`.

    annoy trusts its file: one built with another dimension loads without complaint and
    answers garbage, and child offsets beyond the file make it read out of bounds. Its `dot`
    node is int32 n_descendants, int32 children[2], float32 dot_factor, float32 v[dim]
    (4 + dim words); the "mips" index's `angular` node has no dot_factor but one more
    coordinate, so the same 4 + dim words; node i < n_items is item i (1 descendant); a node
    with up to K = 3 + dim descendants lists its items in the words after n_descendants; a
    larger one names two child nodes; the last node is a root over all items. Read once, in
    blocks, vectorized. `dim` is the index's embedding dimension (index.json's).
    """
    width = 4 + dim  # int32 words per node
    k = width - 1  # item slots of a leaf node (annoy's _K)
    n_bytes = path.stat().st_size
    fix = (
        f"the .ann file was built with another dimension or item count than {INDEX_META_FILE} "
        f"says (dim {dim}, {n_items} items), or it is damaged; rebuild the index"
    )
    if n_bytes == 0 or n_bytes % (4 * width):
        raise ArtifactError(
            f"{path} has {n_bytes:,} bytes, not a whole number of {4 * width}-byte nodes of a "
            f"dimension-{dim} annoy index: {fix}"
        )
    nodes = np.memmap(path, dtype="<i4", mode="r").reshape(-1, width)
    n_nodes = nodes.shape[0]
    if n_nodes <= n_items or int(nodes[-1, 0]) != n_items:
        raise ArtifactError(f"{path} does not hold a forest over {n_items} items: {fix}")
    block = 1 << 16
    for b0 in range(0, n_nodes, block):
        blk = np.asarray(nodes[b0 : b0 + block])  # (B, width)
        n_desc = blk[:, 0]
        is_item = np.arange(b0, b0 + len(blk)) < n_items
        if (n_desc[is_item] != 1).any():
            raise ArtifactError(f"{path} does not hold {n_items} item vectors of dim {dim}: {fix}")
        inner, n_in = blk[~is_item], n_desc[~is_item]
        if ((n_in < 1) | (n_in > n_items)).any():
            raise ArtifactError(f"{path} has tree nodes with impossible item counts: {fix}")
        leaf = n_in <= k
        slots = inner[leaf, 1 : 1 + k]  # (L, k): the first n_desc slots hold item numbers
        used = np.arange(k)[None, :] < n_in[leaf][:, None]
        kids = inner[~leaf, 1:3]  # (S, 2): child node numbers
        if (used & ((slots < 0) | (slots >= n_items))).any() or (
            (kids < 0) | (kids >= n_nodes)
        ).any():
            raise ArtifactError(f"{path} has tree nodes pointing outside the file: {fix}")


def _shared_tensor(a: np.ndarray) -> torch.Tensor:
    """Return a tensor sharing `a`'s memory (read-only memory maps included, never written)."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        # torch warns that it cannot protect read-only memory; the index only reads it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _mask_excluded(
    scores: torch.Tensor, i0: int, i1: int, ex_rows: np.ndarray, ex_pos: np.ndarray
) -> None:
    """Set scores (i1 - i0, b) of the excluded pairs with item rows in [i0, i1) to -inf."""
    if ex_pos.size == 0:
        return
    e0, e1 = np.searchsorted(ex_pos, [i0, i1])
    if e1 > e0:
        scores[torch.from_numpy(ex_pos[e0:e1] - i0), torch.from_numpy(ex_rows[e0:e1])] = -math.inf


def _merge(
    best_s: torch.Tensor,
    best_p: torch.Tensor,
    thr: torch.Tensor,
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the running top-k (b, k) merged with the pending candidates; raises `thr` in place.

    `pending` holds (query row (P,), item row (P,), score (P,)) of scores that beat their
    query's threshold when they were found.
    """
    b, kk = best_s.shape
    qi = torch.cat([c[0] for c in pending])
    p = torch.cat([c[1] for c in pending])
    s = torch.cat([c[2] for c in pending])
    # lay each query's candidates out in a row: (rows with candidates, max candidates per row)
    qi, order = torch.sort(qi, stable=True)
    p, s = p[order], s[order]
    counts = torch.bincount(qi, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(qi.numel()) - starts[qi]
    rows = counts.nonzero().squeeze(1)
    row_of = torch.full((b,), -1, dtype=torch.int64)
    row_of[rows] = torch.arange(rows.numel())
    width = int(counts.max())
    pad_s = torch.full((rows.numel(), width), -math.inf)
    pad_p = torch.zeros((rows.numel(), width), dtype=torch.int64)
    r = row_of[qi]
    pad_s[r, slot] = s
    pad_p[r, slot] = p
    cand_s = torch.cat([best_s[rows], pad_s], dim=1)  # (R, kk + width)
    cand_p = torch.cat([best_p[rows], pad_p], dim=1)
    top_s, sel = torch.topk(cand_s, kk, dim=1, sorted=False)
    best_s[rows] = top_s
    best_p[rows] = torch.gather(cand_p, 1, sel)
    thr[rows] = top_s.amin(dim=1)
    return best_s, best_p


class _IdLookup:
    """Maps item ids to row positions by binary search over the sorted ids."""

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable").astype(np.int64)
        self.sorted_ids = np.asarray(ids)[self.order]


# ----------------------------------------------------------------------------- exact


class ExactIndex:
    """Exact inner-product top-k by blocked matrix products (the oracle for `AnnoyIndex`).

    Queries are processed in blocks of `query_block` rows and items in blocks sized so that a
    score block holds about `block_elements` floats (the default, 4 MiB, stays in the cache).
    The first item block's top-k (torch.topk) gives each query a threshold, the k-th best score
    so far. Every later block is one matrix product (items x queries) and one max over groups
    of `GROUP` consecutive items; only the groups whose max beats their query's threshold are
    read again, and their scores above the threshold become candidates (while thresholds are
    still loose and most groups pass, every score of the block is compared instead). The
    candidates are merged into the running top-k, raising the thresholds, once they outnumber
    it twice over. After the first blocks almost no group passes, so a large search costs
    little more than its matrix products (benchmarks/exact_topk.py: 1.6-1.7x the time of the
    same blocked products for 1024 queries over 1M x 64 items on the 2-core AVX2 machine).
    torch's intra-op threads parallelise the products (torch.set_num_threads). Exclusions set
    the excluded scores to -inf.
    """

    kind: ClassVar[str] = "exact"
    VECTORS_FILE: ClassVar[str] = "vectors.npy"
    DEFAULT_QUERY_BLOCK: ClassVar[int] = 1024
    # 4 MiB of float32 scores per block: at 1M x 64 x 1,024 queries on the 2-core AVX2 machine
    # 1.74 s against 2.68 s with 32 MiB blocks (their products and group maxima leave the
    # cache); the AVX-512 machine had preferred 32 MiB
    DEFAULT_BLOCK_ELEMENTS: ClassVar[int] = 1 << 20
    GROUP: ClassVar[int] = 32  # items per group whose max is tested against the threshold
    _MERGE_FACTOR: ClassVar[int] = 2  # merge when candidates outnumber this x (queries x k)
    _DENSE_HITS: ClassVar[int] = 4  # filter every score when > 1/this of the groups pass

    def __init__(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        query_block: int = DEFAULT_QUERY_BLOCK,
        block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    ) -> None:
        if query_block < 1 or block_elements < 1:
            raise ValueError(
                f"query_block and block_elements must be >= 1, got {query_block}, {block_elements}"
            )
        self._vectors, self._ids = _validate_items(vectors, ids)
        self.query_block = int(query_block)
        self.block_elements = int(block_elements)
        self._lookup = _IdLookup(self._ids)
        self._tensor = _shared_tensor(self._vectors)

    @property
    def size(self) -> int:
        """Return the number of indexed items."""
        return int(self._vectors.shape[0])

    @property
    def dim(self) -> int:
        """Return the embedding dimension."""
        return int(self._vectors.shape[1])

    @property
    def ids(self) -> np.ndarray:
        """Return the item ids (N,) in row order."""
        return self._ids

    @property
    def vectors(self) -> np.ndarray:
        """Return the item vectors (N, E) float32 in row order."""
        return self._vectors

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the exact top-k (ids (Q, k) int64, scores (Q, k) float32), best first."""
        q = _validate_queries(queries, self.dim)
        k = _validate_k(k)
        n_q, n = q.shape[0], self.size
        ex_rows, ex_pos = _exclusion_pairs(
            exclude, n_q, self._lookup.sorted_ids, self._lookup.order
        )
        out_ids = np.full((n_q, k), -1, dtype=np.int64)
        out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        if n_q == 0:
            return out_ids, out_scores
        q_block = min(self.query_block, n_q)
        kk = min(k, n)
        q_all = torch.from_numpy(q)
        with torch.inference_mode():
            for q0 in range(0, n_q, q_block):
                q1 = min(q0 + q_block, n_q)
                # this query block's exclusions, sorted by item row for per-item-block slicing
                lo, hi = np.searchsorted(ex_rows, [q0, q1])
                blk_rows, blk_pos = ex_rows[lo:hi] - q0, ex_pos[lo:hi]
                by_pos = np.argsort(blk_pos, kind="stable")
                best_s, best_p = self._search_block(
                    q_all[q0:q1], kk, blk_rows[by_pos], blk_pos[by_pos]
                )
                s_np = best_s.numpy()
                p_np = best_p.numpy()
                valid = np.isfinite(s_np)  # excluded entries came back as -inf
                out_scores[q0:q1, :kk] = np.where(valid, s_np, -np.inf)
                out_ids[q0:q1, :kk] = np.where(valid, self._ids[p_np], -1)
        return out_ids, out_scores

    def item_block(self, n_queries: int) -> int:
        """Return the items per score block for `n_queries` queries (a multiple of GROUP)."""
        g = self.GROUP
        return max(g, (self.block_elements // n_queries) // g * g)

    def _search_block(
        self, qt: torch.Tensor, kk: int, ex_rows: np.ndarray, ex_pos: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the top-kk (scores (b, kk) float32, item rows (b, kk) int64) of queries `qt`.

        `ex_rows`/`ex_pos` (sorted by position) are the excluded (query row, item row) pairs.
        """
        n = self.size
        vt = self._tensor  # (N, E)
        first = min(n, max(self.item_block(qt.shape[0]), kk))
        scores = torch.mm(qt, vt[:first].T)  # (b, first): topk runs fastest on contiguous rows
        _mask_excluded(scores.T, 0, first, ex_rows, ex_pos)
        # unsorted top-k while merging; sorted once at the end
        best_s, best_p = torch.topk(scores, kk, dim=1, sorted=False)  # (b, kk)
        del scores
        if first < n:
            best_s, best_p = self._scan(qt, kk, best_s, best_p, first, ex_rows, ex_pos)
        best_s, order = torch.sort(best_s, dim=1, descending=True)
        return best_s, torch.gather(best_p, 1, order)

    def _scan(
        self,
        qt: torch.Tensor,
        kk: int,
        best_s: torch.Tensor,
        best_p: torch.Tensor,
        first: int,
        ex_rows: np.ndarray,
        ex_pos: np.ndarray,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the running top-kk (b, kk) updated with item rows [first, N) (unsorted)."""
        b, n, g = qt.shape[0], self.size, self.GROUP
        vt = self._tensor  # (N, E)
        q_t = qt.T  # (E, b)
        i_block = self.item_block(b)
        thr = best_s.amin(dim=1)  # (b,) the kk-th best score so far
        buf = torch.empty((i_block, b), dtype=torch.float32)  # scores, items x queries
        merge_at = self._MERGE_FACTOR * b * kk
        pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        n_pending = 0
        for i0 in range(first, n, i_block):
            i1 = min(i0 + i_block, n)
            m = i1 - i0
            n_groups = -(-m // g)
            block = buf[: n_groups * g]  # (G * g, b)
            torch.mm(vt[i0:i1], q_t, out=block[:m])
            if n_groups * g > m:
                block[m:].fill_(-math.inf)  # the ragged last group
            _mask_excluded(block, i0, i1, ex_rows, ex_pos)
            grouped = block.view(n_groups, g, b)
            hit = (torch.amax(grouped, dim=1) > thr).view(-1).nonzero().squeeze(1)  # (H,)
            if hit.numel() == 0:
                continue
            if hit.numel() * self._DENSE_HITS > n_groups * b:
                # early blocks (loose thresholds): most groups pass, filter every score instead
                item, qi = (block > thr).nonzero(as_tuple=True)  # (P,), (P,)
                sc = block[item, qi]
                pos = item + i0
            else:
                gi = torch.div(hit, b, rounding_mode="floor")
                qi = hit - gi * b
                cand = grouped[gi, :, qi]  # (H, g): the hit groups' scores for their query
                h, j = (cand > thr[qi].unsqueeze(1)).nonzero(as_tuple=True)  # (P,), (P,)
                sc = cand[h, j]
                qi, pos = qi[h], gi[h] * g + j + i0
            pending.append((qi, pos, sc))
            n_pending += qi.numel()
            if n_pending > merge_at:
                best_s, best_p = _merge(best_s, best_p, thr, pending)
                pending, n_pending = [], 0
        if pending:
            best_s, best_p = _merge(best_s, best_p, thr, pending)
        return best_s, best_p

    def save(self, directory: str | Path) -> Path:
        """Write vectors.npy, ids.npy and index.json (last) into `directory`; return it."""
        d = Path(directory)
        _save_npy(d / self.VECTORS_FILE, self._vectors)
        _save_npy(d / _IDS_FILE, self._ids)
        atomic_write_json(
            d / INDEX_META_FILE,
            {
                "kind": self.kind,
                "format_version": _FORMAT_VERSION,
                "metric": "dot",
                "size": self.size,
                "dim": self.dim,
                "ids_file": _IDS_FILE,
                "vectors_file": self.VECTORS_FILE,
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> ExactIndex:
        """Return the ExactIndex saved in `directory`, vectors memory-mapped read-only."""
        d = Path(directory)
        meta = _read_meta(d, cls.kind)
        path = _meta_file(d, meta, "vectors_file", cls.VECTORS_FILE)
        vectors = _load_npy(path, "item vectors")
        if vectors.shape != (meta["size"], meta["dim"]) or vectors.dtype != np.float32:
            raise ArtifactError(
                f"{path} holds {vectors.dtype} {vectors.shape}, expected float32 "
                f"({meta['size']}, {meta['dim']}) as {INDEX_META_FILE} says; the directory "
                "mixes files of different indexes: rebuild the index"
            )
        self = cls.__new__(cls)
        self._vectors = vectors  # validated when it was built; not re-scanned on load
        ids_path = _meta_file(d, meta, "ids_file", _IDS_FILE)
        self._ids = _load_ids(ids_path, meta["size"])
        self.query_block = cls.DEFAULT_QUERY_BLOCK
        self.block_elements = cls.DEFAULT_BLOCK_ELEMENTS
        self._lookup = _checked_lookup(self._ids, ids_path)
        self._tensor = _shared_tensor(self._vectors)
        return self


# ----------------------------------------------------------------------------- annoy


class _ApproximateIndex:
    """What the approximate indexes share: item ids in the order the library numbers them."""

    _ids: np.ndarray
    _dim: int

    @property
    def size(self) -> int:
        """Return the number of indexed items."""
        return int(self._ids.shape[0])

    @property
    def dim(self) -> int:
        """Return the embedding dimension."""
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """Return the item ids (N,) in the library's item order (its labels are positions)."""
        return self._ids

    kind: ClassVar[str]
    metric: str
    max_norm: float
    seed: int

    def _save_ids_and_meta(self, d: Path, fields: dict[str, Any]) -> Path:
        """Write ids.npy, then index.json (last) with the shared fields and `fields`."""
        _save_npy(d / _IDS_FILE, self._ids)
        atomic_write_json(
            d / INDEX_META_FILE,
            {
                "kind": self.kind,
                "format_version": _FORMAT_VERSION,
                "metric": self.metric,
                "max_norm": self.max_norm,
                "size": self.size,
                "dim": self.dim,
                "seed": self.seed,
                "ids_file": _IDS_FILE,
                **fields,
            },
        )
        return d


class AnnoyIndex(_ApproximateIndex):
    """Approximate inner-product top-k with annoy (the served index).

    `metric="mips"` (the default) reduces maximum inner product search to angular search
    (Bachrach et al. 2014): with M the largest item norm, item v is stored as
    [v, sqrt(M² − |v|²)] (every stored vector has norm M) and a query u is asked as [u, 0], so
    cos(angle) = u·v / (|u| M) and the angular order of the items is exactly their u·v order.
    annoy's angular distance d = sqrt(2 − 2 cos) gives the score back: u·v = (1 − d²/2) |u| M
    (float32 rounding aside). `metric="dot"` is annoy's own dot metric; on learned item
    embeddings at 1M items it reached recall@100 0.68 where "mips" reaches 0.98+
    (benchmarks/annoy_learned.py), and it remains for indexes saved before "mips".

    `n_trees` trades build time and size for recall; `search_k` (-1 = annoy's default of
    n_trees × n) trades query time for recall. The forest is reproducible for a fixed `seed`
    *and* `n_jobs` (annoy gives each build thread its own seeded stream; `n_jobs=-1` depends on
    the machine's core count, so the default is a single thread). Scores are u·v like the
    exact index's.
    """

    kind: ClassVar[str] = "annoy"
    ANN_FILE: ClassVar[str] = "items.ann"
    _ADD_CHUNK: ClassVar[int] = 8192

    def __init__(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        n_trees: int = 50,
        search_k: int = -1,
        seed: int = 0,
        n_jobs: int = 1,
        metric: str = "mips",
    ) -> None:
        if metric not in ANNOY_METRICS:
            raise ValueError(f"metric must be one of {ANNOY_METRICS}, got {metric!r}")
        if n_trees < 1:
            raise ValueError(f"n_trees must be >= 1, got {n_trees}")
        if search_k < -1 or search_k == 0:
            raise ValueError(f"search_k must be -1 (annoy's default) or >= 1, got {search_k}")
        if n_jobs == 0 or n_jobs < -1:
            raise ValueError(f"n_jobs must be -1 (all cores) or >= 1, got {n_jobs}")
        v, self._ids = _validate_items(vectors, ids)
        self.n_trees = int(n_trees)
        self.search_k = int(search_k)
        self.seed = int(seed)
        self._dim = int(v.shape[1])
        self.metric = metric
        self.max_norm, norms = _mips_max_norm(v)
        index = annoy.AnnoyIndex(*self._annoy_spec())
        index.set_seed(self.seed)
        # annoy has no bulk insert; lists of Python floats are its fastest input, made per chunk
        for c0 in range(0, v.shape[0], self._ADD_CHUNK):
            block = v[c0 : c0 + self._ADD_CHUNK]  # (C, E)
            if metric == "mips":
                extra = np.sqrt(np.maximum(self.max_norm**2 - norms[c0 : c0 + len(block)] ** 2, 0))
                block = np.hstack([block, extra[:, None].astype(block.dtype)])  # (C, E + 1)
            for j, row in enumerate(block.tolist()):
                index.add_item(c0 + j, row)
        index.build(self.n_trees, n_jobs=int(n_jobs))
        self._index = index
        self._lookup = _IdLookup(self._ids)

    def _annoy_spec(self) -> tuple[int, str]:
        """Return annoy's (dimension, metric) for this index."""
        return (self._dim + 1, "angular") if self.metric == "mips" else (self._dim, "dot")

    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: list[np.ndarray] | None = None,
        *,
        search_k: int | None = None,
        n_threads: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the approximate top-k (ids (Q, k) int64, scores (Q, k) float32), best first.

        With exclusions, query q asks annoy for k + len(exclude[q]) items and drops the excluded
        ones. `search_k` overrides the index's setting for this call. annoy releases the GIL
        while it searches, so `n_threads` > 1 splits the queries into that many contiguous
        slices searched concurrently (results are identical to a single thread).
        """
        q = _validate_queries(queries, self.dim)
        k = _validate_k(k)
        sk = self.search_k if search_k is None else int(search_k)
        if sk < -1 or sk == 0:
            raise ValueError(f"search_k must be -1 (annoy's default) or >= 1, got {sk}")
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
        n_q = q.shape[0]
        ex_rows, ex_pos = _exclusion_pairs(
            exclude, n_q, self._lookup.sorted_ids, self._lookup.order
        )
        extra = np.bincount(ex_rows, minlength=n_q) if ex_rows.size else np.zeros(n_q, np.int64)
        fetch = np.minimum(k + extra, self.size)  # (Q,) how many to ask annoy for
        width = int(fetch.max()) if n_q else 0
        got_pos = np.full((n_q, width), -1, dtype=np.int64)
        got_s = np.full((n_q, width), -np.inf, dtype=np.float32)
        nns = self._index.get_nns_by_vector
        fetch_l = fetch.tolist()
        mips = self.metric == "mips"
        if mips:  # queries [u, 0]; scores from the angular distance, in float64
            q_ask = np.hstack([q, np.zeros((n_q, 1), dtype=q.dtype)])  # (Q, E + 1)
            q_scale = np.linalg.norm(q.astype(np.float64), axis=1) * self.max_norm  # (Q,)
        else:
            q_ask = q

        def fill(lo: int, hi: int) -> None:
            # annoy answers one query per call; each call writes only its own row
            for c0 in range(lo, hi, self._ADD_CHUNK):
                for j, row in enumerate(q_ask[c0 : min(c0 + self._ADD_CHUNK, hi)].tolist()):
                    i = c0 + j
                    pos, dist = nns(row, fetch_l[i], search_k=sk, include_distances=True)
                    got_pos[i, : len(pos)] = pos
                    if mips:
                        d = np.asarray(dist, dtype=np.float64)
                        got_s[i, : len(pos)] = (1.0 - 0.5 * d * d) * q_scale[i]
                    else:
                        got_s[i, : len(pos)] = dist

        n_workers = min(n_threads, n_q)
        if n_workers <= 1:
            fill(0, n_q)
        else:
            bounds = np.linspace(0, n_q, n_workers + 1).astype(int).tolist()
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                futures = [pool.submit(fill, a, b) for a, b in itertools.pairwise(bounds)]
                for f in futures:
                    f.result()  # re-raise a worker's exception here
        keep = got_pos >= 0
        if ex_rows.size:
            key = np.arange(n_q, dtype=np.int64)[:, None] * self.size + got_pos  # (Q, W)
            keep &= ~np.isin(key, ex_rows * self.size + ex_pos)
        # compact each row's kept entries to the front, preserving annoy's best-first order
        rank = np.cumsum(keep, axis=1) - 1
        sel = keep & (rank < k)
        r_idx, c_idx = np.nonzero(sel)
        out_ids = np.full((n_q, k), -1, dtype=np.int64)
        out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        out_ids[r_idx, rank[r_idx, c_idx]] = self._ids[got_pos[r_idx, c_idx]]
        out_scores[r_idx, rank[r_idx, c_idx]] = got_s[r_idx, c_idx]
        return out_ids, out_scores

    def save(self, directory: str | Path) -> Path:
        """Write items.ann, ids.npy and index.json (last) into `directory`; return it."""
        d = Path(directory)
        with atomic_path(d / self.ANN_FILE) as tmp:
            if not self._index.save(str(tmp)):
                raise OSError(f"annoy could not write {d / self.ANN_FILE}")
        return self._save_ids_and_meta(
            d,
            {
                "n_trees": self.n_trees,
                "search_k": self.search_k,
                "ann_file": self.ANN_FILE,
                "annoy_version": getattr(annoy, "__version__", None),
            },
        )

    @classmethod
    def load(cls, directory: str | Path) -> AnnoyIndex:
        """Return the AnnoyIndex saved in `directory`; annoy memory-maps the .ann file.

        The .ann file is checked against index.json (dimension, item count, node structure)
        before annoy opens it, and the ids against both.
        """
        d = Path(directory)
        meta = _read_meta(d, cls.kind)
        size, dim = meta["size"], meta["dim"]
        meta_path = d / INDEX_META_FILE
        ann_path = _meta_file(d, meta, "ann_file", cls.ANN_FILE)
        if not ann_path.is_file():
            # checked here: annoy crashes the process on some failed loads
            raise FileNotFoundError(f"{ann_path} is missing; rebuild the index")
        n_trees = require_int(meta, "n_trees", meta_path, minimum=1)
        search_k = require_int(meta, "search_k", meta_path, minimum=-1)
        if search_k == 0:
            raise ArtifactError(f"{meta_path}: 'search_k' must be -1 or >= 1, got 0")
        seed = require_int(meta, "seed", meta_path)
        metric = str(meta.get("metric", "dot"))
        max_norm = _max_norm(meta, meta_path)
        self = cls.__new__(cls)
        self._dim, self.metric, self.max_norm = dim, metric, max_norm
        annoy_dim, annoy_metric = self._annoy_spec()
        _check_annoy_file(ann_path, dim, size)
        ids_path = _meta_file(d, meta, "ids_file", _IDS_FILE)
        ids = _load_ids(ids_path, size)
        index = annoy.AnnoyIndex(annoy_dim, annoy_metric)
        try:
            index.load(str(ann_path))
        except OSError as exc:
            raise ArtifactError(
                f"annoy cannot open {ann_path} ({exc}); rebuild the index"
            ) from None
        if index.get_n_items() != size:
            raise ArtifactError(
                f"{ann_path} holds {index.get_n_items()} items but {INDEX_META_FILE} says "
                f"{size}; the directory is inconsistent, rebuild the index"
            )
        self._index = index
        self._ids = ids
        self.n_trees = n_trees
        self.search_k = search_k
        self.seed = seed
        self._lookup = _checked_lookup(ids, ids_path)
        return self


def _index_class(kind: str) -> type[ExactIndex] | type[AnnoyIndex] | type[HnswIndex]:
    """Return the index class of `kind` (one of INDEX_KINDS)."""
    if kind == "hnsw":
        from vidrec.candidate_gen.hnsw import HnswIndex

        return HnswIndex
    return {ExactIndex.kind: ExactIndex, AnnoyIndex.kind: AnnoyIndex}[kind]


def make_index(
    kind: str, vectors: np.ndarray, ids: np.ndarray, *, seed: int = 0, **settings: Any
) -> ExactIndex | AnnoyIndex | HnswIndex:
    """Return a new index of `kind` (INDEX_KINDS) over `vectors` with item ids `ids`.

    `settings` are the kind's own (annoy: n_trees, search_k; hnsw: m, ef_construction,
    ef_search); `seed` seeds the approximate indexes (exact search has none)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(INDEX_KINDS)}")
    if kind == ExactIndex.kind:
        return ExactIndex(vectors, ids, **settings)
    return _index_class(kind)(vectors, ids, seed=seed, **settings)


def load_index(directory: str | Path) -> ExactIndex | AnnoyIndex | HnswIndex:
    """Return the index saved in `directory`, whichever kind its index.json names."""
    d = Path(directory)
    meta_path = d / INDEX_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no {INDEX_META_FILE} in {d}: not a saved index, or its save did not finish"
        )
    kind = read_json_object(meta_path, f"the index in {d}").get("kind")
    if kind not in INDEX_KINDS:
        raise ArtifactError(
            f"{meta_path} names unknown index kind {kind!r}; known: {sorted(INDEX_KINDS)}"
        )
    return _index_class(kind).load(d)
