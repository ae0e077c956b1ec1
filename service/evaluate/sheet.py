"""`selfinstruct eval-sheet`: a static, blind A-D rating page and its mapping.

The page is one HTML file with its data and script inline: no server, no network. Every
(task, model) response becomes an item with an opaque id (``r00001``...), shuffled with a
seeded generator so models are interleaved and unnamed; which model wrote an item is
written only to the mapping file beside the page (``PAGE.mapping.json``), which raters never need.
Progress lives in the browser's localStorage under the sheet's id, so a reload (or a
closed tab) keeps it; the ratings download as JSON, one rating a line, carrying the sheet
id so ``eval-summary`` can refuse ratings made on another sheet.

All texts reach the page as JSON inside a ``<script type="application/json">`` with
``<``, ``>`` and ``&`` escaped, and are shown with ``textContent``: a model's output can
never become markup or script.
"""

from __future__ import annotations

import hashlib
import html
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service import __version__
from service.errors import InputError
from service.evaluate.predictions import ModelResponses

MAX_ITEMS = 100_000
DEFAULT_SHEET_SEED = 0
KEY_SUFFIX = ".mapping.json"

# The paper's four levels (Wang et al. 2022, section 5.4), in our words.
SCALE: tuple[tuple[str, str], ...] = (
    ("A", "Correct and satisfying: the response does what was asked, well."),
    ("B", "Acceptable: it does the task, with minor errors or imperfections."),
    ("C", "Relevant but flawed: it responds to the instruction with significant errors."),
    ("D", "Invalid: irrelevant, or it fails the task entirely."),
)


@dataclass(frozen=True)
class Sheet:
    page: Path
    key: Path
    sheet_id: str
    items: int
    models: list[str]


def key_path(page: Path) -> Path:
    return page.with_name(page.name.removesuffix(".html") + KEY_SUFFIX)


def _json_for_html(data: Any) -> str:
    text = orjson.dumps(data).decode("utf-8")
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_items(models: Sequence[ModelResponses], *, seed: int, limit: int | None
                ) -> tuple[list[dict[str, str]], dict[str, dict[str, Any]]]:
    """Shuffled page items and the key (item id -> model, task, instance)."""
    keys: list[tuple[str, int]] = []
    seen: set[tuple[str, int]] = set()
    for m in models:
        for key in m.responses:
            if key not in seen:
                seen.add(key)
                keys.append(key)
    if limit is not None:
        keys = keys[:limit]
    pairs = [(m, key) for key in keys for m in models if key in m.responses]
    if len(pairs) > MAX_ITEMS:
        raise InputError(models[0].source, None, None,
                         f"{len(pairs)} responses: more than {MAX_ITEMS} on one sheet; use --limit")
    random.Random(seed).shuffle(pairs)
    items: list[dict[str, str]] = []
    key_map: dict[str, dict[str, Any]] = {}
    for n, (m, key) in enumerate(pairs, start=1):
        r = m.responses[key]
        rid = f"r{n:05d}"
        items.append({"rid": rid, "instruction": r.instruction, "input": r.input,
                      "response": r.response})
        key_map[rid] = {"model": m.model, "task_id": key[0], "instance": key[1]}
    return items, key_map


