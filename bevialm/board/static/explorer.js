// The attention explorer: the server runs the model on a prompt; the page shows every layer x
// head as a small map, and for the token under the pointer (or the generated token stepped to)
// what each head reads, as shading over the tokens (bertviz's head view). A click on a head
// shows it large: its map with every token labelled, and lines from the token to what it reads.
"use strict";

const ex = { data: null, query: 0, big: null };
const SMALL = 200;  // pixels of a small map's side

function view(data) {
  // One shape for both modes: queries (rows), keys (columns), weights[l][h][row][column].
  if (data.mode === "generate") {
    return { queries: data.tokens.slice(data.prompt_len), keys: data.tokens.slice(0, -1), offset: data.prompt_len, W: data.weights };
  }
  return { queries: data.tokens, keys: data.tokens, offset: 0, W: data.weights };
}

function fillChoices() {
  const runSel = document.getElementById("explore-run");
  const current = runSel.value;
  const names = board.order.filter((n) => (runState(n).info.checkpoints || []).length);
  if (names.join() !== [...runSel.options].map((o) => o.value).join()) {
    runSel.replaceChildren(...names.map((n) => el("option", { value: n, textContent: n })));
    if (names.includes(current)) runSel.value = current;
    fillCheckpoints();
  }
}

function fillCheckpoints() {
  const name = document.getElementById("explore-run").value;
  const sel = document.getElementById("explore-checkpoint");
  const list = name ? runState(name).info.checkpoints || [] : [];
  const current = sel.value;
  sel.replaceChildren(...list.map((c) => el("option", { value: c, textContent: c })));
  if (list.includes(current)) sel.value = current;
}

function message(text, isError) {
  const box = document.getElementById("explore-message");
  box.textContent = text || "";
  box.className = isError ? "error" : "";
}

async function runModel(event) {
  event.preventDefault();
  const mode = document.querySelector("input[name=mode]:checked").value;
  const body = {
    run: document.getElementById("explore-run").value,
    checkpoint: document.getElementById("explore-checkpoint").value,
    prompt: document.getElementById("prompt").value,
    mode,
    n: parseInt(document.getElementById("gen-n").value, 10),
    temperature: parseFloat(document.getElementById("gen-temperature").value),
    seed: parseInt(document.getElementById("gen-seed").value, 10),
  };
  message("running the model…");
  const button = document.getElementById("explore-run-button");
  button.disabled = true;
  try {
    const r = await fetch("/api/attention", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await r.json();
    if (!r.ok || data.error) throw new Error(data.error || `${r.status}`);
    message(`${body.run}/${body.checkpoint} (step ${data.step}): ${data.layers} layers × ${data.heads} heads, ${data.tokens.length} tokens`);
    show(data);
  } catch (e) {
    message(e.message, true);
  } finally {
    button.disabled = false;
  }
}

function show(data) {
  ex.data = data;
  ex.v = view(data);
  ex.big = null;
  document.getElementById("big").hidden = true;
  const generating = data.mode === "generate";
  document.getElementById("stepper").hidden = !generating;
  document.getElementById("explore-help").textContent = generating
    ? "Each generated token (highlighted) was chosen from the context before it. Step through them, or point at one: each head shades what it read. Click a head to see it large."
    : "Point at (or tap) a token: each head shades the tokens it reads from there (rows of its map: query; columns: key). Click a head to see it large.";
  renderTokens();
  renderHeads();
  setQuery(generating ? 0 : data.tokens.length - 1);
}

function renderTokens() {
  const { data } = ex;
  const box = document.getElementById("tokens");
  const generating = data.mode === "generate";
  box.replaceChildren(...data.tokens.map((t, i) => {
    const q = generating ? i - data.prompt_len : i;
    const span = el("span", { className: "tok" + (generating && q < 0 ? " prompt-part context" : ""), textContent: t, "data-position": i });
    if (q >= 0) {
      span.dataset.query = q;
      span.addEventListener("mouseenter", () => setQuery(q));
      span.addEventListener("click", () => setQuery(q));
    }
    return span;
  }));
}

function drawMap(canvas, M, cell, row) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  M.forEach((r, i) => r.forEach((w, j) => {
    if (w === null) return;
    ctx.fillStyle = weightColor(w);
    ctx.fillRect(j * cell, i * cell, cell, cell);
  }));
  if (row !== null) {
    ctx.strokeStyle = "#ff1744";
    ctx.lineWidth = Math.max(1, cell / 4);
    ctx.strokeRect(0.5, row * cell + 0.5, M[0].length * cell - 1, cell - 1);
  }
}

function renderHeads() {
  const { data, v } = ex;
  const cell = Math.max(1, Math.floor(SMALL / Math.max(v.queries.length, v.keys.length)));
  const box = document.getElementById("heads");
  box.replaceChildren(...v.W.map((layer, l) => el("div", { className: "layer" },
    el("h3", { textContent: `layer ${l + 1}` }),
    ...layer.map((M, h) => {
      const canvas = el("canvas", { width: v.keys.length * cell, height: v.queries.length * cell });
      const reads = el("div", { className: "reads" }, ...v.keys.map((t, j) => el("span", { className: "cell", textContent: t, "data-key": j })));
      const panel = el("div", { className: "head", "data-layer": l, "data-head": h, "data-weights": JSON.stringify(M), title: "click: see this head large" },
        el("div", { className: "title", textContent: `layer ${l + 1}, head ${h + 1}` }), canvas, reads);
      panel.addEventListener("click", () => openBig(l, h));
      canvas.addEventListener("mousemove", (e) => {
        const q = Math.floor(e.offsetY / cell);
        if (q >= 0 && q < v.queries.length && q !== ex.query) setQuery(q);
      });
      return panel;
    }))));
  ex.cell = cell;
  box.dataset.tokens = JSON.stringify(data.tokens);
}

