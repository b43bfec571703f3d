// stepline's web page: projects → runs → a run's panels (or several runs compared), over the gateway's read API.
// Plain ES module, no build step. Hash routes: #/ · #/p/PROJECT · #/p/PROJECT/r/RUN · #/p/PROJECT/compare?runs=a,b
// A run page's view (x axis, zoom, panel search, smoothing, log scales) lives in its hash query, so a link
// reproduces it. A run page holds one Server-Sent Events stream (`.../events`) for live updates: new rows are
// appended to the drawn charts, nothing is polled. Panels are drawn only near the viewport (IntersectionObserver);
// a panel scrolled far away frees its chart and keeps its (bounded) data.
// State for tests and debugging lives on window.__stepline (charts' drawn data, render timings, requests).

import { HistogramChart, LineChart, MultiLineChart, exact, loadUPlot, num, width } from "./charts.js";
import { TableChart } from "./plots.js"; // wandb.plot charts over a table (#20)

const KEY_STORE = "stepline.apiKey";
const POLL_MS = Number(localStorage.getItem("stepline.pollMs")) || 2000;
const LIVE_S = Number(localStorage.getItem("stepline.liveIntervalS")) || 1;
// A running run with no update for this long is shown as idle (its process may be gone without a finish).
const IDLE_S = (Number(localStorage.getItem("stepline.idleMinutes")) || 5) * 60;
const SPECIAL_AXES = ["_step", "_runtime", "_timestamp"];
const MEDIA_KINDS = new Set(["histogram", "image", "plot", "html", "table"]);
const SCALAR_KINDS = new Set(["string", "bool", "other"]);
// A live line grows by appended rows up to this many points; past it, one re-read samples it down again.
const MAX_LIVE_POINTS = 4000;
// M4 buckets of a line: one per device pixel of its chart's width, at most BUCKETS (a full-screen chart keeps the
// points it has), at least MIN_BUCKETS. M4 keeps each bucket's first, last, min and max point, so with a bucket
// per pixel column the line and its band look as every point would; a 1000-bucket reply for a ~680 px chart was
// a third more to send, decode and draw.
const BUCKETS = 1000;
const MIN_BUCKETS = 200;
// Reads in flight at once from one page (the browser's own limit per host is 6; one is left for the live stream).
const FETCH_SLOTS = 4;
// Keys per sampled_batch read: a screenful of panels in one or two reads, without one slow reply holding up all.
const BATCH_KEYS = 6;
const SCROLL_QUIET_MS = 100;

/**
 * `{"f8": base64}` (sampled_batch's encoding=f8) → an array in the API's JSON convention: numbers, null for NaN,
 * "Infinity"/"-Infinity" for ±inf (so the page holds one representation whichever way a line was read).
 */
function unpackF8(v) {
  if (!v || typeof v !== "object" || typeof v.f8 !== "string") return v;
  // Uint8Array.fromBase64 (Chromium 140+, Firefox 133+) decodes natively; the loop is for older browsers. On a
  // fresh page that loop runs in the interpreter: 20-40 ms for a screenful of lines (6 keys, 1000 buckets).
  let bytes;
  if (typeof Uint8Array.fromBase64 === "function") bytes = Uint8Array.fromBase64(v.f8);
  else {
    const bin = atob(v.f8);
    bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  }
  const f = new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
  const out = new Array(f.length);
  for (let i = 0; i < f.length; i++) {
    const x = f[i];
    out[i] = Number.isFinite(x) ? x : Number.isNaN(x) ? null : x > 0 ? "Infinity" : "-Infinity";
  }
  return out;
}

function inViewport(e) {
  const r = e.getBoundingClientRect();
  return r.bottom > 0 && r.top < innerHeight && r.height > 0;
}

const state = (window.__stepline = { charts: {}, view: null, requests: 0, live: { events: 0, rows: 0, names: {} } });
Object.defineProperty(state, "polling", { get: () => Boolean(current?.timer) });
Object.defineProperty(state, "streaming", { get: () => Boolean(current?.stream) });

// --- DOM and formatting helpers ---------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

const enc = encodeURIComponent;
const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));

// The page's run reads (`.../page_info`, the live stream) tag a non-finite float of config and summary as
// {"_type": "nonfinite", "value": "NaN" | "Infinity" | "-Infinity"} (JSON has no NaN, and a plain "Infinity" would
// be a string) and an int past 2**53 as {"_type": "bigint", "value": "<digits>"} (a JS number would round it).
const isNonFinite = (v) => v && typeof v === "object" && v._type === "nonfinite";

/**
 * An integer with thousands separators, as toLocaleString("en-US") writes it, without Intl: the first Intl use in
 * a page starts ICU (20-50 ms), which would sit on the way to the first screen.
 */
function grouped(v) {
  if (typeof v === "number" && (Object.is(v, -0) || Math.abs(v) >= 1e21)) return v.toLocaleString("en-US");
  return String(v).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (isNonFinite(v)) return v.value;
  if (v && typeof v === "object" && v._type === "bigint") return grouped(BigInt(v.value));
  if (v && typeof v === "object" && v._type === "complex") return complexText(v);
  if (v && typeof v === "object" && typeof v._type === "string") return `[${v._type}]`; // media: shown in its panel
  if (v === "Infinity" || v === "-Infinity") return exact(v);
  if (typeof v === "number") return Number.isInteger(v) ? grouped(v) : exact(v);
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "string") return v;
  return inner(v);
}

/** A value inside a list or dict: JSON-like, with NaN / Infinity / -Infinity and complex numbers spelled out. */
function inner(v) {
  if (v === null || v === undefined) return "null";
  if (isNonFinite(v)) return v.value;
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return `[${v.map(inner).join(", ")}]`;
  if (typeof v === "object" && v._type === "complex") return complexText(v);
  if (typeof v === "object" && v._type === "bigint") return v.value;
  if (typeof v === "object") return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${inner(x)}`).join(", ")}}`;
  return String(v);
}

/** A config or summary value (tagged non-finite floats, so a string is always a string). */
const valueText = (v) => (typeof v === "string" ? v : fmt(v));

function complexText(v) {
  const part = (x) => (isNonFinite(x) ? x.value : x === null ? "NaN" : String(x));
  const im = part(v.imag);
  return `(${part(v.real)}${im.startsWith("-") ? "" : "+"}${im}j)`;
}

function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ");
}

function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.max(0, s);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${Math.round(sec)} s` : `${sec.toFixed(1)} s`;
}

export function shownState(run) {
  if (run.state === "running" && run.updated_at && Date.now() / 1000 - run.updated_at > IDLE_S) return "idle";
  return run.state;
}

const badge = (s) => el("span", { class: `badge ${s}`, "data-state": s }, s);
/**
 * Keys, section names and config keys in order: case-insensitive, then by code point. Not localeCompare: its
 * first call builds an ICU collator (30 ms and more), which sat between the run's info and the first reads.
 */
function byText(a, b) {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  return x < y ? -1 : x > y ? 1 : a < b ? -1 : a > b ? 1 : 0;
}

const sectionOf = (key) => (key.includes("/") ? key.slice(0, key.indexOf("/")) : "");

/** `{a: {b: 1}}` → [["a.b", 1]] (W&B's nested config as dotted keys; arrays stay values). */
function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const name = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && !v._type) flatten(v, name, out);
    else out.push([name, v]);
  }
  return out;
}

/** A search string as a test: a valid regular expression (case-insensitive), else a plain substring. */
function matcher(q) {
  q = (q || "").trim();
  if (!q) return () => true;
  try {
    const re = new RegExp(q, "i");
    return (s) => re.test(s);
  } catch {
    const low = q.toLowerCase();
    return (s) => s.toLowerCase().includes(low);
  }
}

// --- the read API -----------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.detail = message;
  }
}

const isAuth = (e) => e instanceof ApiError && (e.status === 401 || e.status === 403);

function authMessage(e) {
  if (e.status === 403) {
    return `This API key may not read this project (${e.code}: ${e.detail}). A key opens only its own project ` +
      "and needs the read scope.";
  }
  if (e.code === "missing_key") return `This gateway needs an API key (${e.detail}). Enter a key with the read scope above.`;
  return `The API key was refused (${e.code}: ${e.detail}). Enter a valid key with the read scope above.`;
}

function showAuthError(e) {
  const box = document.getElementById("auth-error");
  box.textContent = authMessage(e);
  box.dataset.status = String(e.status);
  box.hidden = false;
}

function apiUrl(path, params = {}) {
  const url = new URL(`api/v1/${path}`, document.baseURI);
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) for (const x of v) url.searchParams.append(k, String(x));
    else if (v !== null && v !== undefined) url.searchParams.set(k, String(v));
  }
  return url;
}

function authHeaders() {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function apiError(r) {
  let body = {};
  try { body = await r.json(); } catch { /* not JSON: keep the status */ }
  const err = new ApiError(r.status, body.error || `http_${r.status}`, body.message || r.statusText);
  if (r.status === 401 || r.status === 403) showAuthError(err);
  return err;
}

async function get(path, params = {}, as = "json") {
  state.requests++;
  const r = await fetch(apiUrl(path, params), { headers: authHeaders(), cache: as === "blob" ? "default" : "no-store" });
  if (!r.ok) throw await apiError(r);
  document.getElementById("auth-error").hidden = true;
  if (as === "blob") return r.blob();
  if (as === "text") return r.text();
  return r.json();
}

const runPath = (p, r) => `projects/${enc(p)}/runs/${enc(r)}`;

/** The reply index.html's inline script started for `path`'s page_info (once), read as get() reads; else null. */
function takePrefetched(path) {
  const pre = window.__steplinePrefetch;
  const reply = pre?.get(path);
  if (!reply) return null;
  pre.delete(path);
  if (!pre.size) window.__steplinePrefetch = null;
  state.requests++;
  return reply.then(async ({ r, body }) => {
    if (!r.ok) throw await apiError(r);
    document.getElementById("auth-error").hidden = true;
    return body;
  });
}

/**
 * One Server-Sent Events stream read with fetch (EventSource cannot send the API key header). `on(name, data)`
 * gets each event; resolves when the server ends the stream, rejects on an HTTP error or a broken connection.
 */
/** A view's live stream (the run page's or the compare page's): `view.stream` holds its AbortController while it is
 * open and `view.live` shows its state. When the server ends it, `reopen()` decides whether to open it again; a
 * broken connection retries (`view.connect`) with a growing pause; a 4xx stops it (`view.fail`). */
function follow(view, path, params, label, pause, reopen) {
  const ctl = new AbortController();
  view.stream = ctl;
  view.live.textContent = label;
  view.live.dataset.state = "connected";
  sse(path, params, (name, data) => view.onEvent(name, data), ctl.signal)
    .then(() => {
      view.stream = null;
      reopen();
    }, (e) => {
      view.stream = null;
      if (!view.alive || e.name === "AbortError") return;
      if (e instanceof ApiError) {
        view.live.textContent = "live: stopped";
        view.live.dataset.state = "stopped";
        view.fail(e);
        return;
      }
      view.live.textContent = `live: connection lost, retrying in ${Math.round(pause / 1000)} s`;
      view.live.dataset.state = "retrying";
      view.retry = setTimeout(() => view.connect(Math.min(pause * 2, 30_000)), pause);
    });
}

async function sse(path, params, on, signal) {
  state.requests++;
  const r = await fetch(apiUrl(path, params), { headers: { ...authHeaders(), Accept: "text/event-stream" },
    cache: "no-store", signal });
  if (!r.ok) throw await apiError(r);
  document.getElementById("auth-error").hidden = true;
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) on(name, JSON.parse(data.join("\n")));
    }
  }
}

/** A run's info after a live `run_delta` event (only what changed is sent; see gateway/live.py). */
function applyDelta(info, d) {
  const out = { ...info, ...(d.set || {}) };
  for (const k of d.del || []) delete out[k];
  for (const [name, { set, del }] of Object.entries(d.keys || {})) {
    const m = { ...(info[name] || {}), ...(set || {}) };
    for (const k of del || []) delete m[k];
    out[name] = m;
  }
  return out;
}

// --- views ------------------------------------------------------------------------------------------------------

class View {
  constructor(main, route) {
    this.main = main;
    this.route = route;
    this.alive = true;
    this.timer = null;
    this.pollMs = 0; // > 0: refresh() again this often (lists); an error stops it
  }

  start() { this.tick(); }

  async tick() {
    this.timer = null;
    if (!this.alive) return;
    try {
      await this.refresh();
      this.clearError();
    } catch (e) {
      if (this.alive) this.fail(e);
      return; // no retry loop on errors: the message stays, the user retries (or enters a key)
    }
    if (this.alive && this.pollMs) { // one timer however many ticks ran at once (a query changed meanwhile)
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.tick(), this.pollMs);
    }
  }

  /** Say what went wrong, once: auth errors in the page-wide box only, others in the view with a Retry button. */
  fail(e) {
    if (isAuth(e)) return;
    let text;
    let id = "view-error";
    if (e instanceof ApiError && e.status === 404 && this.notFound) {
      text = this.notFound(e);
      id = "not-found";
    } else {
      console.error(e);
      text = `Could not load: ${e.message}`;
    }
    this.clearError();
    this.main.prepend(el("div", { class: "empty view-error", id, role: "alert" }, text, " ",
      el("button", { type: "button", onclick: () => { this.clearError(); this.start(); } }, "Retry")));
  }

  clearError() { this.main.querySelector(":scope > .view-error")?.remove(); }

  dispose() {
    this.alive = false;
    clearTimeout(this.timer);
    this.timer = null;
  }
}

class ProjectsView extends View {
  constructor(main, route) {
    super(main, route);
    this.pollMs = POLL_MS;
  }

  async refresh() {
    const { projects } = await get("projects");
    const body = projects.length
      ? el("table", { class: "list", id: "projects" },
        el("thead", {}, el("tr", {}, el("th", {}, "project"), el("th", { class: "num" }, "runs"), el("th", {}, "updated"))),
        el("tbody", {}, projects.map((p) => el("tr", { "data-project": p.name },
          el("td", {}, el("a", { href: `#/p/${enc(p.name)}` }, p.name)),
          el("td", { class: "num" }, fmt(p.runs)), el("td", {}, ago(p.updated_at))))))
      : el("div", { class: "empty" }, "No projects yet: log a run (ingest.init(project=...)) and it shows up here.");
    this.main.replaceChildren(el("h1", {}, "Projects"), body);
  }
}

