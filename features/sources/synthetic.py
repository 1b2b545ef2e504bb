"""A synthetic world with known ground truth: the project's default data source (SPEC §7).

Where it sits in the data path: `generate_world(config, seed)` draws a `World` whose
`.dataset` holds the five contract tables (`features.tables`) of a time window; everything
downstream reads those like any other source. Because the world's truth is known, it also
scores any slate a recommender proposes (`slate_expected_watch_time`), serves as the
environment of closed-loop A/B tests (`visitors` -> recommender -> `respond`), and provides
reference policies (`oracle_slates`, `most_popular_slates`, `random_slates`,
`logging_policy_slates`).

The generative model (all arrays, one `np.random.Generator` from `seed` draws everything):

- Topics have names and a small vocabulary of words; channels specialise in one or two
  topics and have a country, a language, a heavy-tailed popularity and a latent style.
- Items belong to a channel, have 1-3 topics, a duration (log-normal by topic), a language,
  a title made of topic words (click-bait words when their click appeal is high), an upload
  time spread uniformly over [start - pre_window_days, end + future_days), and latent
  popularity (channel popularity + noise: exponential tail, so power-law watch counts),
  quality and click appeal.
- Users have gender, age bucket, country (hence language) and account age; their interests
  over topics are softmax(topic prior + gender + age + country offsets + individual noise),
  so demographics and geography predict interests; a latent style vector matches the
  channels' styles; their activity (visits per day) is Pareto distributed (heavy and light
  users).

Ground truth for user u, item i at time t (age = t - upload_time):

    z(u,i,t)   = click_bias + w_popularity*pop_i + w_quality*quality_i + w_appeal*appeal_i
                 - w_duration*log(duration_i/180 s)
                 + w_interest*log(T * sum_topics theta_u) + w_style*<s_u, s_i>
                 + w_language*(language_match(u,i) - 1) + w_fresh*exp(-age/fresh_tau)
    P(click | u,i,t,position) = examine(position) * sigmoid(z)   (0 before upload)
    examine(position)         = (1 + position) ** -position_eta   (1 when position is None)
    completion ~ Beta(m*kappa, (1-m)*kappa),  m = clip(sigmoid(completion_bias
                 + c_quality*quality_i - c_appeal*appeal_i - c_duration*log(duration_i/180 s)
                 + c_interest*log(T * ...) + c_style*<s_u, s_i>), 0.01, 0.99)
    watch time | click = duration_i * completion,  E[watch | click] = duration_i * m
    E[watch time] = P(click) * E[watch | click]

Click appeal raises the click logit and lowers completion (click-bait). Long videos are
clicked a little less and completed less, but E[watch | click] still grows with duration
(at least about duration**0.6), so ranking by expected watch time and by clicks disagree: the
former favours longer videos. Positions are examined
independently, so a slate's expected watch time is the sum over positions, and the best slate
(`oracle_slates`) is the k items of highest E[watch time] ordered best first.

Logs of a time range (`advance`):
- home feed: each visit (Poisson, rate = the user's activity) gets a slate of `slate_size`
  items from a policy (the *logging policy* when generating the dataset) and the user
  responds per the truth: these are the impressions; clicked ones become watches that start
  one second after the impression, one after the other in position order;
- search: a user searches (rate searches_per_visit * activity) for 1-3 words of a topic drawn
  from their interests, and 5-120 s later watches an item of that topic (probability 0.85);
- browse (subscriptions, links): watches of items of a topic drawn from their interests.
Organic items are drawn by sampling-importance-resampling: 16 candidates of the topic
proportional to exp(pop), resampled proportionally to the true P(click) / exp(pop).

The logging policy is a reasonable but imperfect recommender: candidates from global
popularity and from topics of a *noisy, blurred* copy of each user's interests, scored by
popularity + 0.5 appeal (it optimises clicks, so it likes click-bait) + its interest estimate
+ language match + a partial freshness bonus, with Gumbel exploration noise. It ignores
quality, style and the completion model.

Time and hidden items: the dataset covers [start, end) (`days` long). The catalog also holds
items uploaded up to `future_days` after `end`, so a closed-loop experiment over later days
sees new uploads: `World.catalog` has every item, `dataset.items` only those uploaded before
`end`, and `items_at(t)` those a recommender may know at time t. Items not yet uploaded at t
have P(click) = 0. Simulating beyond `end + future_days` works but has no new uploads.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from vidrec.features.sources.kuairand_catalog import load_kuairand_catalog
from vidrec.features.tables import Dataset

__all__ = [
    "PRESETS",
    "Policy",
    "SimulatedLogs",
    "World",
    "WorldConfig",
    "generate_world",
    "impressions_to_watches",
]

DAY = 86_400
PRESETS: tuple[str, ...] = ("tiny", "default", "large")
CATALOGS: tuple[str, ...] = ("synthetic", "kuairand")

# (country, primary language, population weight)
COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "en", 0.20),
    ("IN", "hi", 0.15),
    ("BR", "pt", 0.10),
    ("ID", "id", 0.08),
    ("MX", "es", 0.08),
    ("GB", "en", 0.07),
    ("DE", "de", 0.06),
    ("FR", "fr", 0.06),
    ("JP", "ja", 0.06),
    ("ES", "es", 0.05),
    ("KR", "ko", 0.05),
    ("CA", "en", 0.04),
)
LANGUAGES: tuple[str, ...] = ("en", "hi", "pt", "id", "es", "de", "fr", "ja", "ko")
GENDERS: tuple[str, ...] = ("f", "m", "u")
GENDER_P: tuple[float, ...] = (0.48, 0.48, 0.04)
AGE_BUCKETS: tuple[str, ...] = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_P: tuple[float, ...] = (0.10, 0.22, 0.26, 0.18, 0.13, 0.11)
TOPIC_NAMES: tuple[str, ...] = (
    "music", "gaming", "football", "basketball", "cooking", "baking", "travel", "fitness",
    "yoga", "comedy", "pranks", "news", "politics", "science", "space", "physics",
    "chemistry", "math", "programming", "gadgets", "phones", "cars", "motorcycles", "fashion",
    "makeup", "skincare", "pets", "cats", "dogs", "wildlife", "fishing", "hunting",
    "gardening", "diy", "woodworking", "painting", "drawing", "anime", "movies", "trailers",
    "kpop", "hiphop", "jazz", "classical", "guitar", "piano", "dance", "finance",
    "crypto", "investing", "history", "documentary", "asmr", "vlogs", "parenting", "education",
    "languages", "chess", "esports", "minecraft", "tennis", "cricket", "boxing", "surfing",
)  # fmt: skip
CLICKBAIT_PHRASES: tuple[str, ...] = (
    "shocking", "insane", "you won't believe", "gone wrong", "must see", "unbelievable",
)  # fmt: skip
FILLER_WORDS: tuple[str, ...] = (
    "best", "new", "how to", "top 10", "review", "live", "tutorial", "highlights", "vlog",
    "part 2",
)  # fmt: skip
WORDS_PER_TOPIC = 10  # vocabulary words per topic besides its name
STYLE_DIM = 8
POPULARITY_SCALE = 0.5  # channel popularity ~ Exponential(scale): watch counts get a power-law tail
MAX_ITEM_TOPICS = 3
SEARCH_WATCH_PROB = 0.85
ORGANIC_CANDIDATES = 16
POLICY_POP_CANDIDATES = 16
POLICY_TOPIC_CANDIDATES = 32
POLICY_POPULARITY = 0.6  # weight of popularity in the logging policy score
_CHUNK_ELEMENTS = 4_000_000  # (rows x columns) per chunk of a user x item matrix
_CHUNK_VISITS = 50_000

Policy = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""A recommender for `World.advance`: (user_ids (U,), timestamps (U,), k) -> (U, k) item ids."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class WorldConfig:
    """Sizes, time window and ground-truth coefficients of a synthetic world.

    Build one with `WorldConfig.preset(name, **overrides)`. Rates and coefficients have
    defaults that give a CTR of a few percent and a mean completion around one half.
    """

    name: str = "custom"  # the preset it came from; names the dataset "synthetic:<name>"
    n_users: int = 500
    n_items: int = 1_000  # ignored with catalog="kuairand" (the real catalog's size)
    n_channels: int = 50  # ignored with catalog="kuairand" (its authors are the channels)
    n_topics: int = 16  # ignored with catalog="kuairand" (its tags are the topics)
    impressions: int = 20_000  # expected home-feed impressions in the window
    slate_size: int = 10
    start: str | None = None  # UTC; None: 2026-01-01, or the day after the last kuairand upload
    days: int = 28
    pre_window_days: int = 56  # items are also uploaded this long before the window
    future_days: int = 14  # ... and this long after it (hidden, for closed-loop days)
    searches_per_visit: float = 0.3  # expected searches per home visit (same activity)
    browse_per_visit: float = 0.25  # expected browse watches per home visit
    catalog: str = "synthetic"  # "synthetic" (drawn) or "kuairand" (real metadata)
    catalog_path: str | None = None  # kuairand video_features_basic_pure.csv (None: shared/)
    # ground truth: click logit
    click_bias: float = -4.0
    w_popularity: float = 1.0
    w_quality: float = 0.3
    w_appeal: float = 0.7
    w_duration: float = 0.2  # long videos are clicked less often
    w_interest: float = 1.0
    w_style: float = 0.6
    w_language: float = 3.0
    w_fresh: float = 2.0
    fresh_tau_days: float = 4.0
    position_eta: float = 0.8
    # ground truth: completion
    completion_bias: float = 0.0
    c_quality: float = 0.6
    c_appeal: float = 0.8
    c_duration: float = 0.4
    c_interest: float = 0.4
    c_style: float = 0.4
    completion_concentration: float = 3.0
    # population
    activity_alpha: float = 1.5  # Pareto tail index of user activity
    interest_sharpness: float = 1.3
    # logging policy
    policy_noise: float = 0.8  # noise on the log interests the logging policy knows
    policy_explore: float = 0.5  # scale of the Gumbel noise on its scores

    def __post_init__(self) -> None:
        positive_int = ("n_users", "n_items", "n_channels", "n_topics", "slate_size", "days")
        for name in positive_int:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"WorldConfig.{name} must be a positive integer, got {v!r}")
        for name in ("impressions", "pre_window_days", "future_days"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"WorldConfig.{name} must be an integer >= 0, got {v!r}")
        for name in (
            "searches_per_visit",
            "browse_per_visit",
            "position_eta",
            "completion_concentration",
            "fresh_tau_days",
            "activity_alpha",
            "interest_sharpness",
            "policy_noise",
            "policy_explore",
        ):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"WorldConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.fresh_tau_days <= 0 or self.completion_concentration <= 0:
            raise ValueError("WorldConfig.fresh_tau_days and completion_concentration must be > 0")
        if self.activity_alpha <= 1:
            raise ValueError(
                f"WorldConfig.activity_alpha must be > 1 (a finite mean), got {self.activity_alpha}"
            )
        if self.catalog not in CATALOGS:
            raise ValueError(f"WorldConfig.catalog must be one of {CATALOGS}, got {self.catalog!r}")
        if self.catalog == "synthetic" and self.n_items < self.slate_size:
            raise ValueError(
                f"WorldConfig.n_items ({self.n_items}) must be >= slate_size ({self.slate_size})"
            )
        if self.start is not None:
            _parse_time(self.start, "WorldConfig.start")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WorldConfig:
        """Return the config of preset `name` ("tiny", "default", "large") with `overrides`.

        tiny: 500 users, 1,000 items, ~20k impressions (a few seconds; tests).
        default: 30,000 users, 50,000 items, ~2.5M impressions (about half a minute on 2 cores).
        large: 1M users, 1M items, ~20M impressions (2M slates of 10); see bench_world.py.
        """
        presets: dict[str, dict[str, Any]] = {
            "tiny": {},
            "default": dict(
                n_users=30_000,
                n_items=50_000,
                n_channels=2_000,
                n_topics=48,
                impressions=2_500_000,
            ),
            "large": dict(
                n_users=1_000_000,
                n_items=1_000_000,
                n_channels=40_000,
                n_topics=64,
                impressions=20_000_000,
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown world preset {name!r}; choose one of: {', '.join(PRESETS)}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in overrides if k not in known]
        if unknown:
            raise ValueError(
                f"unknown WorldConfig field(s) {unknown}; known fields: {', '.join(known)}"
            )
        values: dict[str, Any] = {"name": name, **presets[name]}
        for key, value in overrides.items():
            values[key] = _coerce_field(known[key], value)
        return cls(**values)


def _coerce_field(f: dataclasses.Field[Any], value: Any) -> Any:
    """Convert an override given as a string (e.g. from a command line) to the field's type."""
    if not isinstance(value, str):
        return value
    kind = str(f.type)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"WorldConfig.{f.name} expects a {kind}, got {value!r}") from None
    if kind == "str | None" and value.lower() in ("", "none"):
        return None
    return value


