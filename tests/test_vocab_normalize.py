import numpy as np
import pandas as pd
import pytest

from vidrec.features.normalize import QuantileNormalizer
from vidrec.features.vocab import IdVocabulary, NotFittedError


def test_vocab_codes_by_frequency_and_oov():
    # counts: 5 -> 3, 3 -> 2, 9 -> 1; min_count=2 drops 9 (one occurrence mapped to OOV)
    v = IdVocabulary(min_count=2).fit([5, 5, 5, 3, 3, 9])
    assert v.transform([5, 3, 9, 7]).tolist() == [1, 2, 0, 0]
    assert len(v) == 3
    assert v.counts_.tolist() == [1, 3, 2]
    assert v.summary()["distinct_values_dropped"] == 1
    assert v.inverse_transform([0, 1, 2]).tolist() == [None, 5, 3]


def test_vocab_max_size_ties_broken_by_value():
    v = IdVocabulary(max_size=2).fit(["b", "a", "c", "c"])
    # c (2) first, then a and b tie at 1 -> a wins by value
    assert v.transform(["c", "a", "b"]).tolist() == [1, 2, 0]


def test_vocab_roundtrip(tmp_path):
    v = IdVocabulary(name="items").fit(np.array([10, 20, 20, 30]))
    v.save(tmp_path / "v.json")
    w = IdVocabulary.load(tmp_path / "v.json")
    assert w.transform([20, 10, 30, 99]).tolist() == v.transform([20, 10, 30, 99]).tolist()
    s = IdVocabulary().fit(["x", "y", "y"])
    assert IdVocabulary.from_dict(s.to_dict()).transform(["y", "x", "q"]).tolist() == [1, 2, 0]


def test_vocab_errors():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        IdVocabulary(name="items").transform([1])
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        IdVocabulary(min_count=0)
    v = IdVocabulary().fit([1, 2])
    with pytest.raises(ValueError, match="codes must lie in"):
        v.inverse_transform([3])


def test_quantile_normalizer_linear_cdf():
    # uniform 0..100 with 101 quantiles: F(x) = x / 100 exactly, clipped below 1
    x = np.arange(101, dtype=float)
    n = QuantileNormalizer(n_quantiles=101).fit(x)
    out = n.transform(np.array([[0.0], [25.0], [50.5], [100.0], [1e9], [-3.0]])).ravel()
    assert out[:3] == pytest.approx([0.0, 0.25, 0.505], abs=1e-6)
    assert out[3] < 1.0 and out[4] < 1.0 and out[5] == 0.0
    assert out.dtype == np.float32


def test_quantile_normalizer_ties_and_expand():
    # half zeros: a zero sits in the middle of its tied mass, F(0) ~ 0.25 (avg of 0 and ~0.5)
    x = np.r_[np.zeros(500), np.arange(1, 501)].astype(float)
    n = QuantileNormalizer(n_quantiles=101).fit(x)
    assert n.transform([[0.0]])[0, 0] == pytest.approx(0.25, abs=0.01)
    e = QuantileNormalizer.expand(np.array([[0.25]], dtype=np.float32))
    assert e.ravel().tolist() == pytest.approx([0.25, 0.0625, 0.5])


def test_quantile_normalizer_dataframe_roundtrip_and_errors(tmp_path):
    df = pd.DataFrame({"a": np.arange(10.0), "b": np.arange(10.0) ** 2})
    n = QuantileNormalizer(n_quantiles=5)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        n.transform(df)
    n.fit(df)
    n.save(tmp_path / "q.json")
    m = QuantileNormalizer.load(tmp_path / "q.json")
    np.testing.assert_allclose(m.transform(df), n.transform(df))
    with pytest.raises(ValueError, match="column mismatch"):
        n.transform(df.rename(columns={"b": "c"}))
    with pytest.raises(ValueError, match="contains inf"):
        QuantileNormalizer().fit(pd.DataFrame({"a": [1.0, np.inf]}))
    with pytest.raises(ValueError, match="0 rows"):
        QuantileNormalizer().fit(np.zeros((0, 2)))


def test_string_vocabulary_small_and_bulk_lookups_agree():
    # requests up to _DICT_LOOKUP_MAX values go through a dict, larger ones through pandas:
    # the same codes either way, unknown and missing values -> 0
    from vidrec.features import vocab as vocab_module

    v = IdVocabulary(name="channel").fit(np.array(["a", "b", "b", "c", "c", "c"], dtype=object))
    small = np.array(["c", "zz", None, "a", "b"], dtype=object)
    assert v.transform(small).tolist() == [1, 0, 0, 3, 2]  # c (3x) -> 1, b -> 2, a -> 3
    big = np.tile(small, vocab_module._DICT_LOOKUP_MAX // 5 + 1)
    assert big.size > vocab_module._DICT_LOOKUP_MAX
    np.testing.assert_array_equal(v.transform(big), np.tile([1, 0, 0, 3, 2], len(big) // 5))
    assert v.transform(small.reshape(5, 1)).shape == (5, 1)


def test_quantile_normalizer_column_never_observed_maps_to_zero_without_warning():
    import warnings

    x = np.column_stack([np.arange(10.0), np.full(10, np.nan), [np.nan] * 5 + list(range(5))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice" warning must not reach a log
        qn = QuantileNormalizer(n_quantiles=5).fit(x)
        out = qn.transform(np.array([[3.0, 7.0, 2.0], [np.nan, np.nan, np.nan]]))
    assert (qn.quantiles_[1] == 0).all()  # quantiles of a column never observed: 0
    assert out[1].tolist() == [0, 0, 0]  # NaN maps to 0
    assert 0 < out[0, 0] < 1 and 0 < out[0, 2] < 1
    np.testing.assert_array_equal(
        qn.quantiles_[[0, 2]], QuantileNormalizer(5).fit(x[:, [0, 2]]).quantiles_
    )