// --- the runs table ---------------------------------------------------------------------------------------------

const BASE_COLUMNS = [
  { id: "name", label: "run", get: (r) => r.name },
  { id: "state", label: "state", get: (r) => shownState(r) },
  { id: "last_step", label: "last step", num: true, get: (r) => r.last_step },
  { id: "rows", label: "rows", num: true, get: (r) => r.rows },
  { id: "column_count", label: "columns", num: true, get: (r) => r.column_count },
  { id: "rejected", label: "rejected calls", num: true, get: (r) => r.rejected },
  { id: "warning_count", label: "warnings", num: true, get: (r) => r.warning_count },
  { id: "updated_at", label: "updated", get: (r) => r.updated_at, show: (r) => ago(r.updated_at) },
];

/**
 * A table value's place in a sort: numbers (±inf at their ends, a tagged bigint by value) before strings; NaN after
 * them and a missing value last, whichever the direction (the gateway's order puts both among "the rest").
 */
function sortKey(v) {
  if (v === null || v === undefined) return { last: 2 };
  if (isNonFinite(v)) return v.value === "NaN" ? { last: 1 } : { num: v.value === "Infinity" ? Infinity : -Infinity };
  if (v && typeof v === "object" && v._type === "bigint") return { num: Number(v.value), big: BigInt(v.value) };
  if (typeof v === "number") return { num: v };
  return { str: String(v) };
}

/**
 * The gateway's order of two table values (history/filters.py): numbers, then strings, then NaN, then missing, in
 * both directions; `desc` reverses the order within numbers and within strings only.
 */
function compareValues(a, b, desc = false) {
  const ka = sortKey(a);
  const kb = sortKey(b);
  if (ka.last || kb.last) return (ka.last || 0) - (kb.last || 0);
  const way = desc ? -1 : 1;
  if (ka.num !== undefined && kb.num !== undefined) {
    if (ka.big !== undefined && kb.big !== undefined) return way * (ka.big < kb.big ? -1 : ka.big > kb.big ? 1 : 0);
    return way * (ka.num < kb.num ? -1 : ka.num > kb.num ? 1 : 0); // no subtraction: Infinity - Infinity is NaN
  }
  if (ka.num !== undefined || kb.num !== undefined) return ka.num !== undefined ? -1 : 1;
  return way * ka.str.localeCompare(kb.str, "en", { numeric: true });
}

const reEscape = (t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The filter language's field for a table column id (`summary.x` is the API's `summary_metrics.x`). */
const filterField = (id) => (id.startsWith("summary.") ? `summary_metrics.${id.slice(8)}` : id === "name" ? "display_name" : id);

/**
 * A column filter's text as a W&B filter (history/filters.py, evaluated by the gateway): `>x`, `>=x`, `<x`, `<=x`,
 * `=x`, `!=x` compare with a number when x is one (else with the text; `true`/`false` are bools), anything else
 * is a case-insensitive substring (a regular expression over the value's text).
 */
