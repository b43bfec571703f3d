// stepline's web page: projects → runs → a run's panels (or several runs compared), over the gateway's read API.
// Plain ES module, no build step. Hash routes: #/ · #/p/PROJECT · #/p/PROJECT/r/RUN · #/p/PROJECT/compare?runs=a,b
// State for tests and debugging lives on window.__stepline (charts' drawn data, render timings).

import { HistogramChart, LineChart, MultiLineChart, num } from "./charts.js";

const KEY_STORE = "stepline.apiKey";
const POLL_MS = Number(localStorage.getItem("stepline.pollMs")) || 2000;
// A running run with no update for this long is shown as idle (its process may be gone without a finish).
const IDLE_S = (Number(localStorage.getItem("stepline.idleMinutes")) || 5) * 60;
const SPECIAL_AXES = ["_step", "_runtime", "_timestamp"];
const MEDIA_KINDS = new Set(["histogram", "image", "plot", "html", "table"]);
const SCALAR_KINDS = new Set(["string", "bool", "other"]);

const state = (window.__stepline = { charts: {}, view: null, requests: 0 });

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

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en-US") : v.toPrecision(6).replace(/\.?0+$/, "");
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ");
}

export function shownState(run) {
  if (run.state === "running" && run.updated_at && Date.now() / 1000 - run.updated_at > IDLE_S) return "idle";
  return run.state;
}

const badge = (s) => el("span", { class: `badge ${s}`, "data-state": s }, s);
const sectionOf = (key) => (key.includes("/") ? key.slice(0, key.indexOf("/")) : "");

// --- the read API -----------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.detail = message;
  }
}

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

async function get(path, params = {}, as = "json") {
  const url = new URL(`api/v1/${path}`, document.baseURI);
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) url.searchParams.set(k, String(v));
  const headers = {};
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers.Authorization = `Bearer ${key}`;
  state.requests++;
  const r = await fetch(url, { headers, cache: as === "blob" ? "default" : "no-store" });
  if (!r.ok) {
    let body = {};
    try { body = await r.json(); } catch { /* not JSON: keep the status */ }
    const err = new ApiError(r.status, body.error || `http_${r.status}`, body.message || r.statusText);
    if (r.status === 401 || r.status === 403) showAuthError(err);
    throw err;
  }
  document.getElementById("auth-error").hidden = true;
  if (as === "blob") return r.blob();
  if (as === "text") return r.text();
  return r.json();
}

const runPath = (p, r) => `projects/${enc(p)}/runs/${enc(r)}`;

// --- views ------------------------------------------------------------------------------------------------------

class View {
  constructor(main, route) {
    this.main = main;
    this.route = route;
    this.alive = true;
    this.timer = null;
  }

  start() { this.tick(); }

  async tick() {
    if (!this.alive) return;
    try {
      await this.refresh();
    } catch (e) {
      if (this.alive) this.fail(e);
    }
    if (this.alive) this.timer = setTimeout(() => this.tick(), POLL_MS);
  }

  fail(e) {
    console.error(e);
    const auth = e instanceof ApiError && (e.status === 401 || e.status === 403);
    let box = this.main.querySelector(":scope > .view-error");
    if (!box) {
      box = el("div", { class: auth ? "empty view-error" : "err view-error", id: auth ? "auth-needed" : null });
      this.main.prepend(box);
    }
    box.textContent = auth ? authMessage(e) : `Could not load: ${e.message}`;
  }

  clearError() { this.main.querySelector(":scope > .view-error")?.remove(); }

  dispose() {
    this.alive = false;
    clearTimeout(this.timer);
  }
}

