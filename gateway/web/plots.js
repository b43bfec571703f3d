// wandb.plot charts over a table (issue #20): a `plot` value {kind, columns, data, fields, title, x_title?, y_title?}
// drawn with uPlot (vendored, global `uPlot`). Kinds: line (one line per `stroke` value), scatter, bar, histogram
// (the value column binned into HIST_BINS equal bins), pr_curve / roc_curve (one line per class), and
// confusion_matrix (an HTML grid shaded by count). `line_series` stays with charts.js's MultiLineChart.
// One class, TableChart: set(v) draws a value, resize() and destroy() as the other charts; `data` is what was drawn
// (uPlot's aligned arrays, or the matrix of counts) and `series` the legend, for tests.

export const TABLE_CHART_KINDS = ["line", "scatter", "bar", "histogram", "confusion_matrix", "pr_curve", "roc_curve"];
const HIST_BINS = 20;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d"];
const finite = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
const widthOf = (el) => Math.max(240, Math.floor(el.getBoundingClientRect().width) - 4);
const text = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? `[${v._type || "value"}]` : String(v));

/** Column `name` of a plot value as an array (undefined cells where a row is short). */
function column(v, name) {
  const i = (v.columns || []).indexOf(name);
  return i < 0 ? [] : (v.data || []).map((row) => row[i]);
}

/** Points grouped by `group` values (one group when none): [{label, xs, ys}], each in row order. */
function groups(xs, ys, group) {
  const byLabel = new Map();
  xs.forEach((x, i) => {
    const label = group ? text(group[i]) : "";
    if (!byLabel.has(label)) byLabel.set(label, { label, xs: [], ys: [] });
    byLabel.get(label).xs.push(finite(x));
    byLabel.get(label).ys.push(finite(ys[i]));
  });
  return [...byLabel.values()];
}

/**
 * One x array for uPlot from several groups: every group's points sorted by x (stable: a vertical run of an ROC
 * curve keeps its order), each group's y at its own points and null elsewhere (lines span the gaps). Equal x
 * values stay separate points, so no point of any group is merged away.
 */
function align(gs) {
  const pts = [];
  gs.forEach((g, gi) => g.xs.forEach((x, i) => { if (x !== null) pts.push([x, gi, g.ys[i], pts.length]); }));
  pts.sort((a, b) => a[0] - b[0] || a[3] - b[3]);
  const x = pts.map((p) => p[0]);
  const ys = gs.map((_, gi) => pts.map((p) => (p[1] === gi ? p[2] : null)));
  return [x, ...ys];
}

/** Equal-width bins of the finite values: [centres, counts, edges]. */
function bin(values, n) {
  const vals = values.map(finite).filter((v) => v !== null);
  if (!vals.length) return [[], [], []];
  let lo = Math.min(...vals);
  let hi = Math.max(...vals);
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const w = (hi - lo) / n;
  const counts = new Array(n).fill(0);
  for (const v of vals) counts[Math.min(n - 1, Math.floor((v - lo) / w))]++;
  const edges = Array.from({ length: n + 1 }, (_, i) => lo + i * w);
  return [edges.slice(0, n).map((e) => e + w / 2), counts, edges];
}

export class TableChart {
  constructor(el, { height = 240 } = {}) {
    this.el = el;
    this.height = height;
    this.u = null;
    this.data = null;
    this.series = [];
  }