function columnFilter(id, text) {
  const t = (text || "").trim();
  if (!t) return null;
  const field = filterField(id);
  const m = t.match(/^(>=|<=|!=|>|<|=)\s*(.*)$/);
  if (!m) return { [field]: { $regex: `(?i)${reEscape(t)}` } };
  const [, op, raw] = m;
  const n = Number(raw);
  const v = raw !== "" && !Number.isNaN(n) ? n : raw === "true" ? true : raw === "false" ? false : raw;
  const ops = { ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte", "=": "$eq", "!=": "$ne" };
  return { [field]: { [ops[op]]: v } };
}

/** Columns the runs query can order by (the others sort the shown page only). */
const ORDERABLE = new Set(["name", "state", "last_step", "rows", "column_count", "rejected", "warning_count",
  "updated_at", "group"]);
const RUNS_PER_PAGE = Number(localStorage.getItem("stepline.runsPerPage")) || 50;

class RunsView extends View {
  constructor(main, route) {
    super(main, route);
    this.pollMs = POLL_MS;
    this.selected = new Set();
    this.runs = [];
    this.details = new Map(); // run id → {updated_at, config, summary, ...} for config/summary columns and grouping
    this.extra = []; // added columns: {id: "config.lr", label}
    this.filters = new Map(); // column id → filter text
    this.sort = { id: "updated_at", desc: true };
    const p = route.project;
    this.pageNo = 0;
    this.total = 0;
    this.filter = el("input", { id: "run-filter", type: "search", placeholder: "filter by name or id",
      oninput: () => this.requery(250) });
    this.stateSel = el("select", { id: "state-filter", onchange: () => this.requery() },
      ["all", "running", "idle", "finished", "crashed"].map((s) => el("option", { value: s }, s)));
    this.addCol = el("select", { id: "add-column", onfocus: () => this.loadDetails(), onmousedown: () => this.loadDetails(),
      onchange: () => {
        const id = this.addCol.value;
        if (id && !this.extra.some((c) => c.id === id)) this.extra.push({ id, label: id });
        this.addCol.value = "";
        this.render();
      } }, el("option", { value: "" }, "+ column (config / summary)"));
    this.groupSel = el("select", { id: "group-by", onfocus: () => this.loadDetails(), onmousedown: () => this.loadDetails(),
      onchange: () => this.render() }, el("option", { value: "" }, "no grouping"), el("option", { value: "group" }, "group"));
    this.compareBtn = el("button", { id: "compare-btn", disabled: true, onclick: () => {
      location.hash = `#/p/${enc(p)}/compare?runs=${[...this.selected].map(enc).join(",")}`;
    } }, "Compare selected");
    this.thead = el("thead");
    this.tbody = el("tbody");
    this.empty = el("div", { class: "empty", hidden: true }, "No runs in this project yet.");
    this.prevBtn = el("button", { type: "button", id: "runs-prev", onclick: () => { this.pageNo--; this.requery(); } }, "‹ prev");
    this.nextBtn = el("button", { type: "button", id: "runs-next", onclick: () => { this.pageNo++; this.requery(); } }, "next ›");
    this.pageInfo = el("span", { id: "runs-page", class: "muted" });
    main.replaceChildren(el("h1", {}, p),
      el("div", { class: "toolbar" }, this.filter, this.stateSel, this.addCol, el("label", {}, "group by ", this.groupSel),
        this.compareBtn, el("span", { class: "live" }, `refreshes every ${POLL_MS / 1000} s`)),
      el("table", { class: "list", id: "runs" }, this.thead, this.tbody), this.empty,
      el("div", { class: "pager" }, this.prevBtn, this.pageInfo, this.nextBtn));
  }

  /** Read the table again now (after `wait` ms of quiet: typing), from the first page unless paging. */
  requery(wait = 0, keepPage = false) {
    if (!keepPage && wait) this.pageNo = 0;
    clearTimeout(this.requeryTimer);
    this.requeryTimer = setTimeout(() => {
      clearTimeout(this.timer);
      this.tick();
    }, wait);
  }

  /**
   * The listing's query: the name box, the state picker and the column filters as one W&B filter, the sort as
   * `order`, one page of RUNS_PER_PAGE. The gateway evaluates it (history/filters.py), so filters see every run.
   */
  query() {
    const all = [];
    const q = this.filter.value.trim();
    if (q) {
      const re = `(?i)${reEscape(q)}`;
      all.push({ $or: [{ display_name: { $regex: re } }, { name: { $regex: re } }] });
    }
    const want = this.stateSel.value;
    const idleBefore = Math.floor(Date.now() / 10_000) * 10 - IDLE_S; // whole 10 s: the same query twice in a row
    if (want === "idle") all.push({ state: "running" }, { updated_at: { $lt: idleBefore } });
    else if (want === "running") all.push({ state: "running" }, { updated_at: { $gte: idleBefore } });
    else if (want !== "all") all.push({ state: want });
    for (const [id, t] of this.filters) {
      const f = columnFilter(id, t);
      if (f) all.push(f);
    }
    const { id, desc } = this.sort;
    const orderable = ORDERABLE.has(id) || id.startsWith("config.") || id.startsWith("summary.");
    const params = { per_page: RUNS_PER_PAGE, page: this.pageNo,
      order: orderable ? `${desc ? "-" : "+"}${filterField(id)}` : "-created_at" };
    if (all.length) params.filters = JSON.stringify(all.length === 1 ? all[0] : { $and: all });
    return params;
  }

  async refresh() {
    const params = this.query();
    const sig = JSON.stringify(params);
    // values=tagged: NaN and ±inf in config and summary come as {"_type": "nonfinite", ...}, shown exactly.
    const { runs, total } = await get(`projects/${enc(this.route.project)}/runs`, { ...params, values: "tagged" });
    if (sig !== JSON.stringify(this.query())) return; // the query changed meanwhile: its own read follows
    const pages = Math.max(1, Math.ceil(total / RUNS_PER_PAGE));
    if (this.pageNo >= pages && total) { // the page went away (runs deleted or a narrower filter)
      this.pageNo = pages - 1;
      return this.refresh();
    }
    this.runs = runs;
    this.total = total;
    this.pageInfo.textContent = `${total} run${total === 1 ? "" : "s"} · page ${this.pageNo + 1} of ${pages}`;
    this.pageInfo.dataset.total = String(total);
    this.pageInfo.dataset.page = String(this.pageNo);
    this.prevBtn.disabled = this.pageNo === 0;
    this.nextBtn.disabled = this.pageNo >= pages - 1;
    if (runs.some((r) => r.config !== undefined)) this.fillPickers();
    if (this.detailsWanted) await this.loadDetails();
    this.render();
  }

  /** Config, summary, tags and group of every listed run (at most 200), fetched once per run update. */
  async loadDetails() {
    this.detailsWanted = true;
    // A gateway whose listing carries config and summary (#16) needs no per-run reads.
    const todo = this.runs.slice(0, 200).filter((r) => r.config === undefined
      && this.details.get(r.id)?.updated_at !== r.updated_at);
    if (!todo.length) return this.fillPickers();
    if (this.detailsLoading) return this.detailsLoading;
    this.detailsLoading = (async () => {
      for (let i = 0; i < todo.length; i += 6) {
        await Promise.all(todo.slice(i, i + 6).map(async (r) => {
          try {
            const info = await get(runPath(r.project, r.id), { rejections: 0 });
            this.details.set(r.id, info);
          } catch (e) {
            if (!(e instanceof ApiError && e.status === 404)) throw e;
          }
        }));
      }
    })();
    try {
      await this.detailsLoading;
    } finally {
      this.detailsLoading = null;
    }
    this.fillPickers();
    this.render();
  }

  isFiltered() { return Boolean(this.query().filters); }

  fillPickers() {
    const keys = new Set();
    const configKeys = new Set();
    for (const d of [...this.details.values(), ...this.runs.filter((r) => r.config !== undefined)]) {
      for (const [k] of flatten(d.config)) { keys.add(`config.${k}`); configKeys.add(`config.${k}`); }
      for (const [k] of flatten(d.summary)) keys.add(`summary.${k}`);
    }
    const have = [...this.addCol.options].map((o) => o.value).join("\u0000");
    const want = ["", ...[...keys].sort()];
    if (have !== want.join("\u0000")) {
      this.addCol.replaceChildren(el("option", { value: "" }, "+ column (config / summary)"),
        ...[...keys].sort().map((k) => el("option", { value: k }, k)));
    }
    const g = this.groupSel.value;
    const gwant = ["", "group", ...[...configKeys].sort()];
    if ([...this.groupSel.options].map((o) => o.value).join("\u0000") !== gwant.join("\u0000")) {
      this.groupSel.replaceChildren(el("option", { value: "" }, "no grouping"), el("option", { value: "group" }, "group"),
        ...[...configKeys].sort().map((k) => el("option", { value: k }, k)));
      this.groupSel.value = g;
    }
  }

  value(r, id) {
    const base = BASE_COLUMNS.find((c) => c.id === id);
    if (base) return base.get(r);
    const d = r.config !== undefined ? r : this.details.get(r.id);
    if (id === "group") return r.group ?? d?.group ?? null;
    if (id === "tags") return (r.tags ?? d?.tags ?? []).join(", ") || null;
    if (!d) return null;
    const [where, ...rest] = id.split(".");
    const name = rest.join(".");
    const flat = Object.fromEntries(flatten(where === "config" ? d.config : d.summary));
    return flat[name] ?? null;
  }

  /** The base columns, `group` and `tags` when any run has them, then the added ones. */
  columns() {
    const meta = [];
    if (this.runs.some((r) => r.group)) meta.push({ id: "group", label: "group" });
    if (this.runs.some((r) => r.tags?.length)) meta.push({ id: "tags", label: "tags" });
    return [...BASE_COLUMNS.slice(0, 2), ...meta, ...BASE_COLUMNS.slice(2), ...this.extra];
  }

  header() {
    // Rebuilt only when it changes: a poll must not replace a header being clicked or a filter being typed in.
    const sig = JSON.stringify([this.columns().map((c) => c.id), this.sort, [...this.filters]]);
    if (sig === this.headerSig) return;
    this.headerSig = sig;
    const cols = this.columns();
    const sortMark = (id) => (this.sort.id === id ? (this.sort.desc ? " ▼" : " ▲") : "");
    const th = (c) => el("th", { class: c.num ? "num sortable" : "sortable", "data-col": c.id, title: "click to sort",
      onclick: () => {
        this.sort = this.sort.id === c.id ? { id: c.id, desc: !this.sort.desc } : { id: c.id, desc: false };
        this.render();
        this.requery(0);
      } }, el("span", { class: "th-label" }, c.label, sortMark(c.id)),
      this.extra.includes(c) ? el("button", { class: "x", title: "remove column", onclick: (ev) => {
        ev.stopPropagation();
        this.extra = this.extra.filter((x) => x !== c);
        const had = this.filters.delete(c.id);
        this.render();
        if (had) this.requery(1);
      } }, "×") : null);
    const filterRow = this.extra.length ? el("tr", { class: "filters" }, el("th"),
      cols.filter((c) => !this.extra.includes(c)).map(() => el("th")),
      this.extra.map((c) => el("th", {}, el("input", { type: "search", class: "col-filter", "data-col": c.id,
        placeholder: "filter: >0.1, =adam", value: this.filters.get(c.id) || "",
        onchange: (ev) => { this.filters.set(c.id, ev.target.value); this.requery(1); } })))) : null;
    this.thead.replaceChildren(el("tr", {}, el("th", {}, ""), cols.map(th)), filterRow);
  }

  render() {
    this.header();
    // Filtered and ordered by the gateway; the page's rows are sorted again here only for the columns the query
    // cannot order by (tags), and so that a click re-sorts at once while the new page is read.
    let shown = this.runs;
    const { id, desc } = this.sort;
    shown = shown.map((r, i) => [r, i]).sort(([a, i], [b, j]) => {
      const va = this.value(a, id);
      const vb = this.value(b, id);
      return compareValues(va, vb, desc) || i - j;
    }).map(([r]) => r);
    const cols = this.columns();
    const row = (r) => el("tr", { "data-run": r.id },
      el("td", {}, el("input", { type: "checkbox", checked: this.selected.has(r.id), onchange: (ev) => {
        if (ev.target.checked) this.selected.add(r.id); else this.selected.delete(r.id);
        this.compareBtn.disabled = this.selected.size < 2;
      } })),
      cols.map((c) => {
        if (c.id === "name") {
          return el("td", {}, el("a", { href: `#/p/${enc(r.project)}/r/${enc(r.id)}` }, r.name),
            r.name !== r.id ? el("span", { class: "muted" }, ` ${r.id}`) : null);
        }
        if (c.id === "state") return el("td", {}, badge(shownState(r)));
        const v = this.value(r, c.id);
        const isNum = c.num || (!c.show && (typeof v === "number" || isNonFinite(v) || v?._type === "bigint"));
        return el("td", { class: isNum ? "num" : null, "data-col": c.id }, c.show ? c.show(r) : fmt(v));
      }));
    const groupBy = this.groupSel.value;
    if (groupBy) {
      const groups = new Map();
      for (const r of shown) {
        const g = fmt(this.value(r, groupBy));
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push(r);
      }
      this.tbody.replaceChildren(...[...groups.entries()].sort(([a], [b]) => compareValues(a, b)).flatMap(([g, rs]) => [
        el("tr", { class: "group-row", "data-group": g }, el("td", { colspan: cols.length + 1 },
          `${groupBy} = ${g}`, el("span", { class: "muted" }, ` (${rs.length} run${rs.length === 1 ? "" : "s"})`))),
        ...rs.map(row)]));
    } else {
      this.tbody.replaceChildren(...shown.map(row));
    }
    this.empty.hidden = this.runs.length > 0 || this.isFiltered();
    this.empty.textContent = "No runs in this project yet.";
    if (!this.runs.length && this.isFiltered()) {
      this.tbody.replaceChildren(el("tr", { id: "no-match" }, el("td", { colspan: cols.length + 1, class: "muted" },
        "No run matches the filters.")));
    }
    this.compareBtn.disabled = this.selected.size < 2;
  }
}

// --- panels -----------------------------------------------------------------------------------------------------

/**
 * A panel has data (fetched once, then kept up to date by the live stream) and, while near the viewport, a drawn
 * chart. `show()` draws it (fetching first if needed), `hide()` frees the chart; the element keeps its size.
 */
class Panel {
  constructor(page, key, title, extraClass = "") {
    this.page = page;
    this.key = key;
    this.loaded = false;
    this.loading = null;
    this.loads = 0;
    this.visible = false;
    this.shown = new Promise((resolve) => { this.markShown = resolve; }); // resolves on the first load
    this.el = el("div", { class: `panel ${extraClass}`, "data-key": key, "data-kind": this.constructor.kind });
    this.note = el("div", { class: "note" });
    this.el.append(el("h3", {}, el("span", { class: "title" }, title),
      el("span", { class: "tools" }, this.badge = el("small"),
        el("button", { type: "button", class: "fs-btn", title: "full screen (Esc closes)",
          onclick: () => this.page.fullscreen(this) }, "⤢"))));
  }

  /** Load (or reload) the panel; a request made while one is in flight runs again after it. */
  async ensure(live = false) {
    if (this.loading) {
      this.again = true;
      return this.loading;
    }
    this.loading = (async () => {
      try {
        if ((await this.load(live)) === false) return; // superseded (axis or zoom changed meanwhile)
        this.loaded = true;
        this.markShown();
        this.loads++;
        this.el.dataset.loads = String(this.loads);
        this.el.querySelector(":scope > .err")?.remove();
      } catch (e) {
        if (!isAuth(e)) console.error(e);
        let box = this.el.querySelector(":scope > .err");
        if (!box) this.el.append(box = el("div", { class: "err" }));
        box.textContent = isAuth(e) ? "not readable with this API key" : e.message;
      } finally {
        this.loading = null;
        if (this.again) {
          this.again = false;
          this.ensure();
        }
      }
    })();
    return this.loading;
  }

  show() {
    if (this.visible && this.loaded && !this.stale && this.el.dataset.drawn === "1") return Promise.resolve();
    this.visible = true;
    this.el.dataset.visible = "1";
    if (this.loading) return this.loading; // its load draws it
    if (!this.loaded || this.stale) {
      this.stale = false;
      return this.ensure();
    }
    return this.draw?.();
  }

  hide() {
    this.visible = false;
    this.el.dataset.visible = "0";
    this.free();
  }

  free() {}

  resize() {}

  destroy() { this.free(); }

  /** Rows that arrived live (objects as `history` serves them). */
  append() {}
}

/** The x axis `key` is drawn against: the page-wide choice, else its define_metric step metric, else `_step`. */
function stepMetricOf(infos, key) {
  for (const info of infos) {
    for (const m of info.metrics || []) {
      if (!m.step_metric) continue;
      const hit = m.name.endsWith("*") ? key.startsWith(m.name.slice(0, -1)) : key === m.name;
      if (hit) return m.step_metric;
    }
  }
  return null;
}

class LinePanel extends Panel {
  static kind = "line";

  constructor(page, key) {
    super(page, key, key);
    this.zoom = null;
    this.s = null;
    this.box = el("div", { class: "chart" });
    this.el.append(this.box, this.note);
  }

  get xAxis() { return this.page.axisFor(this.key); }

  setAxis() {
    this.free();
    this.s = null;
    this.zoom = this.page.zoomFor(this);
    this.loaded = false;
    if (this.visible) this.ensure();
  }

  setZoom(range) {
    this.zoom = range;
    this.s = null;
    this.loaded = false;
    if (this.visible) this.ensure(); else this.stale = true;
  }

  async load() {
    const xAxis = this.xAxis;
    const zoom = this.zoom;
    const t0 = performance.now();
    const buckets = this.page.bucketsFor(this);
    const s = zoom
      ? await this.page.limit(() => get(`${this.page.path}/sampled`, { key: this.key, x_axis: xAxis,
        buckets, x_min: zoom[0], x_max: zoom[1] }), this)
      : await this.page.sampled(this.page.path, this.key, xAxis, this, buckets);
    s.buckets = buckets;
    const t1 = performance.now();
    if (xAxis !== this.xAxis || zoom !== this.zoom) return false; // changed while this was in flight
    this.s = s;
    this.fetchMs = t1 - t0;
    this.t0 = t0;
    if (this.visible) await this.draw();
    else this.stale = false;
    return true;
  }

  async draw() {
    const s = this.s;
    if (!s) return;
    const xAxis = this.xAxis;
    const opts = this.page.chartOpts();
    const sig = JSON.stringify([xAxis, opts]);
    if (this.chart && this.chartSig !== sig) this.free();
    if (!this.chart) {
      await loadUPlot();
      await this.page.frameSlot(this);
      if (!this.visible || this.s !== s) return; // scrolled away or replaced while waiting for the frame
      if (this.chart) this.free();
      this.chartSig = sig;
      this.chart = new LineChart(this.box, { label: this.key, xAxis, ...opts, w: this.page.chartWidth(this),
        height: this.el.classList.contains("fullscreen") ? window.innerHeight - 130 : 200,
        onZoom: (a, b) => this.page.zoomed(this, [a, b]),
        onReset: () => this.page.zoomed(this, null) });
    }
    const t1 = performance.now();
    this.chart.set(s, this.zoom);
    await this.page.painted();
    const t2 = performance.now();
    const bad = { nan: 0, pinf: 0, ninf: 0 };
    for (const v of s.y) {
      if (v === null) bad.nan++;
      else if (v === "Infinity") bad.pinf++;
      else if (v === "-Infinity") bad.ninf++;
    }
    const badText = [[bad.nan, "NaN"], [bad.pinf, "+inf"], [bad.ninf, "-inf"]].filter(([n]) => n)
      .map(([n, w]) => `${n} ${w}`).join(", ");
    this.note.textContent = !s.x.length ? `no points of ${this.key} against ${xAxis}`
      : `${grouped(s.count)} points${s.sampled ? `, ${s.x.length} drawn (M4, ${s.buckets} buckets; band = bucket min–max)` : ""}` +
        `${badText ? ` · not drawn: ${badText}` : ""}${this.zoom ? " · zoomed (double-click to reset)" : ""}`;
    Object.assign(this.el.dataset, { points: String(s.x.length), count: String(s.count), xAxis,
      renderMs: (t2 - (this.t0 ?? t1)).toFixed(1), zoomed: this.zoom ? "1" : "0", drawn: "1", drawnAt: t2.toFixed(1) });
    state.charts[this.key] = { key: this.key, xAxis, x: s.x, y: s.y, step: s.step, count: s.count,
      sampled: s.sampled, buckets: s.buckets, zoom: this.zoom, fetchMs: this.fetchMs ?? 0, drawMs: t2 - t1,
      totalMs: t2 - (this.t0 ?? t1), loads: this.loads + 1, drawn: this.chart.data, nonFinite: bad };
    this.t0 = null;
  }

  append(rows) {
    const s = this.s;
    if (!s || this.zoom) return; // not fetched yet (fetches everything when shown) or zoomed on a fixed range
    const xAxis = this.xAxis;
    const lastStep = s.step.length ? s.step[s.step.length - 1] : -Infinity;
    const fresh = rows.filter((r) => r._step > lastStep && this.key in r && typeof r[xAxis] === "number");
    if (s.x.length + fresh.length > MAX_LIVE_POINTS) { // sample it down again with one read (memory stays bounded)
      this.s = null;
      this.loaded = false;
      if (this.visible) this.ensure(); else this.stale = true;
      return;
    }
    let added = 0;
    for (const r of fresh) {
      const x = r[xAxis];
      s.x.push(x);
      s.y.push(r[this.key]);
      s.step.push(r._step);
      s.count++;
      added++;
    }
    if (!added) return;
    if (s.sampled) { // the new points have no bucket: keep the band arrays aligned by extending the last bucket
      s.bucket_x1[s.bucket_x1.length - 1] = s.x[s.x.length - 1];
    }
    if (this.visible && this.chart) this.draw();
  }

  free() {
    this.chart?.destroy();
    this.chart = null;
    this.el.dataset.drawn = "0";
  }

  resize() { this.chart?.resize(this.el.classList.contains("fullscreen") ? window.innerHeight - 130 : 200); }
}

/** A media key over steps: a slider moves through the logged steps (latest first shown). */
class SteppedPanel extends Panel {
  constructor(page, key, kind, label) {
    super(page, key, key, kind === "plot" || kind === "table" || kind === "html" ? "wide" : "");
    this.kind = kind;
    this.el.dataset.kind = kind;
    this.label = label;
    this.steps = [];
    this.values = [];
    this.index = -1;
    this.shownStep = null;
    this.slider = el("input", { type: "range", min: 0, max: 0, value: 0, class: "step-slider",
      oninput: () => this.show(Number(this.slider.value)) });
    this.stepLabel = el("span", { class: "step-label" });
    this.view = el("div", { class: "media-view" });
    this.el.append(el("div", { class: "slider" }, "step", this.slider, this.stepLabel), this.view, this.note);
    // Panel.show(): draw when scrolled into view; the slider's show(i) is showAt.
    this.showAt = this.showAt.bind(this);
  }

  show(i) {
    if (typeof i === "number") return this.showAt(i);
    return super.show();
  }

  async load() {
    const rows = await get(`${this.page.path}/history`, { keys: this.key, samples: 1000, split_kinds: 1 });
    const have = rows.filter((r) => r[this.label] !== undefined && r[this.label] !== null);
    this.steps = have.map((r) => r._step);
    this.values = have.map((r) => r[this.label]);
    this.index = -1;
    await this.draw();
  }

  async draw() {
    const atEnd = this.index < 0 || this.index >= this.steps.length - 1;
    this.slider.max = String(Math.max(0, this.steps.length - 1));
    this.note.textContent = `${this.steps.length} logged step${this.steps.length === 1 ? "" : "s"}`;
    const i = atEnd ? this.steps.length - 1 : Math.min(this.index, this.steps.length - 1);
    this.slider.value = String(Math.max(i, 0));
    if (i >= 0) await this.showAt(i);
  }

  append(rows) {
    if (!this.loaded) return;
    const last = this.steps.length ? this.steps[this.steps.length - 1] : -Infinity;
    const atEnd = this.index < 0 || this.index >= this.steps.length - 1;
    let added = 0;
    for (const r of rows) {
      const v = r[this.label];
      if (r._step <= last || v === undefined || v === null) continue;
      this.steps.push(r._step);
      this.values.push(v);
      added++;
    }
    if (this.steps.length > 1000) { // bounded: keep the newest 1000 steps
      const cut = this.steps.length - 1000;
      this.steps.splice(0, cut);
      this.values.splice(0, cut);
      this.index = Math.max(0, this.index - cut);
    }
    if (!added) return;
    this.slider.max = String(Math.max(0, this.steps.length - 1));
    this.note.textContent = `${this.steps.length} logged step${this.steps.length === 1 ? "" : "s"}`;
    // Only a slider left at the latest step follows new steps; nothing is redrawn when the shown step stays.
    if (atEnd && this.visible) {
      this.slider.value = String(this.steps.length - 1);
      this.showAt(this.steps.length - 1);
    } else {
      this.stepLabel.textContent = `${fmt(this.steps[this.index])} (${this.index + 1}/${this.steps.length})`;
    }
  }

  async showAt(i) {
    this.index = i;
    const step = this.steps[i];
    this.stepLabel.textContent = `${fmt(step)} (${i + 1}/${this.steps.length})`;
    this.el.dataset.step = String(step);
    if (this.shownStep === step && this.rendered) return; // the same value is on screen: nothing to rebuild
    this.shownStep = step;
    this.rendered = true;
    this.renders = (this.renders || 0) + 1;
    this.el.dataset.renders = String(this.renders);
    await this.render(this.values[i], step);
  }

  blobUrl(sha) {
    const cache = this.page.blobs;
    if (!cache.has(sha)) {
      cache.set(sha, get(`blobs/${sha}`, { project: this.page.project, run: this.page.run }, "blob")
        .then((b) => URL.createObjectURL(b)));
    }
    return cache.get(sha);
  }

  async render(v, step) {
    if (this.kind === "images") return renderGallery(this, v, step);
    if (this.kind === "histogram" || this.kind === "plot") await loadUPlot();
    if (this.kind === "image") {
      if (!this.img) this.view.append(this.img = el("img", { class: "media", alt: this.key }),
        this.caption = el("div", { class: "note" }));
      const url = await this.blobUrl(v.sha256);
      if (this.steps[this.index] !== step) return; // the slider moved on meanwhile
      this.img.src = url;
      this.img.dataset.sha = v.sha256;
      this.el.dataset.sha = v.sha256;
      this.caption.textContent = `${v.caption ? `${v.caption} · ` : ""}${v.width}×${v.height} ${v.format}`;
    } else if (this.kind === "histogram") {
      if (!this.chart) this.chart = new HistogramChart(this.view, { label: this.key });
      this.chart.set(v);
    } else if (this.kind === "plot") {
      if (v.kind !== "line_series" || this.chart instanceof TableChart) {
        this.renderTableChart(v, step);
        if (v.kind !== "line_series") return;
      }
      if (!this.chart) this.chart = new MultiLineChart(this.view, { xAxis: v.xname || "x", title: v.title });
      this.chart.set(v.keys.map((k, j) => ({ label: k, x: v.xs[j], y: v.ys[j] })));
      this.badge.textContent = v.title || "";
      state.charts[this.key] = { key: this.key, step, series: v.keys, drawn: this.chart.data };
    } else if (this.kind === "html") {
      const url = await this.blobUrl(v.sha256);
      const text = await (await fetch(url)).text();
      // An empty sandbox: no scripts, an opaque origin (the page's key stays out of reach).
      this.view.replaceChildren(el("iframe", { sandbox: "", srcdoc: text, title: this.key }));
    } else if (this.kind === "table") {
      const cols = v.columns || [];
      this.view.replaceChildren(el("div", { class: "scroll" }, el("table", { class: "kv" },
        el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))),
        el("tbody", {}, (v.data || []).slice(0, 500).map((row) => el("tr", {}, row.map((c) => el("td", {},
          c && typeof c === "object" && c._type ? `[${c._type}]` : fmt(c)))))))));
    }
  }

  /** wandb.plot charts over a table (plots.js); leaving one for a line_series value frees it first. */
  renderTableChart(v, step) {
    if (v.kind === "line_series") {
      this.chart.destroy();
      this.chart = null;
      this.view.replaceChildren();
      return;
    }
    if (!(this.chart instanceof TableChart)) {
      this.chart?.destroy();
      this.view.replaceChildren();
      this.chart = new TableChart(this.view);
    }
    this.chart.set(v);
    this.badge.textContent = v.title || "";
    state.charts[this.key] = { key: this.key, step, kind: v.kind, series: this.chart.series, drawn: this.chart.data };
  }

  free() {
    // Media panels are light (one image or chart): they stay drawn; only uPlot charts are freed and rebuilt.
    if (this.chart) {
      this.chart.destroy();
      this.chart = null;
      this.view.replaceChildren();
      this.rendered = false;
    }
  }

  resize() { this.chart?.resize(); }
}

