"""Rendering report pieces as Markdown and as one self-contained HTML page.

Both renderers walk the same list of pieces, so report.md and report.html never disagree. They
dispatch on the piece's type; any other object raises TypeError rather than being skipped.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from compactcnn.report.formatting import MISSING
from compactcnn.report.pieces import Callout, Figure, Heading, Paragraph, Piece, Table

HTML_STYLE = """body{font-family:system-ui,sans-serif;line-height:1.45;color:#222;max-width:1300px;
margin:2em auto;padding:0 1em}h2{border-bottom:1px solid #ddd;padding-bottom:0.2em;margin-top:1.8em}
.scroll{overflow-x:auto;margin:0.5em 0 1.5em}table{border-collapse:collapse;font-size:0.85em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:left;vertical-align:top}
th{background:#f0f0f0;vertical-align:bottom}tbody tr:nth-child(even){background:#fafafa}
td:first-child{white-space:nowrap}.num{text-align:right;white-space:nowrap;
font-variant-numeric:tabular-nums}summary{cursor:pointer;color:#245;margin:0.3em 0}
code{background:#f3f3f3;padding:0 0.2em}img{max-width:100%;display:block;margin:0.5em 0 1.5em}
.best{font-size:1.1em;background:#eef6ee;border-left:4px solid #3a3;padding:0.6em 0.9em}"""

# A cell that reads as a number (with its unit) is right-aligned and never wrapped.
NUMBER_CELL = re.compile(r"^(—|[+-]?[\d,]*\.?\d+(e[+-]?\d+)?\s?(%|×|KiB|ms|s|pp)?)$")
# Tables longer than this start folded in the HTML page, behind a one-line summary.
FOLD_ROWS = 24


def _unknown(piece: object) -> TypeError:
    return TypeError(f"not a report piece: {piece!r} ({type(piece).__name__})")


# --------------------------------------------------------------------------- Markdown


def _markdown_cell(text: object) -> str:
    # A pipe would end the cell and a newline the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown_table(table: Table) -> list[str]:
    if not table.rows:
        return [MISSING, ""]
    lines = ["| " + " | ".join(_markdown_cell(h) for h in table.headers) + " |"]
    lines.append("|" + "---|" * len(table.headers))
    lines += ["| " + " | ".join(_markdown_cell(c) for c in row) + " |" for row in table.rows]
    lines.append("")
    return lines


def render_markdown(pieces: Sequence[Piece]) -> str:
    """Renders pieces as Markdown, each followed by a blank line.

    Raises:
        TypeError: For an object that is not a report piece.
    """
    lines: list[str] = []
    for piece in pieces:
        match piece:
            case Heading(text=text, level=level):
                lines += ["#" * level + " " + text, ""]
            case Paragraph(text=text) | Callout(text=text):
                lines += [text, ""]
            case Figure(path=path, alt=alt):
                lines += [f"![{alt}]({path})", ""]
            case Table():
                lines += _markdown_table(piece)
            case _:
                raise _unknown(piece)
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML


def _inline(text: str) -> str:
    """Escapes text and turns its two Markdown marks, **bold** and `code`, into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html_table(table: Table) -> str:
    if not table.rows:
        return f"<p>{MISSING}</p>"
    numeric = [
        all(NUMBER_CELL.match(str(row[column])) for row in table.rows)
        for column in range(len(table.headers))
    ]

    def cell(tag: str, text: object, column: int) -> str:
        escaped = html.escape(str(text)).replace("\n", "<br>")
        return (
            f"<{tag} class='num'>{escaped}</{tag}>"
            if numeric[column]
            else f"<{tag}>{escaped}</{tag}>"
        )

    head = "".join(cell("th", header, column) for column, header in enumerate(table.headers))
    body = "".join(
        "<tr>" + "".join(cell("td", text, column) for column, text in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    page = (
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )
    if table.fold and len(table.rows) > FOLD_ROWS:
        return f"<details><summary>Show all {len(table.rows)} rows</summary>{page}</details>"
    return page


def _html_piece(piece: Piece, sweep_dir: Path) -> str:
    match piece:
        case Heading(text=text, level=level):
            return f"<h{level}>{_inline(text)}</h{level}>"
        case Paragraph(text=text):
            return f"<p>{_inline(text)}</p>"
        case Callout(text=text):
            return f"<p class='best'>{_inline(text)}</p>"
        case Figure(path=path, alt=alt):
            # Embedded, so the page can be mailed or archived as one file.
            encoded = base64.b64encode((sweep_dir / path).read_bytes()).decode("ascii")
            return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{encoded}'>"
        case Table():
            return _html_table(piece)
        case _:
            raise _unknown(piece)


def render_html(pieces: Sequence[Piece], sweep_dir: Path) -> str:
    """Renders pieces as one HTML page with the chart images embedded as data URIs.

    Args:
        pieces: The report.
        sweep_dir: The folder `Figure` paths are relative to; its name is the page title.

    Raises:
        TypeError: For an object that is not a report piece.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{HTML_STYLE}</style>"]
    parts.append(f"<title>{html.escape(sweep_dir.name)}</title></head><body>")
    parts += [_html_piece(piece, sweep_dir) for piece in pieces]
    parts.append("</body></html>")
    return "\n".join(parts)
