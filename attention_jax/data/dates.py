"""Human-written dates and their ISO form: the translation task of attention tutorials.

Bahdanau et al. (2014) showed additive attention aligning source and target words in
translation; the small, offline stand-in the tutorials use is translating dates written by
people ("3rd of March 1999", "Tue, Mar 3, 1999", "03.03.99", ...) into ``1999-03-03``.
Here the generator is seeded and needs no download: :func:`date_pairs` draws dates
uniformly from 1950-01-01 to 2049-12-31 (so two-digit years are unambiguous: 50-99 are
19xx, 00-49 are 20xx) and writes each in one of :data:`DATE_FORMATS`.

Sequences are character tokens. :func:`encode_dates` pads sources to a fixed length with
:data:`PAD` and frames targets as ``<bos> YYYY-MM-DD <eos>``.
"""

import dataclasses
import datetime

import numpy as np

MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL_TOKENS = 3
# Every character a source or target may hold (formats below only use these).
SOURCE_CHARS = " ,./-0123456789" + "abcdefghijklmnopqrstuvwxyz" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TARGET_CHARS = "-0123456789"
TARGET_LENGTH = 10  # YYYY-MM-DD
SOURCE_VOCAB_SIZE = NUM_SPECIAL_TOKENS + len(SOURCE_CHARS)
TARGET_VOCAB_SIZE = NUM_SPECIAL_TOKENS + len(TARGET_CHARS)

_FIRST = datetime.date(1950, 1, 1).toordinal()
_LAST = datetime.date(2049, 12, 31).toordinal()


