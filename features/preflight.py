"""Pre-flight checks: can a valid dataset train and evaluate a run? Answered before training.

Where it sits in the data path: `features.schema` decides whether the tables satisfy the data
contract; this module decides whether a contract-valid dataset can go through a run of a given
config. It cuts the time split exactly as the pipeline's data stage does
(`TimeSplit.from_fractions` with `split.train_end` and `split.valid_end`) and checks that every
stage finds what it needs in its window, so that a run on unusable data fails in seconds with
one message instead of a traceback minutes into training, or metrics computed on one user.
`vidrec validate DIR --for-run` runs the same checks without training anything.

Errors (`PreflightError`, a `DataContractError`: exit code 3 in the CLI):

- event timestamps (watches, searches, impressions) outside [1990-01-01, now + 1 day]
  (`PLAUSIBLE_FROM`, `FUTURE_SLACK_S`), and upload times after now + 1 day. Online video logs
  do not predate the web (MovieLens ratings start in 1995) and no log holds the future: such a
  time is a unit or epoch mix-up, and one such watch moves the split's window edges so far that
  every other event lands in one window. Upload times may be earlier (old films). A simulated
  dataset (the synthetic world) skips the "after now" bound: its clock is its own.
- a catalog of fewer than 2 items (the candidate generator's softmax needs 2);
- no watch in the training window [start, train_end) (the candidate generator's labels);
- the ranker window [train_end, valid_end): with logged impressions, none in it, none clicked
  in its training part, or an empty training or early-stopping part (the latest
  `split.ranker_valid_share` of the window; by users when all impressions share one time);
  without logged impressions (ranker rows are the candidate generator's candidates, labelled by
  the window's watches), fewer than 2 users watching in it (one is held out for early stopping);
- the test window [valid_end, end): no watch (no held-out user, no retrieval target), every
  watch of an item the user had watched before (nothing left to retrieve when
  `retrieval.exclude_watched`), or, with logged impressions, no impression (ranking metrics);
- no item uploaded by valid_end (nothing to index and serve at the serving time);
- more than `MAX_BEFORE_UPLOAD_SHARE` (half) of the watches before their item's upload time:
  then items.upload_time is not when the items were uploaded (another meaning, such as a last
  modification, or another epoch), and the upload ages the models see, the catalog servable
  at the serving time and the freshness metrics would all be wrong.

Warnings (returned in the `PreflightReport` and logged): watches before their item's upload
time (up to half of them: clock skew, upload dates without a time of day, re-uploads; the
models see such an item as not yet uploaded, in the "future" upload-age bucket), fewer than
`MIN_HELDOUT_USERS` (50) users behind the test metrics (a per-user mean over n users has a
standard error of about sd / sqrt(n): below 50 users a recall's 95 % interval spans +-0.1 or
more, wider than the differences between models), no candidate-generator validation labels
(early stopping is off), no clicks in the ranker's early-stopping part or in the test window's
impressions, and (from `features.schema`) repeated event rows and watch times far above the
item's duration.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.features.schema import DataContractError, Problem, csv_line_numbers, table_warnings
from vidrec.features.split import TimeSplit
from vidrec.features.tables import TABLES, Dataset

__all__ = [
    "FUTURE_SLACK_S",
    "MAX_BEFORE_UPLOAD_SHARE",
    "MIN_HELDOUT_USERS",
    "PLAUSIBLE_FROM",
    "PreflightError",
    "PreflightReport",
    "RunNeeds",
    "preflight",
]

log = logging.getLogger("vidrec")

PLAUSIBLE_FROM = 631_152_000  # 1990-01-01T00:00:00Z: no online video log is older
FUTURE_SLACK_S = 86_400  # events may be up to a day ahead of this machine's clock
MIN_HELDOUT_USERS = 50
MAX_BEFORE_UPLOAD_SHARE = 0.5  # above: upload_time is not the upload time
_EVENT_TABLES = ("watches", "searches", "impressions")
_MAX_EXAMPLES = 5


class PreflightError(DataContractError):
    """The data satisfies the contract but cannot train or evaluate this run's config."""

    def __str__(self) -> str:
        head = "pre-flight check failed, nothing was trained"
        lines = [_one_line(p) for p in self.problems]
        if len(lines) == 1:
            return f"{head}: {lines[0]}"
        numbered = [f"  {i}. {line}" for i, line in enumerate(lines, 1)]
        return "\n".join([f"{head}: {len(lines)} problems", *numbered])


