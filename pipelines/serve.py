"""Serving from a finished run: `Recommender.load(run_dir)` -> recommend(user, k) / predict(user, items).

The serving path is the system's: user vector (history strictly before the serving time,
example age 0) -> annoy top-N candidates (already-watched items excluded) -> ranker features
-> expected watch time = exp(logit) -> sort. A user the data has never seen (cold start) is
served from the candidate generator with an empty history, i.e. from popularity and whatever
demographics are known, and the answer says so.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from candidate_gen.index import AnnoyIndex
from candidate_gen.retrieve import Retriever
from candidate_gen.train import TrainedCandidateGenerator
from features.io import read_dataset
from features.ranker_features import RankerFeatureIndex, build_ranker_frame
from features.split import TimeSplit
from features.tables import Dataset
from pipelines import scoring
from pipelines.rundir import RunDirError
from ranking.train import TrainedRanker


class Recommender:
    """Everything needed to serve, preloaded once."""

    def __init__(
        self,
        dataset: Dataset,
        split: TimeSplit,
        cg: TrainedCandidateGenerator,
        index: AnnoyIndex,
        ranker: TrainedRanker,
        config: dict[str, Any],
    ) -> None:
        self.dataset = dataset
        self.split = split
        self.cg = cg
        self.index = index
        self.ranker = ranker
        self.config = config
        self.at = int(split.valid_end)
        self.retriever = Retriever(cg, index, dataset)
        self.features = RankerFeatureIndex(dataset)  # logs sorted once, so a request reads one user
        self._users = set(dataset.users["user_id"].tolist())
        self._items = pd.Index(dataset.items["item_id"].to_numpy())

    @classmethod
    def load(cls, run_dir: str | Path) -> Recommender:
        root = Path(run_dir)
        manifest = root / "manifest.json"
        if not manifest.exists():
            raise RunDirError(
                f"{root} is not a vidrec run directory (no manifest.json); run `vidrec run --out {root}` first"
            )
        m = json.loads(manifest.read_text("utf-8"))
        missing = [
            s
            for s in ("data", "candidate_gen", "index", "ranker")
            if m["stages"].get(s, {}).get("status") != "done"
        ]
        if missing:
            raise RunDirError(
                f"run {root} has not finished stage(s) {missing}; rerun `vidrec run` with the same --out to complete it"
            )
        ds, _ = read_dataset(root / "data" / "tables")
        split = TimeSplit.from_dict(json.loads((root / "data" / "split.json").read_text("utf-8")))
        cg = TrainedCandidateGenerator.load(root / "candidate_gen" / "model")
        index = AnnoyIndex.load(root / "index" / "annoy")
        ranker = TrainedRanker.load(root / "ranker" / "deep_weighted" / "model")
        return cls(ds, split, cg, index, ranker, m["config"])

    def _note(self, user: int) -> str:
        if user in self._users:
            return ""
        return (
            f"user {user} is not in the data (cold start): served from the candidate generator with "
            "an empty history, i.e. from popularity and default demographics"
        )

    def _requests(self, user: int, item_ids: np.ndarray) -> pd.DataFrame:
        """Ranker requests with the CG score and catalog rank computed as for training rows."""
        req = pd.DataFrame(
            {
                "user_id": np.full(len(item_ids), user, dtype=np.int64),
                "item_id": item_ids,
                "timestamp": np.full(len(item_ids), self.at, dtype=np.int64),
            }
        )
        req = scoring.add_cg_features(self.cg, self.dataset, req)
        req["source"] = "candidate_gen"
        return req

    def recommend(self, user: int, k: int = 10, n_candidates: int | None = None) -> dict[str, Any]:
        """Top-k slate with expected watch time, retrieval rank and the stage that proposed it."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n = int(n_candidates or self.config["retrieval"]["n_candidates"])
        cands = self.retriever.retrieve(np.array([user]), n, at_time=self.at, exclude_watched=True)
        req = self._requests(user, cands["item_id"].to_numpy())
        req["retrieval_rank"] = cands["rank"].to_numpy()
        frame = build_ranker_frame(
            self.features,
            req[["user_id", "item_id", "timestamp", "source", "cg_score", "cg_rank"]],
            history_len=self.ranker.config.history_len,
        )
        ewt = self.ranker.predict_expected_watch_time(frame)
        order = np.argsort(-ewt, kind="stable")[:k]
        slate = [
            {
                "rank": i + 1,
                "item_id": int(req["item_id"].iloc[j]),
                "expected_watch_time": float(ewt[j]),
                "retrieval_rank": int(req["retrieval_rank"].iloc[j]),
                "cg_score": float(req["cg_score"].iloc[j]),
                "stage": "candidate generator (annoy) -> deep ranker",
            }
            for i, j in enumerate(order)
        ]
        return {"user": user, "at": _iso(self.at), "slate": slate, "note": self._note(user)}

    def predict(self, user: int, items: list[int]) -> dict[str, Any]:
        """Expected watch time (s) of each known item for `user` at the serving time."""
        arr = np.asarray(items, dtype=np.int64)
        known = self._items.get_indexer(arr) >= 0
        req = self._requests(user, arr[known])
        frame = build_ranker_frame(
            self.features,
            req[["user_id", "item_id", "timestamp", "source", "cg_score", "cg_rank"]],
            history_len=self.ranker.config.history_len,
        )
        scored = pd.DataFrame(
            {
                "item_id": req["item_id"],
                "expected_watch_time": self.ranker.predict_expected_watch_time(frame),
            }
        )
        return {
            "user": user,
            "at": _iso(self.at),
            "items": [
                {"item_id": int(i), "expected_watch_time": float(e)}
                for i, e in zip(scored["item_id"], scored["expected_watch_time"], strict=True)
            ],
            "unknown_items": arr[~known].tolist(),
            "note": self._note(user),
        }


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
