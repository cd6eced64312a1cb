// A line chart in plain SVG: loss on the left axis, the learning rate on the right one.
// Every record is a point (a circle with data-run and data-kind), so the page can be checked
// against metrics.jsonl line by line.
"use strict";

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function formatTick(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1).replace("e+", "e");
  return String(+v.toPrecision(4));
}

function extent(values, fallback) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return fallback;
  return [Math.min(...finite), Math.max(...finite)];
}

function drawChart(container, opts) {
  const W = Math.max(480, Math.min(1100, container.clientWidth || 900)), H = 380;
  const m = { left: 60, right: opts.showLr ? 70 : 20, top: 12, bottom: 42 };
  const pw = W - m.left - m.right, ph = H - m.top - m.bottom;
  const losses = opts.series.filter((s) => s.kind !== "lr");
  const rates = opts.series.filter((s) => s.kind === "lr");
  const xs = opts.series.flatMap((s) => s.points.map((p) => p[0]));
  const [x0, x1] = extent([0, ...xs], [0, 1]);
  let [y0, y1] = extent(losses.flatMap((s) => s.points.map((p) => p[1])), [0, 1]);
  const pad = (y1 - y0) * 0.05 || 0.5; y0 -= pad; y1 += pad;
  const [, r1] = extent(rates.flatMap((s) => s.points.map((p) => p[1])), [0, 1]);
  const sx = (x) => m.left + (x1 > x0 ? (x - x0) / (x1 - x0) : 0) * pw;
  const sy = (y) => m.top + (1 - (y - y0) / (y1 - y0)) * ph;
  const sr = (r) => m.top + (1 - r / (r1 || 1)) * ph;
  const svg = el("svg:svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "chart-svg" });
  for (const t of niceTicks(y0, y1, 6)) {
    svg.append(el("svg:line", { x1: m.left, x2: m.left + pw, y1: sy(t), y2: sy(t), stroke: "#eee" }));
    svg.append(el("svg:text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end", textContent: formatTick(t) }));
  }
  for (const t of niceTicks(x0, x1, 8)) {
    svg.append(el("svg:line", { x1: sx(t), x2: sx(t), y1: m.top, y2: m.top + ph, stroke: "#f3f3f3" }));
    svg.append(el("svg:text", { x: sx(t), y: m.top + ph + 16, "text-anchor": "middle", textContent: formatTick(t) }));
  }
  if (opts.showLr && rates.length) {
    for (const t of niceTicks(0, r1 || 1, 4)) {
      svg.append(el("svg:text", { x: m.left + pw + 6, y: sr(t) + 4, textContent: formatTick(t), fill: "#777" }));
    }
    svg.append(el("svg:text", { x: W - 8, y: m.top + ph / 2, transform: `rotate(90 ${W - 8} ${m.top + ph / 2})`, "text-anchor": "middle", textContent: "learning rate (dotted)" }));
  }
  svg.append(el("svg:rect", { x: m.left, y: m.top, width: pw, height: ph, fill: "none", stroke: "#999" }));
  svg.append(el("svg:text", { x: m.left + pw / 2, y: H - 6, "text-anchor": "middle", textContent: opts.xLabel }));
  svg.append(el("svg:text", { x: 14, y: m.top + ph / 2, transform: `rotate(-90 14 ${m.top + ph / 2})`, "text-anchor": "middle", textContent: opts.yLabel }));
  for (const s of opts.series) {
    const scaleY = s.kind === "lr" ? sr : sy;
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${scaleY(p[1]).toFixed(1)}`).join("");
    const style = { train: { w: 1.2, dash: "", o: 0.7 }, val: { w: 2.2, dash: "", o: 1 }, lr: { w: 1, dash: "2,3", o: 0.8 } }[s.kind];
    if (d) svg.append(el("svg:path", { d, fill: "none", stroke: s.color, "stroke-width": style.w, "stroke-dasharray": style.dash, "stroke-opacity": style.o, "data-run": s.run, "data-kind": s.kind }));
    if (s.kind === "lr") continue;
    const g = el("svg:g", { "data-run": s.run, "data-kind": s.kind });
    for (const p of pts) {
      const c = el("svg:circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: s.kind === "val" ? 3.2 : 1.6, fill: s.color, class: `pt pt-${s.kind}`, "data-run": s.run });
      c.append(el("svg:title", { textContent: `${s.run} ${s.kind} ${formatTick(p[1])} at ${opts.xLabel} ${p[0]}` }));
      g.append(c);
    }
    svg.append(g);
  }
  container.replaceChildren(svg);
}