def _parse_time(value: str | int | np.integer | pd.Timestamp, what: str) -> int:
    """UTC seconds of an int (seconds), ISO-8601 string or pandas Timestamp."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{what}: cannot parse time {value!r}; give UTC seconds or an ISO-8601 date "
            "such as '2026-01-01'"
        ) from None
    if ts is pd.NaT:
        raise ValueError(f"{what}: time {value!r} is missing (NaT)")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000_000)


def _default_kuairand_path() -> Path:
    repo = Path(__file__).resolve().parents[2]
    rel = Path("data", "kuairand-pure-metadata", "video_features_basic_pure.csv")
    for base in (repo / "shared", repo.parent / "shared"):
        if (base / rel).is_file():
            return base / rel
    return repo.parent / "shared" / rel


# ----------------------------------------------------------------------------- helpers


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = equal, -> 1 = concentrated)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    # G = (2 * sum_i i*x_(i)) / (n * sum x) - (n + 1) / n, ranks i = 1..n ascending
    return float(2.0 * np.dot(np.arange(1, n + 1), x) / (n * total) - (n + 1) / n)


def _top_share(counts: np.ndarray, frac: float) -> float:
    """Share of the total held by the top `frac` of entries (at least one entry)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    n = max(1, int(round(frac * len(x))))
    return float(x[:n].sum() / x.sum())


def _sample_rows(probs: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Category index per (row, draw) from row-wise probabilities; probs (N, T), r (N, C) in [0, 1)."""
    n, t = probs.shape
    cum = np.cumsum(probs, axis=1, dtype=np.float64)  # (N, T)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    offset = np.arange(n, dtype=np.float64)[:, None]
    # rows are laid end to end: row n's cumulative values lie in (n, n + 1]
    flat = (cum + offset).ravel()  # (N*T,)
    idx = np.searchsorted(flat, (r + offset).ravel(), side="right").reshape(r.shape)
    return np.clip(idx - np.arange(n)[:, None] * t, 0, t - 1)


def _top_k_unique(cands: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best distinct valid (>= 0) candidates per row, best first, and a validity mask.

    cands, scores (N, C); returns items (N, k) (-1 where a row has fewer than k) and ok (N, k).
    """
    order = np.argsort(cands, axis=1, kind="stable")
    sc = np.take_along_axis(cands, order, axis=1)  # (N, C) sorted ids
    s = np.take_along_axis(scores, order, axis=1).astype(np.float64, copy=True)
    bad = sc < 0
    bad[:, 1:] |= sc[:, 1:] == sc[:, :-1]
    s[bad] = -np.inf
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]  # (N, k)
    top_s = np.take_along_axis(s, top, axis=1)
    rank = np.argsort(-top_s, axis=1, kind="stable")
    top = np.take_along_axis(top, rank, axis=1)
    items = np.take_along_axis(sc, top, axis=1)
    ok = np.isfinite(np.take_along_axis(s, top, axis=1))
    return np.where(ok, items, -1), ok


def _join_words(columns: list[np.ndarray], use: list[np.ndarray]) -> np.ndarray:
    """Space-joined strings from word columns (each (N,) object) where `use` (each (N,) bool)."""
    out = np.where(use[0], columns[0], "").astype(object)
    for col, u in zip(columns[1:], use[1:], strict=True):
        sep = np.where((out != "") & u, " ", "")
        out = out + sep + np.where(u, col, "").astype(object)
    return out