/** Strings, bools and other values of a section as one table: a row per step, latest first. */
class ScalarTablePanel extends Panel {
  static kind = "table";

  constructor(page, section, cols) {
    super(page, `${section}/*scalars`, `${section || "values"}: strings and bools`, "wide");
    this.cols = cols;
    this.box = el("div", { class: "scroll" });
    this.el.append(this.box, this.note);
  }

  async load() {
    const byStep = new Map();
    for (const c of this.cols) {
      const rows = await get(`${this.page.path}/history`, { keys: c.label, samples: 500, split_kinds: 1 });
      for (const r of rows) {
        if (!byStep.has(r._step)) byStep.set(r._step, {});
        byStep.get(r._step)[c.label] = r[c.label];
      }
    }
    this.byStep = byStep;
    if (splitGalleries(this)) return;
    this.draw();
  }

  draw() {
    const byStep = this.byStep;
    const steps = [...byStep.keys()].sort((a, b) => b - a).slice(0, 500);
    this.box.replaceChildren(el("table", { class: "kv" },
      el("thead", {}, el("tr", {}, el("th", {}, "_step"), this.cols.map((c) => el("th", {}, c.label)))),
      el("tbody", {}, steps.map((s) => el("tr", {}, el("td", {}, fmt(s)),
        this.cols.map((c) => el("td", {}, fmt(byStep.get(s)[c.label]))))))));
    this.note.textContent = `${byStep.size} step${byStep.size === 1 ? "" : "s"} shown (latest first, sampled to 500 per key)`;
  }

