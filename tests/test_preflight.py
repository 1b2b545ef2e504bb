"""Pre-flight checks (features.preflight): data a run cannot use fails before any training.

Each case starts from the synthetic world's `tiny` preset (moved to 2020, so that the clock of
the machine running the tests never makes it "future"), breaks one thing, and checks the one
error (or the counted warning) that `preflight`, `vidrec validate --for-run` and `vidrec run`
report for it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec.features.io import write_dataset
from vidrec.features.preflight import (
    MIN_HELDOUT_USERS,
    PreflightError,
    RunNeeds,
    preflight,
)
from vidrec.features.split import TimeSplit
from vidrec.features.tables import Dataset
from vidrec.pipelines.cli import main as cli_main
from vidrec.pipelines.config import resolve_config

CFG = resolve_config("tiny")
SHIFT = 6 * 365 * 86_400  # 2026 -> 2020
NOW = 1_767_225_600  # 2026-01-01: the checks' clock in the in-memory cases
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def world() -> Dataset:
    from vidrec.features.sources.synthetic import WorldConfig, generate_world

    ds = generate_world(WorldConfig.preset("tiny"), seed=0).dataset
    assert ds.searches is not None and ds.impressions is not None
    return Dataset(
        users=ds.users,
        items=ds.items.assign(upload_time=ds.items["upload_time"] - SHIFT),
        watches=ds.watches.assign(timestamp=ds.watches["timestamp"] - SHIFT),
        searches=ds.searches.assign(timestamp=ds.searches["timestamp"] - SHIFT),
        impressions=ds.impressions.assign(timestamp=ds.impressions["timestamp"] - SHIFT),
        name="tiny",
    )


def _with(ds: Dataset, **tables: pd.DataFrame | None) -> Dataset:
    base = {t: ds.table(t) for t in ("users", "items", "watches", "searches", "impressions")}
    base.update(tables)
    return Dataset(**base, name=ds.name)  # type: ignore[arg-type]


def _error(ds: Dataset, **kw: object) -> str:
    with pytest.raises(PreflightError) as exc:
        preflight(ds, CFG, now=NOW, log_warnings=False, **kw)  # type: ignore[arg-type]
    text = str(exc.value)
    assert text.startswith("pre-flight check failed, nothing was trained: ")
    assert all(p.fix for p in exc.value.problems)
    return text


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _ranker_window(ds: Dataset) -> tuple[int, int]:
    split = TimeSplit.from_fractions(
        ds, CFG["split"]["train_end"], CFG["split"]["valid_end"] - CFG["split"]["train_end"]
    )
    return split.bounds("valid")


# -- the valid world passes, and `validate --for-run` shows the windows ---------------------


def test_tiny_world_passes_and_reports_its_windows(world: Dataset) -> None:
    report = preflight(world, CFG, now=NOW, log_warnings=False)
    assert report.warnings == []
    assert report.windows["train"]["watches"] > 0 and report.windows["ranker"]["clicks"] > 0
    assert report.metric_users >= MIN_HELDOUT_USERS
    assert RunNeeds.from_config(CFG) == RunNeeds(0.7, 0.85, 0.2, max_users=300)
    assert RunNeeds.from_config(CFG["split"]) == RunNeeds(0.7, 0.85, 0.2)  # the section alone


def test_validate_for_run_prints_the_windows(world: Dataset, tmp_path: Path) -> None:
    write_dataset(world, tmp_path / "d")
    rc, out, err = _cli("validate", str(tmp_path / "d"), "--for-run", "--preset", "tiny")
    assert rc == 0, err
    assert "pre-flight check of the run's windows:" in out
    assert "  ranker  [" in out and "clicks" in out and "held-out users" in out
    assert "pre-flight checks of a run with preset tiny" in out


# -- errors: one readable message each --------------------------------------------------------


def test_a_watch_in_the_year_3000(world: Dataset, tmp_path: Path) -> None:
    w = world.watches.copy()
    w.loc[5, "timestamp"] = 32_503_680_000  # 3000-01-01
    text = _error(_with(world, watches=w))
    assert "table 'watches', column 'timestamp': 1 of 1,652 event times are implausible" in text
    assert "1 after now + 1 day, the latest at 3000-01-01 00:00:00" in text
    assert "row 5: " in text and "timestamp=32503680000" in text
    # the same through the CLI on a CSV directory: file and line named, exit 3
    root = write_dataset(_with(world, watches=w), tmp_path / "d", fmt="csv")
    rc, out, err = _cli("validate", str(root), "--for-run", "--preset", "tiny")
    assert rc == 3 and "Traceback" not in err
    assert err.startswith(
        "vidrec validate: error: pre-flight check failed, nothing was trained: "
        f"{root / 'watches.csv'}, table 'watches', column 'timestamp'"
    )
    assert "row 5 (line 7)" in err
    # a simulated world has its own clock: only the 1990 bound applies
    w.loc[5, "timestamp"] = 100  # 1970
    assert "1 before 1990-01-01" in _error(_with(world, watches=w), simulated=True)


def test_timestamps_at_the_limits_of_the_plausible_range(world: Dataset) -> None:
    assert world.searches is not None
    s = world.searches.copy()  # searches do not move the split's edges
    s.loc[0, "timestamp"] = NOW + 86_400  # a day ahead of the clock: still accepted
    preflight(_with(world, searches=s), CFG, now=NOW, log_warnings=False)
    s.loc[0, "timestamp"] = NOW + 86_401
    assert "table 'searches', column 'timestamp': 1 of 618 event times are implausible" in (
        _error(_with(world, searches=s))
    )
    s.loc[0, "timestamp"] = 631_152_000 - 1  # 1989-12-31 23:59:59
    assert "1 before 1990-01-01" in _error(_with(world, searches=s))
    items = world.items.copy()
    items.loc[3, "upload_time"] = NOW + 10 * 86_400
    assert "table 'items', column 'upload_time': 1 of 838 items are uploaded after" in _error(
        _with(world, items=items)
    )


def test_logs_without_clicks(world: Dataset) -> None:
    assert world.impressions is not None
    imp = world.impressions.assign(clicked=np.int8(0), watch_time=0.0)
    text = _error(_with(world, impressions=imp))
    assert "column 'clicked': none of the 2,440 impressions the ranker trains on" in text
    assert "nothing to learn from" in text


def test_a_ranker_window_without_impressions(world: Dataset) -> None:
    assert world.impressions is not None
    lo, hi = _ranker_window(world)
    t = world.impressions["timestamp"].to_numpy()
    text = _error(_with(world, impressions=world.impressions[(t < lo) | (t >= hi)]))
    assert "table 'impressions', column 'timestamp': no impression falls in the ranker window" in (
        text
    )
    assert "split.train_end = 0.7 and split.valid_end = 0.85" in text


def test_all_events_at_one_timestamp(world: Dataset) -> None:
    t0 = 1_600_000_000
    one = _with(
        world,
        items=world.items.assign(upload_time=t0 - 10),
        watches=world.watches.assign(timestamp=t0),
        searches=None,
        impressions=world.impressions.assign(timestamp=t0),  # type: ignore[union-attr]
    )
    # the split of a zero-second span used to raise (valid_end fell before train_end)
    split = TimeSplit.from_fractions(one, 0.7, 0.15)
    assert (split.start, split.train_end, split.valid_end, split.test_end) == (
        t0,
        t0 + 1,
        t0 + 1,
        t0 + 1,
    )
    text = _error(one)
    assert "every one of the 1,652 watches is at the same time (2020-09-13 12:26:40)" in text


def test_a_single_item(world: Dataset) -> None:
    item = int(world.items["item_id"].iloc[0])
    text = _error(
        _with(
            world,
            items=world.items.iloc[:1],
            watches=world.watches.assign(item_id=item),
            impressions=world.impressions.assign(item_id=item),  # type: ignore[union-attr]
        )
    )
    assert "table 'items', column 'item_id': the catalog has 1 item" in text


def _few_users(ds: Dataset, k: int, impressions: bool) -> Dataset:
    ids = ds.users["user_id"].to_numpy()[:k]
    assert ds.impressions is not None
    return _with(
        ds,
        users=ds.users.iloc[:k],
        watches=ds.watches.assign(user_id=ids[np.arange(len(ds.watches)) % k]),
        searches=None,
        impressions=ds.impressions.assign(user_id=ids[np.arange(len(ds.impressions)) % k])
        if impressions
        else None,
    )


@pytest.mark.parametrize("k", [1, 3])
def test_one_or_three_users_warn_that_metrics_rest_on_them(
    world: Dataset, k: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vidrec"):
        report = preflight(_few_users(world, k, impressions=True), CFG, now=NOW)
    users = "1 held-out user:" if k == 1 else "3 held-out users:"
    assert report.metric_users == k
    assert any(f"the test metrics rest on {users} fewer than 50" in w for w in report.warnings)
    assert any(f"rest on {users}" in r.getMessage() for r in caplog.records)  # and logged


def test_one_user_without_impressions_cannot_train_a_ranker(world: Dataset) -> None:
    text = _error(_few_users(world, 1, impressions=False))
    assert "users watching in the ranker window" in text and "at least 2 users" in text
    preflight(_few_users(world, 3, impressions=False), CFG, now=NOW, log_warnings=False)


def test_watches_before_their_items_upload_time(world: Dataset) -> None:
    w = world.watches
    up = world.items.set_index("item_id")["upload_time"]
    # a few watches moved before their item's upload: counted
    few = w.copy()
    rows = [3, 10, 40]
    few.loc[rows, "timestamp"] = up.reindex(few.loc[rows, "item_id"]).to_numpy() - 60
    report = preflight(_with(world, watches=few), CFG, now=NOW, log_warnings=False)
    assert any(
        "3 of 1,652 watches (0.2%) happen before their item's upload time" in x
        for x in report.warnings
    ), report.warnings
    assert any("the earliest of them starts the time split at" in x for x in report.warnings)
    # upload times two months late for every item: most watches precede them, an error
    items = world.items.assign(upload_time=world.items["upload_time"] + 60 * 86_400)
    text = _error(_with(world, items=items))
    assert "happen before their item's upload time: more than 50%" in text
    assert "upload_time=" in text


def test_run_fails_in_seconds_with_one_line(world: Dataset, tmp_path: Path) -> None:
    w = world.watches.copy()
    w.loc[5, "timestamp"] = 32_503_680_000
    root = write_dataset(_with(world, watches=w), tmp_path / "d")
    out = tmp_path / "run"
    t0 = time.perf_counter()
    rc, stdout, err = _cli(
        "run", "--preset", "tiny", "--data", str(root), "--out", str(out), "--no-progress"
    )
    assert rc == 3, err
    assert time.perf_counter() - t0 < 60
    lines = [x for x in err.splitlines() if "error:" in x]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("vidrec run: error: pre-flight check failed, nothing was trained")
    assert not (out / "data" / "tables").exists()  # nothing stored, nothing trained
    assert not (out / "candidate_gen").exists()


def test_validate_for_run_reads_movielens_layouts() -> None:
    # the fixture holds 4 ratings: no user watches in the ranker window
    rc, out, err = _cli(
        "validate", str(FIXTURES / "movielens_100k"), "--dataset", "movielens", "--for-run"
    )
    assert rc == 3 and "data directory" in out
    assert "users watching in the ranker window" in err and "Traceback" not in err