def _ordinal(day: int) -> str:
    if day in (11, 12, 13):
        return f"{day}th"
    return f"{day}" + {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _parts(d: datetime.date) -> dict:
    month, weekday = MONTHS[d.month - 1], WEEKDAYS[d.weekday()]
    return dict(
        d=d.day,
        dd=f"{d.day:02d}",
        nth=_ordinal(d.day),
        m=d.month,
        mm=f"{d.month:02d}",
        month=month,
        mon=month[:3],
        day=weekday,
        dy=weekday[:3],
        yyyy=f"{d.year}",
        yy=f"{d.year % 100:02d}",
    )


# name -> format; each is a str.format template over _parts' fields, optionally cased.
DATE_FORMATS = {
    "nth_of_month_year": "{nth} of {month} {yyyy}",
    "dy_mon_d_year": "{dy}, {mon} {d}, {yyyy}",
    "dd.mm.yy": "{dd}.{mm}.{yy}",
    "dd.mm.yyyy": "{dd}.{mm}.{yyyy}",
    "m/d/yyyy": "{m}/{d}/{yyyy}",
    "month_d_year": "{month} {d}, {yyyy}",
    "d_month_year": "{d} {month} {yyyy}",
    "d_mon_yy": "{d} {mon} {yy}",
    "dd-mon-yyyy": "{dd}-{mon}-{yyyy}",
    "day_month_d_year": "{day}, {month} {d}, {yyyy}",
    "month_upper": "{month} {d} {yyyy}|upper",
    "the_nth_lower": "the {nth} of {month}, {yyyy}|lower",
    "yyyy/mm/dd": "{yyyy}/{mm}/{dd}",
    "mon_nth_yy": "{mon} {nth} {yy}",
}


def format_date(date: datetime.date, name: str) -> str:
    """Writes ``date`` in the format ``name`` of :data:`DATE_FORMATS`.

    >>> format_date(datetime.date(1999, 3, 3), "nth_of_month_year")
    '3rd of March 1999'
    """
    if name not in DATE_FORMATS:
        raise ValueError(f"format_date: name must be one of {sorted(DATE_FORMATS)}, got {name!r}.")
    template, _, case = DATE_FORMATS[name].partition("|")
    text = template.format(**_parts(date))
    return {"upper": text.upper(), "lower": text.lower(), "": text}[case]


@dataclasses.dataclass(frozen=True)
class DatePairs:
    """Human-written dates and their ISO targets.

    Attributes:
      sources: the written dates, ``[N]`` strings.
      targets: ``YYYY-MM-DD`` strings, ``[N]``.
      formats: the :data:`DATE_FORMATS` name of each source, ``[N]``.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    formats: tuple[str, ...]


def date_pairs(
    num_examples: int, *, seed: int | np.random.Generator, formats=None, exclude=()
) -> DatePairs:
    """Draws ``num_examples`` dates uniformly from 1950-2049 and writes each in a random format.

    Args:
      num_examples: how many pairs.
      seed: an int seed or a ``numpy.random.Generator`` (the same seed gives the same pairs).
      formats: names of :data:`DATE_FORMATS` to draw from (default: all).
      exclude: ISO dates (``YYYY-MM-DD`` strings) never to draw, e.g. the training set's, so
        that a held-out set holds unseen dates only.

    Returns:
      :class:`DatePairs` with ``num_examples`` entries.
    """
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"date_pairs: num_examples must be an int >= 1, got {num_examples!r}.")
    names = tuple(DATE_FORMATS) if formats is None else tuple(formats)
    unknown = [n for n in names if n not in DATE_FORMATS]
    if unknown or not names:
        raise ValueError(
            f"date_pairs: formats must be names of DATE_FORMATS {sorted(DATE_FORMATS)}, "
            f"got {list(formats)!r}."
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    excluded = set(exclude)
    if len(excluded) + num_examples > _LAST - _FIRST + 1 and excluded:
        raise ValueError(
            f"date_pairs: num_examples={num_examples} plus {len(excluded)} excluded dates "
            f"exceed the {_LAST - _FIRST + 1} days of 1950-2049."
        )
    sources, targets, used = [], [], []
    while len(targets) < num_examples:
        date = datetime.date.fromordinal(int(rng.integers(_FIRST, _LAST + 1)))
        iso = date.isoformat()
        if iso in excluded:
            continue
        name = names[int(rng.integers(len(names)))]
        sources.append(format_date(date, name))
        targets.append(iso)
        used.append(name)
    return DatePairs(tuple(sources), tuple(targets), tuple(used))


def _ids(text: str, chars: str, fn: str, arg: str) -> list[int]:
    bad = sorted({c for c in text if c not in chars})
    if bad:
        raise ValueError(f"{fn}: {arg} {text!r} holds characters outside the vocabulary: {bad}.")
    return [NUM_SPECIAL_TOKENS + chars.index(c) for c in text]


def encode_dates(pairs: DatePairs, *, source_length: int = 32):
    """Character ids of a :class:`DatePairs`.

    Args:
      pairs: from :func:`date_pairs`.
      source_length: sources are padded with :data:`PAD` to this length.

    Returns:
      ``(src [N, source_length], src_lengths [N], tgt [N, TARGET_LENGTH + 2])`` int32 arrays;
      ``tgt`` is ``<bos> YYYY-MM-DD <eos>``, so ``tgt[:, :-1]`` is the teacher-forced decoder
      input and ``tgt[:, 1:]`` its target. Ids: 0 pad, 1 bos, 2 eos, then
      :data:`SOURCE_CHARS` / :data:`TARGET_CHARS` in order (vocabulary sizes
      :data:`SOURCE_VOCAB_SIZE` / :data:`TARGET_VOCAB_SIZE`).
    """
    n = len(pairs.sources)
    src = np.full((n, source_length), PAD, np.int32)
    lengths = np.zeros((n,), np.int32)
    tgt = np.zeros((n, TARGET_LENGTH + 2), np.int32)
    for i, (s, t) in enumerate(zip(pairs.sources, pairs.targets, strict=True)):
        if len(s) > source_length:
            raise ValueError(
                f"encode_dates: source_length={source_length} is shorter than {s!r} ({len(s)})."
            )
        src[i, : len(s)] = _ids(s, SOURCE_CHARS, "encode_dates", "source")
        lengths[i] = len(s)
        tgt[i] = [BOS, *_ids(t, TARGET_CHARS, "encode_dates", "target"), EOS]
    return src, lengths, tgt


def decode_target(ids) -> str:
    """Target ids (without or with ``<bos>``) back to text, stopping at ``<eos>``."""
    out = []
    for i in np.asarray(ids).tolist():
        if i == EOS:
            break
        if i >= NUM_SPECIAL_TOKENS:
            out.append(TARGET_CHARS[i - NUM_SPECIAL_TOKENS])
    return "".join(out)