  append(rows) {
    if (!this.byStep) return;
    let added = 0;
    for (const r of rows) {
      const vals = this.cols.filter((c) => r[c.label] !== undefined);
      if (!vals.length) continue;
      const row = this.byStep.get(r._step) || {};
      for (const c of vals) row[c.label] = r[c.label];
      this.byStep.set(r._step, row);
      added++;
    }
    if (this.byStep.size > 1000) { // bounded: drop the oldest steps
      const keep = [...this.byStep.keys()].sort((a, b) => b - a).slice(0, 500);
      this.byStep = new Map(keep.map((s) => [s, this.byStep.get(s)]));
    }
    if (added && this.visible) this.draw();
  }
}

function problemsPanel(info) {
  const rej = info.rejections || [];
  const byReason = Object.entries(info.rejections_by_reason || {});
  const total = byReason.reduce((a, [, n]) => a + n, 0);
  const warnings = [...(info.warnings || []), ...(info.conflicts || []).map((c) => `type conflict: ${c}`)];
  if (!total && !warnings.length) return null; // no room taken when there is nothing to report
  return el("div", { class: "panel wide", id: "problems", "data-rejected": total, "data-warnings": warnings.length },
    el("h3", {}, el("span", {}, "Rejected calls and warnings"),
      el("small", {}, `${total} rejected · ${warnings.length} warning${warnings.length === 1 ? "" : "s"}`)),
    total ? el("div", { class: "note" }, byReason.map(([r, n]) => [el("span", { class: "reason" }, r), ` ×${n}  `])) : null,
    rej.length
      ? el("div", { class: "scroll" }, el("table", { class: "kv", id: "rejections" },
        el("thead", {}, el("tr", {}, ["reason", "step", "cursor", "message", "when"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rej.map((r) => el("tr", { "data-reason": r.reason, "data-step": r.step },
          el("td", {}, el("span", { class: "reason" }, r.reason)), el("td", {}, fmt(r.step)),
          el("td", {}, fmt(r.cursor)), el("td", { class: "msg" }, r.message || ""), el("td", {}, ago(r.ts)))))))
      : null,
    warnings.length ? el("ul", { class: "problems", id: "warnings" }, warnings.map((w) => el("li", {}, w))) : null);
}

/** Config as a nested tree: a collapsible group per dict, `key value` leaves; `q` keeps matching leaves only. */
function configTree(obj, q, prefix = "") {
  const test = matcher(q);
  const items = [];
  for (const [k, v] of Object.entries(obj || {}).sort(([a], [b]) => byText(a, b))) {
    const name = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && !v._type) {
      const sub = configTree(v, q, name);
      if (sub) items.push(el("li", {}, el("details", { open: true }, el("summary", {}, k), sub)));
    } else if (test(name) || test(valueText(v))) {
      items.push(el("li", { "data-config-key": name }, el("span", { class: "ck" }, k), " ", el("span", { class: "cv" }, valueText(v))));
    }
  }
  return items.length ? el("ul", { class: "tree" }, items) : null;
}

function overview(info, q, onSearch) {
  const runtime = typeof info.summary?._runtime === "number" ? info.summary._runtime
    : info.updated_at && info.created_at ? info.updated_at - info.created_at : null;
  const facts = [["state", badge(shownState(info))], ["duration", duration(runtime)],
    ["exit code", info.exit_code ?? "–"], ["created", ago(info.created_at)], ["updated", ago(info.updated_at)]];
  if (info.group) facts.push(["group", info.group]);
  if (info.job_type) facts.push(["job type", info.job_type]);
  if (info.tags?.length) facts.push(["tags", info.tags.map((t) => el("span", { class: "tag" }, t))]);
  const summary = flatten(info.summary).filter(([k]) => !k.startsWith("_"));
  const tree = configTree(info.config, q);
  return el("details", { class: "section", id: "overview", open: true, "data-section": "*overview" },
    el("summary", {}, "Overview"),
    el("div", { class: "overview" },
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)])),
      info.notes ? el("p", { class: "notes", id: "notes" }, info.notes) : null,
      el("div", { class: "ov-cols" },
        el("div", { class: "ov-col" }, el("h4", {}, "Config ",
          el("input", { type: "search", id: "config-search", placeholder: "search config", value: q || "",
            oninput: (ev) => onSearch(ev.target.value) })),
        el("div", { id: "config", class: "scroll" }, tree || el("span", { class: "muted" }, q ? "no match" : "no config"))),
        el("div", { class: "ov-col" }, el("h4", {}, "Summary"),
          el("div", { class: "scroll" }, summary.length ? el("table", { class: "kv", id: "summary" },
            el("tbody", {}, summary.map(([k, v]) => el("tr", { "data-summary-key": k }, el("th", {}, k), el("td", {}, summaryText(v))))))
            : el("span", { class: "muted" }, "no summary"))))));
}

function hiddenKeys(info) {
  const rules = (info.metrics || []).filter((m) => m.hidden);
  return (key) => rules.some((m) => (m.name.endsWith("*") ? key.startsWith(m.name.slice(0, -1)) : key === m.name));
}

function axisOptions(infos) {
  const axes = new Set(SPECIAL_AXES);
  for (const info of infos) for (const m of info.metrics || []) if (m.step_metric) axes.add(m.step_metric);
  return [...axes];
}

function sectionBox(name, count) {
  const panels = el("div", { class: "panels" });
  const box = el("details", { class: "section", open: true, "data-section": name },
    el("summary", {}, name || "Charts", el("span", { class: "muted count" }, ` (${count})`)), panels);
  return [box, panels];
}

/**
 * Shared by the run page and the compare page: the toolbar (x axis, smoothing, log scales, sync zoom, panel
 * search), panels drawn near the viewport only, zoom, full screen, resize, and the view in the URL.
 */