def _one_line(p: Problem) -> str:
    where = [p.file] if p.file else []
    where.append(f"table {p.table!r}")
    if p.column is not None:
        where.append(f"column {p.column!r}")
    text = f"{', '.join(where)}: {p.message}"
    if p.examples:
        shown = []
        for ex in p.examples:
            pos = f"row {ex['row']}" + (f" (line {ex['line']})" if "line" in ex else "")
            values = ", ".join(f"{k}={v!r}" for k, v in ex.items() if k not in ("row", "line"))
            shown.append(f"{pos}: {values}")
        text += f" [first: {'; '.join(shown)}]"
    return text + (f"; fix: {p.fix}" if p.fix else "")


@dataclass(frozen=True)
class RunNeeds:
    """What of a run config the checks read: the split fractions and the evaluation sample."""

    train_end: float = 0.7
    valid_end: float = 0.85
    ranker_valid_share: float = 0.2
    max_users: int = 0  # held-out users evaluated (a sample of this many; 0 = all)
    exclude_watched: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunNeeds:
        """Return the needs of a resolved run config (`pipelines.config.resolve_config`).

        Also takes the `split` section alone (the other values keep their defaults).
        """
        split = config.get("split", config)
        evaluation = config.get("evaluation", {})
        retrieval = config.get("retrieval", {})
        return cls(
            train_end=float(split["train_end"]),
            valid_end=float(split["valid_end"]),
            ranker_valid_share=float(split.get("ranker_valid_share", cls.ranker_valid_share)),
            max_users=int(evaluation.get("max_users", 0)),
            exclude_watched=bool(retrieval.get("exclude_watched", True)),
        )


@dataclass
class PreflightReport:
    """What the checks found: the split, what each window holds, and the warnings."""

    split: TimeSplit
    windows: dict[str, dict[str, int]] = field(default_factory=dict)
    metric_users: int = 0  # held-out users the test metrics rest on
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready dicts and lists."""
        return {
            "split": self.split.to_dict(),
            "windows": {k: dict(v) for k, v in self.windows.items()},
            "metric_users": self.metric_users,
            "warnings": list(self.warnings),
        }

    def format(self) -> str:
        """Return the report as readable lines (for `vidrec validate --for-run`)."""
        lines = ["pre-flight check of the run's windows:"]
        for name, (lo, hi) in zip(
            ("train", "ranker", "test"),
            (self.split.bounds(w) for w in ("train", "valid", "test")),
            strict=True,
        ):
            counts = ", ".join(
                f"{v:,} {k.replace('_', ' ')}" for k, v in self.windows.get(name, {}).items()
            )
            lines.append(f"  {name:<7} [{_iso(lo)}, {_iso(hi)})  {counts}")
        s = "" if self.metric_users == 1 else "s"
        lines.append(f"  test metrics rest on {self.metric_users:,} held-out user{s}")
        if self.warnings:
            lines.append(f"pre-flight warnings ({len(self.warnings)}):")
            lines += [f"  {w}" for w in self.warnings]
        return "\n".join(lines)


def _iso(t: int) -> str:
    try:
        return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{int(t)} s"


class _Checks:
    """Collects problems and warnings, naming the dataset's files where they are known."""

    def __init__(self, dataset: Dataset) -> None:
        self.ds = dataset
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        source = dataset.meta.get("source")
        files = dataset.meta.get("files") or {}
        self.files = {t: str(Path(source) / f) for t, f in files.items()} if source else {}

    def error(
        self,
        table: str,
        column: str | None,
        message: str,
        fix: str,
        rows: np.ndarray | None = None,
        show: tuple[str, ...] = (),
    ) -> None:
        examples: list[dict[str, Any]] = []
        n = 0
        if rows is not None:
            n = len(rows)
            examples = self.examples(table, rows[:_MAX_EXAMPLES], show)
        self.problems.append(
            Problem(table, column, message, n, examples, self.files.get(table), fix)
        )

    def examples(
        self, table: str, rows: np.ndarray, show: tuple[str, ...]
    ) -> list[dict[str, Any]]:
        df = self.ds.table(table)
        assert df is not None
        file = self.files.get(table)
        is_csv = bool(file) and str(file).lower().endswith(".csv")
        lines = csv_line_numbers(str(file), len(df), rows) if is_csv else None
        out = []
        for k, i in enumerate(rows.tolist()):
            ex: dict[str, Any] = {"row": i}
            if lines is not None:
                ex["line"] = lines[k]
            for c in show:
                v = df[c].iloc[i]
                ex[c] = v.item() if isinstance(v, np.generic) else v
                if c in ("user_id", "item_id") and self.ds.ids is not None:
                    ex[c] = self.ds.ids.label(c[: -len("_id")], int(v))  # the data's own id
            out.append(ex)
        return out


