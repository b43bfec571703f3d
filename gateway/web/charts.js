// Charts over uPlot (vendored, global `uPlot`): a sampled line with its min–max band, multi-line charts with a
// legend, histograms as bars. Every chart has axis titles, tick labels right at every magnitude (tickLabels), a
// hover tooltip with the exact value and step, and can be resized and destroyed. Smoothing is W&B's / TensorBoard's
// time-weighted EMA with debias (smoothEMA); log scales drop the points a log axis cannot show.

// uPlot is not a <script> of index.html: a deferred script would run before app.js, so before the first reads are
// sent. The page loads it once its first reads are in flight; every chart awaits it. The vendored copy builds its
// Intl objects lazily and asks V8 to compile it while it streams in (vendor/PATCHES.md).
const UPLOT_SRC = "static/vendor/uPlot.iife.min.js";
let uplotReady = null;

/** Resolves once the global `uPlot` exists (loading it the first time); charts are built only after it. */
export function loadUPlot() {
  if (!uplotReady) {
    uplotReady = typeof uPlot !== "undefined" ? Promise.resolve() : new Promise((resolve, reject) => {
      const s = document.createElement("script");
      s.src = UPLOT_SRC;
      s.onload = () => resolve();
      s.onerror = () => { uplotReady = null; reject(new Error("the chart library (uPlot) did not load")); };
      document.head.append(s);
    });
  }
  return uplotReady;
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d",
  "#4f46e5", "#b45309"];
export const color = (i) => COLORS[i % COLORS.length];

// JSON has no ±inf/NaN: the API sends null (missing/NaN) or "Infinity"/"-Infinity"; a chart draws none of them.
export const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** A value as text for a tooltip or table: exact (shortest round-trip form), ±inf and NaN named. */
export function exact(v) {
  if (v === "Infinity" || v === Infinity) return "+inf";
  if (v === "-Infinity" || v === -Infinity) return "-inf";
  if (v === null || v === undefined) return "NaN/missing";
  if (typeof v === "number") return Number.isNaN(v) ? "NaN" : String(v);
  return String(v);
}

function oneLabel(v, digits, sci) {
  if (v === 0) return "0";
  if (sci) {
    const [m, e] = v.toExponential(Math.max(0, digits - 1)).split("e");
    const mant = m.includes(".") ? m.replace(/\.?0+$/, "") : m;
    return `${mant}e${e.replace("+", "")}`;
  }
  let s = Number(v.toPrecision(digits)).toString();
  if (s.includes("e")) s = v.toFixed(Math.min(20, Math.max(0, digits - Math.floor(Math.log10(Math.abs(v))) - 1)));
  return s;
}

/**
 * Tick labels for `splits`: plain decimals between 1e-3 and 1e5, scientific outside, with the fewest significant
 * digits that keep every label distinct (and equal to its tick to within the step between ticks).
 */
export function tickLabels(splits) {
  const vals = splits.filter((v) => v !== null && Number.isFinite(v));
  if (!vals.length) return splits.map(() => "");
  const maxAbs = Math.max(...vals.map(Math.abs));
  const sci = maxAbs >= 1e5 || maxAbs < 1e-3;
  const distinct = new Set(vals).size;
  for (let d = 1; d <= 17; d++) {
    const labels = splits.map((v) => (v === null || !Number.isFinite(v) ? "" : oneLabel(v, d, sci)));
    if (new Set(labels.filter((l) => l !== "")).size === distinct) return labels;
  }
  return splits.map((v) => String(v));
}

const axisValues = (u, splits) => tickLabels(splits);

/**
 * W&B's time-weighted EMA with debias: the weight of a point decays with its x distance (relative to the x range,
 * so the look does not depend on the logging rate), and the first points are not pulled toward 0.
 * `weight` in [0, 1): 0 = no smoothing. Null (or non-finite) y stay null and leave the average untouched.
 */