class ProjectsView extends View {
  async refresh() {
    const { projects } = await get("projects");
    this.clearError();
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

class RunsView extends View {
  constructor(main, route) {
    super(main, route);
    this.selected = new Set();
    this.runs = [];
    const p = route.project;
    this.filter = el("input", { id: "run-filter", type: "search", placeholder: "filter by name or id",
      oninput: () => this.render() });
    this.stateSel = el("select", { id: "state-filter", onchange: () => this.render() },
      ["all", "running", "idle", "finished", "crashed"].map((s) => el("option", { value: s }, s)));
    this.compareBtn = el("button", { id: "compare-btn", disabled: true, onclick: () => {
      location.hash = `#/p/${enc(p)}/compare?runs=${[...this.selected].map(enc).join(",")}`;
    } }, "Compare selected");
    this.tbody = el("tbody");
    this.empty = el("div", { class: "empty", hidden: true }, "No runs in this project yet.");
    main.replaceChildren(el("h1", {}, p),
      el("div", { class: "toolbar" }, this.filter, this.stateSel, this.compareBtn,
        el("span", { class: "live" }, `refreshes every ${POLL_MS / 1000} s`)),
      el("table", { class: "list", id: "runs" }, el("thead", {}, el("tr", {},
        el("th", {}, ""), el("th", {}, "run"), el("th", {}, "state"), el("th", { class: "num" }, "last step"),
        el("th", { class: "num" }, "rows"), el("th", { class: "num" }, "columns"),
        el("th", { class: "num" }, "rejected calls"), el("th", { class: "num" }, "warnings"), el("th", {}, "updated"))),
      this.tbody), this.empty);
  }

  async refresh() {
    const { runs } = await get(`projects/${enc(this.route.project)}/runs`);
    this.clearError();
    this.runs = runs;
    this.render();
  }

  render() {
    const q = this.filter.value.trim().toLowerCase();
    const want = this.stateSel.value;
    const shown = this.runs.filter((r) => (!q || r.name.toLowerCase().includes(q) || r.id.toLowerCase().includes(q))
      && (want === "all" || shownState(r) === want));
    this.tbody.replaceChildren(...shown.map((r) => el("tr", { "data-run": r.id },
      el("td", {}, el("input", { type: "checkbox", checked: this.selected.has(r.id), onchange: (ev) => {
        if (ev.target.checked) this.selected.add(r.id); else this.selected.delete(r.id);
        this.compareBtn.disabled = this.selected.size < 2;
      } })),
      el("td", {}, el("a", { href: `#/p/${enc(r.project)}/r/${enc(r.id)}` }, r.name),
        r.name !== r.id ? el("span", { class: "muted" }, ` ${r.id}`) : null),
      el("td", {}, badge(shownState(r))),
      el("td", { class: "num" }, fmt(r.last_step)), el("td", { class: "num" }, fmt(r.rows)),
      el("td", { class: "num" }, fmt(r.column_count)), el("td", { class: "num" }, fmt(r.rejected)),
      el("td", { class: "num" }, fmt(r.warning_count)), el("td", {}, ago(r.updated_at)))));
    this.empty.hidden = this.runs.length > 0;
    this.compareBtn.disabled = this.selected.size < 2;
  }
}

// --- panels -----------------------------------------------------------------------------------------------------

/** Panels load when they first scroll into view; loaded panels reload when the run changes (live). */
class Panel {
  constructor(page, key, title, extraClass = "") {
    this.page = page;
    this.key = key;
    this.loaded = false;
    this.loading = null;
    this.loads = 0;
    this.el = el("div", { class: `panel ${extraClass}`, "data-key": key, "data-kind": this.constructor.kind });
    this.note = el("div", { class: "note" });
    this.el.append(el("h3", {}, el("span", { class: "title" }, title), this.badge = el("small")));
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
        this.loads++;
        this.el.dataset.loads = String(this.loads);
        this.el.querySelector(":scope > .err")?.remove();
      } catch (e) {
        if (!(e instanceof ApiError && (e.status === 401 || e.status === 403))) console.error(e);
        let box = this.el.querySelector(":scope > .err");
        if (!box) this.el.append(box = el("div", { class: "err" }));
        box.textContent = e.message;
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

  resize() {}

  destroy() {}
}

class LinePanel extends Panel {
  static kind = "line";

  constructor(page, key) {
    super(page, key, key);
    this.zoom = null;
    this.box = el("div", { class: "chart" });
    this.el.append(this.box, this.note);
  }

  setAxis() {
    this.chart?.destroy();
    this.chart = null;
    this.zoom = null;
    if (this.loaded) this.ensure();
  }

  async load(live) {
    if (live && this.zoom) return; // a zoomed chart keeps the range the user chose
    const xAxis = this.page.xAxis;
    const zoom = this.zoom;
    const t0 = performance.now();
    const s = await get(`${this.page.path}/sampled`, { key: this.key, x_axis: xAxis, buckets: 1000,
      x_min: zoom?.[0], x_max: zoom?.[1] });
    const t1 = performance.now();
    if (xAxis !== this.page.xAxis || zoom !== this.zoom) return false; // changed while this was in flight
    if (!this.chart) {
      this.chart = new LineChart(this.box, { label: this.key, xAxis,
        onZoom: (a, b) => { this.zoom = [a, b]; this.ensure(); },
        onReset: () => { this.zoom = null; this.ensure(); } });
    }
    this.chart.set(s, this.zoom !== null);
    await nextFrame();
    const t2 = performance.now();
    this.note.textContent = !s.x.length ? `no points of ${this.key} against ${xAxis}`
      : `${s.count.toLocaleString("en-US")} points${s.sampled ? `, ${s.x.length} drawn (M4, 1000 buckets; band = bucket min–max)` : ""}` +
        `${this.zoom ? " · zoomed (double-click to reset)" : ""}`;
    Object.assign(this.el.dataset, { points: String(s.x.length), count: String(s.count), xAxis,
      renderMs: (t2 - t0).toFixed(1), zoomed: this.zoom ? "1" : "0" });
    state.charts[this.key] = { key: this.key, xAxis, x: s.x, y: s.y, count: s.count, sampled: s.sampled,
      zoom: this.zoom, fetchMs: t1 - t0, drawMs: t2 - t1, totalMs: t2 - t0, loads: this.loads + 1,
      drawn: this.chart.data };
  }

  resize() { this.chart?.resize(); }

  destroy() { this.chart?.destroy(); }
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
    this.slider = el("input", { type: "range", min: 0, max: 0, value: 0, class: "step-slider",
      oninput: () => this.show(Number(this.slider.value)) });
    this.stepLabel = el("span", { class: "step-label" });
    this.view = el("div", { class: "media-view" });
    this.el.append(el("div", { class: "slider" }, "step", this.slider, this.stepLabel), this.view, this.note);
  }

  async load() {
    const rows = await get(`${this.page.path}/history`, { keys: this.key, samples: 1000, split_kinds: 1 });
    const atEnd = this.index < 0 || this.index >= this.steps.length - 1;
    const have = rows.filter((r) => r[this.label] !== undefined && r[this.label] !== null);
    this.steps = have.map((r) => r._step);
    this.values = have.map((r) => r[this.label]);
    this.slider.max = String(Math.max(0, this.steps.length - 1));
    this.note.textContent = `${this.steps.length} logged step${this.steps.length === 1 ? "" : "s"}`;
    const i = atEnd ? this.steps.length - 1 : Math.min(this.index, this.steps.length - 1);
    this.slider.value = String(Math.max(i, 0));
    if (i >= 0 && (i !== this.index || atEnd)) await this.show(i);
  }

  async show(i) {
    this.index = i;
    const step = this.steps[i];
    this.stepLabel.textContent = `${fmt(step)} (${i + 1}/${this.steps.length})`;
    this.el.dataset.step = String(step);
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
      if (!this.chart) this.chart = new HistogramChart(this.view);
      this.chart.set(v);
    } else if (this.kind === "plot") {
      if (v.kind !== "line_series") {
        this.view.replaceChildren(el("pre", {}, JSON.stringify(v).slice(0, 2000)));
        return;
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

  resize() { this.chart?.resize(); }

  destroy() { this.chart?.destroy(); }
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
    const steps = [...byStep.keys()].sort((a, b) => b - a).slice(0, 500);
    this.box.replaceChildren(el("table", { class: "kv" },
      el("thead", {}, el("tr", {}, el("th", {}, "_step"), this.cols.map((c) => el("th", {}, c.label)))),
      el("tbody", {}, steps.map((s) => el("tr", {}, el("td", {}, fmt(s)),
        this.cols.map((c) => el("td", {}, fmt(byStep.get(s)[c.label]))))))));
    this.note.textContent = `${byStep.size} step${byStep.size === 1 ? "" : "s"} shown (latest first, sampled to 500 per key)`;
  }
}

function problemsPanel(info) {
  const rej = info.rejections || [];
  const byReason = Object.entries(info.rejections_by_reason || {});
  const total = byReason.reduce((a, [, n]) => a + n, 0);
  const warnings = [...(info.warnings || []), ...(info.conflicts || []).map((c) => `type conflict: ${c}`)];
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
      : el("div", { class: "note" }, "No rejected calls."),
    warnings.length
      ? el("ul", { class: "problems", id: "warnings" }, warnings.map((w) => el("li", {}, w)))
      : el("div", { class: "note" }, "No warnings."));
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
    el("summary", {}, name || "Charts", el("span", { class: "muted" }, ` (${count})`)), panels);
  return [box, panels];
}

/** Shared by the run page and the compare page: x-axis picker, lazy panels, live reloads, resize. */
class PanelsView extends View {
  constructor(main, route) {
    super(main, route);
    this.project = route.project;
    this.panels = [];
    this.xAxis = route.params.get("x") || "_step";
    this.axisSel = el("select", { id: "x-axis", onchange: () => {
      this.xAxis = this.axisSel.value;
      for (const p of this.panels) p.setAxis?.();
    } });
    this.observer = new IntersectionObserver((entries) => {
      for (const e of entries) if (e.isIntersecting) e.target.__panel?.ensure();
    }, { rootMargin: "300px" });
    this.onResize = () => {
      clearTimeout(this.resizeTimer);
      this.resizeTimer = setTimeout(() => this.panels.forEach((p) => p.resize()), 150);
    };
    window.addEventListener("resize", this.onResize);
  }