def _pseudo_words(n: int, rng: np.random.Generator, exclude: set[str]) -> list[str]:
    """`n` distinct pronounceable pseudo-words of 2-3 syllables (the topic vocabularies)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = np.array([c + v for c in consonants for v in vowels], dtype=object)
    words: list[str] = []
    seen = set(exclude)
    while len(words) < n:
        m = 2 * (n - len(words)) + 16
        n_syl = rng.integers(2, 4, size=m)
        parts = syllables[rng.integers(0, len(syllables), size=(m, 3))]
        cand = parts[:, 0] + parts[:, 1] + np.where(n_syl == 3, parts[:, 2], "")
        for w in cand.tolist():  # vocabulary build: a few hundred words, not a hot path
            if w not in seen:
                seen.add(w)
                words.append(w)
                if len(words) == n:
                    break
    return words


# ----------------------------------------------------------------------------- samplers


class _TopicSampler:
    """Draws items of a group (topic) uploaded at or before a time, proportionally to a weight.

    Memberships are sorted by (group, upload time), so "uploaded by t" is a prefix of the
    group's block and a draw is two binary searches in a global cumulative-weight array.
    """

    def __init__(
        self,
        member_group: np.ndarray,
        member_item: np.ndarray,
        upload: np.ndarray,
        weight: np.ndarray,
        n_groups: int,
    ) -> None:
        up = upload[member_item]
        order = np.lexsort((up, member_group))
        group = member_group[order].astype(np.int64)
        self.item = member_item[order].astype(np.int64)
        up = up[order]
        self.t0 = int(upload.min())
        self.span = int(upload.max()) - self.t0 + 1
        self.stride = self.span + 2
        self.key = group * self.stride + (up - self.t0 + 1)
        self.cum = np.concatenate([[0.0], np.cumsum(weight[self.item], dtype=np.float64)])
        self.group_start = np.searchsorted(group, np.arange(n_groups + 1), side="left")

    def draw(self, group: np.ndarray, t: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Item index per draw (same shapes), -1 where the group has no item uploaded by t."""
        q = group * self.stride + np.clip(t - self.t0 + 1, 0, self.span + 1)
        hi = np.searchsorted(self.key, q, side="right")
        lo = self.group_start[group]
        x = self.cum[lo] + r * (self.cum[hi] - self.cum[lo])
        j = np.searchsorted(self.cum, x, side="right") - 1
        j = np.clip(j, lo, np.maximum(hi - 1, lo))
        return np.where(hi > lo, self.item[np.minimum(j, len(self.item) - 1)], -1)


# ----------------------------------------------------------------------------- results


@dataclass
class SimulatedLogs:
    """Logs of one simulated time range from `World.advance`.

    dataset: users, items uploaded before `end`, and the range's watches, searches and
    impressions (contract dtypes). watch_surface: (len(watches),) "home" | "search" |
    "browse", aligned with dataset.watches. slates: one row per served slate with the true
    expected watch time of the slate and the watch time actually sampled.
    """

    dataset: Dataset
    watch_surface: np.ndarray
    slates: pd.DataFrame


# ----------------------------------------------------------------------------- world