export function smoothEMA(x, y, weight) {
  const out = new Array(y.length).fill(null);
  if (!(weight > 0)) {
    for (let i = 0; i < y.length; i++) out[i] = num(y[i]);
    return out;
  }
  const w = Math.min(Math.sqrt(weight), 0.999);
  let first = null;
  let last = null;
  for (let i = 0; i < x.length; i++) {
    if (num(x[i]) === null) continue;
    if (first === null) first = x[i];
    last = x[i];
  }
  const range = last !== null && last > first ? last - first : 1;
  let acc = 0;
  let debias = 0;
  let prevX = null;
  for (let i = 0; i < y.length; i++) {
    const yi = num(y[i]);
    const xi = num(x[i]);
    if (yi === null || xi === null) continue;
    const dx = prevX === null ? 0 : ((xi - prevX) / range) * 1000;
    const k = Math.pow(w, dx);
    acc = acc * k + yi;
    debias = debias * k + 1;
    out[i] = acc / debias;
    prevX = xi;
  }
  return out;
}

export function width(el) {
  return Math.max(240, Math.floor(el.getBoundingClientRect().width) - 4);
}

const timeAxis = (xAxis) => xAxis === "_timestamp";

/**
 * The index of the sampling bucket holding x (`s.bucket_x0/x1`, ascending), or -1: a binary search, for the tooltip.
 */
export function bucketAt(s, x) {
  const x0 = s.bucket_x0;
  const x1 = s.bucket_x1;
  if (!s.sampled || !x0 || !x0.length || x === null) return -1;
  let lo = 0;
  let hi = x0.length - 1;
  while (lo < hi) { // the last bucket starting at or before x
    const mid = (lo + hi + 1) >> 1;
    if (x0[mid] <= x) lo = mid; else hi = mid - 1;
  }
  return x0[lo] <= x && x <= x1[lo] ? lo : -1;
}

/**
 * Each sampling bucket's min–max as a filled box over the bucket's x range (at least a pixel wide), drawn under the
 * line. Drawn by the chart itself rather than as two more uPlot series with a band between them, which cost a
 * per-point copy of the bucket bounds and two more paths over every point (one box per bucket is a few hundred).
 */
function drawBand(u, s, logY) {
  const n = s.sampled && s.bucket_x0 ? s.bucket_x0.length : 0;
  if (!n) return;
  const { ctx } = u;
  const { left, top, width: w, height: h } = u.bbox;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, w, h);
  ctx.clip();
  ctx.fillStyle = "rgba(37,99,235,0.14)";
  ctx.beginPath();
  for (let b = 0; b < n; b++) {
    const lo = num(s.bucket_min[b]);
    const hi = num(s.bucket_max[b]);
    if (lo === null || hi === null || (logY && lo <= 0)) continue; // a log axis cannot show it
    const xa = u.valToPos(s.bucket_x0[b], "x", true);
    const xb = u.valToPos(s.bucket_x1[b], "x", true);
    const ya = u.valToPos(hi, "y", true);
    const yb = u.valToPos(lo, "y", true);
    ctx.rect(xa, ya, Math.max(1, xb - xa), Math.max(1, yb - ya));
  }
  ctx.fill();
  ctx.restore();
}

/** A tooltip div over a chart: `show(left, top, html)` near the cursor, `hide()`. */
function tooltip(u) {
  const tip = document.createElement("div");
  tip.className = "tip";
  tip.hidden = true;
  u.over.append(tip);
  return {
    el: tip,
    show(left, top, lines) {
      tip.replaceChildren(...lines.map((l) => {
        const d = document.createElement("div");
        d.textContent = l;
        return d;
      }));
      tip.hidden = false;
      const w = u.over.clientWidth;
      tip.style.left = `${Math.min(left + 12, Math.max(0, w - tip.offsetWidth - 2))}px`;
      tip.style.top = `${Math.max(0, top - tip.offsetHeight - 8)}px`;
    },
    hide() { tip.hidden = true; },
  };
}

function xText(xAxis, v) {
  if (xAxis === "_timestamp" && typeof v === "number") return new Date(v * 1000).toISOString().replace("T", " ").slice(0, 23);
  return exact(v);
}

