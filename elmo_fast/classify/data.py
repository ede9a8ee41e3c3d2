"""Labelled text in the AG News CSV layout, and the splits the classifier is trained and measured on.

Layout (AG News, DBpedia, BBC News in ../shared/data/bbc_news): no header; every row is
`class index (1..K), title, description`; fields quoted, `""` inside a field. The AG texts carry
the dataset's own escapes: a backslash stands for a line break (written `\\n` or a bare `\\`) and
HTML entities lost their ampersand (`#39;` = `'`, `#36;` = `$`, `quot;` = `"`). `classes.txt`
next to the CSV (optional) names class i on line i.
"""

from __future__ import annotations

import csv
import html
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """A CSV that is not in the `class, title, description` layout; the message names the row."""


@dataclass
class LabeledTexts:
    """`N` documents: `titles[i]`, `texts[i]` (the description) and `labels[i]` in 0..K-1."""

    titles: list[str]
    texts: list[str]
    labels: np.ndarray  # [N] int64, 0-based
    class_names: list[str]
    source: str = ""
    ids: np.ndarray = field(default=None)  # [N] row numbers in the source file (0-based)
    classes_file: str | None = None  # the classes.txt the names were read from (None: given, or the indices seen)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.ids is None:
            self.ids = np.arange(len(self.labels))
        if not (len(self.titles) == len(self.texts) == len(self.labels) == len(self.ids)):
            raise ValueError("titles, texts, labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index) -> "LabeledTexts":
        index = np.asarray(index, dtype=np.int64)
        return LabeledTexts([self.titles[i] for i in index], [self.texts[i] for i in index], self.labels[index],
                            list(self.class_names), self.source, self.ids[index], self.classes_file)

    def documents(self) -> list[str]:
        """Title and description as one string per document (for bag-of-words baselines)."""
        return [f"{t}. {d}" if t and d else t or d for t, d in zip(self.titles, self.texts)]


# `#39;`-style entity remnants (the `&` was lost), and the named ones the AG texts carry.
_NUMERIC_ENTITY = re.compile(r"&?#(\d{2,5});")
_NAMED_ENTITY = re.compile(r"&?\b(quot|amp|lt|gt|nbsp|apos);")
# A backslash is a line break in AG News: `\n` before a non-lowercase char (so `\newspaper`, a
# bare break before "newspaper", keeps its word), or a lone `\`.
_BACKSLASH_N = re.compile(r"\\n(?![a-z])")
_BACKSLASH = re.compile(r"\\+")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Undo the AG News escapes: line-break backslashes -> space, entity remnants -> characters.

    >>> clean_text('Sales up #36;10 million\\\\ it#39;s quot;big quot;')
    'Sales up $10 million it\\'s "big "'
    """
    text = _BACKSLASH_N.sub(" ", text)
    text = _BACKSLASH.sub(" ", text)
    text = _NUMERIC_ENTITY.sub(lambda m: chr(int(m.group(1))) if int(m.group(1)) < 0x110000 else m.group(0), text)
    text = _NAMED_ENTITY.sub(lambda m: html.unescape(f"&{m.group(1)};"), text)
    text = text.replace("\xa0", " ")
    return _SPACES.sub(" ", text).strip()


def read_classes(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise DataError(f"{path}: expected one class name per line (line i names class index i), with no empty lines")
    return names


_TSV_HINT = " (the line contains tabs: the file looks tab-separated; convert it to comma-separated CSV)"


def _label_hint(value: str, row_no: int) -> str:
    """Why a class index field is not an integer, as far as the field tells: the hint for the fix."""
    if "\t" in value:
        return _TSV_HINT
    try:
        number = float(value)
    except ValueError:
        if row_no == 1:
            return " (the file has a header row; remove it)"
        return " (class indices are whole numbers 1..K; class names go in classes.txt, one per line)"
    if math.isfinite(number) and number == int(number):
        return f" (write class indices as whole numbers: {int(number)}, not {value.strip()})"
    return " (class indices are whole numbers 1..K)"


def load_csv(path: str | os.PathLike, classes: str | os.PathLike | list[str] | None = None, clean: bool = True, *,
             classes_from: str | None = None) -> LabeledTexts:
    """Read a CSV in the AG News layout.

    Args:
        path: the CSV (no header; `class index, title, description`; extra columns are joined to
            the description, as Yahoo Answers-style files have several text fields).
        classes: class names (a list or a classes.txt path); default: `classes.txt` next to the CSV
            if present, else the names "1".."K", and then the class indices in the file must be
            exactly 1..K (a gap is almost always a typo: `10` for `1` would make a 10-class problem).
        clean: undo the AG escapes (`clean_text`).
        classes_from: where a `classes` list came from, for error messages (e.g. "the training data
            train.csv has class indices 1..4").

    Returns: LabeledTexts with 0-based labels.

    Raises DataError naming the 1-based row of the first malformed row (too few fields, a class
    index that is not an integer in 1..K, an empty text).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path!r} does not exist (expected a CSV: class index, title, description)")
    classes_file = None
    if isinstance(classes, (str, os.PathLike)):
        classes_file = os.fspath(classes)
        class_names = read_classes(classes_file)
        classes_note = f"{classes_file} names {len(class_names)} classes"
    elif classes is not None:
        class_names = list(classes)
        classes_note = classes_from or f"{len(class_names)} class names were given"
    else:
        default = os.path.join(os.path.dirname(os.path.abspath(path)), "classes.txt")
        class_names = read_classes(default) if os.path.exists(default) else None
        if class_names is not None:
            classes_file = default
            classes_note = f"classes.txt names {len(class_names)} classes"
    titles, texts, labels = [], [], []
    first_row = {}  # class index -> its first row, to name the row of a gap in the indices
    n_fields = None
    row_no = 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row_no, row in enumerate(csv.reader(f, strict=True), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    raise DataError(f"{path}: row {row_no} is empty; every row needs: class index, title, description")
                if len(row) < 2:
                    hint = _TSV_HINT if "\t" in row[0] else ""
                    raise DataError(f"{path}: row {row_no} has {len(row)} field(s), expected 3 (class index, title, description){hint}")
                if n_fields is None:
                    n_fields = len(row)
                elif len(row) != n_fields:
                    raise DataError(f"{path}: row {row_no} has {len(row)} fields but row 1 has {n_fields}; a quote may be unbalanced")
                try:
                    label = int(row[0].strip())
                except ValueError:
                    raise DataError(f"{path}: row {row_no}: class index {row[0][:30]!r} is not an integer"
                                    f"{_label_hint(row[0], row_no)}") from None
                if label < 1:
                    raise DataError(f"{path}: row {row_no}: class index {label} is outside 1..K (class indices count from 1)")
                if class_names is not None and label > len(class_names):
                    raise DataError(f"{path}: row {row_no}: class index {label} is outside 1..{len(class_names)} ({classes_note})")
                title, desc = row[1], " ".join(row[2:])
                if clean:
                    title, desc = clean_text(title), clean_text(desc)
                if not title and not desc:
                    raise DataError(f"{path}: row {row_no} has an empty title and description")
                titles.append(title)
                texts.append(desc)
                labels.append(label - 1)
                first_row.setdefault(label, row_no)
    except csv.Error as e:
        raise DataError(f"{path}: row {row_no + 1}: not valid CSV ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 at byte {e.start}; re-encode the file as UTF-8") from None
    if not labels:
        raise DataError(f"{path} has no rows")
    if class_names is None:
        seen = sorted(first_row)
        gaps = [(a + 1, b - 1) for a, b in zip([0] + seen, seen) if b > a + 1]
        if gaps:
            # The first index above the first gap: with classes 1..4 and a typo `10`, that is the 10.
            bad = gaps[0][1] + 1
            missing = ", ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in gaps[:3]) + (", ..." if len(gaps) > 3 else "")
            raise DataError(f"{path}: row {first_row[bad]}: class index {bad}, but no row has class index {missing}; "
                            f"without a classes.txt the class indices must be exactly 1..K. Correct the label, or put a "
                            f"classes.txt next to the CSV (or pass --classes) naming every class, one per line")
        class_names = [str(i + 1) for i in range(len(seen))]
    return LabeledTexts(titles, texts, np.array(labels), class_names, source=path, classes_file=classes_file)


def stratified_split(data: LabeledTexts, test_size: float | int, seed: int = 0) -> tuple[LabeledTexts, LabeledTexts]:
    """A fixed (seeded) stratified split into (rest, held-out part of `test_size`)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    counts = np.bincount(data.labels, minlength=data.num_classes)
    stratify = data.labels if counts[counts > 0].min() >= 2 else None
    a, b = train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    return data.subset(np.sort(a)), data.subset(np.sort(b))
