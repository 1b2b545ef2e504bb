"""Tests for features.text: unigram + bigram query tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vidrec.features.text import tokenize_queries, tokenize_query, tokens_flat


def test_lowercase_split_on_non_alphanumerics_then_bigrams() -> None:
    assert tokenize_query("Funny CATS_and dogs!!") == [
        "funny",
        "cats",
        "and",
        "dogs",
        "funny cats",
        "cats and",
        "and dogs",
    ]


def test_single_word_has_no_bigram_and_unicode_letters_are_words() -> None:
    assert tokenize_query("Ünïcode") == ["ünïcode"]
    assert tokenize_query("4k-hdr") == ["4k", "hdr", "4k hdr"]


def test_empty_and_missing_queries_give_no_tokens() -> None:
    assert tokenize_queries(["", "  ...  ", None]) == [[], [], []]
    assert tokenize_queries(pd.Series(["a b", np.nan])) == [["a", "b", "a b"], []]


def test_tokens_flat_is_csr() -> None:
    offsets, flat = tokens_flat(["a b", "", "c"])
    # "a b" -> 3 tokens, "" -> 0, "c" -> 1: offsets 0, 3, 3, 4
    assert offsets.tolist() == [0, 3, 3, 4]
    assert flat.tolist() == ["a", "b", "a b", "c"]
    offsets, flat = tokens_flat([])
    assert offsets.tolist() == [0] and len(flat) == 0


def test_tokens_flat_matches_per_query_tokenization_with_repeats() -> None:
    queries = ["b a", None, "b a", "c", "", "c", "b a"]
    offsets, flat = tokens_flat(queries)
    expected = tokenize_queries(queries)
    got = [flat[offsets[q] : offsets[q + 1]].tolist() for q in range(len(queries))]
    assert got == expected
    offsets, flat = tokens_flat([None, None])
    assert offsets.tolist() == [0, 0, 0] and len(flat) == 0