/** Log scales show positive values only: others become gaps. */
const positive = (a) => a.map((v) => (v !== null && v > 0 ? v : null));

/**
 * A line chart of one sampled key: the M4 points as a line (faint when smoothed, the smoothed line on top) and each
 * bucket's min–max as a band behind it. `onZoom(xMin, xMax)` is called when the user drags a range; `onReset()`
 * on double click. `opts`: label, xAxis, smoothing (0..1), logY, logX, height.
 */
export class LineChart {
  constructor(el, { label, xAxis, onZoom, onReset, height = 200, smoothing = 0, logY = false, logX = false, w = null }) {
    this.el = el;
    this.label = label;
    this.xAxis = xAxis;
    this.smoothing = smoothing;
    this.logY = logY;
    this.logX = logX && !timeAxis(xAxis);
    this.drawn = null; // what the last draw showed: {points, xMin, xMax}
    this.draws = 0;
    const faint = smoothing > 0;
    const opts = {
      width: w ?? width(el), height, // w: measured by the caller (one layout for a screenful of charts)
      scales: { x: { time: timeAxis(xAxis), distr: this.logX ? 3 : 1 }, y: { distr: logY ? 3 : 1 } },
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: false }, bind: { dblclick: () => null } },
      series: [
        { label: xAxis },
        // 1 px, not 1.5: Chromium rasterises a 1 px stroke of a ~1600-point line in about a quarter of the time
        // (0.6-0.8 ms against 2.5-3.0 ms a chart, software canvas): about 20 ms of a first screen of 9 charts.
        { label, stroke: faint ? "rgba(37,99,235,0.3)" : color(0), width: 1, points: { show: false },
          spanGaps: false },
        // Only when smoothing: a hidden series still costs its copy of the data and a pass over it.
        ...(faint ? [{ label: `${label} (smoothed)`, stroke: color(0), width: 1.75, points: { show: false },
          spanGaps: true }] : []),
      ],
      axes: [
        { space: 70, label: xAxis, labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui",
          ...(timeAxis(xAxis) ? {} : { values: axisValues }) },
        { size: 64, label, labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui", values: axisValues },
      ],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width > 2 && onZoom) {
            const a = u.posToVal(u.select.left, "x");
            const b = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            onZoom(a, b);
          }
        }],
        drawAxes: [(u) => this.s && drawBand(u, this.s, this.logY)], // after the grid, before the lines
        draw: [(u) => {
          this.draws++;
          this.drawn = { points: u.data[0].length, xMin: u.scales.x.min, xMax: u.scales.x.max,
            yMin: u.scales.y.min, yMax: u.scales.y.max };
        }],
        setCursor: [(u) => this.hover(u)],
      },
    };
    // uPlot is built by the first set(), with its data: built empty and then given data, it lays out and draws
    // twice (about half of a chart's first-screen cost).
    this.opts = opts;
    this.onReset = onReset;
    this.u = null;
  }

  build(data) {
    this.u = new uPlot(this.opts, data, this.el);
    this.tip = tooltip(this.u);
    this.u.over.addEventListener("mouseleave", () => this.tip.hide());
    this.u.over.addEventListener("dblclick", () => this.onReset && this.onReset());
  }

  hover(u) {
    const at = u.cursor.idx;
    if (at === null || at === undefined || !this.s || !this.tip || u.cursor.left < 0) {
      this.tip?.hide();
      return;
    }
    const s = this.s;
    const i = this.kept ? this.kept[at] : at; // the reply's index of the drawn point
    const lines = [`step ${exact(s.step?.[i])}`];
    if (this.xAxis !== "_step") lines.push(`${this.xAxis} ${xText(this.xAxis, s.x[i])}`);
    lines.push(`${this.label} ${exact(s.y[i])}`);
    if (this.smoothing > 0 && this.smoothed[i] !== null) lines.push(`smoothed ${exact(this.smoothed[i])}`);
    const b = bucketAt(s, s.x[i]);
    if (b >= 0) lines.push(`bucket ${exact(s.bucket_min[b])} … ${exact(s.bucket_max[b])}`);
    this.tip.show(u.cursor.left, u.cursor.top, lines);
    this.hovered = lines;
  }

  /** Draw a sampled reply (`/sampled`); `zoom` = [xMin, xMax] keeps that x range, null fits the data. */
  set(s, zoom = null) {
    this.s = s;
    const x = this.logX ? s.x.map((v) => (num(v) !== null && v > 0 ? v : null)) : s.x.map(num);
    const y = s.y.map(num);
    const fy = this.logY ? positive : (a) => a;
    this.data = [x, fy(y)];
    if (this.smoothing > 0) { // the chart is rebuilt when the smoothing changes (LinePanel's chartSig)
      this.smoothed = smoothEMA(x, y, this.smoothing);
      this.data.push(fy(this.smoothed));
    }
    this.kept = null;
    if (this.logX) { // a log x axis drops x <= 0: kept maps a drawn point to its index in the reply (the tooltip)
      const keep = x.map((v, i) => (v !== null ? i : -1)).filter((i) => i >= 0);
      this.data = this.data.map((a) => keep.map((i) => a[i]));
      this.kept = keep;
    }
    // setData(…, false) alone draws nothing until the next redraw: set the scale in the same batch so the chart
    // shows the new points over the range they were fetched for.
    if (!this.u && zoom === null) {
      this.build(this.data);
      return;
    }
    if (!this.u) this.build(this.data.map(() => []));
    this.u.batch(() => {
      this.u.setData(this.data, zoom === null);
      if (zoom !== null) this.u.setScale("x", { min: zoom[0], max: zoom[1] });
    });
  }

  resize(height) { this.u?.setSize({ width: width(this.el), height: height || this.u.height }); }

  destroy() { this.u?.destroy(); }
}

