// Charts over uPlot (vendored, global `uPlot`): a sampled line with its min–max band, multi-line charts with a
// legend, histograms as bars. Each chart sizes itself to its panel and can be destroyed.

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d",
  "#4f46e5", "#b45309"];
export const color = (i) => COLORS[i % COLORS.length];

// JSON has no ±inf/NaN: the API sends null (missing/NaN) or "Infinity"/"-Infinity"; a chart draws none of them.
export const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

function width(el) {
  return Math.max(240, Math.floor(el.getBoundingClientRect().width) - 4);
}

function timeAxis(xAxis) {
  return xAxis === "_timestamp";
}

/** Per point, the min and max of the sampling bucket it belongs to (null when the line is not sampled). */
export function bandOf(s) {
  const n = s.x.length;
  const lo = new Array(n).fill(null);
  const hi = new Array(n).fill(null);
  if (!s.sampled || !s.bucket_x0 || !s.bucket_x0.length) return [lo, hi];
  let b = 0;
  const nb = s.bucket_x0.length;
  for (let j = 0; j < n; j++) {
    const x = s.x[j];
    while (b < nb - 1 && x > s.bucket_x1[b]) b++;
    if (x >= s.bucket_x0[b] && x <= s.bucket_x1[b]) {
      lo[j] = num(s.bucket_min[b]);
      hi[j] = num(s.bucket_max[b]);
    }
  }
  return [lo, hi];
}

/**
 * A line chart of one sampled key: the M4 points as a line and each bucket's min–max as a band behind it.
 * `onZoom(xMin, xMax)` is called when the user drags a range; `onReset()` on double click.
 */
export class LineChart {
  constructor(el, { label, xAxis, onZoom, onReset, height = 200 }) {
    this.el = el;
    this.label = label;
    this.xAxis = xAxis;
    const opts = {
      width: width(el), height,
      scales: { x: { time: timeAxis(xAxis) } },
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: true }, bind: { dblclick: () => null } },
      series: [
        { label: xAxis },
        { label: "bucket max", stroke: "rgba(37,99,235,0.25)", width: 0.5, points: { show: false } },
        { label: "bucket min", stroke: "rgba(37,99,235,0.25)", width: 0.5, points: { show: false } },
        { label, stroke: color(0), width: 1.5, points: { show: false }, spanGaps: false },
      ],
      bands: [{ series: [1, 2], fill: "rgba(37,99,235,0.14)" }],
      axes: [{ space: 60 }, { size: 56 }],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width > 2 && onZoom) {
            onZoom(u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x"));
          }
        }],
      },
    };
    this.u = new uPlot(opts, [[], [], [], []], el);
    this.u.over.addEventListener("dblclick", () => onReset && onReset());
  }

  /** Draw a sampled reply (`/sampled`); `keepScale` keeps a zoomed x range. */
  set(s, keepScale = false) {
    const [lo, hi] = bandOf(s);
    this.data = [s.x.map(num), hi, lo, s.y.map(num)];
    this.u.setData(this.data, !keepScale);
  }

  resize() { this.u.setSize({ width: width(this.el), height: this.u.height }); }

  destroy() { this.u.destroy(); }
}

/** Several named lines on one chart with a legend; `lines` = [{label, x: [...], y: [...]}]. */
export class MultiLineChart {
  constructor(el, { xAxis, title, height = 220 }) {
    this.el = el;
    this.xAxis = xAxis;
    this.title = title;
    this.height = height;
    this.u = null;
  }

  set(lines) {
    const tables = lines.map((l) => {
      // uPlot.join needs ascending x; keep each line's points in x order (stable on equal x).
      const idx = l.x.map((_, i) => i).filter((i) => num(l.x[i]) !== null);
      idx.sort((a, b) => l.x[a] - l.x[b] || a - b);
      return [idx.map((i) => l.x[i]), idx.map((i) => num(l.y[i]))];
    });
    const data = tables.length ? uPlot.join(tables) : [[]];
    this.data = data;
    const labels = lines.map((l) => l.label).join("\u0000");
    if (!this.u || labels !== this.labels) {
      this.labels = labels;
      if (this.u) this.u.destroy();
      this.u = new uPlot({
        width: width(this.el), height: this.height,
        scales: { x: { time: timeAxis(this.xAxis) } },
        legend: { show: true, live: true },
        cursor: { drag: { x: true, y: false } },
        series: [{ label: this.xAxis || "x" },
          ...lines.map((l, i) => ({ label: l.label, stroke: color(i), width: 1.5, spanGaps: true,
            points: { show: false } }))],
        axes: [{ space: 60 }, { size: 56 }],
      }, data, this.el);
    } else {
      this.u.setData(data, true);
    }
  }

  resize() { if (this.u) this.u.setSize({ width: width(this.el), height: this.u.height }); }

  destroy() { if (this.u) this.u.destroy(); }
}

/** A histogram (`bins` edges, `values` counts) drawn as bars over the bins' left edges. */
export class HistogramChart {
  constructor(el, { height = 200 } = {}) {
    this.el = el;
    this.u = new uPlot({
      width: width(el), height,
      scales: { x: { time: false } },
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      series: [{ label: "bin" },
        { label: "count", stroke: color(0), fill: "rgba(37,99,235,0.35)", width: 1,
          paths: uPlot.paths.bars({ size: [1, Infinity], align: 1, gap: 0 }), points: { show: false } }],
      axes: [{ space: 60 }, { size: 50 }],
    }, [[], []], el);
  }

  set(h) {
    const bins = (h.bins || []).map(num);
    const vals = (h.values || []).map(num);
    this.data = [bins.slice(0, vals.length), vals];
    this.u.setData(this.data, true);
  }

  resize() { this.u.setSize({ width: width(this.el), height: this.u.height }); }

  destroy() { this.u.destroy(); }
}
