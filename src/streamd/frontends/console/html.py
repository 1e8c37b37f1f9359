"""HTML building blocks of the console: escaping, the page shell, tables, numbers (pure).

Pages are plain strings built here and in pages.py; every value that comes from data (stream
names, partition keys, record bytes, error messages) goes through ``esc`` and nothing else is
ever interpolated unescaped, so no stored value can inject markup. The shell loads only the
console's own files (``/static/...``, package data): htmx for partial updates, uPlot for
charts, console.js for the live updates (Server-Sent Events) and console.css (light and dark).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

HTMX: Final = "/static/vendor/htmx-2.0.11.min.js"
UPLOT_JS: Final = "/static/vendor/uplot-1.6.32.iife.min.js"
UPLOT_CSS: Final = "/static/vendor/uplot-1.6.32.min.css"
PAGE_SIZE: Final = 50
# No inline styles (the CSP forbids them) and no eval or script tags from swapped fragments.
HTMX_CONFIG: Final = html.escape(
    '{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}', quote=True
)
DASH: Final = "\u2013"  # what an unknown value shows


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def seg(value: str) -> str:
    """One URL path segment (a stream name or shard id), percent-encoded."""
    return quote(value, safe="")


def url(path: str, **query: object) -> str:
    kept = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


def stream_url(name: str, *rest: str) -> str:
    return "/streams/" + "/".join(seg(p) for p in (name, *rest))


def data_json(value: Any) -> str:
    """A value for a ``data-*`` attribute (JSON, escaped for the attribute)."""
    return esc(json.dumps(value, separators=(",", ":"), allow_nan=False))


def shell(
    title: str,
    body: str,
    *,
    csrf: str,
    events: str | None = None,
    read_only: bool = False,
    crumbs: Sequence[tuple[str, str]] = (),
    who: str | None = None,
) -> str:
    """A whole page. ``events``: the Server-Sent Events URL that keeps it live."""
    trail = "".join(f'<li><a href="{esc(h)}">{esc(t)}</a></li>' for t, h in crumbs)
    mode = '<span class="badge" title="--console-read-only">read-only</span>' if read_only else ""
    live = f' data-events="{esc(events)}"' if events else ""
    if who is not None:
        mode += (
            f'<form class="signout" action="/logout" method="post">signed in as {esc(who)} '
            f'{hidden("csrf", csrf)}<button type="submit">Sign out</button></form>'
        )
    headers = data_json({"x-csrf-token": csrf})
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="htmx-config" content="{HTMX_CONFIG}">
<title>{esc(title)} · streamd console</title>
<link rel="stylesheet" href="{UPLOT_CSS}">
<link rel="stylesheet" href="/static/console.css">
<script src="{HTMX}" defer></script>
<script src="{UPLOT_JS}" defer></script>
<script src="/static/console.js" defer></script>
</head>
<body hx-headers="{headers}">
<a class="skip" href="#main">Skip to content</a>
<header>
<nav aria-label="Breadcrumb"><ol class="crumbs"><li><a href="/">streamd</a></li>{trail}</ol></nav>
{mode}
<span id="live-status" class="live" role="status" aria-live="polite"></span>
</header>
<main id="main" tabindex="-1"{live}>
<h1>{esc(title)}</h1>
{body}
</main>
<footer><a href="/static/vendor/htmx-LICENSE.txt">htmx licence</a> ·
<a href="/static/vendor/uplot-LICENSE.txt">uPlot licence</a></footer>
</body>
</html>
"""


def table(
    caption: str,
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    table_id: str | None = None,
    empty: str = "none",
    numeric: frozenset[int] = frozenset(),
) -> str:
    """A table whose cells are HTML already (escape values before passing them)."""
    head = "".join(
        f'<th scope="col"{" class=num" if i in numeric else ""}>{esc(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i in numeric else ''}>{cell}</td>" for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{esc(empty)}</td></tr>'
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return (
        f"<table{ident}><caption>{esc(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def pager(path: str, page: int, pages: int, **query: object) -> str:
    if pages <= 1:
        return ""
    links = []
    if page > 1:
        links.append(f'<a href="{esc(url(path, page=page - 1, **query))}" rel="prev">previous</a>')
    links.append(f"<span>page {page} of {pages}</span>")
    if page < pages:
        links.append(f'<a href="{esc(url(path, page=page + 1, **query))}" rel="next">next</a>')
    return f'<nav class="pager" aria-label="Pages">{" ".join(links)}</nav>'


def paginate(items: Sequence[Any], page: int, size: int = PAGE_SIZE) -> tuple[list[Any], int, int]:
    """(the page's items, the page number clamped, the number of pages)."""
    pages = max(1, (len(items) + size - 1) // size)
    page = min(max(1, page), pages)
    return list(items[(page - 1) * size : page * size]), page, pages


def page_number(text: str | None) -> int:
    try:
        return max(1, int(text or "1"))
    except ValueError:
        return 1


def rate(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 1000:
        return f"{value / 1000:.1f} k/s"
    return f"{value:.1f}/s" if value else "0/s"


def size(value: int | None) -> str:
    if value is None:
        return DASH
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{value} B"


def when(ms: int | None) -> str:
    if not ms:
        return DASH
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    text = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return f'<time datetime="{esc(text)}">{esc(text.replace("T", " "))}</time>'


def status_badge(status: str) -> str:
    return f'<span class="status status-{esc(status.lower())}">{esc(status)}</span>'


def notice(text: str, kind: str = "info") -> str:
    role = "alert" if kind == "error" else "status"
    return f'<p class="notice notice-{esc(kind)}" role="{role}">{esc(text)}</p>'


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def chart(chart_id: str, label: str, data: dict[str, Any], unit: str) -> str:
    """A uPlot chart (drawn by console.js from ``data``), with a text alternative."""
    return (
        f'<figure class="chart"><div id="{esc(chart_id)}" class="plot" role="img" '
        f'aria-label="{esc(label)}" data-unit="{esc(unit)}" data-chart="{data_json(data)}"></div>'
        f"<figcaption>{esc(label)}</figcaption></figure>"
    )


def section(ident: str, heading: str, body: str) -> str:
    """A section with id ``ident`` (a live fragment) labelled by its heading."""
    return (
        f'<section id="{esc(ident)}" aria-labelledby="{esc(ident)}-h">'
        f'<h2 id="{esc(ident)}-h">{esc(heading)}</h2>{body}</section>'
    )