/** Several named lines on one chart with a legend; `lines` = [{label, x: [...], y: [...], step?: [...]}]. */
export class MultiLineChart {
  constructor(el, { xAxis, title, yLabel = "", height = 220, smoothing = 0, logY = false }) {
    this.el = el;
    this.xAxis = xAxis;
    this.title = title;
    this.yLabel = yLabel;
    this.height = height;
    this.smoothing = smoothing;
    this.logY = logY;
    this.u = null;
  }

  set(lines) {
    this.points = [];
    const tables = lines.map((l) => {
      // uPlot.join needs ascending x; keep each line's points in x order (stable on equal x).
      const idx = l.x.map((_, i) => i).filter((i) => num(l.x[i]) !== null);
      idx.sort((a, b) => l.x[a] - l.x[b] || a - b);
      const xs = idx.map((i) => l.x[i]);
      const ys = idx.map((i) => num(l.y[i]));
      const sm = this.smoothing > 0 ? smoothEMA(xs, ys, this.smoothing) : ys;
      // For the tooltip: each line's own points in x order, raw values (±inf and NaN kept) and steps.
      this.points.push({ x: xs, y: idx.map((i) => l.y[i]), step: l.step ? idx.map((i) => l.step[i]) : null, sm });
      return [xs, this.logY ? positive(sm) : sm];
    });
    this.lines = lines;
    const data = tables.length ? uPlot.join(tables) : [[]];
    this.data = data;
    const labels = lines.map((l) => l.label).join("\u0000");
    if (!this.u || labels !== this.labels) {
      this.labels = labels;
      if (this.u) this.u.destroy();
      this.u = new uPlot({
        width: width(this.el), height: this.height,
        scales: { x: { time: timeAxis(this.xAxis) }, y: { distr: this.logY ? 3 : 1 } },
        legend: { show: true, live: true },
        cursor: { drag: { x: true, y: false } },
        hooks: { setCursor: [(u) => this.hover(u)] },
        series: [{ label: this.xAxis || "x", value: (u, v) => (v === null ? "–" : xText(this.xAxis, v)) },
          ...lines.map((l, i) => ({ label: l.label, stroke: color(i), width: 1.5, spanGaps: true,
            points: { show: false }, value: (u, v) => (v === null ? "–" : exact(v)) }))],
        axes: [
          { space: 70, label: this.xAxis || "x", labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui",
            ...(timeAxis(this.xAxis) ? {} : { values: axisValues }) },
          { size: 64, label: this.yLabel, labelSize: this.yLabel ? 18 : 0, labelFont: "12px system-ui",
            font: "11px system-ui", values: axisValues },
        ],
      }, data, this.el);
      this.tip = tooltip(this.u);
      this.u.over.addEventListener("mouseleave", () => this.tip.hide());
    } else {
      this.u.setData(data, true);
    }
  }

