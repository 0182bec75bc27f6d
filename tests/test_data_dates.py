"""The date-translation data: every written format parses back to its ISO target."""

import datetime
import re

import numpy as np
import pytest

from attention_jax.data import dates as D

# An independent parser per format: strptime after undoing the ordinal suffix and the case.
STRPTIME = {
    "nth_of_month_year": "%d of %B %Y",
    "dy_mon_d_year": "%a, %b %d, %Y",
    "dd.mm.yy": "%d.%m.%y",
    "dd.mm.yyyy": "%d.%m.%Y",
    "m/d/yyyy": "%m/%d/%Y",
    "month_d_year": "%B %d, %Y",
    "d_month_year": "%d %B %Y",
    "d_mon_yy": "%d %b %y",
    "dd-mon-yyyy": "%d-%b-%Y",
    "day_month_d_year": "%A, %B %d, %Y",
    "month_upper": "%B %d %Y",
    "the_nth_lower": "the %d of %B, %Y",
    "yyyy/mm/dd": "%Y/%m/%d",
    "mon_nth_yy": "%b %d %y",
}


def _parse(text: str, name: str) -> datetime.date:
    text = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", text).title().replace("Of", "of")
    fmt = STRPTIME[name]
    if name == "the_nth_lower":
        text = text.replace("The ", "the ", 1)
    date = datetime.datetime.strptime(text, fmt).date()
    if "%y" in fmt and date.year >= 2050:  # strptime's pivot is 1969; ours is 1950
        date = date.replace(year=date.year - 100)
    return date


def test_every_format_parses_back_to_its_target():
    assert set(STRPTIME) == set(D.DATE_FORMATS)
    pairs = D.date_pairs(600, seed=0)
    assert set(pairs.formats) == set(D.DATE_FORMATS)
    for source, target, name in zip(pairs.sources, pairs.targets, pairs.formats, strict=True):
        assert _parse(source, name).isoformat() == target, (source, name)
        assert "1950-01-01" <= target <= "2049-12-31"


def test_examples_of_the_tutorials():
    d = datetime.date(1999, 3, 3)
    assert D.format_date(d, "nth_of_month_year") == "3rd of March 1999"
    assert D.format_date(d, "dy_mon_d_year") == "Wed, Mar 3, 1999"
    assert D.format_date(d, "dd.mm.yy") == "03.03.99"
    assert (
        D.format_date(datetime.date(2011, 11, 12), "the_nth_lower") == "the 12th of november, 2011"
    )


def test_seeded_and_exclusive():
    a, b = D.date_pairs(50, seed=3), D.date_pairs(50, seed=3)
    assert a == b and a != D.date_pairs(50, seed=4)
    held = D.date_pairs(200, seed=5, exclude=a.targets)
    assert not set(held.targets) & set(a.targets)
    only = D.date_pairs(20, seed=1, formats=["dd.mm.yy"])
    assert set(only.formats) == {"dd.mm.yy"}


def test_encode_and_decode():
    pairs = D.date_pairs(40, seed=2)
    src, lengths, tgt = D.encode_dates(pairs, source_length=32)
    assert src.shape == (40, 32) and tgt.shape == (40, D.TARGET_LENGTH + 2)
    assert np.all(tgt[:, 0] == D.BOS) and np.all(tgt[:, -1] == D.EOS)
    assert src.max() < D.SOURCE_VOCAB_SIZE and tgt.max() < D.TARGET_VOCAB_SIZE
    for i, s in enumerate(pairs.sources):
        assert lengths[i] == len(s) and np.all(src[i, len(s) :] == D.PAD)
        assert D.decode_target(tgt[i]) == pairs.targets[i]


def test_bad_input():
    with pytest.raises(ValueError, match=r"date_pairs: num_examples must be an int >= 1, got 0"):
        D.date_pairs(0, seed=0)
    with pytest.raises(ValueError, match=r"date_pairs: formats must be names of DATE_FORMATS"):
        D.date_pairs(3, seed=0, formats=["iso"])
    with pytest.raises(ValueError, match=r"format_date: name must be one of"):
        D.format_date(datetime.date(2000, 1, 1), "iso")
    pairs = D.DatePairs(("Wednesday, September 29, 1999",), ("1999-09-29",), ("x",))
    with pytest.raises(ValueError, match=r"encode_dates: source_length=8 is shorter than"):
        D.encode_dates(pairs, source_length=8)
