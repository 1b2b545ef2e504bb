"""Training, checkpointing and scoring of the deep ranker (SPEC §5).

Where this sits: `RankerFrame` (features.ranker_features) -> vocabularies and a QuantileNormalizer
fitted on the TRAINING frame only -> `DeepRanker` trained with the weighted logistic loss, early
stopped on the validation weighted log loss -> `TrainedRanker`, which scores frames (logits,
expected watch time = exp(logit)) and single users' candidate lists.

Checkpoints (`checkpoint_dir`): config.json, vocabularies.json, normalizer.json once, then after
every epoch one atomic `checkpoint.pt` (model, optimizer, best weights so far, counters, history;
loaded with torch.load(weights_only=True)) and a readable `progress.json`. Calling
`train_ranker` again with the same directory and config resumes after the last finished epoch;
batch order depends only on (seed, epoch), so a resumed run repeats an uninterrupted one.

Several processes (a default torch.distributed process group of W > 1 ranks, e.g. under
torchrun; see `pipelines.distributed`): every rank calls `train_ranker` with the same frames;
rank 0 fits (or loads) the vocabularies and normalizer and broadcasts them; the model is wrapped
in DistributedDataParallel (gloo on CPU, NCCL on CUDA, one GPU per rank); each global batch of
the (seed, epoch) permutation is split into W equal rank slices (`features.dist_env.
shard_batches`), so the averaged gradient is the single-process batch's; the validation loss
sums Σ w ℓ and Σ w over rank shards; rank 0's value decides early stopping on every rank, and
only rank 0 reads and writes checkpoints (the others receive its checkpoint by broadcast).
`TrainedRanker.predict_logit(..., distributed=True)` scores rank shards and all-gathers them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

from vidrec.common import distributed as dist_utils
from vidrec.common.torch_utils import (
    EarlyStopping,
    check_finite_loss,
    load_weights,
    progress_bar,
    resolve_device,
    save_weights,
)
from vidrec.features.atomic import atomic_write_json
from vidrec.features.dist_env import row_range, shard_batches
from vidrec.features.integrity import (
    ArtifactError,
    DamagedWeightsError,
    check_digest,
    check_match,
    resolve_inside,
    sha256_file,
    short_digest,
)
from vidrec.features.normalize import QuantileNormalizer
from vidrec.features.ranker_features import (
    CatalogCodes,
    EncodedRankerFrame,
    RankerFeatureIndex,
    RankerFrame,
    RankerVocabularies,
    build_ranker_frame,
    page_ranks,
    request_features,
)
from vidrec.features.tables import Dataset
from vidrec.ranking.calibration import WatchTimeCalibrator
from vidrec.ranking.config import RankerConfig
from vidrec.ranking.model import DeepRanker, RankerBatch, example_weights, weighted_logistic_loss

_CHECKPOINT = "checkpoint.pt"
#: rows scored per forward pass when predicting
SCORE_BATCH = 8192
log = logging.getLogger(__name__)
_TRANSFORMS = ("vocabularies.json", "normalizer.json")
_MODEL = "model.pt"
# the files the weights must be used with (checked on load; model.pt itself is checked by shape)
_COMPANIONS = ("config.json", "vocabularies.json", "normalizer.json")
_CALIBRATION = "calibration.json"
# rows per calibration bin at most (fewer validation rows: 20 bins of n // 20)
_CALIBRATION_BIN_ROWS = 500
# fewer validation rows than this (or no watch time in them): no calibrator, exp(logit) is kept
_CALIBRATION_MIN_ROWS = 40


def dense_features(
    config: RankerConfig, normalizer: QuantileNormalizer, frame: RankerFrame
) -> np.ndarray:
    """Return the dense input (N, D) float32: [x~, x~^2, sqrt(x~)] (or x~) and the 0/1 flags.

    D = 0 when config.use_continuous is False (the ablation).
    """
    return _dense(config, normalizer, frame.continuous, frame.flags.to_numpy(dtype=np.float32))


def _dense(
    config: RankerConfig,
    normalizer: QuantileNormalizer,
    continuous: pd.DataFrame | np.ndarray,
    flags: np.ndarray,
) -> np.ndarray:
    """`dense_features` of raw continuous values (N, F) and flags (N, n_flags)."""
    if not config.use_continuous:
        return np.zeros((len(flags), 0), dtype=np.float32)
    xt = normalizer.transform(continuous)  # (N, F) in [0, 1)
    parts = [QuantileNormalizer.expand(xt) if config.continuous_powers else xt, flags]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


@dataclass
class _Inputs:
    """A frame's model inputs in numpy, batched on demand."""

    codes: EncodedRankerFrame
    dense: np.ndarray  # (N, D) float32
    history_len: int

    def batch(
        self, rows: np.ndarray, device: torch.device, *, distinct_bags: bool = False
    ) -> RankerBatch:
        """The model inputs of `rows`; with `distinct_bags` the watched bags shared by several
        rows (one user's candidates at one time) are gathered once (same logits: each bag's
        mean is computed from the same ids)."""
        c = self.codes
        history_row = None
        if distinct_bags:
            end, count = c.history_end[rows], np.minimum(c.history_count[rows], self.history_len)
            key = end * (self.history_len + 1) + count  # equal keys: the same bag
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            history = c.history(rows[first], self.history_len)  # (U, L)
            history_row = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
        else:
            history = c.history(rows, self.history_len)  # (B, L)
        attributes = c.attributes(rows)
        return RankerBatch(
            item=torch.from_numpy(c.item[rows]),
            history=torch.from_numpy(history),
            user_language=torch.from_numpy(c.user_language[rows]),
            item_language=torch.from_numpy(c.item_language[rows]),
            channel=torch.from_numpy(c.channel[rows]),
            topics=torch.from_numpy(np.ascontiguousarray(c.topics(rows))),  # (B, T)
            source=torch.from_numpy(c.source[rows]),
            dense=torch.from_numpy(self.dense[rows]),  # (B, D)
            history_row=history_row,
            attributes=None if attributes is None else torch.from_numpy(attributes),  # (B, A)
        ).to(device)