  setAxes(options) {
    const have = [...this.axisSel.options].map((o) => o.value).join(",");
    if (have === options.join(",")) return;
    if (!options.includes(this.xAxis)) options = [...options, this.xAxis];
    this.axisSel.replaceChildren(...options.map((a) => el("option", { value: a, selected: a === this.xAxis }, a)));
  }

  add(panel, into) {
    panel.el.__panel = panel;
    into.append(panel.el);
    this.panels.push(panel);
    this.observer.observe(panel.el);
  }

  clearPanels() {
    for (const p of this.panels) p.destroy();
    this.panels = [];
    this.observer.disconnect();
    state.charts = {};
  }

  reloadLoaded() {
    return Promise.all(this.panels.filter((p) => p.loaded).map((p) => p.ensure(true)));
  }

  dispose() {
    super.dispose();
    this.clearPanels();
    window.removeEventListener("resize", this.onResize);
  }
}

class RunPage extends PanelsView {
  constructor(main, route) {
    super(main, route);
    this.run = route.run;
    this.path = runPath(this.project, this.run);
    this.blobs = new Map();
    this.sig = null;
    this.colSig = null;
    this.title = el("h1", {}, this.run);
    this.counters = el("div", { class: "counters" });
    this.live = el("span", { class: "live", id: "live" });
    this.body = el("div", { id: "run-body" });
    main.replaceChildren(this.title, this.counters,
      el("div", { class: "toolbar" }, el("label", {}, "x-axis ", this.axisSel), this.live), this.body);
  }