  set(v) {
    this.destroy();
    this.el.replaceChildren();
    this.kind = v.kind;
    this.el.dataset.chartKind = v.kind;
    const f = v.fields || {};
    if (v.kind === "confusion_matrix") return this.matrix(v, f);
    if (!TABLE_CHART_KINDS.includes(v.kind)) {
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(v).slice(0, 2000);
      this.el.append(pre);
      return;
    }
    let data;
    let series;
    let xLabel = v.x_title || f.x || "";
    let yLabel = v.y_title || f.y || "";
    let xValues;
    let bars = false;
    let xRange = null;
    if (v.kind === "bar") {
      const labels = column(v, f.label).map(text);
      data = [labels.map((_, i) => i), column(v, f.value).map(finite)];
      series = [f.value];
      xValues = (u, splits) => splits.map((s) => (Number.isInteger(s) ? labels[s] ?? "" : ""));
      [xLabel, yLabel, bars] = [f.label, f.value, true];
    } else if (v.kind === "histogram") {
      const [centres, counts, edges] = bin(column(v, f.value), HIST_BINS);
      data = [centres, counts];
      xRange = edges.length ? [edges[0], edges[edges.length - 1]] : null; // whole bins, first and last included
      series = ["count"];
      [xLabel, yLabel, bars] = [f.value, "count", true];
    } else {
      const byClass = v.kind === "pr_curve" || v.kind === "roc_curve" ? f.class : f.stroke;
      const gs = groups(column(v, f.x), column(v, f.y), byClass ? column(v, byClass) : null);
      data = align(gs);
      series = gs.map((g) => g.label || f.y);
    }
    this.data = data;
    this.series = series;
    const scatter = v.kind === "scatter";
    const opts = {
      width: widthOf(this.el), height: this.height,
      scales: {
        x: { time: false, ...(v.kind === "bar" ? { range: [-0.5, data[0].length - 0.5] } : xRange ? { range: xRange } : {}) },
        // bars grow from 0: the axis always holds it, whatever the counts
        ...(bars ? { y: { range: (u, lo, hi) => [Math.min(0, lo ?? 0), Math.max(0, hi ?? 1) * 1.05 || 1] } } : {}),
      },
      legend: { show: series.length > 1 || !!v.title, live: true },
      cursor: { drag: { x: false, y: false } },
      series: [{ label: xLabel || "x" }, ...series.map((label, i) => ({
        label: String(label), stroke: COLORS[i % COLORS.length], width: scatter ? 0 : 1.5, spanGaps: true,
        fill: bars ? `${COLORS[i % COLORS.length]}99` : undefined,
        paths: bars ? uPlot.paths.bars({ size: [0.8, 60] }) : scatter ? () => null : undefined,
        points: { show: scatter, size: 6, fill: COLORS[i % COLORS.length] },
      }))],
      axes: [
        { label: xLabel, labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui",
          ...(xValues ? { values: xValues, splits: () => data[0] } : {}) },
        { label: yLabel, labelSize: 18, labelFont: "12px system-ui", font: "11px system-ui", size: 60 },
      ],
    };
    this.u = new uPlot(opts, data, this.el);
  }

  matrix(v, f) {
    const actual = column(v, f.Actual || "Actual").map(text);
    const predicted = column(v, f.Predicted || "Predicted").map(text);
    const counts = column(v, f.nPredictions || "nPredictions").map((c) => finite(c) ?? 0);
    const rows = [...new Set(actual)];
    const cols = [...new Set(predicted)];
    const m = rows.map(() => cols.map(() => 0));
    actual.forEach((a, i) => { m[rows.indexOf(a)][cols.indexOf(predicted[i])] += counts[i]; });
    const max = Math.max(1, ...m.flat());
    const table = document.createElement("table");
    table.className = "kv confusion";
    const head = table.createTHead().insertRow();
    head.append(Object.assign(document.createElement("th"), { textContent: "Actual \\ Predicted" }));
    for (const c of cols) head.append(Object.assign(document.createElement("th"), { textContent: c }));
    const body = table.createTBody();
    rows.forEach((r, i) => {
      const tr = body.insertRow();
      tr.append(Object.assign(document.createElement("th"), { textContent: r }));
      m[i].forEach((n) => {
        const td = tr.insertCell();
        td.textContent = String(n);
        const a = n / max;
        td.style.background = `rgba(37, 99, 235, ${(0.08 + 0.82 * a).toFixed(3)})`;
        td.style.color = a > 0.55 ? "#fff" : "";
        td.style.textAlign = "right";
      });
    });
    this.el.append(table);
    this.data = m;
    this.series = rows;
  }

  resize() { if (this.u) this.u.setSize({ width: widthOf(this.el), height: this.height }); }

  destroy() {
    if (this.u) this.u.destroy();
    this.u = null;
  }
}
