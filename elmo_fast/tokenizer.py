"""The tokenizer of `lm_corpus` (1B-Word-Benchmark / Penn-Treebank style), so raw text can be fed to
pretraining and to a pretrained model exactly as the corpus was tokenized.

Rules (see `shared/data/lm_corpus/README.md`): Unicode normalisation, then a left-to-right scan in
which the first matching rule wins: acronyms (`U.S.`), abbreviations that keep their period
(`Mr.`, `Inc.`, `Calif.`, `No.` before a number), capital initials (`Arthur C. Clarke`), clitics
(`do n't`, `it 's`, `Warner 's`, plural `'`), numbers (`3,000,000`, `1.13bn`), words with internal
`- ' &` (`well-known`, `O'Brien`, `AT&T`), `...`, `--`, `!?` runs, then any single character.
Tokenizing a tokenized line again gives the same tokens.

    >>> tokenize("Time Warner's profits jumped 76% to $1.13bn (£600m), Mr. Parsons said.")
    ['Time', 'Warner', "'s", 'profits', 'jumped', '76', '%', 'to', '$', '1.13bn', '(', '£', '600m', ')', ',', 'Mr.', 'Parsons', 'said', '.']
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize", "tokenize", "split_sentences"]

_TITLES = "Mr Mrs Ms Messrs Mmes Dr Drs St Mt Jr Sr Gen Sen Sens Rep Reps Gov Lt Col Capt Cmdr Maj Brig Sgt Prof Rev Hon Supt Dept Assn Ave Blvd Rd"
_COMPANY = "Inc Corp Co Ltd Bros"
_MONTHS = "Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec"
_STATES = ("Ala Ariz Ark Calif Colo Conn Del Fla Ga Ill Ind Kan Kans Ky La Md Mass Mich Minn Miss Mo Mont Neb Nev "
           "Okla Ore Pa Tenn Tex Va Vt Wash Wis Wyo")
_OTHER = "vs etc al ca cf vol pp viz"
ABBREVIATIONS = frozenset(f"{w}." for w in f"{_TITLES} {_COMPANY} {_MONTHS} {_STATES} {_OTHER}".split())

_L = r"[^\W_]"  # a Unicode letter or digit
_CLITIC = r"(?:'[sS]|'[rR][eE]|'[vV][eE]|'[lL][lL]|'[dD]|'[mM]|[nN]'[tT])"
_TOKEN = re.compile(
    "|".join(
        [
            r"(?<![^\W_])(?:[A-Za-z]\.){2,}",  # 1. acronyms: U.S., e.g., a.m.
            r"(?<![^\W_])(?:" + "|".join(re.escape(a) for a in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?![^\W_])",
            r"(?<![^\W_])No\.(?=\s*\d)",  # 2. No. before a number
            r"(?<![^\W_])[A-HJ-Z]\.(?= )",  # 3. capital initials (not the pronoun I.)
            _CLITIC + r"(?![^\W_])",  # 4. clitics as tokens of their own
            r"\d+(?:[.,:]\d+)*[A-Za-z]*(?![-'&]?[^\W_])",  # 5. numbers (not the start of a word like 8-year-old)
            _L + r"+(?:[-'&]" + _L + r"+)*",  # 6. words with internal - ' &
            r"\.{2,}|-{2,}|[!?]+",  # 7.
            r"\S",  # 8. any other single character
        ]
    )
)
# Clitics are split off before words are matched: "don't" -> "do n't", "it's" -> "it 's".
_SPLIT_NT = re.compile(r"(" + _L + r")([nN]'[tT])(?![^\W_])")
_SPLIT_CLITIC = re.compile(r"(" + _L + r")('(?:[sS]|[rR][eE]|[vV][eE]|[lL][lL]|[dD]|[mM]))(?![^\W_])")
_SPLIT_PLURAL = re.compile(r"([sS])'(?![^\W_])")

_TRANSLATE = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2014": " -- ", "\u2015": " -- ", "\u2212": "-", "\u2010": "-", "\u2011": "-", "\u2043": "-",
    "\u2026": "...",
    "\u00ad": None, "\u200b": None, "\u200c": None, "\u200d": None, "\u2060": None, "\ufeff": None,
})
_SPACES = re.compile(r"[^\S\n]+")
_SPACED_EN_DASH = re.compile(r"\s\u2013\s")


def normalize(text: str) -> str:
    """NFC, ASCII quotes/dashes/ellipsis, spaces unified, invisible characters removed (line breaks kept)."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("``", '"').replace("''", '"')
    text = _SPACED_EN_DASH.sub(" -- ", text).replace("\u2013", "-").translate(_TRANSLATE)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"))
    return _SPACES.sub(" ", text)


def _tokens(text: str) -> list[str]:
    text = _SPLIT_NT.sub(r"\1 \2", text)
    text = _SPLIT_CLITIC.sub(r"\1 \2", text)
    text = _SPLIT_PLURAL.sub(r"\1 '", text)
    return _TOKEN.findall(text)


def tokenize(text: str) -> list[str]:
    """One piece of raw text -> its tokens (line breaks are ordinary spaces here).

    Example:
        >>> tokenize("I don't know, Dr. Smith.")
        ['I', 'do', "n't", 'know', ',', 'Dr.', 'Smith', '.']
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    return _tokens(normalize(text))


_ENDERS = frozenset([".", "!", "?"])
_CLOSERS = frozenset(['"', "'", ")", "]", "}"])
_OPENERS = frozenset(['"', "'", "(", "[", "{", "`"])


def _is_end(tok: str) -> bool:
    return tok in _ENDERS or (len(tok) >= 2 and set(tok) <= {"!", "?"}) or (len(tok) >= 2 and set(tok) == {"."})


def _starts_sentence(tok: str) -> bool:
    c = tok[0]
    return c.isupper() or c.isdigit() or tok in _OPENERS or c in _OPENERS


def split_sentences(text: str) -> list[list[str]]:
    """Raw text -> tokenized sentences.

    Paragraphs end at line breaks; inside one, a sentence ends after `.`, `!`, `?` or `...` (plus a
    closing quote/bracket right after it, or an Austen-style `--`) when the next token starts with
    an uppercase letter, a digit or an opening quote/bracket. Abbreviations never end a sentence.

    Example:
        >>> split_sentences("It rained. We stayed in!\\nNew paragraph")
        [['It', 'rained', '.'], ['We', 'stayed', 'in', '!'], ['New', 'paragraph']]
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences expects a str, got {type(text).__name__}")
    sentences: list[list[str]] = []
    for paragraph in normalize(text).split("\n"):
        toks = _tokens(paragraph)
        start, i, n = 0, 0, len(toks)
        while i < n:
            if _is_end(toks[i]):
                j = i + 1
                # `"` closes only when one is open in this paragraph; otherwise it opens the next sentence.
                open_quote = toks[:i].count('"') % 2 == 1
                while j < n and (toks[j] == "--" or (toks[j] in _CLOSERS and (toks[j] != '"' or open_quote))):
                    open_quote = open_quote and toks[j] != '"'
                    j += 1
                if j >= n or _starts_sentence(toks[j]):
                    sentences.append(toks[start:j])
                    start = i = j
                    continue
            i += 1
        if start < n:
            sentences.append(toks[start:])
    return sentences
