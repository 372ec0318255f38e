"""Project Gutenberg boilerplate: the licence header and footer around every book.

Written here rather than taken from the ``gutenberg`` package: that package drags in a metadata
cache (rdflib, a Berkeley DB binding) for what is a list of markers, and its markers miss variants
in our corpus (the 1990s "Etext"/"Small Print" headers, the ``Gutenburg`` misspelling, a START
marker wrapped over two lines, the World Library notices inside the Shakespeare files).

The header is everything up to the last header-end marker in the first half of the book (the
modern ``*** START OF ...`` line, or the end of the old "Small Print" statement), plus the
production credits ("Produced by ...") that follow it. The footer starts at the first footer
marker after the header (``*** END OF ...``, "End of the Project Gutenberg EBook ...") and runs
to the end, which removes the full licence that modern files carry after the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


class _LineMarker:
    """A pattern that must start a line, searched as a newline + pattern (plus a check at offset 0).

    ``re`` scans for a literal first character quickly, but tries a MULTILINE ``^`` pattern at
    every position; on whole books the newline-prefixed form is about five times faster.
    """

    def __init__(self, pattern: str) -> None:
        self._at_start = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
        self._after_newline = re.compile(rf"\n(?:{pattern})", re.IGNORECASE | re.MULTILINE)

    def spans(self, text: str, pos: int = 0, endpos: int | None = None) -> Iterator[tuple[int, int]]:
        """(start, end) of every match that begins a line at or after ``pos``."""
        endpos = len(text) if endpos is None else endpos
        if pos == 0 and (m := self._at_start.match(text, 0, endpos)):
            yield m.span()
        for m in self._after_newline.finditer(text, max(pos - 1, 0), endpos):
            yield m.start() + 1, m.end()

    def first(self, text: str, pos: int = 0) -> int | None:
        return next((start for start, _ in self.spans(text, pos)), None)


_HEADER_END = _LineMarker(
    r"\*{3} ?START OF[^*]{0,400}\*{3}.*$"  # modern marker; the title may wrap onto a second line
    r"|\*END\*? ?THE SMALL PRINT.*$"  # end of the 1990s "Small Print!" statement
    r"|\[\s*\"Small Print\" V[^\]\n]*\]\s*$"  # end of the World Library (Shakespeare) statement
)
_FOOTER_START = _LineMarker(
    r"\*{3} ?END OF (THE|THIS) PROJECT GUTENB[EU]RG"
    r"|\**\s*End of (the |this )?(Project Gutenb[eu]rg|Etext)"
    r"|End Project Gutenb[eu]rg"
)
# Old files end with their title line repeated ("*Project Gutenberg Etext of ..., by ...*") and no
# "End of" line; this weak marker only counts in the last few KB, where it cannot cut a book.
_TITLE_FOOTER = _LineMarker(r"\**\s*(The )?Project Gutenb[eu]rg'?s? E-?text")
_TITLE_FOOTER_WINDOW = 4000
_CREDIT_OPENING = re.compile(
    r"((this|text|html) )?(e-?text |text |file |e-?book )?((was|has been) )?"
    r"(prepared|produced|created|scanned|transcribed) (by|for|from)\b"
    r"|(note: )?(project gutenberg also has|images of the original pages)|based on scans|an anonymous volunteer",
    re.IGNORECASE,
)
# A short contact paragraph ("Judith Smith / someone@example.net") belongs to the credits too.
_CREDIT_MENTION = re.compile(
    r"gutenb[eu]rg|pgdp\.net|distributed proofread|[\w.+-]+@[\w-]+\.\w", re.IGNORECASE
)
_MAX_CREDIT_PARAGRAPHS = 4
_PARAGRAPH = re.compile(r"\s*(.+?)(?:\r?\n[ \t]*\r?\n|\Z)", re.DOTALL)
# The Shakespeare files repeat this copyright notice between acts, inside the text.
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM.*?>>", re.DOTALL)


@dataclass(frozen=True)
class Boilerplate:
    """Where the book sits inside a Gutenberg file; ``None`` where no marker was found."""

    header_end: int | None
    footer_start: int | None


def _skip_credits(text: str, pos: int) -> int:
    """Advance past the production-credit paragraphs that follow the START marker."""
    for _ in range(_MAX_CREDIT_PARAGRAPHS):
        m = _PARAGRAPH.match(text, pos)
        paragraph = m.group(1) if m else ""
        if not (_CREDIT_OPENING.match(paragraph) or _CREDIT_MENTION.search(paragraph[:300])):
            break
        pos = m.end()
    return pos


def locate_boilerplate(text: str) -> Boilerplate:
    """Find the header end and footer start offsets in ``text`` (LF or CRLF line endings)."""
    ends = [end for _, end in _HEADER_END.spans(text, 0, len(text) // 2)]
    header_end = _skip_credits(text, ends[-1]) if ends else None
    start = header_end or 0
    footer = _FOOTER_START.first(text, start)
    if footer is None and header_end is not None:
        footer = _TITLE_FOOTER.first(text, max(start, len(text) - _TITLE_FOOTER_WINDOW))
    return Boilerplate(header_end, footer)


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Return the book without the Gutenberg header/footer, and whether any boilerplate was found.

    Text without any marker comes back unchanged with ``False``, so this is safe to run on every
    document of a mixed corpus.
    """
    if not any(name in text for name in ("Gutenb", "GUTENB", "gutenb")):
        return text, False  # every marker and notice names Gutenberg: skip the regexes
    found = locate_boilerplate(text)
    body = text[found.header_end or 0 : found.footer_start]
    body, notices = _WORLD_LIBRARY.subn("", body)
    stripped = found.header_end is not None or found.footer_start is not None or notices > 0
    return (body.strip() if stripped else text), stripped
