"""Serving from a finished run: `Recommender.load(run_dir)` -> recommend(user, k) / predict(user, items).

The serving path is the system's: user vector (history strictly before the serving time,
example age 0) -> top-N candidates from the run's index (annoy, HNSW or exact search, as
retrieval.index says; already-watched items excluded) -> ranker features
-> expected watch time = exp(logit) -> sort. A user the data has never seen (cold start) is
served from the candidate generator with an empty history, i.e. from popularity and whatever
demographics are known, and the answer says so.

Ids are the data's own: integers, or strings when the data's ids are strings (`features.ids`).
Users and items are given and returned as the data has them; the internal codes never leave.
A string given for integer ids (or an id beyond int64) is refused with `UnknownIdError`.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from vidrec.candidate_gen.index import CandidateIndex
from vidrec.candidate_gen.retrieve import Retriever
from vidrec.candidate_gen.train import TrainedCandidateGenerator
from vidrec.common.torch_utils import check_threads, intra_op_threads
from vidrec.features.examples import UserHistory
from vidrec.features.ids import IdMaps, UnknownIdError
from vidrec.features.integrity import read_json_object
from vidrec.features.io import read_dataset
from vidrec.features.ranker_features import RankerFeatureIndex
from vidrec.features.split import TimeSplit
from vidrec.features.stats import logs_watch_time
from vidrec.features.tables import Dataset
from vidrec.pipelines import scoring
from vidrec.pipelines.config import UsageError
from vidrec.pipelines.rundir import (
    RunDir,
    check_index_matches_model,
    load_served_index,
    read_lock,
    serving_cg_dir,
)
from vidrec.ranking.train import TrainedRanker

#: the source of every served candidate (the ranker's `source` feature)
CANDIDATE_SOURCE = "candidate_gen"

_F = TypeVar("_F", bound=Callable[..., Any])


def _serving_threads(method: _F) -> _F:
    """Run a request method with the Recommender's torch thread count (`threads`)."""

    @functools.wraps(method)
    def wrapper(self: Recommender, *args: Any, **kwargs: Any) -> Any:
        with intra_op_threads(self.threads):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# the stages serving reads, and the stages each was built from (the pipeline's order)
SERVING_STAGES: tuple[str, ...] = ("data", "candidate_gen", "index", "ranker")
SERVING_INPUTS: dict[str, tuple[str, ...]] = {
    "candidate_gen": ("data",),
    "index": ("data", "candidate_gen"),
    "ranker": ("data", "candidate_gen", "index"),
}


# where recommend() takes the ranker's "candidate generator score and rank" features from
CG_FEATURE_MODES: tuple[str, ...] = ("retrieval", "catalog")


@dataclass(frozen=True)
class _View:
    """What one request reads: the serving time, the candidate generator's indexed events, the
    ranker's feature index, and the fresh watches a caller passed (internal item codes)."""

    at: int
    history: UserHistory
    features: RankerFeatureIndex
    fresh: np.ndarray