  /**
   * The tooltip: at the hovered x, each line's value at its own nearest point (lines are sampled at different x,
   * so the joined row holds only some of them), with that point's step; ±inf and NaN named.
   */
  hover(u) {
    const i = u.cursor.idx;
    if (i === null || i === undefined || !this.points || u.cursor.left < 0) {
      this.tip?.hide();
      this.hovered = null;
      return;
    }
    const x = u.data[0][i];
    const out = [`${this.xAxis || "x"} ${xText(this.xAxis, x)}`];
    this.points.forEach((p, j) => {
      const k = nearest(p.x, x);
      if (k < 0) return;
      const step = p.step && this.xAxis !== "_step" ? ` (step ${exact(p.step[k])})` : "";
      const at = p.x[k] !== x && !step ? ` (at ${xText(this.xAxis, p.x[k])})` : "";
      const sm = this.smoothing > 0 && p.sm[k] !== null ? `, smoothed ${exact(p.sm[k])}` : "";
      out.push(`${this.lines[j].label}: ${exact(p.y[k])}${sm}${step || at}`);
    });
    this.tip.show(u.cursor.left, u.cursor.top, out);
    this.hovered = out;
  }

  resize(height) { if (this.u) this.u.setSize({ width: width(this.el), height: height || this.u.height }); }

  destroy() { if (this.u) this.u.destroy(); }
}

/** The index of the value in ascending `xs` nearest to `x` (-1 when empty). */
function nearest(xs, x) {
  if (!xs.length) return -1;
  let lo = 0;
  let hi = xs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo > 0 && Math.abs(xs[lo - 1] - x) <= Math.abs(xs[lo] - x) ? lo - 1 : lo;
}

/** A histogram (`bins` edges, `values` counts) drawn as bars over the bins' left edges, with a hover tooltip. */
export class HistogramChart {
  constructor(el, { height = 200, label = "value" } = {}) {
    this.el = el;
    this.u = new uPlot({
      width: width(el), height,
      scales: { x: { time: false } },
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      series: [{ label: "bin" },
        { label: "count", stroke: color(0), fill: "rgba(37,99,235,0.35)", width: 1,
          paths: uPlot.paths.bars({ size: [1, Infinity], align: 1, gap: 0 }), points: { show: false } }],
      axes: [{ space: 70, label, labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui", values: axisValues },
        { size: 56, label: "count", labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui", values: axisValues }],
      hooks: { setCursor: [(u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined || !this.h || u.cursor.left < 0) return this.tip.hide();
        const bins = this.h.bins || [];
        this.tip.show(u.cursor.left, u.cursor.top, [`bin ${exact(bins[i])} … ${exact(bins[i + 1])}`,
          `count ${exact((this.h.values || [])[i])}`]);
      }] },
    }, [[], []], el);
    this.tip = tooltip(this.u);
    this.u.over.addEventListener("mouseleave", () => this.tip.hide());
  }

  set(h) {
    this.h = h;
    const bins = (h.bins || []).map(num);
    const vals = (h.values || []).map(num);
    this.data = [bins.slice(0, vals.length), vals];
    this.u.setData(this.data, true);
  }

  resize(height) { this.u.setSize({ width: width(this.el), height: height || this.u.height }); }

  destroy() { this.u.destroy(); }
}
