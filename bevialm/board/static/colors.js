// Colours shared by the charts and the attention maps. viridis, as bevialm's PNG figures use,
// on a square-root scale: a head spreading its weight thinly still shows (see docs/visualization.md).
"use strict";
const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];

function weightColor(w) {
  if (w === null || w === undefined) return "#ffffff";
  const t = Math.sqrt(Math.min(1, Math.max(0, w))) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const f = t - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

const RUN_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const HEAD_COLORS = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#3949ab"];

function el(tag, props, ...children) {
  // A DOM element with properties (className, textContent, dataset entries as data-*) and children.
  const node = tag.startsWith("svg:") ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "className" && !(node instanceof SVGElement)) node.className = v;
    else if (k === "textContent") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k === "className" ? "class" : k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