def preflight(
    dataset: Dataset,
    config: Mapping[str, Any] | RunNeeds,
    *,
    now: float | None = None,
    simulated: bool = False,
    log_warnings: bool = True,
    data_warnings: bool = True,
) -> PreflightReport:
    """Return what a run of `config` finds in each window; raise `PreflightError` if unusable.

    `dataset` is a validated (contract) dataset; `config` the resolved run config (or its
    `RunNeeds`). Every error found is raised at once in one `PreflightError`; the warnings are
    returned and, with `log_warnings`, logged. `now` (UTC seconds, default the clock) bounds
    plausible times; `simulated` data (the synthetic world) has its own clock and skips that
    bound. With `data_warnings` the warnings of `features.schema` about the tables themselves
    (repeated rows, watch times above 10x the duration) are included (a `ValidationReport`
    already holds them when the data was read by `features.io`). Vectorized: a few seconds
    for tens of millions of events.
    """
    needs = config if isinstance(config, RunNeeds) else RunNeeds.from_config(config)
    now = time.time() if now is None else float(now)
    checks = _Checks(dataset)
    _check_times(checks, dataset, None if simulated else int(now) + FUTURE_SLACK_S)
    if checks.problems:  # a wrong time moves every window edge: its problems come first
        raise PreflightError(checks.problems)
    try:
        split = TimeSplit.from_fractions(
            dataset, train=needs.train_end, valid=needs.valid_end - needs.train_end
        )
    except ValueError as exc:
        problem = Problem(
            "watches",
            "timestamp",
            f"cannot cut the time split: {exc}",
            file=checks.files.get("watches"),
            fix="set split.train_end and split.valid_end to fractions with "
            "0 < train_end <= valid_end <= 1",
        )
        raise PreflightError([problem]) from None
    report = PreflightReport(split)
    _check_windows(checks, dataset, split, needs, report)
    _check_before_upload(checks, dataset)
    if data_warnings:
        checks.warnings += table_warnings({t: dataset.table(t) for t in TABLES}, ids=dataset.ids)
    if checks.problems:
        raise PreflightError(checks.problems)
    report.warnings = checks.warnings
    if log_warnings:
        for w in report.warnings:
            log.warning("pre-flight: %s", w)
    return report


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def _check_times(checks: _Checks, ds: Dataset, latest: int | None) -> None:
    bound = (
        f"between {_iso(PLAUSIBLE_FROM)[:10]} and {_iso(latest)} (now + 1 day)"
        if latest is not None
        else f"after {_iso(PLAUSIBLE_FROM)[:10]}"
    )
    for name in _EVENT_TABLES:
        df = ds.table(name)
        if df is None or len(df) == 0:
            continue
        t = df["timestamp"].to_numpy()
        early = t < PLAUSIBLE_FROM
        late = t > latest if latest is not None else np.zeros(len(t), bool)
        bad = np.flatnonzero(early | late)
        if len(bad):
            what = []
            if early.any():
                what.append(f"{int(early.sum()):,} before {_iso(PLAUSIBLE_FROM)[:10]}")
            if late.any():
                latest_seen = _iso(int(t.max()))
                what.append(f"{int(late.sum()):,} after now + 1 day, the latest at {latest_seen}")
            checks.error(
                name,
                "timestamp",
                f"{len(bad):,} of {len(t):,} event times are implausible ({', '.join(what)}); "
                "they would move the edges of the time split so that the other events all "
                "fall into one window",
                f"event times must be UTC seconds {bound}: check their unit (milliseconds?) "
                "and epoch, or remove these rows",
                rows=bad,
                show=tuple(c for c in ("user_id", "item_id", "timestamp") if c in df.columns),
            )
    if latest is not None:
        up = ds.items["upload_time"].to_numpy()
        late = np.flatnonzero(up > latest)
        if len(late):
            checks.error(
                "items",
                "upload_time",
                f"{len(late):,} of {len(up):,} items are uploaded after now + 1 day, the latest "
                f"at {_iso(int(up.max()))}",
                "upload times must be UTC seconds no later than now: check their unit and "
                "epoch, or remove these items",
                rows=late,
                show=("item_id", "upload_time"),
            )


