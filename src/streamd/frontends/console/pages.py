"""The console's pages and the fragments that live updates replace (pure rendering).

Each page is made of fragments with stable ids; a page's event stream (app.py) sends the same
fragments again, rendered by the same functions, when they change, and console.js swaps them
in. So the first render and every update are one code path. Inputs are plain dicts and lists
(gathered in app.py from the engine, the group service and the sampler); output is HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import records as rec
from .html import (
    DASH,
    chart,
    esc,
    hidden,
    notice,
    pager,
    rate,
    section,
    size,
    status_badge,
    stream_url,
    table,
    url,
    when,
)
from .shapes import BarCell, LineageNode, bar_rows, lineage, range_percent

# -- overview ------------------------------------------------------------------------------------


def nodes_fragment(nodes: list[dict[str, Any]] | None) -> str:
    if nodes is None:
        return '<div id="nodes"></div>'
    rows = [
        (
            esc(n["node_id"]) + (" (this node)" if n.get("self") else ""),
            '<span class="status status-active">live</span>',
            esc(n["native"]),
            esc(n["kinesis"] or DASH),
            esc(n.get("shards_led", 0)),
        )
        for n in nodes
    ]
    body = table(
        "Nodes of the cluster (the live ones: a node whose lease lapsed leaves the list)",
        ["node", "liveness", "native address", "Kinesis address", "shards led"],
        rows,
        numeric=frozenset({4}),
    )
    return (
        f'<section id="nodes" aria-labelledby="nodes-h"><h2 id="nodes-h">Nodes</h2>{body}</section>'
    )


def streams_fragment(rows: list[dict[str, Any]], q: str, page: int, pages: int, total: int) -> str:
    cells = [
        (
            f'<a href="{esc(stream_url(r["name"]))}">{esc(r["name"])}</a>',
            status_badge(r["status"]),
            f"{r['shards_open']} open / {r['shards_total']}",
            f"{r['retention_hours']} h",
            rate(r["write_rate"]),
            rate(r["read_rate"]),
            size(r["bytes"]),
        )
        for r in rows
    ]
    found = f"{total} stream{'s' if total != 1 else ''}" + (f" matching {q!r}" if q else "")
    return (
        '<div id="streams">'
        + table(
            f"Streams ({found})",
            ["stream", "status", "shards", "retention", "writes", "reads", "stored"],
            cells,
            table_id="streams-table",
            empty="no stream" + (" matches" if q else " yet"),
            numeric=frozenset({4, 5, 6}),
        )
        + pager("/", page, pages, q=q)
        + "</div>"
    )


def search_form(q: str) -> str:
    return (
        '<form class="search" role="search" action="/" method="get">'
        '<label for="q">Find streams by name</label> '
        f'<input id="q" name="q" type="search" value="{esc(q)}" autocomplete="off"> '
        '<button type="submit">Search</button></form>'
    )


def create_form(csrf: str) -> str:
    return (
        '<section aria-labelledby="create-h"><h2 id="create-h">Create a stream</h2>'
        '<form class="admin" action="/streams" method="post" hx-post="/streams" '
        'hx-target="#action-result">'
        + hidden("csrf", csrf)
        + '<label for="create-name">Name</label> '
        '<input id="create-name" name="name" required pattern="[a-zA-Z0-9_.\\-]{1,128}"> '
        '<label for="create-shards">Shards</label> '
        '<input id="create-shards" name="shards" type="number" min="1" value="1" required> '
        '<label for="create-retention">Retention (hours)</label> '
        '<input id="create-retention" name="retention_hours" type="number" min="1" value="24"> '
        '<button type="submit">Create…</button></form></section>'
    )


def overview_body(
    nodes: str, streams: str, q: str, csrf: str, read_only: bool, actions: str
) -> str:
    admin = "" if read_only else create_form(csrf)
    return (
        nodes
        + '<section aria-labelledby="streams-h"><h2 id="streams-h">Streams</h2>'
        + search_form(q)
        + streams
        + "</section>"
        + admin
        + '<div id="action-result" aria-live="polite"></div>'
        + actions
    )


# -- a stream -------------------------------------------------------------------------------------


def stream_summary(described: dict[str, Any], write: float, read: float, stored: int) -> str:
    shards = described["shards"]
    open_count = sum(1 for s in shards if s["ending_sequence"] is None)
    reshard = described.get("reshard")
    progress = ""
    if reshard:
        done, total = reshard.get("done", 0), reshard.get("total") or 1
        progress = (
            f"<dt>reshard</dt><dd>{esc(reshard.get('kind'))} "
            f'<progress max="{esc(total)}" value="{esc(done)}">{esc(done)}/{esc(total)}</progress>'
            f" {esc(done)} of {esc(total)} steps</dd>"
        )
    return (
        '<dl id="stream-summary" class="summary">'
        f"<dt>status</dt><dd>{status_badge(described['status'])}</dd>"
        f"<dt>shards</dt><dd>{open_count} open, {len(shards) - open_count} closed</dd>"
        f"<dt>retention</dt><dd>{esc(described['retention_hours'])} h</dd>"
        f"<dt>mode</dt><dd>{esc(described.get('mode', 'PROVISIONED'))}</dd>"
        f"<dt>writes</dt><dd>{rate(write)}</dd><dt>reads</dt><dd>{rate(read)}</dd>"
        f"<dt>stored</dt><dd>{size(stored)}</dd>"
        f"<dt>created</dt><dd>{when(described['created_ms'])}</dd>{progress}</dl>"
    )


def hash_bar(shards: list[dict[str, Any]]) -> str:
    cells, left_out = bar_rows(shards)
    rows = 1 + max((c.row for c in cells), default=0)
    row_h, width = 28, 1000
    rects = "".join(_bar_cell(c, row_h, width) for c in cells)
    note = f"<p>{left_out} more closed shards not drawn.</p>" if left_out else ""
    return (
        '<figure id="hashbar" class="hashbar">'
        f'<svg viewBox="0 0 {width} {rows * row_h}" preserveAspectRatio="none" role="img" '
        f'aria-label="Hash-key space 0 to 2^128, one row per generation of shards">'
        f"{rects}</svg>"
        "<figcaption>Hash-key space from 0 (left) to 2<sup>128</sup> (right), one row per "
        'generation: <span class="key open">open</span> <span class="key closed">closed</span>'
        f"</figcaption>{note}</figure>"
    )


def _bar_cell(cell: BarCell, row_h: int, width: int) -> str:
    state = "open" if cell.is_open else "closed"
    x, w = cell.left * width, max(cell.width * width, 0.5)
    title = f"{cell.shard_id} ({state}): {range_percent(cell.start, cell.end)}"
    label = ""
    if w > 60:
        label = (
            f'<text x="{x + w / 2:.2f}" y="{cell.row * row_h + 18}" text-anchor="middle">'
            f"{esc(cell.shard_id.removeprefix('shardId-'))}</text>"
        )
    return (
        f'<g class="cell {state}" data-shard="{esc(cell.shard_id)}"><title>{esc(title)}</title>'
        f'<rect x="{x:.3f}" y="{cell.row * row_h + 2}" width="{w:.3f}" height="{row_h - 4}">'
        f"</rect>{label}</g>"
    )


def lineage_fragment(shards: list[dict[str, Any]], nodes_max: int = 2000) -> str:
    if len(shards) > nodes_max:
        body = f"<p>{len(shards)} shards: too many to draw here; the table lists them.</p>"
    else:
        body = "<ul class='tree'>" + "".join(_tree(n) for n in lineage(shards)) + "</ul>"
    return section("lineage", "Lineage", body)


def _tree(node: LineageNode) -> str:
    state = "open" if node.is_open else "closed"
    merged = f" (merge with {esc(node.merged_with)})" if node.merged_with else ""
    kids = "".join(_tree(c) for c in node.children)
    inner = f"<ul>{kids}</ul>" if kids else ""
    return (
        f'<li class="{state}" data-shard="{esc(node.shard_id)}">{esc(node.shard_id)} '
        f'<span class="state">{state}</span>{merged}{inner}</li>'
    )


def shards_fragment(
    name: str,
    shards: list[dict[str, Any]],
    rates: dict[str, float],
    page: int,
    pages: int,
    clustered: bool,
) -> str:
    headers = ["shard", "state", "hash range", "created", "closed", "writes"]
    if clustered:
        headers.append("leader")
    headers.append("records")
    rows = []
    for s in shards:
        row = [
            esc(s["shard_id"]),
            "open" if s["ending_sequence"] is None else "closed",
            f'<span title="{esc(s["hash_key_start"])} to {esc(s["hash_key_end"])}">'
            f"{esc(range_percent(s['hash_key_start'], s['hash_key_end']))}</span>",
            when(s["created_ms"]),
            when(s["closed_ms"]),
            rate(rates.get(s["shard_id"])),
        ]
        if clustered:
            row.append(esc(s.get("leader") or "unavailable"))
        row.append(
            f'<a href="{esc(stream_url(name, "shards", s["shard_id"], "records"))}">browse</a>'
        )
        rows.append(row)
    return (
        '<div id="shards">'
        + table(f"Shards of {name}", headers, rows, table_id="shards-table", numeric=frozenset({5}))
        + pager(stream_url(name), page, pages)
        + "</div>"
    )


def groups_fragment(name: str, groups: list[dict[str, Any]] | None, error: str | None) -> str:
    if error is not None:
        body = notice(f"groups unavailable: {error}", "error")
    else:
        rows = [
            (
                f'<a href="{esc(stream_url(name, "groups", g["group"]))}">{esc(g["group"])}</a>',
                status_badge(g["state"]),
                esc(DASH if g["members"] is None else g["members"]),
                esc(DASH if g["shards"] is None else g["shards"]),
                esc(DASH if g["finished_shards"] is None else g["finished_shards"]),
            )
            for g in groups or []
        ]
        body = table(
            "Consumer groups", ["group", "state", "members", "shards", "finished"], rows,
            empty="no consumer group",
        )  # fmt: skip
    return section("groups", "Consumer groups", body)


def stream_admin(name: str, open_ids: Sequence[str], csrf: str) -> str:
    """The admin forms of a stream page; each asks for confirmation first (app.py)."""
    options = "".join(f'<option value="{esc(i)}"></option>' for i in open_ids[:500])
    base = stream_url(name)

    def form(action: str, title: str, fields: str, button: str) -> str:
        target = f"{base}/{action}"
        return (
            f'<form class="admin" action="{esc(target)}" method="post" hx-post="{esc(target)}" '
            f'hx-target="#action-result" aria-label="{esc(title)}"><fieldset>'
            f"<legend>{esc(title)}</legend>{hidden('csrf', csrf)}{fields}"
            f'<button type="submit">{esc(button)}</button></fieldset></form>'
        )

    return (
        '<section aria-labelledby="admin-h"><h2 id="admin-h">Change the stream</h2>'
        f'<datalist id="open-shards">{options}</datalist><div class="admin-forms">'
        + form(
            "split",
            "Split a shard",
            '<label for="split-shard">Shard</label> '
            '<input id="split-shard" name="shard_id" list="open-shards" required> '
            '<label for="split-at">At hash key (empty: the middle)</label> '
            '<input id="split-at" name="at" inputmode="numeric"> ',
            "Split…",
        )
        + form(
            "merge",
            "Merge two adjacent shards",
            '<label for="merge-shard">Shard</label> '
            '<input id="merge-shard" name="shard_id" list="open-shards" required> '
            '<label for="merge-adjacent">Adjacent shard</label> '
            '<input id="merge-adjacent" name="adjacent_shard_id" list="open-shards" required> ',
            "Merge…",
        )
        + form(
            "resize",
            "Resize to even ranges",
            '<label for="resize-count">Open shards</label> '
            '<input id="resize-count" name="shard_count" type="number" min="1" required> ',
            "Resize…",
        )
        + form(
            "retention",
            "Change retention",
            '<label for="retention-hours">Retention (hours)</label> '
            '<input id="retention-hours" name="retention_hours" type="number" min="1" required> ',
            "Change…",
        )
        + form(
            "delete",
            "Delete the stream",
            '<label for="delete-name">Type the stream name to delete it</label> '
            '<input id="delete-name" name="confirm_name" required autocomplete="off"> ',
            "Delete…",
        )
        + "</div></section>"
    )


def stream_body(
    name: str,
    summary: str,
    bar: str,
    tree: str,
    shards: str,
    groups: str,
    write_chart: dict[str, Any],
    admin: str,
    actions: str,
) -> str:
    return (
        summary
        + '<section aria-labelledby="bar-h"><h2 id="bar-h">Hash-key space</h2>'
        + bar
        + "</section>"
        + '<section aria-labelledby="rates-h"><h2 id="rates-h">Write rate per shard</h2>'
        + chart(
            "write-chart",
            f"Records written per second, busiest open shards of {name}",
            write_chart,
            "records/s",
        )
        + "</section>"
        + tree
        + '<section aria-labelledby="shards-h"><h2 id="shards-h">Shards</h2>'
        + shards
        + "</section>"
        + groups
        + admin
        + '<div id="action-result" aria-live="polite"></div>'
        + actions
    )


# -- actions ---------------------------------------------------------------------------------------


def confirm_fragment(title: str, action: str, fields: dict[str, str], csrf: str) -> str:
    inputs = "".join(hidden(k, v) for k, v in fields.items())
    return (
        '<div class="confirm" role="alertdialog" aria-labelledby="confirm-h">'
        f'<p id="confirm-h"><strong>{esc(title)}</strong></p>'
        f'<form action="{esc(action)}" method="post" hx-post="{esc(action)}" '
        f'hx-target="#action-result">{hidden("csrf", csrf)}{inputs}{hidden("confirm", "yes")}'
        '<button type="submit" class="danger" autofocus>Confirm</button> '
        '<a href="" class="cancel">Cancel</a></form></div>'
    )


def actions_fragment(actions: list[dict[str, Any]]) -> str:
    rows = [
        (
            esc(a["id"]),
            esc(a["title"]),
            f'<span class="status status-{esc(a["state"])}">{esc(a["state"])}</span>',
            _progress(a),
            esc(a["message"] or ""),
            when(a["started_ms"]),
        )
        for a in actions
    ]
    body = table(
        "Operations started from this console (newest first)",
        ["#", "operation", "state", "progress", "result", "started"],
        rows,
        table_id="actions-table",
        empty="none yet",
    )
    return section("actions", "Operations", body)


def _progress(action: dict[str, Any]) -> str:
    done, total = action["done"], action["total"]
    return (
        f'<progress max="{esc(total)}" value="{esc(done)}" aria-label="progress">'
        f"{esc(done)}/{esc(total)}</progress> {esc(done)}/{esc(total)}"
    )


def started_fragment(action: dict[str, Any]) -> str:
    return notice(f"Started #{action['id']}: {action['title']} (progress below)", "info")


# -- records ---------------------------------------------------------------------------------------


def records_form(name: str, shard_id: str, query: dict[str, str]) -> str:
    kind = query.get("type") or "TRIM_HORIZON"
    fmt = query.get("format") or "text"
    options = "".join(
        f'<option value="{t}"{" selected" if t == kind else ""}>{t}</option>'
        for t in rec.ITERATOR_TYPES
    )
    formats = "".join(
        f'<label><input type="radio" name="format" value="{f}"{" checked" if f == fmt else ""}>'
        f" {f}</label> "
        for f in rec.FORMATS
    )
    action = stream_url(name, "shards", shard_id, "records")
    return (
        f'<form class="records" action="{esc(action)}" method="get">'
        '<label for="it-type">Start at</label> '
        f'<select id="it-type" name="type">{options}</select> '
        '<label for="it-seq">Sequence number</label> '
        f'<input id="it-seq" name="seq" value="{esc(query.get("seq", ""))}" size="58"> '
        '<label for="it-ts">Time (UTC, ISO 8601, or ms)</label> '
        f'<input id="it-ts" name="ts" value="{esc(query.get("ts", ""))}"> '
        '<label for="it-limit">Records</label> '
        f'<input id="it-limit" name="limit" type="number" min="1" max="{rec.LIMIT_MAX}" '
        f'value="{esc(query.get("limit", rec.LIMIT_DEFAULT))}"> '
        f'<fieldset class="formats"><legend>Show data as</legend>{formats}</fieldset>'
        '<button type="submit">Read</button> '
        f'<a href="{esc(url(action, tail="1", format=fmt))}" role="button">Live tail</a>'
        "</form>"
    )


def record_rows(records: Sequence[Any], fmt: str) -> str:
    out = []
    for r in records:
        parts = rec.sub_records(r.data)
        if parts is None:
            data = _data(r.data, fmt)
        else:
            inner = "".join(
                f"<li><span class='pk'>{esc(p.partition_key)}</span>{_data(p.data, fmt)}</li>"
                for p in parts[:100]
            )
            more = f"<p>… {len(parts) - 100} more</p>" if len(parts) > 100 else ""
            data = (
                f'<details class="kpl"><summary>KPL aggregated: {len(parts)} user records '
                f"</summary><ol>{inner}</ol>{more}</details>"
            )
        out.append(
            f'<tr data-seq="{esc(r.sequence_number)}"><td class="seq">{esc(r.sequence_number)}</td>'
            f'<td class="pk">{esc(r.partition_key)}</td>'
            f"<td>{esc(rec.arrival_text(r.arrival_ms))}</td>"
            f'<td class="num">{len(r.data)}</td><td>{data}</td></tr>'
        )
    return "".join(out)


def _data(data: bytes, fmt: str) -> str:
    return f'<pre class="data" data-format="{esc(fmt)}">{esc(rec.shown(data, fmt))}</pre>'


def records_table(rows: str, caption: str) -> str:
    if not rows:
        rows = '<tr><td colspan="5" class="empty">no records here</td></tr>'
    return (
        f'<table id="records-table"><caption>{esc(caption)}</caption><thead><tr>'
        '<th scope="col">sequence number</th><th scope="col">partition key</th>'
        '<th scope="col">arrival (UTC)</th><th scope="col" class="num">bytes</th>'
        f'<th scope="col">data</th></tr></thead><tbody id="record-rows">{rows}</tbody></table>'
    )


def records_body(form: str, table_html: str, more: str, error: str | None) -> str:
    return form + (notice(error, "error") if error else "") + table_html + more


# -- a group ---------------------------------------------------------------------------------------


def group_members(view: dict[str, Any]) -> str:
    rows = [
        (
            esc(m["member_id"]),
            esc(m.get("client") or ""),
            esc(len(m["leases"])),
            esc(", ".join(m["leases"]) or DASH),
            esc(f"{m['last_heartbeat_ms_ago']} ms ago"),
        )
        for m in view["members"]
    ]
    body = table(
        "Members and their leases",
        ["member", "client", "leases", "shards", "last heartbeat"],
        rows,
        table_id="members-table",
        empty="no member (the group is EMPTY)",
        numeric=frozenset({2}),
    )
    return f'<div id="group-members">{body}</div>'


def group_shards(view: dict[str, Any]) -> str:
    rows = [
        (
            esc(s["shard_id"]),
            esc(s["status"]),
            esc(s["owner"] or DASH),
            esc(s["epoch"]),
            f'<span class="seq">{esc(s["checkpoint"] or DASH)}</span>',
            esc(DASH if s.get("lag_records") is None else s["lag_records"]),
            esc(DASH if s.get("lag_ms") is None else s["lag_ms"]),
        )
        for s in view["shards"]
    ]
    body = table(
        "Checkpoint and lag per shard",
        ["shard", "status", "owner", "epoch", "checkpoint", "lag (records)", "lag (ms)"],
        rows,
        table_id="group-shards-table",
        numeric=frozenset({3, 5, 6}),
    )
    return f'<div id="group-shards">{body}</div>'


def group_events(events: list[dict[str, Any]], error: str | None) -> str:
    items = "".join(
        f"<li>{when(int(e['t'] * 1000))} {esc(e['text'])}</li>" for e in reversed(events)
    )
    warn = notice(error, "error") if error else ""
    return (
        f'<div id="group-events">{warn}<h3>Rebalances</h3>'
        f"<ol class='events'>{items or '<li>none seen since this page was opened</li>'}</ol></div>"
    )


def group_body(members: str, shards: str, events: str, lag_chart: dict[str, Any]) -> str:
    return (
        '<section aria-labelledby="lag-h"><h2 id="lag-h">Lag</h2>'
        + chart(
            "lag-chart",
            "Lag in records over time (total, then per shard); rebalances marked",
            lag_chart,
            "records",
        )
        + "</section>"
        + '<section aria-labelledby="members-h"><h2 id="members-h">Members</h2>'
        + members
        + "</section>"
        + '<section aria-labelledby="gshards-h"><h2 id="gshards-h">Shards</h2>'
        + shards
        + "</section>"
        + events
    )


# -- errors ----------------------------------------------------------------------------------------


def error_body(message: str, hint: str) -> str:
    return f'<p class="notice notice-error" role="alert">{esc(message)}</p><p>{hint}</p>'


# -- sign-in ---------------------------------------------------------------------------------------


def sign_in_form(csrf: str, next_path: str, error: str | None) -> str:
    warn = notice(error, "error") if error else ""
    return (
        f"{warn}<p>This node has credentials: sign in with an access key of a principal "
        "(docs/security.md). What each page shows and allows follows its policy.</p>"
        '<form class="signin" action="/login" method="post">'
        + hidden("csrf", csrf)
        + hidden("next", next_path)
        + '<p><label for="key-id">Access key id</label> '
        '<input id="key-id" name="access_key_id" required autocomplete="username"></p>'
        '<p><label for="key-secret">Secret access key</label> '
        '<input id="key-secret" name="secret" type="password" required '
        'autocomplete="current-password"></p>'
        '<button type="submit">Sign in</button></form>'
    )