  async refresh() {
    let info;
    try {
      info = await get(this.path, { rejections: 500 });
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
      info = null; // the run's start is not committed yet
    }
    this.clearError();
    this.live.textContent = `live: checks every ${POLL_MS / 1000} s · last check ${new Date().toLocaleTimeString()}`;
    if (!info || !info.rows) {
      if (!this.body.querySelector("#no-data")) {
        this.clearPanels();
        this.body.replaceChildren(el("div", { class: "empty", id: "no-data" }, "No data logged yet"),
          info ? problemsPanel(info) : null);
      }
      if (info) this.header(info);
      return;
    }
    this.header(info);
    const colSig = JSON.stringify([info.columns, info.metrics]);
    const sig = JSON.stringify([info.rows, info.last_step, info.updated_at, info.rejected, info.warning_count]);
    if (colSig !== this.colSig) {
      this.colSig = colSig;
      this.sig = sig;
      this.build(info);
    } else if (sig !== this.sig) {
      this.sig = sig;
      this.body.querySelector("#problems").replaceWith(problemsPanel(info));
      await this.reloadLoaded();
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
    for (const [key, cols] of [...kinds.entries()].sort(([a], [b]) => a.localeCompare(b))) {
      if (hidden(key)) continue;
      const sec = sectionOf(key);
      if (!sections.has(sec)) sections.set(sec, []);
      for (const c of cols) sections.get(sec).push({ ...c, label: cols.length > 1 ? c.field : c.key });
    }
    this.body.replaceChildren(problemsPanel(info));
    for (const [name, cols] of [...sections.entries()].sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : a.localeCompare(b)))) {
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
  }
}

/** The same key from several runs on one chart. */
class ComparePanel extends Panel {
  static kind = "compare";