def write_sheet(models: Sequence[ModelResponses], page: Path, *, seed: int = DEFAULT_SHEET_SEED,
                limit: int | None = None, title: str = "Rate the responses") -> Sheet:
    if not models:
        raise InputError("eval-sheet", None, None, "no predictions given")
    items, key_map = build_items(models, seed=seed, limit=limit)
    digest = hashlib.sha256(orjson.dumps([items, key_map, seed], option=orjson.OPT_SORT_KEYS))
    sheet_id = digest.hexdigest()[:16]
    data = {"sheet_id": sheet_id, "page": page.name, "items": items,
            "scale": [{"level": level, "meaning": meaning} for level, meaning in SCALE]}
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(_render(data, title), encoding="utf-8")
    key = key_path(page)
    key.write_bytes(orjson.dumps({
        "sheet_id": sheet_id, "page": page.name, "version": __version__, "seed": seed,
        "models": [m.model for m in models], "sources": [m.source for m in models],
        "items": key_map,
    }, option=orjson.OPT_INDENT_2) + b"\n")
    return Sheet(page, key, sheet_id, len(items), [m.model for m in models])


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}main{max-width:900px;margin:1.5rem auto;padding:0 1rem}
header{display:flex;justify-content:space-between;align-items:center;gap:1rem;flex-wrap:wrap}
.box{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8rem 1rem;margin:.7rem 0;
white-space:pre-wrap;overflow-wrap:anywhere}.label{font-size:.8rem;color:#666;
text-transform:uppercase;letter-spacing:.04em}#response{border-color:#4c72b0}
.scale{display:grid;grid-template-columns:repeat(4,1fr);gap:.5rem}
.scale button{padding:.6rem;border:1px solid #bbb;border-radius:6px;background:#fff;
cursor:pointer;text-align:left;font-size:.85rem;display:flex;flex-direction:column;
justify-content:flex-start;align-items:flex-start}.scale button b{font-size:1.2rem;display:block}
.scale button.chosen{background:#4c72b0;color:#fff;border-color:#4c72b0}
nav{display:flex;gap:.5rem;align-items:center;margin:.8rem 0}.keys{color:#555;font-size:.85rem}
progress{width:14rem}kbd{border:1px solid #bbb;border-radius:3px;padding:0 .3rem;background:#fff}
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("sheet-data").textContent);
  var storeKey = "selfinstruct-ratings:" + data.sheet_id;
  var levels = data.scale.map(function (s) { return s.level; });
  var state = { ratings: {}, pos: 0, rater: "" };
  try {
    var saved = JSON.parse(localStorage.getItem(storeKey) || "null");
    if (saved && typeof saved === "object" && saved.ratings) { state = saved; }
  } catch (e) { /* a broken entry: start afresh */ }
  if (!(state.pos >= 0 && state.pos < data.items.length)) { state.pos = 0; }
  function $(id) { return document.getElementById(id); }
  function save() { localStorage.setItem(storeKey, JSON.stringify(state)); }
  function rated() { return Object.keys(state.ratings).length; }
  function show() {
    var item = data.items[state.pos];
    $("item-id").textContent = item.rid;
    $("position").textContent = (state.pos + 1) + " / " + data.items.length;
    $("instruction").textContent = item.instruction;
    $("input").textContent = item.input.trim();
    $("input-box").style.display = item.input ? "" : "none";
    $("response").textContent = item.response.trim() || "(empty response)";
    var current = state.ratings[item.rid] || "";
    document.querySelectorAll(".scale button").forEach(function (b) {
      b.classList.toggle("chosen", b.dataset.level === current);
    });
    $("progress").value = rated();
    $("progress").max = data.items.length;
    $("rated").textContent = rated() + " of " + data.items.length + " rated";
    $("rater").value = state.rater || "";
  }
  function go(delta) {
    state.pos = Math.min(data.items.length - 1, Math.max(0, state.pos + delta));
    save(); show();
  }
  function nextUnrated() {
    for (var i = 1; i <= data.items.length; i++) {
      var p = (state.pos + i) % data.items.length;
      if (!state.ratings[data.items[p].rid]) { state.pos = p; save(); show(); return; }
    }
  }
  function rate(level) {
    state.ratings[data.items[state.pos].rid] = level;
    save();
    if (state.pos < data.items.length - 1) { state.pos += 1; save(); }
    show();
  }
  function download() {
    var lines = [];
    data.items.forEach(function (item) {
      var r = state.ratings[item.rid];
      if (r) { lines.push(JSON.stringify({ item: item.rid, rating: r })); }
    });
    var text = "{\"sheet_id\": " + JSON.stringify(data.sheet_id) + ",\n" +
      "\"page\": " + JSON.stringify(data.page) + ",\n" +
      "\"rater\": " + JSON.stringify(state.rater || "") + ",\n" +
      "\"scale\": " + JSON.stringify(levels) + ",\n" +
      "\"items\": " + data.items.length + ",\n" +
      "\"ratings\": [\n" + lines.join(",\n") + "\n]}\n";
    var blob = new Blob([text], { type: "application/json" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "ratings-" + data.sheet_id + ".json";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }
  document.querySelectorAll(".scale button").forEach(function (b) {
    b.addEventListener("click", function () { rate(b.dataset.level); });
  });
  $("prev").addEventListener("click", function () { go(-1); });
  $("next").addEventListener("click", function () { go(1); });
  $("next-unrated").addEventListener("click", nextUnrated);
  $("download").addEventListener("click", download);
  $("rater").addEventListener("change", function () { state.rater = $("rater").value; save(); });
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "INPUT") { return; }
    var k = e.key.toLowerCase();
    var byDigit = { "1": "A", "2": "B", "3": "C", "4": "D" };
    if (levels.indexOf(k.toUpperCase()) >= 0) { rate(k.toUpperCase()); }
    else if (byDigit[k]) { rate(byDigit[k]); }
    else if (k === "arrowright" || k === "j") { go(1); }
    else if (k === "arrowleft" || k === "k") { go(-1); }
    else if (k === "n") { nextUnrated(); }
    else if (k === "s") { download(); }
    else { return; }
    e.preventDefault();
  });
  show();
})();
"""


def _render(data: dict[str, Any], title: str) -> str:
    buttons = "".join(
        f'<button type="button" data-level="{html.escape(level)}"><b>{html.escape(level)}</b>'
        f"{html.escape(meaning)}</button>" for level, meaning in SCALE
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><main>
<header><h1>{html.escape(title)}</h1>
<div><progress id="progress" value="0" max="1"></progress> <span id="rated"></span></div></header>
<p class="keys">Rate how well the response does the task. Keys: <kbd>A</kbd>-<kbd>D</kbd> or
<kbd>1</kbd>-<kbd>4</kbd> rate and move on, <kbd>&larr;</kbd>/<kbd>&rarr;</kbd> (or
<kbd>k</kbd>/<kbd>j</kbd>) move, <kbd>n</kbd> next unrated, <kbd>s</kbd> download. Progress is
kept in this browser. The models are hidden and shuffled.</p>
<nav><button id="prev" type="button">&larr; previous</button>
<span>item <b id="item-id"></b> (<span id="position"></span>)</span>
<button id="next" type="button">next &rarr;</button>
<button id="next-unrated" type="button">next unrated</button>
<label>rater <input id="rater" size="12"></label>
<button id="download" type="button">download ratings (JSON)</button></nav>
<div class="label">instruction</div><div class="box" id="instruction"></div>
<div id="input-box"><div class="label">input</div><div class="box" id="input"></div></div>
<div class="label">response</div><div class="box" id="response"></div>
<div class="scale">{buttons}</div>
</main>
<script type="application/json" id="sheet-data">{_json_for_html(data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