class PanelsView extends View {
  constructor(main, route) {
    super(main, route);
    this.project = route.project;
    this.panels = [];
    this.infos = [];
    this.fetchQueue = [];
    this.inFlight = 0;
    this.batches = new Map();
    this.batchTimer = null;
    this.frameQueue = [];
    this.lastScroll = -Infinity;
    this.onScroll = () => { this.lastScroll = performance.now(); };
    window.addEventListener("scroll", this.onScroll, { passive: true });
    const p = route.params;
    this.xOverride = p.get("x") || "";
    this.smoothing = Math.min(0.99, Math.max(0, Number(p.get("smooth")) || 0));
    this.logY = p.get("logy") === "1";
    this.logX = p.get("logx") === "1";
    this.sync = p.get("sync") === "1";
    const z = (p.get("zoom") || "").split(",").map(Number);
    this.zoom = z.length === 2 && z.every(Number.isFinite) && z[0] < z[1]
      ? { range: z, key: p.get("zkey") || null, section: p.get("zsec") ?? null } : null;
    this.axisSel = el("select", { id: "x-axis", onchange: () => {
      this.xOverride = this.axisSel.value;
      this.zoom = null;
      this.saveUrl();
      for (const pl of this.panels) pl.setAxis?.();
    } });
    const redraw = () => { this.saveUrl(); for (const pl of this.panels) if (pl.visible && pl.loaded) pl.draw?.(); };
    this.smoothIn = el("input", { id: "smoothing", type: "range", min: 0, max: 0.99, step: 0.01, value: this.smoothing,
      oninput: () => { this.smoothing = Number(this.smoothIn.value); this.smoothOut.textContent = this.smoothing.toFixed(2); redraw(); } });
    this.smoothOut = el("span", { class: "smooth-val" }, this.smoothing.toFixed(2));
    this.logYBox = el("input", { type: "checkbox", id: "log-y", checked: this.logY,
      onchange: () => { this.logY = this.logYBox.checked; redraw(); } });
    this.logXBox = el("input", { type: "checkbox", id: "log-x", checked: this.logX,
      onchange: () => { this.logX = this.logXBox.checked; redraw(); } });
    this.syncBox = el("input", { type: "checkbox", id: "sync-zoom", checked: this.sync,
      onchange: () => { this.sync = this.syncBox.checked; this.saveUrl(); } });
    this.search = el("input", { id: "panel-search", type: "search", placeholder: "search panels (regex)",
      value: p.get("q") || "", oninput: () => { this.applySearch(); this.saveUrl(); } });
    this.searchCount = el("span", { id: "panel-count", class: "muted" });
    this.toolbar = el("div", { class: "toolbar" }, this.search, this.searchCount,
      el("label", {}, "x-axis ", this.axisSel),
      el("label", { title: "time-weighted EMA (as W&B / TensorBoard)" }, "smoothing ", this.smoothIn, this.smoothOut),
      el("label", {}, this.logYBox, " log y"), el("label", {}, this.logXBox, " log x"),
      el("label", { title: "zooming one chart zooms every chart of its section" }, this.syncBox, " sync zoom"));
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const pl = e.target.__panel;
        if (!pl) continue;
        if (e.isIntersecting) pl.show(); else if (pl.visible) pl.hide();
      }
    }, { rootMargin: "600px 0px" });
    // Whether a panel is in the viewport itself (the observer above reads ahead of it): frameSlot builds these first.
    this.inViewObserver = new IntersectionObserver((entries) => {
      for (const e of entries) if (e.target.__panel) e.target.__panel.inView = e.isIntersecting;
    });
    this.onResize = () => {
      clearTimeout(this.resizeTimer);
      this.frameWidth = null;
      this.resizeTimer = setTimeout(() => this.panels.forEach((pl) => pl.visible && pl.resize()), 150);
    };
    this.onKey = (ev) => { if (ev.key === "Escape" && this.full) this.fullscreen(this.full); };
    window.addEventListener("resize", this.onResize);
    window.addEventListener("keydown", this.onKey);
  }

  chartOpts() { return { smoothing: this.smoothing, logY: this.logY, logX: this.logX }; }

  /**
   * Run `fn` (a read) when one of FETCH_SLOTS is free; panels in the viewport go before panels read ahead of it,
   * so what the user sees is not queued behind what they might scroll to.
   */
  limit(fn, panel) {
    return new Promise((resolve, reject) => {
      this.fetchQueue.push({ fn, panel, resolve, reject });
      this.pump();
    });
  }

  pump() {
    while (this.inFlight < FETCH_SLOTS && this.fetchQueue.length) {
      let best = this.fetchQueue.findIndex((j) => j.panel.inView);
      if (best < 0) {
        // Reads ahead of the viewport wait while the first screen is being read and drawn: their replies would be
        // decoded (and their charts queued) in the main thread the first screen's charts are waiting for.
        if (this.holdAhead) break;
        best = 0;
      }
      const job = this.fetchQueue.splice(best, 1)[0];
      this.inFlight++;
      job.fn().then(job.resolve, job.reject).finally(() => { this.inFlight--; this.pump(); });
    }
    // Reads are on their way: the chart library can load and compile meanwhile (charts.js loadUPlot).
    if (this.inFlight) loadUPlot().catch(() => {}); // a chart that needs it says the error
  }

  /**
   * The sampled line of `key` (as `.../sampled`): requests made in the same turn are sent together, at most
   * BATCH_KEYS keys per `sampled_batch` read, keys of panels in the viewport first.
   */
  sampled(path, key, xAxis, panel, buckets = BUCKETS) {
    return new Promise((resolve, reject) => {
      const id = `${path}\u0000${xAxis}\u0000${buckets}`;
      if (!this.batches.has(id)) this.batches.set(id, { path, xAxis, buckets, items: [] });
      this.batches.get(id).items.push({ key, resolve, reject, panel });
      // Sent at the end of the current task (a microtask), not after a timer: a timer would wait for the first
      // layout and paint of the whole page (100 ms and more on a loaded machine).
      if (!this.batchTimer) {
        this.batchTimer = true;
        queueMicrotask(() => this.flushBatches());
      }
    });
  }

  flushBatches() {
    performance.mark("stepline:flush");
    this.batchTimer = null;
    const batches = [...this.batches.values()];
    this.batches.clear();
    for (const b of batches) {
      b.items.sort((a, c) => Number(Boolean(c.panel.inView)) - Number(Boolean(a.panel.inView))); // stable
      for (let i = 0; i < b.items.length; i += BATCH_KEYS) {
        const chunk = b.items.slice(i, i + BATCH_KEYS);
        this.limit(() => get(`${b.path}/sampled_batch`, { key: chunk.map((c) => c.key), x_axis: b.xAxis,
          buckets: b.buckets, encoding: "f8" }), chunk[0].panel).then((r) => {
          performance.mark("stepline:batch");
          for (const c of chunk) {
            const s = r.sampled[c.key];
            if (!s || s.error) c.reject(new ApiError(400, s?.error || "missing", s?.message || `no reply for ${c.key}`));
            else {
              const out = Object.fromEntries(Object.entries(s).map(([k, v]) => [k, unpackF8(v)]));
              if (out.step?.same_as === "x") out.step = out.x.slice(); // x is _step: sent once
              c.resolve(out);
            }
          }
        }, (e) => chunk.forEach((c) => c.reject(e)));
      }
    }
  }

  /**
   * Resolves in a frame with time left (about 8 ms of chart building per frame), so scrolling stays smooth. Panels
   * in the viewport go first: a frame that builds any of them leaves the panels read ahead below it (the observer's
   * 600 px margin) to a later frame, so the charts the user sees are not held up by charts they might scroll to.
   */
  frameSlot(panel) {
    return new Promise((resolve) => {
      this.frameQueue.push({ resolve, panel });
      if (!this.frameAsked) this.askFrame();
    });
  }

  askFrame(late = false) {
    this.frameAsked = true;
    // late: after this frame is painted, so the next frame's first callbacks are those the charts just built
    // registered (their "drawn" marks), not the building of the charts that waited.
    const ask = () => requestAnimationFrame(() => { this.frameAsked = false; this.runFrame(); });
    if (late) setTimeout(ask, 0); else ask();
  }

  runFrame() {
    const t0 = performance.now();
    this.frameWidth = null; // chartWidth() measures again in this frame
    // Building a chart takes a frame or more on a slow machine: while the page is being scrolled (a scroll event
    // in the last SCROLL_QUIET_MS) charts wait, so the scroll itself stays smooth; then they are built, about 8 ms
    // per frame for a while after a scroll, as fast as they come otherwise (the first screen).
    const since = t0 - this.lastScroll;
    if (since < SCROLL_QUIET_MS) {
      this.frameAsked = true;
      setTimeout(() => requestAnimationFrame(() => { this.frameAsked = false; this.runFrame(); }), SCROLL_QUIET_MS - since);
      return;
    }
    const budget = since < 500 ? 8 : 50;
    this.inFrame = true; // until this frame is painted (a task queued now runs after it): painted()
    setTimeout(() => { this.inFrame = false; }, 0);
    const seen = this.frameQueue.filter((j) => j.panel?.inView);
    const jobs = seen.length ? seen : this.frameQueue;
    let ran = 0;
    while (ran < jobs.length && performance.now() - t0 < budget) jobs[ran++].resolve();
    const done = new Set(jobs.slice(0, ran));
    this.frameQueue = this.frameQueue.filter((j) => !done.has(j));
    if (this.frameQueue.length) this.askFrame(seen.length > 0);
  }

  /**
   * Resolves once what was drawn so far has been painted: right after the frame being built when called from one
   * (frameSlot), else after the next frame. A chart's "drawn" time is then when it reached the screen, not when the
   * frame after it started.
   */
  painted() {
    return new Promise((resolve) => {
      if (this.inFrame) setTimeout(resolve, 0);
      else requestAnimationFrame(() => setTimeout(resolve, 0));
    });
  }

  /**
   * The width of a line panel's chart, measured once per frame: the charts built in one frame all have the width
   * of a grid column, and measuring after each chart was added laid the page out again for every one.
   */
  chartWidth(panel) {
    if (panel.el.classList.contains("fullscreen")) return null; // the chart measures its own box
    if (!this.frameWidth) {
      if (!(panel.box.getBoundingClientRect().width > 0)) return null; // not laid out: nothing to share
      this.frameWidth = width(panel.box);
    }
    return this.frameWidth;
  }

  /** M4 buckets for a line panel: its chart's width in device pixels, within [MIN_BUCKETS, BUCKETS]. */
  bucketsFor(panel) {
    const w = this.chartWidth(panel) ?? width(panel.box);
    return Math.max(MIN_BUCKETS, Math.min(BUCKETS, Math.ceil(w * (window.devicePixelRatio || 1))));
  }

  axisFor(key) { return this.xOverride || stepMetricOf(this.infos, key) || "_step"; }

  zoomFor(panel) {
    const z = this.zoom;
    if (!z) return null;
    if (z.key === panel.key || (z.section !== null && z.section === sectionOf(panel.key))) return z.range;
    return null;
  }

  /** A panel was zoomed (range) or reset (null): with sync zoom on, its whole section follows. */
  zoomed(panel, range) {
    const section = sectionOf(panel.key);
    this.zoom = range ? (this.sync ? { range, key: null, section } : { range, key: panel.key, section: null }) : null;
    for (const pl of this.panels) {
      if (!(pl instanceof LinePanel)) continue;
      if (pl === panel || (this.sync && sectionOf(pl.key) === section) || (!range && pl.zoom)) pl.setZoom(range);
    }
    this.saveUrl();
  }

  fullscreen(panel) {
    const on = this.full !== panel;
    if (this.full) {
      this.full.el.classList.remove("fullscreen");
      this.full.free?.();
      this.full.draw?.();
    }
    this.full = on ? panel : null;
    document.body.classList.toggle("has-fullscreen", on);
    if (on) {
      panel.el.classList.add("fullscreen");
      panel.free?.();
      if (panel.loaded) panel.draw?.(); else panel.ensure();
    }
  }

  saveUrl() {
    const q = new URLSearchParams();
    for (const [k, v] of this.route.params) if (!["x", "q", "smooth", "logy", "logx", "sync", "zoom", "zkey", "zsec"].includes(k)) q.set(k, v);
    if (this.xOverride) q.set("x", this.xOverride);
    if (this.search.value) q.set("q", this.search.value);
    if (this.smoothing) q.set("smooth", String(this.smoothing));
    if (this.logY) q.set("logy", "1");
    if (this.logX) q.set("logx", "1");
    if (this.sync) q.set("sync", "1");
    if (this.zoom) {
      q.set("zoom", this.zoom.range.map((v) => String(v)).join(","));
      if (this.zoom.key) q.set("zkey", this.zoom.key); else q.set("zsec", this.zoom.section);
    }
    const base = location.hash.split("?")[0];
    const s = q.toString();
    history.replaceState(null, "", `${base}${s ? `?${s}` : ""}`);
  }

  applySearch() {
    const test = matcher(this.search.value);
    let n = 0;
    for (const pl of this.panels) {
      const hit = test(pl.key);
      pl.el.hidden = !hit;
      if (hit) n++;
    }
    for (const box of this.main.querySelectorAll("details.section[data-section]:not(#overview)")) {
      const shown = box.querySelectorAll(".panel:not([hidden])").length;
      box.hidden = shown === 0 && this.panels.length > 0;
    }
    this.searchCount.textContent = `${n} of ${this.panels.length} panels`;
    this.searchCount.dataset.count = String(n);
  }

  setAxes(options) {
    const want = ["", ...options];
    if (this.xOverride && !want.includes(this.xOverride)) want.push(this.xOverride);
    if ([...this.axisSel.options].map((o) => o.value).join(",") === want.join(",")) return;
    this.axisSel.replaceChildren(...want.map((a) => el("option", { value: a, selected: a === this.xOverride },
      a || "per key (define_metric)")));
  }

  add(panel, into) {
    panel.el.__panel = panel;
    into.append(panel.el);
    this.panels.push(panel);
    panel.zoom = this.zoomFor(panel);
    this.observer.observe(panel.el);
    this.inViewObserver.observe(panel.el);
  }

  clearPanels() {
    for (const pl of this.panels) pl.destroy();
    this.panels = [];
    this.full = null;
    document.body.classList.remove("has-fullscreen");
    this.observer.disconnect();
    this.inViewObserver.disconnect();
    state.charts = {};
  }

  dispose() {
    super.dispose();
    this.clearPanels();
    window.removeEventListener("resize", this.onResize);
    window.removeEventListener("keydown", this.onKey);
    window.removeEventListener("scroll", this.onScroll);
  }
}

// --- a list of images under one key: a gallery (#20) ----------------------------------------------------------
// `wandb.log({"samples": [wandb.Image(a), wandb.Image(b)]})` is an `other` column (a list) whose values are image
// references. The column's kind does not say so, so the strings-and-values table finds such columns when it reads
// them and hands each to its own stepped panel (kind "images"): W&B's media panel, thumbnails with captions at the
// step the slider picks.

/** A non-empty list whose every element is a stored image reference (`{"_type": "image", "sha256": ...}`). */
function isImageList(v) {
  return Array.isArray(v) && v.length > 0
    && v.every((x) => x && typeof x === "object" && x._type === "image" && typeof x.sha256 === "string");
}

/**
 * Move the table's columns whose logged values are all lists of images into gallery panels placed before the
 * table; the table keeps the rest, or leaves the page when none is left. Returns whether the table left.
 */