  constructor(page, key) {
    super(page, key, key);
    this.box = el("div", { class: "chart" });
    this.el.append(this.box, this.note);
  }

  setAxis() {
    this.chart?.destroy();
    this.chart = null;
    if (this.loaded) this.ensure();
  }

  async load() {
    const xAxis = this.page.xAxis;
    const t0 = performance.now();
    const lines = [];
    await Promise.all(this.page.infos.map(async (info, i) => {
      if (!info.columns.some((c) => c.key === this.key && c.kind === "number")) return;
      const s = await get(`${runPath(this.page.project, info.id)}/sampled`, { key: this.key, x_axis: xAxis, buckets: 1000 });
      lines[i] = { label: info.name, run: info.id, x: s.x, y: s.y };
    }));
    if (xAxis !== this.page.xAxis) return false;
    const have = lines.filter(Boolean);
    if (!this.chart) this.chart = new MultiLineChart(this.box, { xAxis });
    this.chart.set(have);
    await nextFrame();
    this.note.textContent = `${have.length} run${have.length === 1 ? "" : "s"} against ${xAxis}`;
    this.el.dataset.runs = String(have.length);
    state.charts[this.key] = { key: this.key, xAxis, runs: Object.fromEntries(have.map((l) => [l.run, { x: l.x, y: l.y }])),
      totalMs: performance.now() - t0 };
  }

  resize() { this.chart?.resize(); }

  destroy() { this.chart?.destroy(); }
}

class ComparePage extends PanelsView {
  constructor(main, route) {
    super(main, route);
    this.runs = route.runs;
    this.infos = [];
    this.sig = null;
    this.body = el("div", { id: "compare-body" });
    main.replaceChildren(el("h1", {}, `Compare ${this.runs.length} runs`),
      el("div", { class: "toolbar" }, el("label", {}, "x-axis ", this.axisSel)), this.body);
  }

  async refresh() {
    const infos = [];
    for (const r of this.runs) {
      try {
        infos.push(await get(runPath(this.project, r)));
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) throw e;
      }
    }
    this.clearError();
    this.infos = infos;
    this.setAxes(axisOptions(infos));
    const keys = [...new Set(infos.flatMap((i) => i.columns.filter((c) => c.kind === "number").map((c) => c.key)))].sort();
    const colSig = JSON.stringify([keys, infos.map((i) => i.id)]);
    const sig = JSON.stringify(infos.map((i) => [i.rows, i.last_step]));
    if (colSig !== this.colSig) {
      this.colSig = colSig;
      this.sig = sig;
      this.clearPanels();
      this.body.replaceChildren(el("div", { class: "counters" }, infos.map((i) => el("span", {},
        el("a", { href: `#/p/${enc(this.project)}/r/${enc(i.id)}` }, i.name), " ", badge(shownState(i))))));
      if (!keys.length) this.body.append(el("div", { class: "empty", id: "no-data" }, "No data logged yet"));
      const sections = new Map();
      for (const k of keys) {
        if (!sections.has(sectionOf(k))) sections.set(sectionOf(k), []);
        sections.get(sectionOf(k)).push(k);
      }
      for (const [name, ks] of sections) {
        const [box, panels] = sectionBox(name, ks.length);
        this.body.append(box);
        for (const k of ks) this.add(new ComparePanel(this, k), panels);
      }
    } else if (sig !== this.sig) {
      this.sig = sig;
      await this.reloadLoaded();
    }
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
  state.charts = {};
  const r = parseHash();
  const main = document.getElementById("main");
  main.replaceChildren();
  crumbs(r);
  const V = { projects: ProjectsView, runs: RunsView, run: RunPage, compare: ComparePage }[r.view];
  current = new V(main, r);
  state.view = r.view;
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
route();