class TrainedRanker:
    """A trained deep ranker with the vocabularies and normalizer it was trained with."""

    def __init__(
        self,
        config: RankerConfig,
        vocabularies: RankerVocabularies,
        normalizer: QuantileNormalizer,
        model: DeepRanker,
        *,
        history: Sequence[dict[str, float]] = (),
        best_epoch: int = 0,
        device: torch.device | None = None,
        calibrator: WatchTimeCalibrator | None = None,
    ) -> None:
        self.config = config
        self.calibrator = calibrator
        self.vocabularies = vocabularies
        self.normalizer = normalizer
        self.device = device if device is not None else resolve_device(config.device)
        self.model = model.to(self.device).eval()
        self.history = [dict(h) for h in history]
        self.best_epoch = int(best_epoch)

    def _inputs(self, frame: RankerFrame) -> _Inputs:
        return _Inputs(
            codes=self.vocabularies.encode(frame),
            dense=dense_features(self.config, self.normalizer, frame),
            history_len=self.config.history_len,
        )

    def predict_logit(
        self, frame: RankerFrame, *, batch_size: int = SCORE_BATCH, distributed: bool = False
    ) -> np.ndarray:
        """Return the logits (N,) float64 of the frame's rows, in row order.

        With `distributed=True` and a process group of several ranks, every rank must pass the
        same frame: each scores its `row_range` share and all ranks receive all N logits.
        """
        if batch_size < 1:
            raise ValueError(f"predict_logit: batch_size must be >= 1, got {batch_size}")
        rank, world = dist_utils.rank_and_world() if distributed else (0, 1)
        if world == 1:
            return self._logits(frame, batch_size)
        lo, hi = row_range(len(frame), rank, world)
        own = torch.from_numpy(self._logits(frame.take(np.arange(lo, hi)), batch_size))
        return dist_utils.all_gather_rows(own, len(frame)).numpy()

    def _logits(self, frame: RankerFrame, batch_size: int) -> np.ndarray:
        return _batched_logits(self.model, self._inputs(frame), len(frame), self.device, batch_size)

    def predict_expected_watch_time(
        self, frame: RankerFrame, *, batch_size: int = SCORE_BATCH
    ) -> np.ndarray:
        """Return the expected watch time (N,) in seconds (the ranking score): exp(logit), or
        exp(g(logit)) with the validation-fitted calibrator g when the ranker has one.

        g is strictly increasing, so both give every page the same order. Meaningful as a
        watch time for the watch-time weightings; for the click-only variant it is the click
        odds (never calibrated).
        """
        return self._watch_time(self.predict_logit(frame, batch_size=batch_size))

    def _watch_time(self, logits: np.ndarray) -> np.ndarray:
        if self.calibrator is not None:
            return self.calibrator.expected_watch_time(logits)
        return np.exp(logits)

    def catalog_codes(self, index: RankerFeatureIndex) -> CatalogCodes:
        """Return the codes of `index`'s catalog and users in this ranker's vocabularies, for
        `score_requests`: built once (a catalog of 1M items takes tens of ms), valid for the
        index and its `for_user` views."""
        return self.vocabularies.catalog_codes(index)

    def score_requests(
        self,
        index: RankerFeatureIndex,
        codes: CatalogCodes,
        user_id: int,
        item_ids: np.ndarray,
        t: int,
        *,
        cg_scores: np.ndarray | None = None,
        cg_ranks: np.ndarray | None = None,
        source: str | None = None,
    ) -> np.ndarray:
        """Return the expected watch time (N,) of one user's `item_ids` at time t, in order:
        the same values as `score_items`, computed for serving without a DataFrame or a string
        per request (`codes` = `catalog_codes(index)`, built once).

        `cg_scores` (NaN: none for that item) and `cg_ranks` are the candidate generator's;
        without `cg_ranks` a scored item's rank is its place among the given scores. Every item
        must be in the index's catalog."""
        inputs = self._request_inputs(
            index, codes, user_id, item_ids, t, cg_scores, cg_ranks, source
        )
        return self._predict_inputs(inputs)

    def _request_inputs(
        self,
        index: RankerFeatureIndex,
        codes: CatalogCodes,
        user_id: int,
        item_ids: np.ndarray,
        t: int,
        cg_scores: np.ndarray | None,
        cg_ranks: np.ndarray | None,
        source: str | None,
    ) -> _Inputs:
        ids = np.asarray(item_ids, dtype=np.int64)
        n = len(ids)
        ipos = index.item_index.get_indexer(ids)
        if (ipos < 0).any():
            raise ValueError(
                f"score_requests: item(s) {ids[ipos < 0][:10].tolist()} are not in the "
                "catalog of the feature index; score only catalog items"
            )
        if len(codes.item) != index.n_items:
            raise ValueError(
                f"score_requests: the catalog codes cover {len(codes.item)} items, the index "
                f"{index.n_items}: build them with catalog_codes(index) of this index"
            )
        users = np.full(n, int(user_id), dtype=np.int64)
        times = np.full(n, int(t), dtype=np.int64)
        score = rank = None
        if cg_scores is not None:
            score = _per_item(cg_scores, n, "cg_scores")
            if np.isinf(score).any():
                raise ValueError("score_requests: cg_scores contains inf")
            if cg_ranks is None:  # the place among the given scores, as build_ranker_frame's
                rank = page_ranks(score, users, times)
            else:
                rank = _per_item(cg_ranks, n, "cg_ranks")
                if (~np.isnan(score) & ~(np.isfinite(rank) & (rank >= 1))).any():
                    raise ValueError("score_requests: cg_ranks must be >= 1 where a score is given")
        elif cg_ranks is not None:
            raise ValueError("score_requests: cg_ranks without cg_scores; give both or only scores")
        f = request_features(
            index, users, ipos, times, score, rank, self.config.time_windows or None
        )
        fitted = self.normalizer.columns_
        if fitted is not None and list(f.continuous_columns) != fitted:
            raise ValueError(
                f"score_requests: the index gives continuous features {list(f.continuous_columns)}"
                f", the ranker was trained on {fitted} (another catalog or time windows)"
            )
        return _Inputs(
            codes=self.vocabularies.encode_requests(f, codes, source),
            dense=_dense(self.config, self.normalizer, f.continuous, f.flags),
            history_len=self.config.history_len,
        )

    def _predict_inputs(self, inputs: _Inputs) -> np.ndarray:
        n = len(inputs.codes)
        return self._watch_time(_batched_logits(self.model, inputs, n, self.device, SCORE_BATCH))

    def score_items(
        self,
        dataset: Dataset | RankerFeatureIndex,
        user_id: int,
        item_ids: Sequence[int] | np.ndarray,
        t: int,
        *,
        cg_scores: Sequence[float] | np.ndarray | None = None,
        cg_ranks: Sequence[float] | np.ndarray | None = None,
        source: str | Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Return DataFrame(item_id, expected_watch_time) for one user's candidates at time t.

        Rows keep the order of `item_ids`; features use only `dataset` events before t. For
        repeated calls pass a `RankerFeatureIndex(dataset)` built once (no log re-sorting).
        """
        ids = np.asarray(item_ids, dtype=np.int64)
        req = pd.DataFrame(
            {
                "user_id": np.full(len(ids), int(user_id), dtype=np.int64),
                "item_id": ids,
                "timestamp": np.full(len(ids), int(t), dtype=np.int64),
            }
        )
        if cg_scores is not None:
            scores = np.asarray(cg_scores, dtype=np.float64)
            if scores.shape != ids.shape:
                raise ValueError(
                    f"cg_scores has {scores.size} values for {ids.size} item_ids; give one per item"
                )
            req["cg_score"] = scores
        if cg_ranks is not None:
            ranks = np.asarray(cg_ranks, dtype=np.float64)
            if ranks.shape != ids.shape:
                raise ValueError(
                    f"cg_ranks has {ranks.size} values for {ids.size} item_ids; give one per item"
                )
            req["cg_rank"] = ranks
        if source is not None:
            req["source"] = source if isinstance(source, str) else list(source)
        if len(ids) == 0:
            return pd.DataFrame({"item_id": ids, "expected_watch_time": np.zeros(0)})
        frame = build_ranker_frame(
            dataset,
            req,
            history_len=self.config.history_len,
            time_windows=self.config.time_windows or None,
        )
        return pd.DataFrame(
            {"item_id": ids, "expected_watch_time": self.predict_expected_watch_time(frame)}
        )

    # ------------------------------------------------------------------ persist
    def save(self, directory: str | Path) -> Path:
        """Write config, vocabularies, normalizer, weights and training record to `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "config.json", self.config.to_dict())
        self.vocabularies.save(d / "vocabularies.json")
        self.normalizer.save(d / "normalizer.json")
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_weights(d / _MODEL, state)
        companions = list(_COMPANIONS)
        if self.calibrator is not None:
            atomic_write_json(d / _CALIBRATION, self.calibrator.to_dict())
            companions.append(_CALIBRATION)
        elif (d / _CALIBRATION).exists():
            (d / _CALIBRATION).unlink()  # a previous model's calibrator must not be picked up
        atomic_write_json(
            d / "ranker.json",
            {
                "kind": "TrainedRanker",
                "model": self.model.spec(),
                "history": self.history,
                "best_epoch": self.best_epoch,
                "calibrated": self.calibrator is not None,
                "sha256": {name: sha256_file(d / name) for name in companions},
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None) -> TrainedRanker:
        """Return the ranker saved in `directory` (on `device`, default the config's)."""
        d = Path(directory)
        needed = ["config.json", "vocabularies.json", "normalizer.json", _MODEL, "ranker.json"]
        missing = [n for n in needed if not (d / n).exists()]
        if missing:
            raise FileNotFoundError(f"{d} is not a saved TrainedRanker: missing {missing}")
        meta = _read_json(d / "ranker.json")
        _check_files(d, meta.get("sha256") if isinstance(meta, dict) else None)
        config = RankerConfig.from_dict(_read_json(d / "config.json"))
        vocabularies = RankerVocabularies.load(d / "vocabularies.json")
        # the network's tables are sized by ranker.json: vocabularies of another run would
        # load without error and look up the wrong rows
        check_match(
            "the vocabulary sizes in vocabularies.json",
            dict(meta["model"]["vocab_sizes"]),
            vocabularies.sizes(),
            str(d),
            "the files come from different runs: restore the vocabularies.json saved with "
            "this model, or retrain",
        )
        dev = resolve_device(device or config.device)
        model = _build_model(meta["model"])
        model.load_state_dict(load_weights(d / _MODEL, dev))
        calibrator = None
        if _CALIBRATION in (meta.get("sha256") or {}):  # its digest was checked above
            try:
                calibrator = WatchTimeCalibrator.from_dict(_read_json(d / _CALIBRATION))
            except (ValueError, KeyError, TypeError) as exc:
                raise ArtifactError(f"{d / _CALIBRATION}: {exc}") from None
        elif config.calibrate and meta.get("calibrated", True):
            raise ArtifactError(
                f"{d} was trained with calibrate=true but ranker.json records no "
                f"{_CALIBRATION}; restore the file saved with this model, or retrain it"
            )
        return cls(
            config,
            vocabularies,
            QuantileNormalizer.load(d / "normalizer.json"),
            model,
            history=meta.get("history", []),
            best_epoch=meta.get("best_epoch", 0),
            device=dev,
            calibrator=calibrator,
        )


def predict_expected_watch_time(
    ranker: TrainedRanker,
    dataset: Dataset | RankerFeatureIndex,
    user_id: int,
    item_ids: Sequence[int] | np.ndarray,
    t: int,
    *,
    cg_scores: Sequence[float] | np.ndarray | None = None,
    cg_ranks: Sequence[float] | np.ndarray | None = None,
    source: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Return DataFrame(item_id, expected_watch_time) of `item_ids` for `user_id` at time t."""
    return ranker.score_items(
        dataset, user_id, item_ids, t, cg_scores=cg_scores, cg_ranks=cg_ranks, source=source
    )


def _per_item(values: Sequence[float] | np.ndarray, n: int, name: str) -> np.ndarray:
    """`values` as float64 (n,), refused when not one per item."""
    out = np.asarray(values, dtype=np.float64)
    if out.shape != (n,):
        raise ValueError(f"score_requests: {name} has shape {out.shape} for {n} item_ids")
    return out


def _check_files(directory: Path, digests: object) -> None:
    """Refuse companion files that are not the ones ranker.json recorded (e.g. another run's
    vocabularies.json of the same sizes, which would look up the wrong embedding rows)."""
    if not isinstance(digests, dict):
        return  # saved before ranker.json recorded digests
    for name, digest in digests.items():
        check_digest(
            resolve_inside(directory, name, "ranker.json file name"),
            str(digest),
            f"the {name} this ranker was saved with (recorded in ranker.json)",
            "restore the file saved with this model, or retrain it",
        )


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _build_model(spec: dict[str, Any]) -> DeepRanker:
    return DeepRanker(
        spec["vocab_sizes"],
        spec["embedding_widths"],
        spec["n_dense"],
        spec["hidden"],
        use_continuous=spec["use_continuous"],
        dropout=float(spec.get("dropout", 0.0)),  # absent in rankers saved before dropout
    )


def _labels(frame: RankerFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not frame.has_labels:
        raise ValueError(f"{what} has no labels: build it from impressions (clicked, watch_time)")
    if len(frame) == 0:
        raise ValueError(f"{what} has 0 rows")
    return frame.labels()


def _weighted_log_loss(
    model: DeepRanker,
    inputs: _Inputs,
    clicked: np.ndarray,
    watch_time: np.ndarray,
    weighting: str,
    device: torch.device,
    batch_size: int,
    *,
    distributed: bool = False,
) -> float:
    """Return Σ w ℓ / Σ w over a frame (the early-stopping criterion).

    With `distributed=True` each rank sums over its `row_range` share and the sums are added
    over ranks.
    """
    rank, world = dist_utils.rank_and_world() if distributed else (0, 1)
    first, end = row_range(len(clicked), rank, world)
    total, weight = 0.0, 0.0
    model.eval()
    with torch.inference_mode():
        for lo in range(first, end, batch_size):
            rows = np.arange(lo, min(lo + batch_size, end))
            logits = model(inputs.batch(rows, device)).float().cpu()
            c, wt = torch.from_numpy(clicked[rows]), torch.from_numpy(watch_time[rows])
            total += float(weighted_logistic_loss(logits, c, wt, weighting, reduction="sum"))
            weight += float(example_weights(c, wt, weighting).sum())
    if world > 1:
        total, weight = dist_utils.all_reduce_sum([total, weight])
    return float(total / max(weight, 1e-30))


#: Fields a resumed run may change: training can be extended or made more patient.
_RESUMABLE_CHANGES = ("epochs", "patience")


def _prepare_dir(d: Path, config: RankerConfig) -> None:
    """Create the checkpoint directory or check that it holds a run of the same config.

    Only `epochs` and `patience` may differ (to extend a finished or interrupted run).
    """
    cfg_path = d / "config.json"
    new = config.to_dict()
    if cfg_path.exists():
        saved = _read_json(cfg_path)
        diff = sorted(
            k
            for k in set(saved) | set(new)
            if saved.get(k) != new.get(k) and k not in _RESUMABLE_CHANGES
        )
        if diff:
            raise ValueError(
                f"checkpoint directory {d} holds a run with a different config (fields {diff}); "
                "use another directory or delete it to start over"
            )
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, new)


def train_ranker(
    config: RankerConfig,
    train_frame: RankerFrame,
    valid_frame: RankerFrame | None,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    select_on_valid: bool = True,
) -> TrainedRanker:
    """Return a `TrainedRanker` trained on `train_frame`, early-stopped on `valid_frame`.

    Vocabularies and the quantile normalizer are fitted on `train_frame` only. With
    `valid_frame=None` all `config.epochs` epochs run and the last weights are kept; so do they
    with `select_on_valid=False`, where the validation frame is only scored each epoch (the
    history) and fits the calibrator (the epoch count was chosen elsewhere, e.g. by
    `fold_epochs`). With a
    `checkpoint_dir` holding an interrupted run of the same config (epochs and patience may
    grow), training resumes after its last finished epoch.
    An epoch whose mean training loss is NaN or infinite (the optimizer diverged) raises
    `NonFiniteLossError` before its checkpoint is written.

    Under a process group of several ranks every rank calls this with the same arguments and
    trains its shard with DistributedDataParallel (see the module docstring); `batch_size` must
    then be a multiple of the number of processes. Every rank returns the same model.
    """
    clicked, watch_time = _labels(train_frame, "train_frame")
    if config.calibrate and config.weighting != "click" and valid_frame is None:
        raise ValueError(
            "calibrate=true fits the watch-time calibrator on the validation frame: pass a "
            "valid_frame (held-out impressions), or set calibrate=false"
        )
    if valid_frame is not None:
        v_clicked, v_watch_time = _labels(valid_frame, "valid_frame")
    rank, world = dist_utils.rank_and_world()
    if config.batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the {world} processes; use a "
            "multiple of the process count so that the global batch equals the single-process "
            "batch"
        )
    device = dist_utils.worker_device(resolve_device(config.device))
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # the loss of a batch is Σ w ℓ / (B * mean training weight): an unbiased estimate of the
    # full objective, so the fitted odds stay Σ T / (N - k) (a per-batch Σ w would bias them)
    mean_weight = float(
        example_weights(
            torch.from_numpy(clicked), torch.from_numpy(watch_time), config.weighting
        ).mean()
    )
    if not mean_weight > 0:
        raise ValueError("train_frame: every example weight is 0 (all clicks with watch_time 0?)")

    # inputs are valid: a launcher that runs this on rank 0 alone replays the call on the others
    dist_utils.announce(
        train_ranker,
        (config, train_frame, valid_frame),
        {
            "checkpoint_dir": checkpoint_dir,
            "progress": progress,
            "select_on_valid": select_on_valid,
        },
    )
    dist_utils.check_same_on_all_ranks(
        (
            len(train_frame),
            int(clicked.sum()),
            float(watch_time.sum()),
            None if valid_frame is None else (len(valid_frame), float(v_watch_time.sum())),
            json.dumps(config.to_dict(), sort_keys=True),
        ),
        "ranker frames or config",
    )
    # rank 0 fits (or loads) the transforms and writes the directory; every rank gets them
    vocabs, normalizer = dist_utils.on_rank0(_fit_transforms, config, train_frame, ckpt_dir)

    train_in = _Inputs(
        vocabs.encode(train_frame),
        dense_features(config, normalizer, train_frame),
        config.history_len,
    )
    valid_in = (
        _Inputs(
            vocabs.encode(valid_frame),
            dense_features(config, normalizer, valid_frame),
            config.history_len,
        )
        if valid_frame is not None
        else None
    )

    widths = vocabs.embedding_widths(
        scale=config.embedding_scale, max_width=config.max_embedding_width
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DeepRanker(
            vocabs.sizes(),
            widths,
            train_in.dense.shape[1],
            config.hidden,
            use_continuous=config.use_continuous,
            dropout=config.dropout,
        ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    # early stopping keeps the epoch with the least validation loss; without a validation
    # frame, or when the epoch count was chosen elsewhere, the last epoch is kept
    select = valid_in is not None and select_on_valid
    start_epoch = 1
    early = EarlyStopping(higher_is_better=False, patience=config.patience if select else 0)
    early.keep(0, model)
    history: list[dict[str, float]] = []
    ck = None
    if ckpt_dir is not None:
        # one process loads onto its device; several share rank 0's copy (read on CPU)
        ck = dist_utils.on_rank0(_read_checkpoint, ckpt_dir, device if world == 1 else "cpu")
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start_epoch = int(ck["epoch"]) + 1
        early.best_weights = {k: v.detach().cpu() for k, v in ck["best_model"].items()}
        early.best, early.best_epoch, early.bad_epochs = (
            float(ck["best_loss"]),
            int(ck["best_epoch"]),
            int(ck["bad_epochs"]),
        )
        history = [dict(h) for h in ck["history"]]
        if rank == 0:
            log.info(
                "ranker: resuming from the checkpoint in %s after epoch %d",
                ckpt_dir,
                start_epoch - 1,
            )
        if early.stopped:
            start_epoch = config.epochs + 1  # the run had already stopped early

    runner: torch.nn.Module = DistributedDataParallel(model) if world > 1 else model
    n = len(train_frame)
    c_t = torch.from_numpy(clicked)
    w_t = torch.from_numpy(watch_time)
    for epoch in range(start_epoch, config.epochs + 1):
        runner.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(n)  # same on every rank
        total, seen = 0.0, 0
        bar = progress_bar(
            progress and rank == 0,
            total=n,
            desc=f"ranker epoch {epoch}/{config.epochs}",
            unit="row",
            leave=False,
        )
        for rows in shard_batches(order, config.batch_size, rank, world):
            batch = train_in.batch(rows, device)
            logits = runner(batch)
            idx = torch.from_numpy(rows)
            loss_sum = weighted_logistic_loss(
                logits, c_t[idx].to(device), w_t[idx].to(device), config.weighting, reduction="sum"
            )
            # DDP averages the W rank gradients of Σ_rank / (B / W): the global batch's gradient
            loss = loss_sum / (len(rows) * mean_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss_sum.detach())
            seen += len(rows)
            bar.update(len(rows) * world)
            bar.set_postfix(loss=f"{total / (seen * mean_weight):.4f}")
        bar.close()
        if world > 1:
            total, seen = dist_utils.all_reduce_sum([total, seen])
        record = {"epoch": float(epoch), "train_loss": float(total / (seen * mean_weight))}
        check_finite_loss(
            record["train_loss"], stage="ranker", epoch=epoch, setting="ranking.lr", lr=config.lr
        )
        if valid_in is not None:
            v_loss = _weighted_log_loss(
                model,
                valid_in,
                v_clicked,
                v_watch_time,
                config.weighting,
                device,
                max(config.batch_size, 4096),
                distributed=world > 1,
            )
            v_loss = dist_utils.broadcast_object(v_loss)  # rank 0 decides for every rank
            record["valid_loss"] = v_loss
        if select:
            early.update(record["valid_loss"], epoch, model)
        else:  # the last epoch's weights are kept
            early.keep(epoch, model)
        history.append(record)
        if rank == 0:  # one line an epoch, with or without the progress bar
            log.info(
                f"ranker epoch {epoch}: train {record['train_loss']:.4f}"
                + (f" valid {record['valid_loss']:.4f}" if "valid_loss" in record else "")
            )
        if ckpt_dir is not None:
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_model": early.best_weights,
                "epoch": epoch,
                "best_loss": early.best,
                "best_epoch": early.best_epoch,
                "bad_epochs": early.bad_epochs,
                "history": history,
            }
            # rank 0 writes (atomically); the others wait for it (a barrier)
            dist_utils.on_rank0(_write_checkpoint, ckpt_dir, checkpoint)
        if early.stopped:
            break

    early.restore(model)
    calibrator = None
    if config.calibrate and config.weighting != "click" and valid_in is not None:
        calibrator = _fit_calibrator(model, valid_in, v_clicked, v_watch_time, device, config)
    return TrainedRanker(
        config,
        vocabs,
        normalizer,
        model,
        history=history,
        best_epoch=early.best_epoch,
        device=device,
        calibrator=calibrator,
    )


def fold_epochs(
    config: RankerConfig, frame: RankerFrame, folds: int, *, progress: bool = False
) -> tuple[int, list[float]]:
    """Return (epochs, mean validation loss per epoch): the epoch count that minimises the
    weighted log loss averaged over `folds` folds of `frame`'s users (each fold's users held
    out once, a model trained on the others for all `config.epochs` epochs).

    On a small frame one held-out slice of users is too few to pick an epoch from: a few dozen
    users' loss curve can turn up after one epoch by chance and stop a ranker that the other
    users would have let learn. Every user is scored once here, so the choice rests on the
    whole frame. Users are assigned to folds by a permutation seeded with `config.seed`."""
    if folds < 2:
        raise ValueError(f"fold_epochs needs at least 2 folds, got {folds}")
    users = frame.rows["user_id"].to_numpy()
    uniq = np.unique(users)
    if len(uniq) < folds:
        raise ValueError(f"fold_epochs: {len(uniq)} users cannot fill {folds} folds")
    fold_of = np.empty(len(uniq), dtype=np.int64)
    fold_of[np.random.default_rng(config.seed).permutation(len(uniq))] = (
        np.arange(len(uniq)) % folds
    )
    row_fold = fold_of[np.searchsorted(uniq, users)]
    # every epoch runs (patience past the last one) and calibration is left to the final model
    cfg = dataclasses.replace(config, patience=config.epochs, calibrate=False)
    curves = []
    for f in range(folds):
        held = row_fold == f
        model = train_ranker(
            cfg,
            frame.take(np.flatnonzero(~held)),
            frame.take(np.flatnonzero(held)),
            progress=progress,
        )
        curves.append([h["valid_loss"] for h in model.history])
    mean = np.asarray(curves, dtype=np.float64).mean(axis=0)
    return int(np.argmin(mean)) + 1, [float(x) for x in mean]


def _fit_calibrator(
    model: DeepRanker,
    valid_in: _Inputs,
    clicked: np.ndarray,
    watch_time: np.ndarray,
    device: torch.device,
    config: RankerConfig,
) -> WatchTimeCalibrator | None:
    """Return a `WatchTimeCalibrator` fitted on the best model's validation logits (every rank
    scores the whole validation frame with the same weights, so all get the same calibrator);
    None, with a warning, when the validation frame is too small or has no watch time."""
    n = len(clicked)
    observed = np.where(clicked, watch_time, 0.0)
    if n < _CALIBRATION_MIN_ROWS or not observed.sum() > 0:
        log.warning(
            "ranker: calibration skipped: the validation frame has %d rows and %.1f s of watch "
            "time (need >= %d rows and some watch time); the expected watch time is exp(logit)",
            n,
            float(observed.sum()),
            _CALIBRATION_MIN_ROWS,
        )
        return None
    logits = _batched_logits(model, valid_in, n, device, max(config.batch_size, 4096))
    min_rows = max(1, min(_CALIBRATION_BIN_ROWS, n // 20))
    cal = WatchTimeCalibrator(n_bins=100, min_bin_rows=min_rows, method=config.calibrator).fit(
        logits, observed, np.asarray(clicked).astype(bool)
    )
    if cal.method_ != config.calibrator:
        log.info(
            "ranker: the %s calibrator fell back to %s (the click rate is flat over the "
            "validation logits)",
            config.calibrator,
            cal.method_,
        )
    return cal


def _batched_logits(
    model: DeepRanker, inputs: _Inputs, n: int, device: torch.device, batch_size: int
) -> np.ndarray:
    """Return the model's logits (n,) float64 of the n rows of `inputs`, scored in batches."""
    out = np.empty(n, dtype=np.float64)
    if model.training:  # eval() walks every module: ~0.3 ms of a 500-candidate request
        model.eval()
    with torch.inference_mode():
        for lo in range(0, n, batch_size):
            rows = np.arange(lo, min(lo + batch_size, n))
            batch = inputs.batch(rows, device, distinct_bags=True)
            out[rows] = model(batch).double().cpu().numpy()
    return out


def _fit_transforms(
    config: RankerConfig, train_frame: RankerFrame, ckpt_dir: Path | None
) -> tuple[RankerVocabularies, QuantileNormalizer]:
    """Return the vocabularies and normalizer: loaded from `ckpt_dir` when it has them (after
    checking its config), else fitted on `train_frame` (and saved there)."""
    if ckpt_dir is not None and (ckpt_dir / "vocabularies.json").exists():
        _prepare_dir(ckpt_dir, config)
        return (
            RankerVocabularies.load(ckpt_dir / "vocabularies.json"),
            QuantileNormalizer.load(ckpt_dir / "normalizer.json"),
        )
    vocabs = RankerVocabularies.fit(
        train_frame, top_n=config.vocab_top_n, history_len=config.history_len
    )
    # CONTINUOUS_COLUMNS, then the items' continuous extra columns ("item.<column>")
    normalizer = QuantileNormalizer(config.n_quantiles).fit(train_frame.continuous)
    if ckpt_dir is not None:
        _prepare_dir(ckpt_dir, config)
        vocabs.save(ckpt_dir / "vocabularies.json")
        normalizer.save(ckpt_dir / "normalizer.json")
    return vocabs, normalizer


def _read_checkpoint(ckpt_dir: Path, device: torch.device | str) -> dict[str, Any] | None:
    """Return the checkpoint in `ckpt_dir` loaded onto `device`, or None when there is none.

    The vocabularies and normalizer beside it must be the ones it was trained with (their
    sha256 is stored in the checkpoint): others would resume the weights on wrong rows.
    """
    if not (ckpt_dir / _CHECKPOINT).exists():
        return None
    try:
        ck = load_weights(ckpt_dir / _CHECKPOINT, device)
    except DamagedWeightsError as exc:
        # a kill or a full disk can leave a torn checkpoint behind: it is no use to resume
        # from, and keeping it would fail every rerun; the stage trains from the first epoch
        log.warning("ranker: %s; discarding it and training from the first epoch", exc)
        return None
    recorded = ck.get("transforms_sha256") if isinstance(ck, dict) else None
    for name, digest in (recorded or {}).items():
        found = sha256_file(ckpt_dir / name) if (ckpt_dir / name).is_file() else "missing"
        if found != digest:
            raise ArtifactError(
                f"cannot resume from {ckpt_dir / _CHECKPOINT}: {ckpt_dir / name} is not the file "
                f"the checkpoint was trained with (sha256 {short_digest(digest)} recorded, "
                f"{short_digest(found)} found); restore it, or delete {ckpt_dir} to train "
                "from scratch"
            )
    return ck


def _write_checkpoint(ckpt_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint.pt` (with the sha256 of the transforms beside it) and the readable
    `progress.json` atomically."""
    checkpoint = {
        **checkpoint,
        "transforms_sha256": {n: sha256_file(ckpt_dir / n) for n in _TRANSFORMS},
    }
    save_weights(ckpt_dir / _CHECKPOINT, checkpoint)
    atomic_write_json(
        ckpt_dir / "progress.json",
        {
            "history": checkpoint["history"],
            "best_epoch": checkpoint["best_epoch"],
            "epoch": checkpoint["epoch"],
        },
    )