function splitGalleries(table) {
  const page = table.page;
  const lists = table.cols.filter((c) => {
    const vals = [...table.byStep.values()].map((r) => r[c.label]).filter((v) => v !== undefined && v !== null);
    return vals.length > 0 && vals.every(isImageList);
  });
  if (!lists.length) return false;
  for (const c of lists) {
    const g = new SteppedPanel(page, c.key, "images", c.label);
    g.el.classList.add("wide");
    page.add(g, table.el.parentElement);
    table.el.before(g.el);
  }
  table.cols = table.cols.filter((c) => !lists.includes(c));
  const gone = !table.cols.length;
  if (gone) {
    page.observer.unobserve(table.el);
    page.panels = page.panels.filter((pl) => pl !== table);
    table.el.remove();
  }
  page.applySearch();
  return gone;
}

/** A summary cell: a list of images as "N images" (its JSON is long and says nothing), else the value. */
function summaryText(v) {
  return isImageList(v) ? `${v.length} image${v.length === 1 ? "" : "s"}` : valueText(v);
}

/** One step's list of images as thumbnails with captions (each blob read once per page, as a single image's). */
async function renderGallery(panel, v, step) {
  const list = isImageList(v) ? v : [];
  const urls = await Promise.all(list.map((im) => panel.blobUrl(im.sha256)));
  if (panel.steps[panel.index] !== step) return; // the slider moved on meanwhile
  panel.view.replaceChildren(el("div", { class: "gallery" }, list.map((im, j) => el("figure", { "data-index": j },
    el("img", { class: "media thumb", src: urls[j], alt: `${panel.key} ${j}`, "data-sha": im.sha256 }),
    el("figcaption", { class: "note" }, im.caption || `${im.width}×${im.height} ${im.format}`)))));
  panel.el.dataset.shas = list.map((im) => im.sha256).join(",");
  panel.el.dataset.shownStep = String(step); // what the gallery holds (data-step is the slider's, set first)
  panel.note.textContent = `${list.length} image${list.length === 1 ? "" : "s"} · ${panel.steps.length} logged step${panel.steps.length === 1 ? "" : "s"}`;
}

class RunPage extends PanelsView {
  constructor(main, route) {
    super(main, route);
    this.run = route.run;
    this.path = runPath(this.project, this.run);
    this.blobs = new Map();
    this.colSig = null;
    this.configQ = "";
    this.title = el("h1", {}, this.run);
    this.counters = el("div", { class: "counters" });
    this.live = el("span", { class: "live", id: "live" });
    this.head = el("div", { id: "run-head" });
    this.body = el("div", { id: "run-body" });
    main.replaceChildren(this.title, this.counters, this.head, this.toolbar, this.live, this.body);
  }

  notFound() {
    return `Run "${this.run}" does not exist in project "${this.project}". Check the run id (runs of this ` +
      "project are listed on the project page).";
  }

  async refresh() {
    const info = await (takePrefetched(this.path) || get(`${this.path}/page_info`, { rejections: 500 }));
    performance.mark("stepline:info");
    this.rowsThrough = info.last_step ?? -1; // the panels read at least this far
    this.update(info);
    // The live stream opens, and reads ahead of the viewport start, once the first screen of panels is drawn (they
    // would compete with its reads and its main thread); at most 2 s after the page's info arrived.
    const first = this.panels.filter((pl) => pl.inView);
    this.holdAhead = first.length > 0;
    Promise.race([Promise.all(first.map((pl) => pl.shown)), new Promise((r) => { this.connectTimer = setTimeout(r, 2000); })])
      .then(() => {
        clearTimeout(this.connectTimer);
        if (!this.alive) return;
        this.holdAhead = false;
        this.pump();
        this.connect();
      });
  }

  /** The live stream: one per page; reconnects with a growing pause when the connection breaks (not on 4xx). */
  connect(pause = 1000) {
    if (this.stream || !this.alive || ["finished", "crashed"].includes(this.info?.state)) return;
    // since: the last step this page has read, so rows committed before the stream opened still arrive.
    const since = this.rowsThrough ?? -1;
    follow(this, `${this.path}/events`, { interval: LIVE_S, since }, "live: connected", pause, () => {
      if (this.alive && !["finished", "crashed"].includes(this.info?.state)) this.connect();
    });
  }

  onEvent(name, data) {
    state.live.events++;
    state.live.names[name] = (state.live.names[name] || 0) + 1;
    if (name === "run") this.update(data);
    else if (name === "run_delta") this.update(applyDelta(this.info, data));
    else if (name === "rows") {
      this.rowsThrough = data.last_step;
      state.live.rows += data.rows.length;
      for (const pl of this.panels) pl.append(data.rows);
    } else if (name === "reset") {
      this.rowsThrough = data.last_step;
      for (const pl of this.panels) {
        if (!pl.loaded) continue;
        pl.s = null;
        pl.loaded = false;
        if (pl.visible) pl.ensure(); else pl.stale = true;
      }
    } else if (name === "end") {
      this.live.textContent = `live: run ${data.state}`;
      this.live.dataset.state = "ended";
    } else if (name === "gone") {
      this.live.textContent = "live: the run was deleted";
      this.live.dataset.state = "gone";
    }
  }

  update(info) {
    this.info = info;
    this.infos = [info];
    this.header(info);
    if (!info.rows) {
      if (!this.body.querySelector("#no-data")) {
        this.clearPanels();
        this.colSig = null;
        this.body.replaceChildren(el("div", { class: "empty", id: "no-data" }, "No data logged yet"));
      }
      this.headInfo(info);
      return;
    }
    const colSig = JSON.stringify([info.columns, info.metrics]);
    const fresh = colSig !== this.colSig;
    if (fresh) {
      this.colSig = colSig;
      this.build(info);
      performance.mark("stepline:built");
    }
    this.headInfo(info);
    // The first screen starts reading now rather than when the IntersectionObserver first reports (a frame later).
    // All positions are read before any panel is shown: show() writes to the DOM, and a read after a write lays
    // the page out again (30 panels made 30 layouts).
    if (fresh) {
      for (const pl of this.panels.filter((p) => !p.el.hidden && inViewport(p.el))) {
        pl.inView = true; // before the observer's first report, which comes with the next frame
        pl.show();
      }
    }
  }

  headInfo(info) {
    const ov = overview(info, this.configQ, (q) => {
      this.configQ = q;
      const tree = configTree(this.info.config, q);
      this.head.querySelector("#config").replaceChildren(tree || el("span", { class: "muted" }, "no match"));
    });
    const wasOpen = this.head.querySelector("#overview")?.open;
    if (wasOpen === false) ov.open = false;
    const focused = document.activeElement?.id === "config-search";
    const problems = problemsPanel(info);
    this.head.replaceChildren(ov, ...(problems ? [problems] : []));
    if (focused) {
      const i = this.head.querySelector("#config-search");
      i.focus();
      i.setSelectionRange(i.value.length, i.value.length);
    }
  }

  header(info) {
    this.title.replaceChildren(info.name, " ", badge(shownState(info)));
    this.counters.replaceChildren(...[["last step", info.last_step], ["rows", info.rows],
      ["columns", info.column_count], ["rejected calls", info.rejected], ["warnings", info.warning_count]]
      .map(([k, v]) => el("span", { "data-counter": k }, `${k} `, el("b", {}, fmt(v)))));
    this.setAxes(axisOptions([info]));
  }

  build(info) {
    this.clearPanels();
    const hidden = hiddenKeys(info);
    const kinds = new Map();
    for (const c of info.columns) {
      if (!kinds.has(c.key)) kinds.set(c.key, []);
      kinds.get(c.key).push(c);
    }
    const sections = new Map();
    for (const [key, cols] of [...kinds.entries()].sort(([a], [b]) => byText(a, b))) {
      if (hidden(key)) continue;
      const sec = sectionOf(key);
      if (!sections.has(sec)) sections.set(sec, []);
      for (const c of cols) sections.get(sec).push({ ...c, label: cols.length > 1 ? c.field : c.key });
    }
    this.body.replaceChildren();
    for (const [name, cols] of [...sections.entries()].sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : byText(a, b)))) {
      const [box, panels] = sectionBox(name, new Set(cols.map((c) => c.key)).size);
      this.body.append(box);
      const scalars = [];
      for (const c of cols) {
        if (c.kind === "number") this.add(new LinePanel(this, c.label), panels);
        else if (MEDIA_KINDS.has(c.kind)) this.add(new SteppedPanel(this, c.key, c.kind, c.label), panels);
        else if (SCALAR_KINDS.has(c.kind)) scalars.push(c);
      }
      if (scalars.length) this.add(new ScalarTablePanel(this, name, scalars), panels);
    }
    this.applySearch();
  }

  dispose() {
    super.dispose();
    clearTimeout(this.retry);
    clearTimeout(this.connectTimer);
    this.stream?.abort();
    this.stream = null;
  }
}

/** The same key from several runs on one chart (legend values follow the cursor). */
class ComparePanel extends Panel {
  static kind = "compare";

  constructor(page, key) {
    super(page, key, key);
    this.box = el("div", { class: "chart" });
    this.el.append(this.box, this.note);
  }

  get xAxis() { return this.page.axisFor(this.key); }

  setAxis() {
    this.free();
    this.lines = null;
    this.loaded = false;
    if (this.visible) this.ensure();
  }

  async load() {
    const xAxis = this.xAxis;
    const t0 = performance.now();
    const lines = [];
    // One M4 bucket per device pixel of the chart, as on the run page: each run's line keeps every bucket's
    // first, last, min and max, so nothing a pixel could show is lost, at a fraction of 1000 buckets' bytes.
    const buckets = this.page.bucketsFor(this);
    this.buckets = buckets;
    await Promise.all(this.page.infos.map(async (info, i) => {
      if (!info.columns.some((c) => c.key === this.key && c.kind === "number")) return;
      const s = await this.page.sampled(runPath(this.page.project, info.id), this.key, xAxis, this, buckets);
      lines[i] = { label: info.name, run: info.id, x: s.x, y: s.y, step: s.step };
    }));
    if (xAxis !== this.xAxis) return false;
    this.lines = lines.filter(Boolean);
    this.t0 = t0;
    if (this.visible) await this.draw();
    return true;
  }

  /** Live rows of one run: appended to its line (one re-read when a line grows past MAX_LIVE_POINTS). */
  appendRun(run, rows) {
    if (!this.lines) return;
    const xAxis = this.xAxis;
    let line = this.lines.find((l) => l.run === run);
    const fresh = rows.filter((r) => this.key in r && typeof r[xAxis] === "number");
    if (!fresh.length) return;
    if (!line) { // the run's first value of this key: its line starts now
      const info = this.page.infos.find((x) => x.id === run);
      line = { label: info?.name ?? run, run, x: [], y: [], step: [] };
      this.lines.push(line);
    }
    const lastStep = line.step.length ? line.step[line.step.length - 1] : -Infinity;
    const add = fresh.filter((r) => r._step > lastStep);
    if (line.x.length + add.length > MAX_LIVE_POINTS) {
      this.lines = null;
      this.loaded = false;
      if (this.visible) this.ensure(); else this.stale = true;
      return;
    }
    for (const r of add) {
      line.x.push(r[xAxis]);
      line.y.push(r[this.key]);
      line.step.push(r._step);
    }
    if (add.length && this.visible && this.chart) this.draw();
  }

