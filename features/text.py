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
    `tokens[offsets[q]:offsets[q+1]]` (CSR layout, for bulk vocabulary lookups)."""
    lists = tokenize_queries(queries)
    lengths = np.fromiter((len(t) for t in lists), dtype=np.int64, count=len(lists))
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=object)
    flat[:] = [tok for toks in lists for tok in toks]
    return offsets, flat


def _with_bigrams(words: list[str]) -> list[str]:
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