def _in_window(frame: pd.DataFrame | None, lo: int, hi: int) -> pd.DataFrame:
    if frame is None:
        return pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []})
    t = frame["timestamp"].to_numpy()
    cols = [c for c in ("user_id", "item_id", "timestamp", "clicked") if c in frame.columns]
    return frame.loc[(t >= lo) & (t < hi), cols]  # only the columns the checks read


def _span(ds: Dataset) -> str:
    t = ds.watches["timestamp"].to_numpy()
    lo, hi = int(t.min()), int(t.max())
    if lo == hi:
        return f"every watch is at {_iso(lo)}"
    return f"the watches span {_iso(lo)} to {_iso(hi)}"


def _check_windows(
    checks: _Checks, ds: Dataset, split: TimeSplit, needs: RunNeeds, report: PreflightReport
) -> None:
    fractions = (
        f"split.train_end = {needs.train_end:g} and split.valid_end = {needs.valid_end:g} of "
        "the watches' time range"
    )
    move = f"the windows are cut at {fractions}; {_span(ds)}"
    w = ds.watches
    t = w["timestamp"].to_numpy()
    if len(t) and t.min() == t.max():
        checks.error(
            "watches",
            "timestamp",
            f"every one of the {len(t):,} watches is at the same time ({_iso(int(t[0]))}): a "
            "run needs watches at different times (it trains on the earliest, tunes the ranker "
            "on later ones and tests on the latest)",
            "check how the timestamps were written (a constant column, dates without a time "
            "of day, a unit that rounds them away)",
            rows=np.arange(min(len(t), _MAX_EXAMPLES)),
            show=("user_id", "item_id", "timestamp"),
        )
        return
    imp = ds.impressions if ds.impressions is not None and len(ds.impressions) else None
    n_items = len(ds.items)
    if n_items < 2:
        checks.error(
            "items",
            "item_id",
            f"the catalog has {n_items} item: the candidate generator needs at least 2 to "
            "choose between",
            "add the other items of the catalog to the items table",
        )

    # candidate generator: labels in the train window (and validation labels after it)
    tr = _in_window(w, *split.bounds("train"))
    report.windows["train"] = {
        "watches": len(tr),
        "users": _n_distinct(tr["user_id"]),
        "items": _n_distinct(tr["item_id"]),
    }
    if len(tr) == 0:
        checks.error(
            "watches",
            "timestamp",
            f"no watch falls in the training window [{_iso(split.start)}, "
            f"{_iso(split.train_end)}): the candidate generator has no labels",
            f"{move}; move split.train_end later",
        )

    # ranker: impressions (or the candidate generator's candidates) in the ranker window
    lo, hi = split.bounds("valid")
    rw = _in_window(w, lo, hi)
    ranker = {"watches": len(rw), "users": _n_distinct(rw["user_id"])}
    if len(rw) == 0:
        checks.warnings.append(
            f"no watch falls in the ranker window [{_iso(lo)}, {_iso(hi)}): the candidate "
            "generator has no validation labels, so early stopping is off (all epochs run)"
        )
    if imp is not None:
        _check_ranker_impressions(checks, imp, lo, hi, needs, ranker, move)
    elif ranker["users"] < 2:
        checks.error(
            "watches",
            "timestamp",
            f"users watching in the ranker window [{_iso(lo)}, {_iso(hi)}): {ranker['users']}; "
            "without logged impressions the ranker's rows are the candidates of the users who "
            "watch in that window, and at least 2 users are needed (one is held out for early "
            "stopping)",
            f"{move}; widen the ranker window (split.valid_end - split.train_end), or provide "
            "an impressions table",
        )
    report.windows["ranker"] = ranker

    # test: held-out users, their retrieval targets, the impressions ranked
    t_lo, t_hi = split.bounds("test")
    te = _in_window(w, t_lo, t_hi)
    n_test_users = _n_distinct(te["user_id"])
    test = {"watches": len(te), "users": n_test_users}
    if len(te) == 0:
        checks.error(
            "watches",
            "timestamp",
            f"no watch falls in the test window [{_iso(t_lo)}, {_iso(t_hi)}): no held-out "
            "user and no retrieval target to evaluate",
            f"{move}; move split.valid_end earlier",
        )
    with_targets = n_test_users
    if len(te) and needs.exclude_watched:
        before = w[w["timestamp"].to_numpy() < t_lo]
        new = ~_pairs_in(te, before)
        with_targets = _n_distinct(te["user_id"].to_numpy()[new])
        test["users_with_new_items"] = with_targets
        if with_targets == 0:
            checks.error(
                "watches",
                "item_id",
                f"every one of the {len(te):,} test-window watches is of an item its user "
                "watched before the test window: with retrieval.exclude_watched = true "
                "(watched items are not retrieved again) no retrieval target is left",
                f"{move}; or set retrieval.exclude_watched = false",
            )
    if imp is not None:
        ti = _in_window(imp, t_lo, t_hi)
        test["impressions"] = len(ti)
        test["clicks"] = int(ti["clicked"].sum()) if len(ti) else 0
        if len(ti) == 0:
            checks.error(
                "impressions",
                "timestamp",
                f"no impression falls in the test window [{_iso(t_lo)}, {_iso(t_hi)}): the "
                "rankers cannot be evaluated",
                f"{move}; the impressions span {_range(imp)}",
            )
        elif test["clicks"] == 0:
            checks.warnings.append(
                f"none of the {len(ti):,} test-window impressions is clicked: ranking "
                "metrics (AUC, NDCG, weighted per-user loss) are undefined or 0"
            )
    report.windows["test"] = test
    metric_users = with_targets if needs.max_users <= 0 else min(with_targets, needs.max_users)
    report.metric_users = int(metric_users)
    if 0 < metric_users < MIN_HELDOUT_USERS:
        cap = (
            f" (evaluation.max_users = {needs.max_users})"
            if 0 < needs.max_users < with_targets
            else ""
        )
        checks.warnings.append(
            f"the test metrics rest on {metric_users} held-out user"
            f"{'s' if metric_users != 1 else ''}{cap}: fewer than {MIN_HELDOUT_USERS}, so "
            "they are not meaningful (a mean over n users has a standard error of sd / "
            "sqrt(n)); use them as a smoke test only"
        )

    served = int((ds.items["upload_time"].to_numpy() <= split.valid_end).sum())
    if n_items and served == 0:
        checks.error(
            "items",
            "upload_time",
            f"no item is uploaded by the serving time {_iso(split.valid_end)} (the start of "
            "the test window): there is nothing to index and recommend",
            "check the unit and epoch of items.upload_time against the watches' timestamps",
        )