class World:
    """A drawn world: latent state, ground truth, reference policies and the generated dataset.

    Build with `generate_world`. Public attributes (read-only by convention):
    - config, seed; start, end: the dataset's window [start, end) in UTC seconds;
    - dataset: the contract tables of the window (items uploaded before `end` only);
      watch_surface (len(dataset.watches),) "home" | "search" | "browse";
    - users (contract users table), catalog (contract items table of *every* item, including
      those uploaded after `end`), item_ids (I,) sorted;
    - topic_names (T,), topic_words (T, 11): each topic's name then its 10 words;
      channel_names (C,), channel_topics (C, 2) the topics a channel specialises in;
    - latent state indexed by user id (0..U-1) and by item *index* (position in item_ids):
      interest (U, T) float32 topic interests (rows sum to 1), policy_interest (U, T) the
      logging policy's noisy copy, user_style (U, 8), user_language (U,) index into
      LANGUAGES, activity (U,) visits per day; item_topics (I, 3) int32 and
      item_topic_weight (I, 3) (weight 0 = padding), item_channel, popularity, quality,
      appeal, duration, upload_time, item_language (I,), item_style (I, 8).
    """

    def __init__(self, config: WorldConfig, seed: int) -> None:
        self.config = config
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.catalog_missing: dict[str, int] = {}
        start = self._draw_catalog(rng)
        self.start = start
        self.end = start + config.days * DAY
        self._draw_users(rng)
        self._prepare_truth()
        logs = self.advance(self.start, self.end, rng, None, source="logging")
        self.dataset: Dataset = logs.dataset
        self.dataset.meta = {
            "source": "synthetic",
            "preset": config.name,
            "seed": self.seed,
            "catalog": config.catalog,
            "window_start": self.start,
            "window_end": self.end,
            "config": dataclasses.asdict(config),
        }
        self.watch_surface = logs.watch_surface

    # ------------------------------------------------------------------ drawing: catalog

    def _draw_catalog(self, rng: np.random.Generator) -> int:
        """Draw (or load) the catalog and its latent state; return the window start (UTC s)."""
        c = self.config
        if c.catalog == "kuairand":
            path = Path(c.catalog_path) if c.catalog_path else _default_kuairand_path()
            kr = load_kuairand_catalog(path)
            self.catalog_missing = dict(kr.missing)
            start = (
                _parse_time(c.start, "WorldConfig.start")
                if c.start is not None
                else int(kr.upload_day.max()) + DAY
            )
            names = np.unique(np.concatenate([kr.tag_values, kr.latent_tag.astype(object)]))
            topic_names = [f"tag{t}" for t in names.tolist()]
            n_topics = len(topic_names)
            code = {t: j for j, t in enumerate(names.tolist())}
            latent_code = pd.Series(kr.latent_tag).map(code).to_numpy(np.int64)
            val_code = pd.Series(kr.tag_values, dtype=object).map(code).to_numpy(np.int64)
            n_items = kr.n_items
            item_ids = kr.item_id
            upload = kr.upload_day + rng.integers(0, DAY, size=n_items)
            ch_names, channel = np.unique(kr.channel.astype(str), return_inverse=True)
            n_channels = len(ch_names)
            channel_names = ch_names.astype(object)
            # latent topics: the imputed/first tag, then the item's other real tags
            counts = np.diff(kr.tag_offsets)
            row = np.repeat(np.arange(n_items), counts)
            slot = np.arange(len(row)) - kr.tag_offsets[:-1][row]
            topics = np.full((n_items, MAX_ITEM_TOPICS), -1, dtype=np.int64)
            keep = slot < MAX_ITEM_TOPICS
            topics[row[keep], slot[keep]] = val_code[keep]
            topics[:, 0] = latent_code
            table_topics = (kr.tag_offsets, np.array(topic_names, dtype=object)[val_code])
            duration = kr.duration
            channel_topic = np.zeros((n_channels, 2), dtype=np.int64)
            channel_topic[channel, 0] = latent_code  # any of its items' tags
            channel_topic[:, 1] = channel_topic[:, 0]
        else:
            start = _parse_time(c.start if c.start is not None else "2026-01-01", "start")
            n_items, n_channels, n_topics = c.n_items, c.n_channels, c.n_topics
            topic_names = list(TOPIC_NAMES[:n_topics])
            if n_topics > len(TOPIC_NAMES):
                topic_names += _pseudo_words(n_topics - len(TOPIC_NAMES), rng, set(TOPIC_NAMES))
            item_ids = np.arange(n_items, dtype=np.int64)
            channel_names = np.array([f"ch{j:06d}" for j in range(n_channels)], dtype=object)
            topic_prior = np.exp(rng.normal(0.0, 0.7, size=n_topics))
            topic_prior /= topic_prior.sum()
            channel_topic = rng.choice(n_topics, size=(n_channels, 2), p=topic_prior)
            # Zipf-like channel sizes over a random channel order
            size_w = (1.0 + rng.permutation(n_channels)) ** -0.9
            channel = rng.choice(n_channels, size=n_items, p=size_w / size_w.sum())
            lo = start - c.pre_window_days * DAY
            hi = start + (c.days + c.future_days) * DAY
            upload = rng.integers(lo, hi, size=n_items)
            n_top = rng.choice(np.arange(1, MAX_ITEM_TOPICS + 1), size=n_items, p=[0.5, 0.35, 0.15])
            u = rng.random(n_items)
            first = np.where(
                u < 0.80,
                channel_topic[channel, 0],
                np.where(u < 0.95, channel_topic[channel, 1], rng.integers(0, n_topics, n_items)),
            )
            topics = np.full((n_items, MAX_ITEM_TOPICS), -1, dtype=np.int64)
            topics[:, 0] = first
            extra = rng.choice(n_topics, size=(n_items, MAX_ITEM_TOPICS - 1), p=topic_prior)
            for j in range(1, MAX_ITEM_TOPICS):  # 2 columns
                fresh = np.all(topics[:, :j] != extra[:, j - 1 : j], axis=1)
                topics[:, j] = np.where((n_top > j) & fresh, extra[:, j - 1], -1)
            # a duplicate drawn in column 1 leaves a gap; compact each row to the left
            order = np.argsort(topics < 0, axis=1, kind="stable")
            topics = np.take_along_axis(topics, order, axis=1)
            log_median = np.log(120.0) + rng.normal(0.0, 0.7, size=n_topics)
            duration = np.exp(log_median[first] + rng.normal(0.0, 0.8, size=n_items))
            duration = np.round(np.clip(duration, 5.0, 4 * 3600.0), 3)
            table_topics = None

        # channel latent state (both catalogs)
        ch_country = rng.choice(len(COUNTRIES), size=n_channels, p=_country_p())
        primary = np.array([LANGUAGES.index(lang) for _, lang, _ in COUNTRIES])[ch_country]
        ch_lang = np.where(rng.random(n_channels) < 0.8, primary, 0)  # 0 = "en"
        ch_pop = rng.exponential(POPULARITY_SCALE, size=n_channels) - POPULARITY_SCALE
        ch_style = rng.normal(0.0, 0.8, size=(n_channels, STYLE_DIM))

        self.n_topics = n_topics
        self.topic_names = np.array(topic_names, dtype=object)
        vocab = _pseudo_words(n_topics * WORDS_PER_TOPIC, rng, set(topic_names))
        self.topic_words = np.concatenate(
            [self.topic_names[:, None], np.array(vocab, dtype=object).reshape(n_topics, -1)],
            axis=1,
        )  # (T, 1 + WORDS_PER_TOPIC): the name, then its words

        order = np.argsort(item_ids, kind="stable")
        self.item_ids = item_ids[order]
        self.n_items = len(item_ids)
        self._dense_ids = bool(np.array_equal(self.item_ids, np.arange(self.n_items)))
        channel = channel[order]
        topics = topics[order]
        self.upload_time = np.asarray(upload, dtype=np.int64)[order]
        self.duration = np.asarray(duration, dtype=np.float64)[order]
        valid = topics >= 0
        n_valid = valid.sum(axis=1, keepdims=True)
        self.item_topics = np.where(valid, topics, 0).astype(np.int32)
        self.item_topic_weight = (valid / n_valid).astype(np.float32)
        self.item_channel = channel
        self.channel_names = channel_names
        self.channel_topics = channel_topic
        self.item_language = np.where(rng.random(self.n_items) < 0.95, ch_lang[channel], 0).astype(
            np.int64
        )
        self.popularity = ch_pop[channel] + rng.normal(0.0, 0.5, size=self.n_items)
        self.quality = rng.normal(0.0, 1.0, size=self.n_items)
        self.appeal = rng.normal(0.0, 1.0, size=self.n_items)
        self.item_style = (
            ch_style[channel] + rng.normal(0.0, 0.6, (self.n_items, STYLE_DIM))
        ).astype(np.float32)
        # contract topics: the drawn ones, or the real tags (possibly none) of kuairand items
        if table_topics is None:
            offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])
            values = self.topic_names[topics[valid]]
        else:
            raw_offsets, raw_values = table_topics
            counts = np.diff(raw_offsets)[order]
            starts = raw_offsets[:-1][order]
            offsets = np.concatenate([[0], np.cumsum(counts)])
            gather = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
            values = raw_values[gather]
        topic_lists = pa.ListArray.from_arrays(
            pa.array(offsets, pa.int64()).cast(pa.int32()), pa.array(values, pa.string())
        ).to_pylist()
        self.catalog = pd.DataFrame(
            {
                "item_id": self.item_ids,
                "upload_time": self.upload_time,
                "duration": self.duration,
                "channel_id": pd.array(channel_names[channel], dtype="str"),
                "topics": pd.Series(topic_lists, dtype=object),
                "language": pd.array(
                    np.array(LANGUAGES, dtype=object)[self.item_language], dtype="str"
                ),
                "title": pd.array(self._titles(rng), dtype="str"),
            }
        )
        return int(start)

    def _titles(self, rng: np.random.Generator) -> np.ndarray:
        """(I,) object titles: 2-5 words of the item's topics, filler, click-bait if appealing."""
        n = self.n_items
        n_words = rng.integers(2, 6, size=n)
        w = self.item_topic_weight.astype(np.float64)
        slot = _sample_rows(w, rng.random((n, 5)))  # (I, 5) which of the item's topics
        topic = np.take_along_axis(self.item_topics, slot, axis=1)
        # distinct word columns per title (a random permutation prefix), the name often first
        word = 1 + np.argsort(rng.random((n, WORDS_PER_TOPIC)), axis=1)[:, :5]  # (I, 5)
        word[:, 0] = np.where(rng.random(n) < 0.5, 0, word[:, 0])
        words = self.topic_words[topic, word]  # (I, 5)
        bait = np.where(
            rng.random(n) < np.where(self.appeal > 1.0, 0.7, 0.02),
            np.array(CLICKBAIT_PHRASES, dtype=object)[rng.integers(0, len(CLICKBAIT_PHRASES), n)],
            "",
        )
        filler = np.where(
            rng.random(n) < 0.4,
            np.array(FILLER_WORDS, dtype=object)[rng.integers(0, len(FILLER_WORDS), n)],
            "",
        )
        cols = [bait] + [words[:, j] for j in range(5)] + [filler]
        use = [bait != ""] + [n_words > j for j in range(5)] + [filler != ""]
        return _join_words(cols, use)

    # ------------------------------------------------------------------ drawing: users

    def _draw_users(self, rng: np.random.Generator) -> None:
        c = self.config
        n, t = c.n_users, self.n_topics
        country = rng.choice(len(COUNTRIES), size=n, p=_country_p())
        primary = np.array([LANGUAGES.index(lang) for _, lang, _ in COUNTRIES])[country]
        language = np.where(rng.random(n) < 0.8, primary, 0)
        gender = rng.choice(len(GENDERS), size=n, p=GENDER_P)
        age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P)
        topic_logit = rng.normal(0.0, 0.5, size=t)
        g_off = rng.normal(0.0, 0.8, size=(len(GENDERS), t))
        a_off = rng.normal(0.0, 0.8, size=(len(AGE_BUCKETS), t))
        c_off = rng.normal(0.0, 0.8, size=(len(COUNTRIES), t))
        interest = np.empty((n, t), dtype=np.float32)
        policy = np.empty((n, t), dtype=np.float32)
        step = max(1, _CHUNK_ELEMENTS // t)
        for lo in range(0, n, step):  # chunks bound the (chunk, T) float64 temporaries
            sl = slice(lo, min(n, lo + step))
            m = sl.stop - sl.start
            logit = (
                topic_logit + g_off[gender[sl]] + a_off[age[sl]] + c_off[country[sl]]
                + rng.normal(0.0, 1.0, size=(m, t))
            ) * c.interest_sharpness  # fmt: skip
            theta = np.exp(logit - logit.max(axis=1, keepdims=True))
            theta /= theta.sum(axis=1, keepdims=True)
            interest[sl] = theta
            # the logging policy's knowledge: blurred (power 0.7) and noisy
            est = 0.7 * np.log(theta) + rng.normal(0.0, c.policy_noise, size=(m, t))
            est = np.exp(est - est.max(axis=1, keepdims=True))
            policy[sl] = est / est.sum(axis=1, keepdims=True)
        self.interest = interest
        self.policy_interest = policy
        self.user_style = rng.normal(0.0, 1.0 / np.sqrt(STYLE_DIM), size=(n, STYLE_DIM)).astype(
            np.float32
        )
        self.user_language = language.astype(np.int64)
        a = np.minimum((1.0 - rng.random(n)) ** (-1.0 / c.activity_alpha), 200.0)
        visits = c.impressions / c.slate_size
        self.activity = a / a.mean() * visits / (n * c.days)  # visits per day
        account_age = np.exp(np.log(400.0) + rng.normal(0.0, 1.0, n) + 0.2 * np.log(a))
        self.n_users = n
        self.users = pd.DataFrame(
            {
                "user_id": np.arange(n, dtype=np.int64),
                "gender": pd.array(np.array(GENDERS, dtype=object)[gender], dtype="str"),
                "age_bucket": pd.array(np.array(AGE_BUCKETS, dtype=object)[age], dtype="str"),
                "country": pd.array(
                    np.array([x[0] for x in COUNTRIES], dtype=object)[country], dtype="str"
                ),
                "language": pd.array(np.array(LANGUAGES, dtype=object)[language], dtype="str"),
                "account_age_days": np.round(np.clip(account_age, 1.0, 6000.0)),
            }
        )

    def _prepare_truth(self) -> None:
        c = self.config
        self._click_static = (
            c.click_bias + c.w_popularity * self.popularity + c.w_quality * self.quality
            + c.w_appeal * self.appeal - c.w_duration * np.log(self.duration / 180.0)
        )  # fmt: skip
        self._completion_static = (
            c.completion_bias + c.c_quality * self.quality - c.c_appeal * self.appeal
            - c.c_duration * np.log(self.duration / 180.0)
        )  # fmt: skip
        lm = np.eye(len(LANGUAGES))
        lm[:, 0] = np.maximum(lm[:, 0], 0.35)  # English is partly understood everywhere
        self._lang_match = lm
        self._topic_matrix: np.ndarray | None = None
        # samplers: topics 0..T-1, plus group T = every item (popularity)
        groups = np.concatenate([self.item_topics.ravel(), np.full(self.n_items, self.n_topics)])
        items = np.concatenate(
            [np.repeat(np.arange(self.n_items), MAX_ITEM_TOPICS), np.arange(self.n_items)]
        )
        keep = np.concatenate([self.item_topic_weight.ravel() > 0, np.ones(self.n_items, bool)])
        self._proposal = np.exp(np.minimum(self.popularity, 30.0))
        self._sampler = _TopicSampler(
            groups[keep], items[keep], self.upload_time, self._proposal, self.n_topics + 1
        )
        self._pop_order = np.argsort(-self.popularity, kind="stable")
        self._by_upload = np.argsort(self.upload_time, kind="stable")
        self._upload_sorted = self.upload_time[self._by_upload]

    # ------------------------------------------------------------------ id/time checks

    def _user_index(self, user_ids: Any) -> np.ndarray:
        u = np.asarray(user_ids)
        if u.dtype.kind not in "iu":
            raise ValueError(f"user_ids must be integers, got dtype {u.dtype}")
        u = u.astype(np.int64, copy=False)
        bad = (u < 0) | (u >= self.n_users)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} user ids are not users of this world (first: "
                f"{u[bad][:5].tolist()}); user ids are 0..{self.n_users - 1}"
            )
        return u

    def _item_index(self, item_ids: Any, *, allow_pad: bool = False) -> np.ndarray:
        """Item indices of ids (any shape); with allow_pad, -1 stays -1 (an empty slot)."""
        ids = np.asarray(item_ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"item ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        pad = (ids == -1) if allow_pad else np.zeros(ids.shape, dtype=bool)
        if self._dense_ids:
            idx = ids.copy()
            bad = ((ids < 0) | (ids >= self.n_items)) & ~pad
        else:
            idx = np.searchsorted(self.item_ids, ids)
            idx_c = np.minimum(idx, self.n_items - 1)
            bad = (self.item_ids[idx_c] != ids) & ~pad
            idx = idx_c
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} item ids are not in the world's catalog (first: "
                f"{ids[bad][:5].tolist()}); use ids from World.catalog"
                + (" (-1 marks an empty slot)" if allow_pad else "")
            )
        return np.where(pad, -1, idx)

    @staticmethod
    def _times(t: Any, n: int) -> np.ndarray:
        arr = np.asarray(t)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise ValueError("times must be finite UTC seconds")
            arr = np.floor(arr)
        elif arr.dtype.kind not in "iu":
            raise ValueError(f"times must be integer UTC seconds, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.ndim == 0:
            return np.full(n, int(arr), dtype=np.int64)
        if arr.shape != (n,):
            raise ValueError(f"times must be a scalar or have shape ({n},), got {arr.shape}")
        return arr

    def _examine(self, position: Any, n: int) -> np.ndarray:
        if position is None:
            return np.ones(n)
        pos = np.asarray(position)
        if pos.dtype.kind not in "iu":
            raise ValueError(f"position must be integers (0 = top), got dtype {pos.dtype}")
        pos = np.broadcast_to(pos, (n,)) if pos.ndim == 0 else pos
        if pos.shape != (n,):
            raise ValueError(f"position must be a scalar or have shape ({n},), got {pos.shape}")
        if (pos < 0).any():
            raise ValueError("position must be >= 0 (0 = the top slot)")
        return (1.0 + pos) ** -self.config.position_eta

    # ------------------------------------------------------------------ ground truth

    def _combine(
        self,
        log_rel: np.ndarray,
        style: np.ndarray,
        lang: np.ndarray,
        age: np.ndarray,
        cs: np.ndarray,
        ps: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(P(click | examined), mean completion) from broadcastable pair terms."""
        c = self.config
        fresh = np.exp(-np.maximum(age, 0) / (c.fresh_tau_days * DAY))
        z = (
            cs + c.w_interest * log_rel + c.w_style * style + c.w_language * (lang - 1.0)
            + c.w_fresh * fresh
        )  # fmt: skip
        p = np.where(age >= 0, _sigmoid(z), 0.0)
        m = np.clip(_sigmoid(ps + c.c_interest * log_rel + c.c_style * style), 0.01, 0.99)
        return p, m

    def _pair_truth(
        self, u: np.ndarray, i: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per pair (user index, item index, time), all (N,): P(click|examined), mean completion."""
        th = np.take_along_axis(self.interest[u], self.item_topics[i], axis=1)  # (N, 3)
        aff = np.einsum("nj,nj->n", th, self.item_topic_weight[i], dtype=np.float64)
        log_rel = np.log(self.n_topics * aff)
        style = np.einsum("nd,nd->n", self.user_style[u], self.item_style[i], dtype=np.float64)
        lang = self._lang_match[self.user_language[u], self.item_language[i]]
        age = t - self.upload_time[i]
        return self._combine(
            log_rel, style, lang, age, self._click_static[i], self._completion_static[i]
        )

    def _topic_dense(self) -> np.ndarray:
        if self._topic_matrix is None:
            w = np.zeros((self.n_topics, self.n_items), dtype=np.float32)  # (T, I)
            rows = self.item_topics.ravel()
            cols = np.repeat(np.arange(self.n_items), MAX_ITEM_TOPICS)
            np.add.at(w, (rows, cols), self.item_topic_weight.ravel())
            self._topic_matrix = w
        return self._topic_matrix

    def _matrix_ewt(self, u: np.ndarray, cols: np.ndarray, t: np.ndarray) -> np.ndarray:
        """E[watch time] at the top slot for users u (B,) x items cols (C,) at times t (B,): (B, C)."""
        w = self._topic_dense()[:, cols]  # (T, C)
        aff = (self.interest[u] @ w).astype(np.float64)  # (B, C)
        log_rel = np.log(self.n_topics * np.maximum(aff, 1e-30))
        style = (self.user_style[u] @ self.item_style[cols].T).astype(np.float64)  # (B, C)
        lang = self._lang_match[self.user_language[u]][:, self.item_language[cols]]  # (B, C)
        up = self.upload_time[cols][None, :]  # (1, C)
        # one serving time for every user (the usual case): the freshness terms are one row
        same_t = len(t) > 0 and bool((t == t[0]).all())
        age = t[:1, None] - up if same_t else t[:, None] - up  # (1 or B, C)
        p, m = self._combine(
            log_rel, style, lang, age, self._click_static[cols][None, :],
            self._completion_static[cols][None, :],
        )  # fmt: skip
        return p * m * self.duration[cols][None, :]

    def p_click(self, user_ids: Any, item_ids: Any, t: Any, position: Any = None) -> np.ndarray:
        """Return the true click probability (N,) of each (user, item, time[, position]) pair.

        position None means the item is examined for sure (the top slot); 0 before upload.
        """
        u = self._user_index(user_ids)
        i = self._item_index(item_ids)
        if u.shape != i.shape or u.ndim != 1:
            raise ValueError(
                f"user_ids and item_ids must be 1-D of equal length, got {u.shape} and {i.shape}"
            )
        p, _ = self._pair_truth(u, i, self._times(t, len(u)))
        return p * self._examine(position, len(u))

    def expected_watch_given_click(self, user_ids: Any, item_ids: Any, t: Any) -> np.ndarray:
        """Return E[watch time | click] (N,) in seconds: duration x mean completion."""
        u = self._user_index(user_ids)
        i = self._item_index(item_ids)
        if u.shape != i.shape or u.ndim != 1:
            raise ValueError(
                f"user_ids and item_ids must be 1-D of equal length, got {u.shape} and {i.shape}"
            )
        _, m = self._pair_truth(u, i, self._times(t, len(u)))
        return self.duration[i] * m

    def expected_watch_time(
        self, user_ids: Any, item_ids: Any, t: Any, position: Any = None
    ) -> np.ndarray:
        """Return E[watch time] (N,) in seconds = P(click) x E[watch time | click]."""
        u = self._user_index(user_ids)
        i = self._item_index(item_ids)
        if u.shape != i.shape or u.ndim != 1:
            raise ValueError(
                f"user_ids and item_ids must be 1-D of equal length, got {u.shape} and {i.shape}"
            )
        p, m = self._pair_truth(u, i, self._times(t, len(u)))
        return p * self._examine(position, len(u)) * self.duration[i] * m

    def _slate_args(
        self, user_ids: Any, slates: Any, t: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = self._user_index(user_ids)
        s = np.asarray(slates)
        if s.ndim != 2 or s.shape[0] != u.shape[0] or u.ndim != 1:
            raise ValueError(
                f"slates must be a (U, k) array with one row per user; got slates {s.shape} "
                f"for {u.shape} users"
            )
        return u, self._item_index(s, allow_pad=True), self._times(t, len(u))

    def slate_expected_watch_time(self, user_ids: Any, slates: Any, t: Any) -> np.ndarray:
        """Return each user's true expected watch time (U,) of their slate (U, k) at time t.

        Position j is examined with probability (1 + j) ** -position_eta, independently of the
        other slots; -1 marks an empty slot (contributes 0); unknown ids raise ValueError.
        """
        u, idx, tt = self._slate_args(user_ids, slates, t)
        n, k = idx.shape
        filled = idx >= 0
        rows, cols = np.nonzero(filled)
        out = np.zeros((n, k))
        if len(rows):
            ii = idx[rows, cols]
            p, m = self._pair_truth(u[rows], ii, tt[rows])
            out[rows, cols] = p * m * self.duration[ii] * self._examine(cols, len(rows))
        return out.sum(axis=1)

    # ------------------------------------------------------------------ reference policies

    def oracle_slates(self, user_ids: Any, t: Any, k: int, candidates: Any = None) -> np.ndarray:
        """Return the best slates (U, k) under the truth: top-k E[watch time], best first.

        Exact over all items (chunked over users; cost O(U x I)), or over `candidates`: item
        ids (C,) shared by every user or (U, C) per user (ids repeated in a row count once).
        """
        u = self._user_index(user_ids)
        tt = self._times(t, len(u))
        k = self._check_k(k)
        if candidates is None:
            cols = np.arange(self.n_items)
            return self._matrix_top_k(u, tt, cols, k)
        cand = self._item_index(candidates)
        if cand.ndim == 1:
            return self._matrix_top_k(u, tt, cand, k)
        if cand.ndim != 2 or cand.shape[0] != len(u):
            raise ValueError(
                f"candidates must be (C,) or (U, C) item ids; got {cand.shape} for {len(u)} users"
            )
        n, c = cand.shape
        p, m = self._pair_truth(np.repeat(u, c), cand.ravel(), np.repeat(tt, c))
        ewt = (p * m * self.duration[cand.ravel()]).reshape(n, c)
        top, ok = _top_k_unique(cand, ewt, k)
        if not ok.all():
            raise ValueError(f"some users have fewer than k={k} distinct candidates")
        return self.item_ids[top]

    def _matrix_top_k(self, u: np.ndarray, tt: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
        cols = np.unique(cols)  # a repeated candidate has one score per user: it counts once
        if len(cols) < k:
            raise ValueError(f"fewer than k={k} distinct candidate items")
        out = np.empty((len(u), k), dtype=np.int64)
        step = max(1, _CHUNK_ELEMENTS // max(1, len(cols)))

        def chunk(lo: int) -> None:  # chunks of users bound the (B, C) matrix
            sl = slice(lo, lo + step)
            ewt = self._matrix_ewt(u[sl], cols, tt[sl])  # (B, C)
            # columns are distinct: a partial top-k per row, no per-row sort of the catalog
            top = np.argpartition(-ewt, k - 1, axis=1)[:, :k]  # (B, k)
            order = np.argsort(-np.take_along_axis(ewt, top, axis=1), axis=1, kind="stable")
            out[sl] = cols[np.take_along_axis(top, order, axis=1)]

        starts = range(0, len(u), step)
        if len(starts) > 1:  # numpy releases the GIL in its loops: one chunk per core at a time
            with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
                list(pool.map(chunk, starts))
        else:
            for lo in starts:
                chunk(lo)
        return self.item_ids[out]

    def _check_k(self, k: int) -> int:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    def _n_uploaded(self, t: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._upload_sorted, t, side="right")

    def _require_uploaded(self, tt: np.ndarray, k: int) -> None:
        if len(tt) and (self._n_uploaded(tt.min()) < k):
            raise ValueError(
                f"only {int(self._n_uploaded(tt.min()))} items are uploaded at time "
                f"{int(tt.min())}; a slate of k={k} distinct items needs at least k"
            )

    def random_slates(self, user_ids: Any, t: Any, k: int, rng: np.random.Generator) -> np.ndarray:
        """Return slates (U, k) of k distinct items drawn uniformly among those uploaded by t."""
        u = self._user_index(user_ids)
        tt = self._times(t, len(u))
        k = self._check_k(k)
        self._require_uploaded(tt, k)
        n_t = self._n_uploaded(tt)  # (U,)
        out = np.full((len(u), k), -1, dtype=np.int64)
        todo = np.arange(len(u))
        while len(todo):  # rounds of rejection sampling, not a loop over users
            c = 2 * k + 8
            draw = (rng.random((len(todo), c)) * n_t[todo, None]).astype(np.int64)
            cands = self._by_upload[draw]
            top, ok = _top_k_unique(cands, rng.random(cands.shape), k)
            done = ok.all(axis=1)
            out[todo[done]] = top[done]
            todo = todo[~done]
        return self.item_ids[out]

    def most_popular_slates(self, user_ids: Any, t: Any, k: int) -> np.ndarray:
        """Return slates (U, k): the k items uploaded by t with the highest non-personal appeal.

        The score is the item-only part of the true click logit at t (popularity, quality,
        appeal and freshness; no interests, style or language): the best non-personalised
        slate of the click model, a strong popularity baseline.
        """
        u = self._user_index(user_ids)
        tt = self._times(t, len(u))
        k = self._check_k(k)
        self._require_uploaded(tt, k)
        c = self.config
        uniq, inv = np.unique(tt, return_inverse=True)
        tops = np.empty((len(uniq), k), dtype=np.int64)
        step = max(1, _CHUNK_ELEMENTS // self.n_items)
        for lo in range(0, len(uniq), step):  # chunks of distinct times
            tb = uniq[lo : lo + step]
            age = tb[:, None] - self.upload_time[None, :]  # (B, I)
            score = self._click_static[None, :] + c.w_fresh * np.exp(
                -np.maximum(age, 0) / (c.fresh_tau_days * DAY)
            )
            score = np.where(age >= 0, score, -np.inf)
            top = np.argpartition(-score, k - 1, axis=1)[:, :k]
            rank = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1, kind="stable")
            tops[lo : lo + step] = np.take_along_axis(top, rank, axis=1)
        return self.item_ids[tops[inv]]

    def logging_policy_slates(
        self, user_ids: Any, t: Any, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Return the logging policy's slates (U, k): popularity + noisy partial interests."""
        u = self._user_index(user_ids)
        tt = self._times(t, len(u))
        k = self._check_k(k)
        self._require_uploaded(tt, k)
        out = np.empty((len(u), k), dtype=np.int64)
        for lo in range(0, len(u), _CHUNK_VISITS):  # chunks of visits bound memory
            sl = slice(lo, lo + _CHUNK_VISITS)
            out[sl] = self._logging_chunk(u[sl], tt[sl], k, rng)
        return self.item_ids[out]

    def _popular_fallback(self, tt: np.ndarray, k: int) -> np.ndarray:
        """(N, k) item indices: the k most popular items uploaded by each time (exact)."""
        up = self.upload_time[self._pop_order]
        reach = np.cumsum(up <= tt.min())
        m = int(np.searchsorted(reach, k)) + 1  # prefix holding k items uploaded by min(t)
        mask = up[None, :m] <= tt[:, None]  # (N, M)
        keep = mask & (np.cumsum(mask, axis=1) <= k)
        pos = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        return self._pop_order[pos]

    def _logging_chunk(
        self, u: np.ndarray, tt: np.ndarray, k: int, rng: np.random.Generator
    ) -> np.ndarray:
        c = self.config
        n = len(u)
        fallback = self._popular_fallback(tt, k)  # (N, k)
        pop = self._sampler.draw(
            np.full((n, POLICY_POP_CANDIDATES), self.n_topics),
            np.repeat(tt[:, None], POLICY_POP_CANDIDATES, axis=1),
            rng.random((n, POLICY_POP_CANDIDATES)),
        )
        topics = _sample_rows(self.policy_interest[u], rng.random((n, POLICY_TOPIC_CANDIDATES)))
        per_topic = self._sampler.draw(
            topics,
            np.repeat(tt[:, None], POLICY_TOPIC_CANDIDATES, axis=1),
            rng.random((n, POLICY_TOPIC_CANDIDATES)),
        )
        cands = np.concatenate([fallback, pop, per_topic], axis=1)  # (N, C)
        safe = np.maximum(cands, 0)
        th = self.policy_interest[u[:, None, None], self.item_topics[safe]]  # (N, C, 3)
        aff = np.einsum("ncj,ncj->nc", th, self.item_topic_weight[safe], dtype=np.float64)
        age = tt[:, None] - self.upload_time[safe]
        lang = self._lang_match[self.user_language[u][:, None], self.item_language[safe]]
        score = (
            POLICY_POPULARITY * self.popularity[safe] + 0.5 * self.appeal[safe]
            + np.log(self.n_topics * np.maximum(aff, 1e-30)) + (lang - 1.0)
            + 0.5 * c.w_fresh * np.exp(-np.maximum(age, 0) / (c.fresh_tau_days * DAY))
            + c.policy_explore * rng.gumbel(size=cands.shape)
        )  # fmt: skip
        # the fallback only fills slates the sampled candidates cannot fill
        score[:, :k] -= 1e6
        score[age < 0] = -np.inf
        top, ok = _top_k_unique(cands, score, k)
        if not ok.all():
            raise ValueError(f"the logging policy found fewer than k={k} items uploaded by t")
        return top

    # ------------------------------------------------------------------ closed loop

    def visitors(
        self, start: Any, end: Any, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (user_ids, timestamps) of home-feed visits in [start, end), sorted by time.

        Each user visits as a Poisson process with their activity rate (visits per day).
        """
        lo, hi = _parse_time(start, "start"), _parse_time(end, "end")
        if hi <= lo:
            raise ValueError(f"end ({hi}) must be after start ({lo})")
        counts = rng.poisson(self.activity * (hi - lo) / DAY)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), counts)
        ts = rng.integers(lo, hi, size=len(users))
        order = np.lexsort((users, ts))
        return users[order], ts[order]

    def respond(
        self,
        user_ids: Any,
        slates: Any,
        t: Any,
        rng: np.random.Generator,
        *,
        source: str = "served",
    ) -> pd.DataFrame:
        """Return impressions of slates (U, k) shown at times t, with sampled clicks and watch times.

        Columns: user_id, item_id, timestamp (= t), clicked (int8), watch_time (s, 0 when not
        clicked), position (column of the slate, 0 = top), source. -1 marks an empty slot (no
        impression); an item repeated in a slate raises ValueError.
        """
        u, idx, tt = self._slate_args(user_ids, slates, t)
        n, k = idx.shape
        srt = np.sort(np.where(idx >= 0, idx, -1 - np.arange(k)[None, :]), axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(
                f"{int(dup.any(axis=1).sum())} slates repeat an item (first: row {row}, "
                f"slate {self.item_ids[np.maximum(idx[row], 0)].tolist()}); show each item once"
            )
        rows, cols = np.nonzero(idx >= 0)
        ii = idx[rows, cols]
        p, m = self._pair_truth(u[rows], ii, tt[rows])
        p = p * self._examine(cols, len(rows))
        clicked = rng.random(len(rows)) < p
        watch = np.zeros(len(rows))
        kappa = self.config.completion_concentration
        mc = m[clicked]
        watch[clicked] = self.duration[ii[clicked]] * rng.beta(mc * kappa, (1.0 - mc) * kappa)
        return pd.DataFrame(
            {
                "user_id": u[rows],
                "item_id": self.item_ids[ii],
                "timestamp": tt[rows],
                "clicked": clicked.astype(np.int8),
                "watch_time": watch,
                "position": cols.astype(np.int64),
                "source": pd.array(np.full(len(rows), source, dtype=object), dtype="str"),
            }
        )

    def organic_activity(
        self, start: Any, end: Any, rng: np.random.Generator
    ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
        """Return (watches, searches, watch_surface) of search and browse activity in [start, end).

        Searches: 1-3 words of a topic drawn from the user's interests; the watch that
        follows (5-120 s later, probability 0.85) is of that topic. Browse watches: an item of
        an interest topic. Items are drawn by sampling-importance-resampling toward the true
        P(click). watch_surface (len(watches),) is "search" or "browse".
        """
        c = self.config
        lo, hi = _parse_time(start, "start"), _parse_time(end, "end")
        if hi <= lo:
            raise ValueError(f"end ({hi}) must be after start ({lo})")
        rate = self.activity * (hi - lo) / DAY
        # searches
        n_s = rng.poisson(rate * c.searches_per_visit)
        su = np.repeat(np.arange(self.n_users, dtype=np.int64), n_s)
        sts = rng.integers(lo, hi, size=len(su))
        s_topic = _sample_rows(self.interest[su], rng.random((len(su), 1)))[:, 0]
        n_words = rng.choice([1, 2, 3], size=len(su), p=[0.35, 0.45, 0.2])
        pick = np.argsort(rng.random((len(su), self.topic_words.shape[1])), axis=1)[:, :3]
        words = self.topic_words[s_topic[:, None], pick]  # (S, 3)
        query = _join_words([words[:, j] for j in range(3)], [n_words > j for j in range(3)])
        follow = rng.random(len(su)) < SEARCH_WATCH_PROB
        sw_ts = sts[follow] + rng.integers(5, 121, size=int(follow.sum()))
        # browse
        n_b = rng.poisson(rate * c.browse_per_visit)
        bu = np.repeat(np.arange(self.n_users, dtype=np.int64), n_b)
        bts = rng.integers(lo, hi, size=len(bu))
        b_topic = _sample_rows(self.interest[bu], rng.random((len(bu), 1)))[:, 0]

        wu = np.concatenate([su[follow], bu])
        wts = np.concatenate([sw_ts, bts])
        wtopic = np.concatenate([s_topic[follow], b_topic])
        surface = np.concatenate(
            [
                np.full(int(follow.sum()), "search", dtype=object),
                np.full(len(bu), "browse", dtype=object),
            ]
        )
        item = self._organic_items(wu, wtopic, wts, rng)
        ok = item >= 0
        wu, wts, item, surface = wu[ok], wts[ok], item[ok], surface[ok]
        _, m = self._pair_truth(wu, item, wts)
        kappa = c.completion_concentration
        watch_time = self.duration[item] * rng.beta(m * kappa, (1.0 - m) * kappa)
        watches = pd.DataFrame(
            {
                "user_id": wu,
                "item_id": self.item_ids[item],
                "timestamp": wts,
                "watch_time": watch_time,
            }
        )
        searches = pd.DataFrame(
            {"user_id": su, "timestamp": sts, "query": pd.array(query, dtype="str")}
        )
        return watches, searches, surface

    def _organic_items(
        self, u: np.ndarray, topic: np.ndarray, t: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Item index per event (-1 if its topic has no item yet), drawn by SIR toward P(click)."""
        out = np.full(len(u), -1, dtype=np.int64)
        for lo in range(0, len(u), _CHUNK_VISITS):
            sl = slice(lo, lo + _CHUNK_VISITS)
            n = len(u[sl])
            c = ORGANIC_CANDIDATES
            cand = self._sampler.draw(
                np.repeat(topic[sl, None], c, axis=1),
                np.repeat(t[sl, None], c, axis=1),
                rng.random((n, c)),
            )  # (n, c) proposals ~ exp(pop)
            safe = np.maximum(cand, 0).ravel()
            p, _ = self._pair_truth(np.repeat(u[sl], c), safe, np.repeat(t[sl], c))
            with np.errstate(divide="ignore"):
                logw = np.log(p) - np.log(self._proposal[safe])  # importance weights
            logw = logw.reshape(n, c)
            logw[cand < 0] = -np.inf
            g = logw + rng.gumbel(size=logw.shape)
            best = np.argmax(g, axis=1)
            chosen = cand[np.arange(n), best]
            out[sl] = np.where(np.isfinite(g[np.arange(n), best]), chosen, -1)
        return out

    def items_at(self, t: Any) -> pd.DataFrame:
        """Return the catalog rows of items uploaded at or before time t (what may be known)."""
        tt = _parse_time(t, "t") if not isinstance(t, (int, np.integer)) else int(t)
        return self.catalog[self.catalog["upload_time"].to_numpy() <= tt].reset_index(drop=True)

    def advance(
        self,
        start: Any,
        end: Any,
        rng: np.random.Generator,
        policy: Policy | None = None,
        *,
        k: int | None = None,
        source: str = "served",
    ) -> SimulatedLogs:
        """Return the logs of [start, end): home visits served by `policy`, plus organic activity.

        `policy(user_ids, timestamps, k) -> (U, k)` item ids (None = the logging policy);
        clicked impressions become watches that start 1 s after the impression, one after
        the other in slot order. Use it for simulated days after the dataset's window.
        """
        lo, hi = _parse_time(start, "start"), _parse_time(end, "end")
        k = self._check_k(self.config.slate_size if k is None else k)
        users, times = self.visitors(lo, hi, rng)
        frames, slate_rows = [], []
        for c0 in range(0, len(users), _CHUNK_VISITS):  # chunks of visits
            uu, tt = users[c0 : c0 + _CHUNK_VISITS], times[c0 : c0 + _CHUNK_VISITS]
            slates = (
                self.logging_policy_slates(uu, tt, k, rng)
                if policy is None
                else np.asarray(policy(uu, tt, k))
            )
            imp = self.respond(uu, slates, tt, rng, source=source)
            frames.append(imp)
            ewt = self.slate_expected_watch_time(uu, slates, tt)
            slate_rows.append(
                pd.DataFrame({"user_id": uu, "timestamp": tt, "expected_watch_time": ewt})
            )
        imp = (
            pd.concat(frames, ignore_index=True)
            if frames
            else self.respond(
                np.zeros(0, np.int64), np.zeros((0, k), np.int64), 0, rng, source=source
            )
        )
        slates_df = (
            pd.concat(slate_rows, ignore_index=True)
            if slate_rows
            else pd.DataFrame(
                {
                    "user_id": np.zeros(0, np.int64),
                    "timestamp": np.zeros(0, np.int64),
                    "expected_watch_time": np.zeros(0),
                }
            )
        )
        realized = imp.groupby(["user_id", "timestamp"], sort=False)["watch_time"].sum()
        slates_df["realized_watch_time"] = (
            realized.reindex(pd.MultiIndex.from_frame(slates_df[["user_id", "timestamp"]]))
            .fillna(0.0)
            .to_numpy()
        )
        home = impressions_to_watches(imp)
        org_w, searches, org_surface = self.organic_activity(lo, hi, rng)
        watches = pd.concat([home, org_w], ignore_index=True)
        surface = np.concatenate([np.full(len(home), "home", dtype=object), org_surface])
        order = np.lexsort((watches["user_id"].to_numpy(), watches["timestamp"].to_numpy()))
        watches = watches.iloc[order].reset_index(drop=True)
        surface = surface[order]
        searches = searches.sort_values(["timestamp", "user_id"], kind="stable").reset_index(
            drop=True
        )
        imp = imp.sort_values(["timestamp", "user_id", "position"], kind="stable").reset_index(
            drop=True
        )
        ds = Dataset(
            users=self.users,
            items=self.catalog[self.upload_time < hi].reset_index(drop=True),
            watches=watches,
            searches=searches,
            impressions=imp,
            name=f"synthetic:{self.config.name}",
        )
        return SimulatedLogs(dataset=ds, watch_surface=surface, slates=slates_df)

    # ------------------------------------------------------------------ card

    def _freshness_curve(self, age_days: np.ndarray) -> dict[str, float]:
        """Watches per item-day by item age at watch time (freshness as seen in the data).

        Exposure of an age bucket [a, b) days: for every item uploaded before the window's
        end, the time its age lies in [a, b) while the window is open, summed in days.
        """
        up = self.upload_time[self.upload_time < self.end].astype(np.float64)  # (I_visible,)
        out: dict[str, float] = {}
        for a, b in ((0, 1), (1, 3), (3, 7), (7, 14), (14, 28), (28, 56)):  # 6 buckets
            lo = np.maximum(up + a * DAY, self.start)
            hi = np.minimum(up + b * DAY, self.end)
            exposure = np.maximum(hi - lo, 0.0).sum() / DAY
            n = int(((age_days >= a) & (age_days < b)).sum())
            out[f"{a}-{b}d"] = float(n / exposure) if exposure > 0 else 0.0
        return out

    def card(self) -> dict[str, Any]:
        """Return the world card (world.json): sizes, popularity concentration, CTR, watch stats."""
        ds = self.dataset
        w = ds.watches
        imp = (
            ds.impressions
            if ds.impressions is not None
            else self.respond(
                np.zeros(0, np.int64), np.zeros((0, 1), np.int64), 0, np.random.default_rng(0)
            )
        )
        s = (
            ds.searches
            if ds.searches is not None
            else pd.DataFrame({"query": pd.array([], dtype="str")})
        )
        items = ds.items
        item_idx = self._item_index(w["item_id"].to_numpy())
        wt = w["watch_time"].to_numpy()
        age_days = (w["timestamp"].to_numpy() - self.upload_time[item_idx]) / DAY
        visible = self._item_index(items["item_id"].to_numpy())
        per_item = np.bincount(item_idx, minlength=self.n_items)[visible]  # (visible items,)
        per_user = np.bincount(w["user_id"].to_numpy(), minlength=self.n_users)
        imp_pos = imp["position"].to_numpy()
        clicked = imp["clicked"].to_numpy()
        ctr_pos = np.bincount(imp_pos, weights=clicked) / np.maximum(np.bincount(imp_pos), 1)
        surfaces, surface_n = np.unique(self.watch_surface.astype(str), return_counts=True)
        n_words = s["query"].str.count(" ").to_numpy() + 1 if len(s) else np.zeros(0)
        c = self.config
        return {
            "name": ds.name,
            "preset": c.name,
            "seed": self.seed,
            "catalog": c.catalog,
            "window": {
                "start": pd.Timestamp(self.start, unit="s", tz="UTC").isoformat(),
                "end": pd.Timestamp(self.end, unit="s", tz="UTC").isoformat(),
                "days": c.days,
            },
            "counts": {
                **ds.counts(),
                "catalog_items_total": self.n_items,
                "items_hidden_future": int(self.n_items - len(items)),
                "channels": len(self.channel_names),
                "topics": self.n_topics,
                "slates": int(len(imp.drop_duplicates(["user_id", "timestamp"]))),
            },
            "impressions": {
                "ctr": float(clicked.mean()) if len(clicked) else 0.0,
                "ctr_by_position": [round(float(x), 5) for x in ctr_pos],
                "slate_size": c.slate_size,
            },
            "watches": {
                "mean_watch_time_s": float(wt.mean()) if len(wt) else 0.0,
                "median_watch_time_s": float(np.median(wt)) if len(wt) else 0.0,
                "mean_completion": float(np.mean(wt / self.duration[item_idx])) if len(wt) else 0.0,
                "share_by_surface": {
                    str(k): float(v / len(w)) for k, v in zip(surfaces, surface_n, strict=True)
                },
                "frac_on_items_younger_than_7d": float(np.mean(age_days < 7)) if len(wt) else 0.0,
                "frac_on_items_uploaded_in_window": float(
                    np.mean(self.upload_time[item_idx] >= self.start)
                )
                if len(wt)
                else 0.0,  # fmt: skip
                "watches_per_item_day_by_age": self._freshness_curve(age_days),
            },
            "popularity": {
                "top1pct_items_watch_share": _top_share(per_item, 0.01),
                "top10pct_items_watch_share": _top_share(per_item, 0.10),
                "gini_items": _gini(per_item),
                "items_never_watched_frac": float(np.mean(per_item == 0)),
            },
            "activity": {
                "top1pct_users_watch_share": _top_share(per_user, 0.01),
                "top10pct_users_watch_share": _top_share(per_user, 0.10),
                "gini_users": _gini(per_user),
                "watches_per_user_mean": float(per_user.mean()),
                "watches_per_user_median": float(np.median(per_user)),
                "watches_per_user_max": int(per_user.max()) if len(per_user) else 0,
                "users_without_watch_frac": float(np.mean(per_user == 0)),
            },
            "searches": {
                "per_user": float(len(s) / self.n_users),
                "mean_query_words": float(n_words.mean()) if len(n_words) else 0.0,
            },
            "catalog_missing_values": dict(self.catalog_missing),
        }


def _country_p() -> np.ndarray:
    p = np.array([w for _, _, w in COUNTRIES])
    return p / p.sum()


def impressions_to_watches(impressions: pd.DataFrame) -> pd.DataFrame:
    """Return the watches (user_id, item_id, timestamp, watch_time) of clicked impressions.

    A slate is the impressions sharing (user_id, timestamp); its clicked items are watched one
    after the other in position order, the first starting 1 s after the impression.
    """
    need = ("user_id", "item_id", "timestamp", "clicked", "watch_time")
    absent = [col for col in need if col not in impressions.columns]
    if absent:
        raise ValueError(f"impressions lack column(s) {absent}; they need {list(need)}")
    clicked = impressions[impressions["clicked"].to_numpy() == 1]
    pos = (
        clicked["position"].to_numpy()
        if "position" in clicked
        else np.zeros(len(clicked), np.int64)
    )
    u = clicked["user_id"].to_numpy()
    ts = clicked["timestamp"].to_numpy()
    wt = clicked["watch_time"].to_numpy()
    order = np.lexsort((pos, ts, u))
    u, ts, wt = u[order], ts[order], wt[order]
    item = clicked["item_id"].to_numpy()[order]
    new_slate = np.ones(len(u), dtype=bool)
    new_slate[1:] = (u[1:] != u[:-1]) | (ts[1:] != ts[:-1])
    csum = np.cumsum(np.ceil(wt))
    before = csum - np.ceil(wt)  # watch seconds before this one, from the first watch
    slate_first = np.maximum.accumulate(np.where(new_slate, np.arange(len(u)), 0))
    offset = before - before[slate_first] if len(u) else before
    return pd.DataFrame(
        {
            "user_id": u.astype(np.int64),
            "item_id": item.astype(np.int64),
            "timestamp": (ts + 1 + offset).astype(np.int64),
            "watch_time": wt.astype(np.float64),
        }
    )


def generate_world(config: WorldConfig, seed: int) -> World:
    """Return a world drawn from `config` with `seed`, its dataset generated (deterministic)."""
    if not isinstance(config, WorldConfig):
        raise TypeError(
            f"config must be a WorldConfig (e.g. WorldConfig.preset('tiny')), got {type(config).__name__}"
        )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    return World(config, int(seed))