function setQuery(q) {
  const { data, v } = ex;
  if (!data || q < 0 || q >= v.queries.length) return;
  ex.query = q;
  const here = q + v.offset;  // the query's position in the text
  for (const span of document.querySelectorAll("#tokens .tok")) {
    span.classList.toggle("current", +span.dataset.position === here);
  }
  document.getElementById("step-label").textContent = data.mode === "generate"
    ? `generated token ${q + 1} of ${v.queries.length}: “${v.queries[q]}”` : "";
  for (const panel of document.querySelectorAll("#heads .head")) {
    const l = +panel.dataset.layer, h = +panel.dataset.head;
    const row = v.W[l][h][q];
    panel.dataset.query = q;
    drawMap(panel.querySelector("canvas"), v.W[l][h], ex.cell, q);
    shade(panel.querySelectorAll(".reads .cell"), row);
  }
  if (ex.big) drawBig();
}

function shade(cells, row) {
  const finite = row.filter((w) => w !== null);
  const top = finite.length ? Math.max(...finite) : null;
  cells.forEach((c, j) => {
    const w = row[j];
    c.dataset.weight = w === null ? "" : String(w);
    c.classList.toggle("masked", w === null);
    c.classList.toggle("top", w !== null && w === top);
    c.style.background = w === null ? "transparent" : `rgba(30, 136, 229, ${Math.min(1, Math.sqrt(w)).toFixed(3)})`;
    c.style.color = w !== null && w > 0.3 ? "#fff" : "";
    c.title = w === null ? "not in the context" : `weight ${w.toFixed(4)}`;
  });
}

function openBig(l, h) {
  ex.big = { l, h };
  drawBig();
  const big = document.getElementById("big");
  big.hidden = false;
  big.scrollIntoView({ block: "nearest" });
}

function drawBig() {
  const { v } = ex, { l, h } = ex.big;
  const M = v.W[l][h];
  const cell = 18, font = "12px monospace";
  const measure = document.createElement("canvas").getContext("2d");
  measure.font = font;
  const labelW = (labels) => Math.ceil(Math.max(...labels.map((t) => measure.measureText(t).width))) + 8;
  const left = labelW(v.queries), top = labelW(v.keys);
  const canvas = el("canvas", { width: left + v.keys.length * cell + 4, height: top + v.queries.length * cell + 4, "data-layer": l, "data-head": h });
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = font; ctx.fillStyle = "#222"; ctx.textBaseline = "middle";
  v.queries.forEach((t, i) => { ctx.textAlign = "right"; ctx.fillStyle = i === ex.query ? "#d50000" : "#222"; ctx.fillText(t, left - 4, top + i * cell + cell / 2); });
  v.keys.forEach((t, j) => {
    ctx.save(); ctx.translate(left + j * cell + cell / 2, top - 4); ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left"; ctx.fillStyle = "#222"; ctx.fillText(t, 0, 0); ctx.restore();
  });
  ctx.translate(left, top);
  drawMap(canvas, M, cell, ex.query);
  canvas.addEventListener("mousemove", (e) => {
    const q = Math.floor((e.offsetY - top) / cell);
    if (q >= 0 && q < v.queries.length && q !== ex.query) setQuery(q);
  });
  const lines = headLines(M[ex.query], HEAD_COLORS[h % HEAD_COLORS.length]);
  const close = el("button", { type: "button", textContent: "close", onclick: () => { ex.big = null; document.getElementById("big").hidden = true; } });
  document.getElementById("big").replaceChildren(
    el("div", { className: "bar" }, el("strong", { textContent: `layer ${l + 1}, head ${h + 1}: row = the token reading, column = what it reads` }), close),
    el("div", { className: "views" }, canvas, lines));
}

function headLines(row, color) {
  // bertviz's head view for one query: the text on both sides, a line to each token it reads.
  const { v } = ex;
  const rowH = 18, width = 360, n = v.keys.length;
  const svg = el("svg:svg", { width, height: n * rowH + 10, class: "head-lines" });
  const here = ex.query + v.offset;
  const y = (i) => 10 + i * rowH;
  row.forEach((w, j) => {
    if (w === null || w < 0.005) return;
    svg.append(el("svg:line", { x1: 110, y1: y(Math.min(here, n - 1)) - 4, x2: width - 110, y2: y(j) - 4, stroke: color, "stroke-width": 1 + 5 * w, "stroke-opacity": Math.sqrt(w).toFixed(3), "data-key": j }));
  });
  v.keys.forEach((t, j) => {
    svg.append(el("svg:text", { x: 100, y: y(j), "text-anchor": "end", textContent: t, "font-weight": j === here ? "bold" : "normal" }));
    svg.append(el("svg:text", { x: width - 100, y: y(j), textContent: t }));
  });
  if (here >= n) svg.append(el("svg:text", { x: 100, y: y(n - 1) + rowH, "text-anchor": "end", textContent: v.queries[ex.query], "font-weight": "bold" }));
  return svg;
}

document.getElementById("explore-form").addEventListener("submit", runModel);
document.getElementById("explore-run").addEventListener("change", fillCheckpoints);
document.getElementById("step-prev").addEventListener("click", () => setQuery(ex.query - 1));
document.getElementById("step-next").addEventListener("click", () => setQuery(ex.query + 1));
board.listeners.push(fillChoices);