  async draw() {
    if (!this.lines) return;
    await loadUPlot();
    const xAxis = this.xAxis;
    const opts = this.page.chartOpts();
    const sig = JSON.stringify([xAxis, opts]);
    if (this.chart && this.chartSig !== sig) this.free();
    if (!this.chart) {
      this.chartSig = sig;
      this.chart = new MultiLineChart(this.box, { xAxis, yLabel: this.key, smoothing: opts.smoothing, logY: opts.logY,
        height: this.el.classList.contains("fullscreen") ? window.innerHeight - 160 : 220 });
    }
    const have = this.lines;
    this.chart.set(have);
    await nextFrame();
    this.note.textContent = `${have.length} run${have.length === 1 ? "" : "s"} against ${xAxis}`;
    this.el.dataset.runs = String(have.length);
    this.el.dataset.drawn = "1";
    this.el.dataset.drawnAt = performance.now().toFixed(1);
    state.charts[this.key] = { key: this.key, xAxis, buckets: this.buckets,
      runs: Object.fromEntries(have.map((l) => [l.run, { x: l.x, y: l.y }])),
      totalMs: performance.now() - (this.t0 ?? performance.now()) };
  }

  free() {
    this.chart?.destroy();
    this.chart = null;
    this.el.dataset.drawn = "0";
  }

  resize() { this.chart?.resize(); }
}

/** A media key of several runs side by side, one step slider for all: each run shows its value at that step. */
class CompareMediaPanel extends Panel {
  static kind = "compare-media";

  constructor(page, key, kind) {
    super(page, key, key, "wide");
    this.kind = kind;
    this.el.dataset.mediaKind = kind;
    this.slider = el("input", { type: "range", min: 0, max: 0, value: 0, class: "step-slider",
      oninput: () => this.showStep(Number(this.slider.value)) });
    this.stepLabel = el("span", { class: "step-label" });
    this.grid = el("div", { class: "media-grid" });
    this.el.append(el("div", { class: "slider" }, "step", this.slider, this.stepLabel), this.grid, this.note);
    this.charts = [];
  }

  async load() {
    this.byRun = [];
    await Promise.all(this.page.infos.map(async (info, i) => {
      if (!info.columns.some((c) => c.key === this.key)) return;
      const rows = await get(`${runPath(this.page.project, info.id)}/history`, { keys: this.key, samples: 1000, split_kinds: 1 });
      this.byRun[i] = { info, rows: rows.filter((r) => r[this.key] !== undefined && r[this.key] !== null) };
    }));
    this.byRun = this.byRun.filter(Boolean);
    this.steps = [...new Set(this.byRun.flatMap((b) => b.rows.map((r) => r._step)))].sort((a, b) => a - b);
    this.slider.max = String(Math.max(0, this.steps.length - 1));
    this.slider.value = this.slider.max;
    await this.draw();
  }

  draw() { return this.showStep(Number(this.slider.value)); }

  async showStep(i) {
    const step = this.steps[i];
    this.el.dataset.step = String(step);
    this.stepLabel.textContent = `${fmt(step)} (${i + 1}/${this.steps.length})`;
    this.free();
    if (this.kind === "histogram") await loadUPlot();
    const cells = await Promise.all(this.byRun.map(async ({ info, rows }) => {
      // The run's latest value at or before the step (W&B shows the same step; a run that skipped it shows its last).
      let v = null;
      let at = null;
      for (const r of rows) if (r._step <= step) { v = r[this.key]; at = r._step; }
      const cell = el("div", { class: "media-cell", "data-run": info.id, "data-step": at ?? "" },
        el("div", { class: "muted" }, `${info.name}${at !== null && at !== step ? ` (step ${at})` : ""}`));
      if (v === null) cell.append(el("div", { class: "muted" }, "nothing logged yet at this step"));
      else if (this.kind === "image") {
        const b = await get("blobs/" + v.sha256, { project: this.page.project, run: info.id }, "blob");
        cell.append(el("img", { class: "media", src: URL.createObjectURL(b), alt: `${info.name} ${this.key}`, "data-sha": v.sha256 }));
      } else if (this.kind === "histogram") {
        const box = el("div");
        cell.append(box);
        cell.chartData = v;
        cell.chartBox = box;
      } else cell.append(el("pre", {}, JSON.stringify(v).slice(0, 500)));
      return cell;
    }));
    if (Number(this.slider.value) !== i) return;
    for (const img of this.grid.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    this.grid.replaceChildren(...cells);
    for (const c of cells) {
      if (c.chartBox) {
        const ch = new HistogramChart(c.chartBox, { label: this.key, height: 160 });
        ch.set(c.chartData);
        this.charts.push(ch);
      }
    }
    this.note.textContent = `${this.byRun.length} runs`;
  }

  free() {
    for (const c of this.charts) c.destroy();
    this.charts = [];
  }
}

class ComparePage extends PanelsView {
  constructor(main, route) {
    super(main, route);
    this.runs = route.runs;
    this.colSig = null;
    this.counters = el("div", { class: "counters", id: "compare-runs" });
    this.live = el("span", { class: "live", id: "live" });
    this.body = el("div", { id: "compare-body" });
    main.replaceChildren(el("h1", {}, `Compare ${this.runs.length} runs`), this.counters, this.toolbar, this.live,
      this.body);
  }

  async refresh() {
    const infos = [];
    await Promise.all(this.runs.map(async (r, i) => {
      try {
        const path = runPath(this.project, r);
        infos[i] = await (takePrefetched(path) || get(`${path}/page_info`, { rejections: 0 }));
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) throw e;
      }
    }));
    this.infos = infos.filter(Boolean);
    this.rowsThrough = new Map(this.infos.map((i) => [i.id, i.last_step ?? -1])); // what the panels read at least
    this.build();
    // Live runs stream their rows once the first screen has its data (the stream would compete with its reads).
    const first = this.panels.filter((pl) => inViewport(pl.el));
    Promise.race([Promise.all(first.map((pl) => pl.shown)), new Promise((r) => { this.connectTimer = setTimeout(r, 2000); })])
      .then(() => { clearTimeout(this.connectTimer); this.connect(); });
  }

  runBadges() {
    this.counters.replaceChildren(...this.infos.map((i) => el("span", { "data-run": i.id },
      el("a", { href: `#/p/${enc(this.project)}/r/${enc(i.id)}` }, i.name), " ", badge(shownState(i)))));
  }

  /** The panels for the runs' keys; rebuilt only when the set of keys (or runs) changed. */
  build() {
    this.setAxes(axisOptions(this.infos));
    this.runBadges();
    const cols = this.infos.flatMap((i) => i.columns);
    const keys = [...new Set(cols.filter((c) => c.kind === "number").map((c) => c.key))].sort();
    const media = [...new Map(cols.filter((c) => c.kind === "image" || c.kind === "histogram").map((c) => [c.key, c.kind]))]
      .sort(([a], [b]) => byText(a, b));
    const colSig = JSON.stringify([keys, media, this.infos.map((i) => i.id)]);
    if (colSig === this.colSig) return;
    const rebuild = this.colSig !== null;
    this.colSig = colSig;
    this.clearPanels();
    const missing = this.runs.filter((r) => !this.infos.some((i) => i.id === r));
    this.body.replaceChildren(
      ...(missing.length ? [el("div", { class: "err", id: "missing-runs" }, `No such run in ${this.project}: ${missing.join(", ")}`)] : []));
    if (!keys.length && !media.length) this.body.append(el("div", { class: "empty", id: "no-data" }, "No data logged yet"));
    const sections = new Map();
    const put = (k, make) => {
      if (!sections.has(sectionOf(k))) sections.set(sectionOf(k), []);
      sections.get(sectionOf(k)).push(make);
    };
    for (const k of keys) put(k, () => new ComparePanel(this, k));
    for (const [k, kind] of media) put(k, () => new CompareMediaPanel(this, k, kind));
    for (const [name, makers] of [...sections.entries()].sort(([a], [b]) => byText(a, b))) {
      const [box, panels] = sectionBox(name, makers.length);
      this.body.append(box);
      for (const make of makers) this.add(make(), panels);
    }
    this.applySearch();
    if (rebuild) for (const pl of this.panels.filter((p) => !p.el.hidden && inViewport(p.el))) pl.show(); // reads, then writes
  }

  /** One stream for every run of the compare that is still running (`.../projects/{p}/events?run=…`). */
  connect(pause = 1000) {
    const live = this.infos.filter((i) => !["finished", "crashed"].includes(i.state));
    if (this.stream || !this.alive || !live.length) return;
    const params = { interval: LIVE_S, run: live.map((i) => i.id), since: live.map((i) => this.rowsThrough.get(i.id) ?? -1) };
    follow(this, `projects/${enc(this.project)}/events`, params,
      `live: following ${live.length} run${live.length === 1 ? "" : "s"}`, pause, () => { if (this.alive) this.connect(); });
  }

  onEvent(name, data) {
    state.live.events++;
    state.live.names[name] = (state.live.names[name] || 0) + 1;
    const i = this.infos.findIndex((x) => x.id === (name === "run" ? data.id : data.run));
    if (i < 0) return;
    const run = this.infos[i].id;
    if (name === "run" || name === "run_delta") {
      this.infos[i] = name === "run" ? data : applyDelta(this.infos[i], data);
      this.build();
    } else if (name === "rows") {
      this.rowsThrough.set(run, data.last_step);
      state.live.rows += data.rows.length;
      for (const pl of this.panels) pl.appendRun?.(run, data.rows);
    } else if (name === "reset") {
      this.rowsThrough.set(run, data.last_step);
      for (const pl of this.panels) {
        if (!pl.loaded) continue;
        pl.loaded = false;
        if (pl.visible) pl.ensure(); else pl.stale = true;
      }
    } else if (name === "end" || name === "gone") {
      this.infos[i] = { ...this.infos[i], state: name === "gone" ? "deleted" : data.state };
      this.runBadges();
      const left = this.infos.filter((x) => !["finished", "crashed", "deleted"].includes(x.state)).length;
      this.live.textContent = left ? `live: following ${left} run${left === 1 ? "" : "s"}` : "live: every run ended";
      if (!left) this.live.dataset.state = "ended";
    }
  }

  dispose() {
    super.dispose();
    clearTimeout(this.retry);
    clearTimeout(this.connectTimer);
    this.stream?.abort();
    this.stream = null;
  }
}

// --- routing and the key form -----------------------------------------------------------------------------------

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, query] = h.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  if (parts[0] === "p" && parts[1]) {
    if (parts[2] === "r" && parts[3]) return { view: "run", project: parts[1], run: parts[3], params };
    if (parts[2] === "compare") {
      return { view: "compare", project: parts[1], runs: (params.get("runs") || "").split(",").filter(Boolean), params };
    }
    return { view: "runs", project: parts[1], params };
  }
  return { view: "projects", params };
}

function crumbs(route) {
  const out = [];
  if (route.project) out.push(" › ", el("a", { href: `#/p/${enc(route.project)}` }, route.project));
  if (route.run) out.push(" › ", el("span", {}, route.run));
  if (route.view === "compare") out.push(" › compare");
  document.getElementById("crumbs").replaceChildren(...out);
}

let current = null;

function route() {
  current?.dispose();
  current = null;
  state.charts = {};
  const r = parseHash();
  const main = document.getElementById("main");
  main.replaceChildren();
  crumbs(r);
  const V = { projects: ProjectsView, runs: RunsView, run: RunPage, compare: ComparePage }[r.view];
  current = new V(main, r);
  state.view = r.view;
  state.current = current;
  current.start();
}

function keyForm() {
  const input = document.getElementById("key-input");
  const forget = document.getElementById("key-forget");
  const sync = () => {
    const has = Boolean(localStorage.getItem(KEY_STORE));
    forget.hidden = !has;
    input.placeholder = has ? "key saved in this browser" : "API key (slk_…)";
  };
  document.getElementById("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    if (v) localStorage.setItem(KEY_STORE, v);
    input.value = "";
    sync();
    route();
  });
  forget.addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    sync();
    route();
  });
  sync();
}

window.addEventListener("hashchange", route);
keyForm();
performance.mark("stepline:app");
route();