class Recommender:
    """Everything needed to serve, preloaded once.

    `cg_features` says where `recommend` gets each candidate's CG score and catalog rank:
    - "retrieval" (default): from the retrieval itself. The index is asked for N + (the user's
      watched items) candidates before the watched ones are dropped, so a candidate's rank is
      1 + the number of indexed (servable) items scoring strictly higher, and its score is the
      index's u·v. With an exact index this equals "catalog"; with annoy or HNSW, an item the
      search missed is not counted. No pass over the catalog per request.
    - "catalog": `scoring.add_cg_features` over the whole catalog per request (one
      matrix-vector product and a count of the items scoring above each candidate; the
      catalog's upload order and item vectors cached in a `scoring.CatalogCache`).
    Both take the item vectors' upload ages at the serving time, as the index does; the
    ranker's training rows take them at the start of each impression's day (one item-tower
    pass per day of logs), so a few hours of upload age separate the two definitions.
    `predict` (arbitrary items) always uses "catalog".

    `threads`: torch intra-op threads per request (default 1; None leaves the process's
    setting). A request is a few small products, which a second thread slows on a busy
    machine; serve in parallel with processes, one Recommender each. The caller's thread
    count is restored after each request.
    """

    def __init__(
        self,
        dataset: Dataset,
        split: TimeSplit,
        cg: TrainedCandidateGenerator,
        index: CandidateIndex,
        ranker: TrainedRanker,
        config: dict[str, Any],
        *,
        cg_features: str = "retrieval",
        threads: int | None = 1,
    ) -> None:
        if cg_features not in CG_FEATURE_MODES:
            raise ValueError(f"cg_features must be one of {CG_FEATURE_MODES}, got {cg_features!r}")
        self.cg_features = cg_features
        check_threads(threads)  # a bad count is refused now, not at the first request
        self.threads = threads
        self.dataset = dataset
        self.split = split
        self.cg = cg
        # the item tower's vectors per day of requests: the dataset is fixed while serving
        self._item_vectors = scoring.CatalogCache()
        self.index = index
        self.ranker = ranker
        self.config = config
        self.at = int(split.valid_end)
        self.retriever = Retriever(cg, index, dataset)
        self.features = RankerFeatureIndex(dataset)  # logs sorted once, so a request reads one user
        # the catalog and users in the ranker's codes, looked up once (no string per request)
        self._ranker_codes = ranker.catalog_codes(self.features)
        self._users = set(dataset.users["user_id"].tolist())
        self._items = pd.Index(dataset.items["item_id"].to_numpy())
        # titles read once: converting a 1M-item title column per request cost ~150 ms
        items = dataset.items
        self._title_of = items["title"].to_numpy(dtype=object) if "title" in items else None
        # what exp(logit) means: seconds of watch time, or the odds of a watch on a log
        # without watch times (every watch weighs 1)
        self.score_unit = "s" if logs_watch_time(dataset.impressions) else "watch odds"
        # everything preloaded lives as long as the server: move it out of the garbage
        # collector's reach, so a request's full collections do not traverse the catalog and
        # logs (measured: p50 21.8 -> 19.5 ms, p99 30.3 -> 26.8 ms on the default run)
        gc.collect()
        gc.freeze()

    @property
    def index_kind(self) -> str:
        """The kind of the index that retrieval searches (annoy, hnsw, exact)."""
        index = self.retriever.index
        return str(getattr(index, "kind", type(index).__name__))

    @classmethod
    def load(
        cls, run_dir: str | Path, *, verify: bool = True, threads: int | None = 1
    ) -> Recommender:
        """Return a Recommender over the finished run in `run_dir`.

        With `verify` (the default) the artifacts must belong together before anything is
        served: the stages are finished and every file still has the sha256 the manifest
        recorded, no stage directory comes from another run, no stage was built from an
        earlier output of a stage redone since, the index has the candidate generator's
        embedding dimension and only catalog items, and each model's vocabularies are the
        ones it was trained with. A mismatch raises RunIntegrityError (an ArtifactError)
        naming the artifact, what was expected, what was found and the `--redo` that fixes it.
        """
        with read_lock(run_dir):  # never while a `vidrec run` rewrites it
            return cls._load(run_dir, verify=verify, threads=threads)

    @classmethod
    def _load(cls, run_dir: str | Path, *, verify: bool, threads: int | None) -> Recommender:
        rundir = RunDir.open(run_dir)
        root = rundir.path
        if verify:
            rundir.verify(SERVING_STAGES, SERVING_INPUTS)
        else:
            rundir.verify_done(SERVING_STAGES)
        ds, _ = read_dataset(root / "data" / "tables")
        split = TimeSplit.from_dict(read_json_object(root / "data" / "split.json", "the split"))
        cg = TrainedCandidateGenerator.load(serving_cg_dir(root))
        fix = f"rebuild it: {rundir.redo_hint('index')}"
        index, index_dir = load_served_index(root, rundir.config, fix)
        if verify:
            check_index_matches_model(
                root,
                index_dir,
                index.dim,
                index.ids,
                cg.config.embedding_dim,
                ds.items["item_id"].to_numpy(),
                fix,
            )
        ranker = TrainedRanker.load(root / "ranker" / "deep_weighted" / "model")
        return cls(ds, split, cg, index, ranker, rundir.config, threads=threads)

    def _note(self, user: int | str, code: int, view: _View | None = None) -> str:
        if code in self._users:
            return ""
        if view is not None and len(view.fresh):
            return (
                f"user {user} is not in the data: served from the {len(view.fresh)} watch(es) "
                "passed as history, with default demographics"
            )
        return (
            f"user {user} is not in the data (cold start): served from the candidate generator with "
            "an empty history, i.e. from popularity and default demographics"
        )

    def _titles(self, codes: np.ndarray) -> list[str] | None:
        """The items' titles when the catalog has a `title` column (None otherwise)."""
        if self._title_of is None:
            return None
        raw = self._title_of[self._items.get_indexer(np.asarray(codes, dtype=np.int64))]
        return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in raw]

    def _user_code(self, user: int | str) -> int:
        """Return the internal id of the data's user id `user`: itself for integer ids, its
        code for string ids, and a code no user has for a string id the data lacks (served
        as a cold start). Raises `UnknownIdError` for text that cannot be an integer id."""
        ids = self.dataset.ids
        if ids is None or not ids.is_string("user"):
            if isinstance(user, int | np.integer) and not isinstance(user, bool):
                return int(user)
            code = IdMaps().codes("user", [user])[0]
            if code < 0:
                raise UnknownIdError(
                    f"user {user!r} is not in the data: this run's user ids are integers"
                )
            return int(code)
        code = int(ids.codes("user", [user])[0])
        return code if code >= 0 else ids.size("user")  # one past the last code: nobody

    def _item_codes(self, items: list[int | str]) -> np.ndarray:
        """Return the internal ids of the data's item ids `items` (-1 where the data has none)."""
        ids = self.dataset.ids
        raw = np.asarray(items, dtype=object)
        codes = (ids or IdMaps()).codes("item", raw)
        known = codes >= 0
        known[known] = self._items.get_indexer(codes[known]) >= 0
        return np.where(known, codes, -1)

    def _item_labels(self, codes: np.ndarray) -> list[int | str]:
        """Return the data's item ids of internal ids `codes` (ints, or strings)."""
        ids = self.dataset.ids
        if ids is None or not ids.is_string("item"):
            return [int(c) for c in np.asarray(codes, dtype=np.int64).tolist()]
        return ids.labels("item", codes).tolist()

    def _catalog_cg(
        self, user: int, item_ids: np.ndarray, view: _View
    ) -> tuple[np.ndarray, np.ndarray]:
        """The CG scores and catalog ranks of `item_ids` for `user`, computed over the catalog
        as for training rows (upload ages at the serving time, as in the index)."""
        n = len(item_ids)
        req = scoring.add_cg_features(
            self.cg,
            self.dataset,
            pd.DataFrame(
                {
                    "user_id": np.full(n, user, dtype=np.int64),
                    "item_id": np.asarray(item_ids, dtype=np.int64),
                    "timestamp": np.full(n, view.at, dtype=np.int64),
                }
            ),
            self._item_vectors,
            history=view.history,
            exact_time=True,
        )
        return req["cg_score"].to_numpy(), req["cg_rank"].to_numpy()

    def _expected_watch_time(
        self, user: int, item_ids: np.ndarray, cg: tuple[np.ndarray, np.ndarray], view: _View
    ) -> np.ndarray:
        """The deep ranker's expected watch time of `item_ids` for `user` at the view's time,
        with their (CG scores, CG ranks), from the candidate generator's source."""
        return self.ranker.score_requests(
            view.features,
            self._ranker_codes,
            user,
            item_ids,
            view.at,
            cg_scores=cg[0],
            cg_ranks=cg[1],
            source=CANDIDATE_SOURCE,
        )

    def _retrieve(
        self, user: int, n: int, view: _View
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Return the user's top-n unwatched candidate ids (best first) and their (CG scores,
        CG ranks) as the retrieval saw them before the watched items were dropped (see the
        class docstring and `Retriever.retrieve_ranked`)."""
        ids, scores, ranks = self.retriever.retrieve_ranked(
            user, n, at_time=view.at, history=view.history
        )
        return ids, (scores, ranks)

    def _view(self, user: int, history: Sequence[int | str] | None, at: Any) -> _View:
        """The request's view: the run's serving time and logs, or `at` and the user's logged
        events with `history` (the data's item ids, oldest first) watched just before `at`."""
        t = self.at if at is None else _serving_time(at)
        if not history:
            return _View(t, self.retriever.history, self.features, np.zeros(0, dtype=np.int64))
        codes = self._item_codes(list(history))
        if (codes < 0).any():
            unknown = [h for h, c in zip(history, codes.tolist(), strict=True) if c < 0]
            raise UnknownIdError(
                f"history items {unknown[:10]} are not in the catalog; pass items the data has"
            )
        times = t - len(codes) + np.arange(len(codes), dtype=np.int64)  # one second apart, < t
        ds = self.dataset
        logged = ds.watches[ds.watches["user_id"].to_numpy() == user]
        fresh = pd.DataFrame({"user_id": user, "item_id": codes, "timestamp": times})
        searches = ds.searches
        if searches is not None:
            searches = searches[searches["user_id"].to_numpy() == user]
        one_user = replace(
            ds,
            # the fresh rows carry the key columns only (the featurizer reads no others)
            watches=pd.concat([logged, fresh], ignore_index=True).astype(
                {"user_id": np.int64, "item_id": np.int64, "timestamp": np.int64}
            ),
            searches=searches,
            impressions=None,
        )
        return _View(
            t,
            self.cg.featurizer.index_history(one_user),
            self.features.for_user(user, codes, times),
            codes,
        )

    @_serving_threads
    def recommend(
        self,
        user: int | str,
        k: int = 10,
        n_candidates: int | None = None,
        *,
        history: Sequence[int | str] | None = None,
        at: int | str | datetime | None = None,
    ) -> dict[str, Any]:
        """Top-k slate with expected watch time, retrieval rank and the stage that proposed it.

        `user` and the slate's item ids are the data's ids (ints, or strings for string ids).
        `history`: items the user watched since the logs were written (the data's ids, oldest
        first), counted as watched just before the serving time: the user vector averages them
        with the logged ones, they are not recommended again, and the ranker's history features
        see them, so a new user is served from what they just watched, not as a cold start.
        `at`: the serving time (Unix seconds, an ISO string or a datetime; default the run's,
        the end of its validation window): the user's logged events strictly before it are
        read. The index holds the catalog as of the run's serving time."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        given, user = user, self._user_code(user)
        view = self._view(user, history, at)
        n = int(n_candidates or self.config["retrieval"]["n_candidates"])
        # rows best first, watched dropped (the view's history holds the fresh watches too)
        if self.cg_features == "retrieval" or len(view.fresh):
            item_ids, cg = self._retrieve(user, n, view)
        else:
            cands = self.retriever.retrieve(
                np.array([user]), n, at_time=view.at, exclude_watched=True
            )
            item_ids = cands["item_id"].to_numpy()
            cg = self._catalog_cg(user, item_ids, view)
        ewt = self._expected_watch_time(user, item_ids, cg, view)
        order = np.argsort(-ewt, kind="stable")[:k]
        item = self._item_labels(item_ids[order])
        titles = self._titles(item_ids[order])
        score = np.asarray(cg[0], dtype=np.float64)[order].tolist()
        slate = [
            {
                "rank": i + 1,
                "item_id": item[i],
                **({"title": titles[i]} if titles is not None else {}),
                "expected_watch_time": float(ewt[j]),
                "retrieval_rank": int(j) + 1,  # the row's place in the retrieved list
                "cg_score": float(score[i]),
                "stage": f"candidate generator ({self.index_kind}) -> deep ranker",
            }
            for i, j in enumerate(order.tolist())
        ]
        return {
            "user": given,
            "at": _iso(view.at),
            "slate": slate,
            "score_unit": self.score_unit,
            "note": self._note(given, user, view),
        }

    def recommend_many(
        self, users: Sequence[int | str], k: int = 10, *, at: int | str | datetime | None = None
    ) -> list[dict[str, Any]]:
        """`recommend(user, k, at=at)` for each of `users`, in order (one request each, as a
        server answers them; the models and indexes are loaded once)."""
        return [self.recommend(u, k, at=at) for u in users]

    @_serving_threads
    def retrieve(
        self,
        user: int | str,
        n: int = 100,
        *,
        history: Sequence[int | str] | None = None,
        at: int | str | datetime | None = None,
    ) -> dict[str, Any]:
        """The candidate generator's top-n unwatched items for `user` at the serving time, best
        first, with their scores (u·v through the served index) and catalog ranks; `history`
        and `at` as in `recommend`."""
        given, code = user, self._user_code(user)
        view = self._view(code, history, at)
        item_ids, (scores, ranks) = self._retrieve(code, int(n), view)
        labels = self._item_labels(item_ids)
        return {
            "user": given,
            "at": _iso(view.at),
            "candidates": [
                {"rank": i + 1, "item_id": labels[i], "cg_score": float(s), "catalog_rank": int(r)}
                for i, (s, r) in enumerate(zip(scores.tolist(), ranks.tolist(), strict=True))
            ],
            "note": self._note(given, code, view),
        }

    @_serving_threads
    def predict(
        self,
        user: int | str,
        items: list[int] | list[str],
        *,
        history: Sequence[int | str] | None = None,
        at: int | str | datetime | None = None,
    ) -> dict[str, Any]:
        """Expected watch time (s) of each known item for `user` at the serving time (the
        data's ids); items the catalog lacks are listed under "unknown_items" as given;
        `history` and `at` as in `recommend`."""
        given, user = user, self._user_code(user)
        view = self._view(user, history, at)
        codes = self._item_codes(list(items))
        known = codes >= 0
        item_ids = codes[known]
        ewt = self._expected_watch_time(
            user, item_ids, self._catalog_cg(user, item_ids, view), view
        )
        labels = self._item_labels(item_ids)
        return {
            "user": given,
            "at": _iso(view.at),
            "items": [
                {"item_id": i, "expected_watch_time": float(e)}
                for i, e in zip(labels, ewt.tolist(), strict=True)
            ],
            "unknown_items": [v for v, ok in zip(items, known.tolist(), strict=True) if not ok],
            "score_unit": self.score_unit,
            "note": self._note(given, user, view),
        }

    #: the name the Python API documents (`vidrec.Recommender.predict_watch_time`)
    predict_watch_time = predict


def _serving_time(at: int | str | datetime) -> int:
    """Unix seconds of a serving time given as seconds, an ISO 8601 string or a datetime (a
    naive one, or a string without an offset, is UTC)."""
    if isinstance(at, int | np.integer) and not isinstance(at, bool):
        return int(at)
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at)
        except ValueError:
            raise UsageError(
                f"at={at!r} is not a time: give Unix seconds or ISO 8601 (2024-05-01T12:00)"
            ) from None
    if isinstance(at, datetime):
        return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp())
    raise UsageError(f"at must be Unix seconds, an ISO 8601 string or a datetime, got {at!r}")


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
