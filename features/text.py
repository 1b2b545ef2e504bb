"""Search-query tokenizer: lowercase unigrams and bigrams (SPEC §2, the user tower's search vector).

A query is lowercased and split on every run of characters that is not a letter or a digit
(Unicode-aware; "_" counts as a separator). Its tokens are the unigrams in order followed by the
bigrams of adjacent unigrams, written "left right" (a space cannot occur inside a unigram, so
a bigram can never collide with a unigram). The user tower averages token embeddings, so token
order inside a query carries no meaning downstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

_WORD = r"[^\W_]+"


def tokenize_query(query: str) -> list[str]:
    """Return the unigrams then bigrams of one query (empty list for an empty query)."""
    return tokenize_queries([query])[0]


def tokenize_queries(queries: Sequence[str] | pd.Series) -> list[list[str]]:
    """Return, for each query, its unigrams followed by its bigrams.

    Missing queries (None/NaN) give an empty token list.
    """
    series = pd.Series(queries, dtype="object") if not isinstance(queries, pd.Series) else queries
    words = series.astype("string").str.lower().str.findall(_WORD)
    return [_with_bigrams(w) if isinstance(w, list) else [] for w in words.tolist()]


def tokens_flat(queries: Sequence[str] | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return `(offsets (Q+1,) int64, tokens (T,) object)`: query q's tokens are
    `tokens[offsets[q]:offsets[q+1]]` (CSR layout, for bulk vocabulary lookups).

    Each distinct query is tokenized once (logs repeat queries a lot), then the distinct
    queries' token runs are gathered back into query order with index arithmetic.
    """
    series = pd.Series(queries, dtype="object") if not isinstance(queries, pd.Series) else queries
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    lists = tokenize_queries(pd.Series(np.asarray(uniques, dtype=object), dtype="object"))
    u_len = np.fromiter((len(t) for t in lists), dtype=np.int64, count=len(lists))
    u_ptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(u_len, out=u_ptr[1:])
    u_flat = np.empty(int(u_ptr[-1]), dtype=object)
    u_flat[:] = [tok for toks in lists for tok in toks]
    offsets = np.zeros(len(codes) + 1, dtype=np.int64)
    if len(u_len) == 0:  # no query, or only missing ones
        return offsets, np.empty(0, dtype=object)
    safe = np.maximum(codes, 0)
    q_len = np.where(codes >= 0, u_len[safe], 0)  # missing queries (-1) have no tokens
    np.cumsum(q_len, out=offsets[1:])
    # token t of query q sits at u_ptr[codes[q]] + t in the distinct-query layout
    first = np.repeat(u_ptr[safe] - offsets[:-1], q_len)
    flat = u_flat[np.arange(int(offsets[-1]), dtype=np.int64) + first]
    return offsets, flat


def _with_bigrams(words: list[str]) -> list[str]:
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