def _pairs_in(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Return whether each (user_id, item_id) pair of `a` occurs in `b` (one int64 key each)."""
    if len(b) == 0:
        return np.zeros(len(a), bool)
    au, ai = a["user_id"].to_numpy(np.int64), a["item_id"].to_numpy(np.int64)
    bu, bi = b["user_id"].to_numpy(np.int64), b["item_id"].to_numpy(np.int64)
    u0, i0 = min(int(au.min()), int(bu.min())), min(int(ai.min()), int(bi.min()))
    u_span = max(int(au.max()), int(bu.max())) - u0 + 1
    i_span = max(int(ai.max()), int(bi.max())) - i0 + 1
    if u_span * i_span < 2**62:
        return _isin((au - u0) * i_span + (ai - i0), (bu - u0) * i_span + (bi - i0))
    seen = pd.MultiIndex.from_arrays([bu, bi])
    return np.asarray(pd.MultiIndex.from_arrays([au, ai]).isin(seen))


def _n_distinct(values: pd.Series | np.ndarray) -> int:
    """Return the number of distinct values (by sorting: numpy's hashed unique is slower)."""
    a = np.sort(np.asarray(values))
    return int(1 + np.count_nonzero(a[1:] != a[:-1])) if len(a) else 0


def _isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return whether each value of `a` occurs in `b` (sort and binary search)."""
    if len(b) == 0:
        return np.zeros(len(a), bool)
    bs = np.sort(b)
    order = np.argsort(a)
    a_sorted = a[order]  # sorted queries walk `bs` in order: far fewer cache misses
    idx = np.minimum(np.searchsorted(bs, a_sorted), len(bs) - 1)
    out = np.empty(len(a), bool)
    out[order] = bs[idx] == a_sorted
    return out


def _range(frame: pd.DataFrame) -> str:
    t = frame["timestamp"].to_numpy()
    return f"{_iso(int(t.min()))} to {_iso(int(t.max()))}"


def _check_ranker_impressions(
    checks: _Checks,
    imp: pd.DataFrame,
    lo: int,
    hi: int,
    needs: RunNeeds,
    ranker: dict[str, int],
    move: str,
) -> None:
    """Check the ranker's rows as `pipelines.stages_rank` cuts them (train / early stopping)."""
    ri = _in_window(imp, lo, hi)
    ranker["impressions"] = len(ri)
    ranker["clicks"] = int(ri["clicked"].sum()) if len(ri) else 0
    where = f"the ranker window [{_iso(lo)}, {_iso(hi)})"
    if len(ri) == 0:
        checks.error(
            "impressions",
            "timestamp",
            f"no impression falls in {where}: the ranker has no training rows",
            f"{move}; the impressions span {_range(imp)}",
        )
        return
    t = ri["timestamp"].to_numpy()
    clicked = ri["clicked"].to_numpy() == 1
    if t.min() == t.max():  # held out by users (stages_rank.split_train_valid)
        n_users = _n_distinct(ri["user_id"])
        if n_users < 2:
            checks.error(
                "impressions",
                "user_id",
                f"the {len(ri):,} impressions in {where} are of one user at one time: the "
                "ranker holds out users for early stopping and needs at least 2",
                f"{move}; provide impressions of more users or times",
            )
            return
        train_clicks, valid_clicks = ranker["clicks"], ranker["clicks"]
    else:
        cut = hi - int((hi - lo) * needs.ranker_valid_share)
        early = t < cut
        ranker["training_rows"] = int(early.sum())
        ranker["early_stopping_rows"] = int((~early).sum())
        train_clicks = int(clicked[early].sum())
        valid_clicks = int(clicked[~early].sum())
        if not early.any() or early.all():
            part = "training part" if not early.any() else "early-stopping part"
            checks.error(
                "impressions",
                "timestamp",
                f"the ranker's {part} is empty: {where} is split at {_iso(cut)} (its latest "
                f"split.ranker_valid_share = {needs.ranker_valid_share:g} holds the "
                f"early-stopping rows), and all {len(ri):,} impressions fall "
                f"{'after' if not early.any() else 'before'} it",
                f"{move}; change split.ranker_valid_share, or provide impressions spread over "
                "the window",
            )
            return
    if train_clicks == 0:
        checks.error(
            "impressions",
            "clicked",
            f"none of the {int(ranker.get('training_rows', len(ri))):,} impressions the ranker "
            f"trains on ({where}) is clicked: it has nothing to learn from",
            "provide impressions with clicks (clicked = 1, watch_time > 0) in that window; "
            "logs without any click cannot train a ranker",
        )
    elif valid_clicks == 0:
        checks.warnings.append(
            f"none of the ranker's early-stopping impressions (the latest "
            f"{needs.ranker_valid_share:g} of {where}) is clicked: early stopping and the "
            "watch-time calibration see no positive example"
        )


def _label(ds: Dataset, space: str, code: int) -> int | str:
    """The data's own id of an internal id (string ids as given)."""
    return code if ds.ids is None else ds.ids.label(space, code)


def _check_before_upload(checks: _Checks, ds: Dataset) -> None:
    w, items = ds.watches, ds.items
    pos = pd.Index(items["item_id"].to_numpy()).get_indexer(w["item_id"].to_numpy())
    up = items["upload_time"].to_numpy()[pos]
    early = np.flatnonzero(w["timestamp"].to_numpy() < up)
    if len(early) == 0:
        return
    share = len(early) / len(w)
    what = (
        f"{len(early):,} of {len(w):,} watches ({share:.1%}) happen before their item's "
        "upload time"
    )
    if share > MAX_BEFORE_UPLOAD_SHARE:
        checks.error(
            "watches",
            "timestamp",
            f"{what}: more than {MAX_BEFORE_UPLOAD_SHARE:.0%}, so items.upload_time is not "
            "when these items were uploaded (another meaning or epoch); upload ages, the "
            "catalog servable at the serving time and freshness would all be wrong",
            "check that watches.timestamp and items.upload_time are both UTC seconds; where "
            "the upload time is unknown, use the item's first watch",
            rows=early,
            show=("user_id", "item_id", "timestamp"),
        )
        for ex in checks.problems[-1].examples:  # the upload time each watch precedes
            ex["upload_time"] = int(up[ex["row"]])
        return
    t = w["timestamp"].to_numpy()
    first = int(t[early].min())
    stretch = (
        f"; the earliest of them starts the time split at {_iso(first)}"
        if first == int(t.min())
        else ""
    )
    checks.warnings.append(
        f"{what} (first at row {int(early[0])}: item "
        f"{_label(ds, 'item', int(w['item_id'].iloc[early[0]]))}"
        f"{stretch}); kept: the models see these items as not yet uploaded; above "
        f"{MAX_BEFORE_UPLOAD_SHARE:.0%} this is an error"
    )
