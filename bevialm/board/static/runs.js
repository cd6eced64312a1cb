// The runs view: the runs table, live loss curves (polling each run's metrics.jsonl from the
// byte offset already read, as TensorBoard and trackio poll their logs) and the samples.
"use strict";

const board = { runs: new Map(), order: [], listeners: [], errors: new Map() };
const POLL_MS = 1000;
const LIST_MS = 3000;

function showError(key, message) {
  if (message) board.errors.set(key, message); else board.errors.delete(key);
  const box = document.getElementById("errors");
  box.replaceChildren(...[...board.errors.values()].map((m) => el("div", { textContent: m })));
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function runState(name) {
  if (!board.runs.has(name)) {
    board.runs.set(name, { name, info: {}, records: [], offset: 0, problems: [], selected: board.runs.size < 8, color: RUN_COLORS[board.runs.size % RUN_COLORS.length] });
  }
  return board.runs.get(name);
}

async function refreshList() {
  try {
    const data = await getJSON("/api/runs");
    document.getElementById("root").textContent = data.root;
    board.order = data.runs.map((r) => r.name);
    for (const info of data.runs) runState(info.name).info = info;
    showError("list", null);
    renderTable();
    renderSampleChoices();
    board.listeners.forEach((f) => f());
  } catch (e) {
    showError("list", `cannot list the runs: ${e.message}`);
  }
}

async function pollMetrics(run) {
  for (let more = true; more;) {
    const data = await getJSON(`/api/metrics?run=${encodeURIComponent(run.name)}&offset=${run.offset}`);
    if (data.reset) run.records = [];
    run.records.push(...data.records);
    run.offset = data.offset;
    run.problems = data.reset ? data.problems : [...run.problems, ...data.problems].slice(-20);
    more = data.more;
    if (data.records.length || data.reset) run.changed = true;
  }
}

async function pollAll() {
  if (board.polling) return;  // the previous poll is still reading: never read one offset twice
  board.polling = true;
  try { await pollShown(); } finally { board.polling = false; }
}

async function pollShown() {
  const shown = board.order.map(runState).filter((r) => r.selected);
  await Promise.all(shown.map(async (run) => {
    try {
      await pollMetrics(run);
      run.error = null;
    } catch (e) {
      run.error = `metrics: ${e.message}`;
    }
  }));
  if (shown.some((r) => r.changed) || board.redraw) {
    shown.forEach((r) => { r.changed = false; });
    board.redraw = false;
    renderTable();
    renderChart();
  }
}

function fmt(v, digits) { return Number.isFinite(v) ? v.toFixed(digits) : "–"; }

function bpcFactor(run) {
  // bits per character per nat per token: the trainer's val_bpc / val_loss (its validation
  // text's tokens per character over ln 2); a character tokenizer needs no evaluation for it.
  const evals = run.records.filter((r) => r.kind === "eval" && r.val_bpc && r.val_loss);
  if (evals.length) { const e = evals[evals.length - 1]; return e.val_bpc / e.val_loss; }
  return run.info.tokenizer_kind === "char" ? 1 / Math.LN2 : NaN;
}

function renderTable() {
  const body = document.querySelector("#runs-table tbody");
  const rows = board.order.map((name) => {
    const run = runState(name), info = run.info;
    const last = [...run.records].reverse().find((r) => r.kind === "train");
    const step = run.records.length ? run.records[run.records.length - 1].step : info.checkpoint_step;
    const best = info.best_val_loss;
    const bestText = best == null ? "–" : `${best.toFixed(4)} (${fmt(best * bpcFactor(run), 3)} bits/char) at step ${info.best_step}`;
    const m = info.model || {};
    const cfg = info.config || {};
    const live = info.updated && Date.now() / 1000 - info.updated < 30 && !(step >= cfg.steps);  // written lately, not done
    const problems = [...(info.errors || []), ...run.problems, ...(run.error ? [run.error] : [])];
    const box = el("input", { type: "checkbox", "data-run": name });
    box.checked = run.selected;
    box.addEventListener("change", () => { run.selected = box.checked; board.redraw = true; pollAll(); });
    const swatch = el("span", { className: "swatch" });
    swatch.style.background = run.color;
    const tr = el("tr", { "data-run": name },
      el("td", {}, box),
      el("td", {}, swatch, name),
      el("td", { textContent: info.tokenizer || "?" }),
      el("td", { textContent: m.n_layers ? `${m.n_layers} layers × ${m.n_heads} heads, dim ${m.dim}, ctx ${m.ctx}; batch ${cfg.batch}, lr ${cfg.lr}` : "?" }),
      el("td", { className: "num", textContent: `${step ?? "–"} / ${cfg.steps ?? "?"}` }),
      el("td", { className: "num", textContent: bestText }),
      el("td", { className: "num", textContent: last ? fmt(last.ms_per_step, 1) : "–" }),
      el("td", { className: problems.length ? "problem" : live ? "live" : "", textContent: problems.length ? problems.join("; ") : live ? "training" : "" }));
    return tr;
  });
  body.replaceChildren(...rows);
}

function yMode(shown) {
  const choice = document.getElementById("y-axis").value;
  if (choice !== "auto") return choice;
  return new Set(shown.map((r) => r.info.tokenizer)).size > 1 ? "bpc" : "loss";
}

function renderChart() {
  const shown = board.order.map(runState).filter((r) => r.selected);
  const xTokens = document.getElementById("x-axis").value === "tokens";
  const mode = yMode(shown);
  const want = { train: document.getElementById("show-train").checked, val: document.getElementById("show-val").checked, lr: document.getElementById("show-lr").checked };
  const series = [];
  for (const run of shown) {
    const per = xTokens ? run.info.tokens_per_step || NaN : 1;
    const f = mode === "bpc" ? bpcFactor(run) : 1;
    const train = run.records.filter((r) => r.kind === "train");
    const evals = run.records.filter((r) => r.kind === "eval");
    const base = { run: run.name, color: run.color };
    if (want.train) series.push({ ...base, kind: "train", points: train.map((r) => [r.step * per, r.loss * f]) });
    if (want.val) series.push({ ...base, kind: "val", points: evals.map((r) => [r.step * per, mode === "bpc" && r.val_bpc != null ? r.val_bpc : r.val_loss * f]) });
    if (want.lr) series.push({ ...base, kind: "lr", points: (train.length ? train : evals).map((r) => [r.step * per, r.lr]) });
  }
  const chart = document.getElementById("chart");
  chart.dataset.y = mode;
  drawChart(chart, {
    series, showLr: want.lr,
    xLabel: xTokens ? "tokens seen (step × batch × ctx)" : "step",
    yLabel: mode === "bpc" ? "bits per character (validation text)" : "loss (cross-entropy, nats per token)",
  });
  const legend = document.getElementById("legend");
  legend.replaceChildren(...shown.map((run) => {
    const key = el("span", { className: "key" });
    key.style.borderColor = run.color;
    return el("span", { "data-run": run.name }, key, `${run.name}: ${run.info.tokenizer || "tokenizer unknown"}`);
  }), el("span", { className: "note", textContent: "thin: train (mean since the previous log line) · thick with dots: validation · dotted: learning rate (right axis)" }));
}

function renderSampleChoices() {
  const select = document.getElementById("sample-run");
  const current = select.value;
  const names = board.order.filter((n) => (runState(n).info.checkpoints || []).includes("last.npz"));
  select.replaceChildren(...names.map((n) => el("option", { value: n, textContent: n })));
  if (names.includes(current)) select.value = current;
}

async function refreshSamples() {
  const name = document.getElementById("sample-run").value;
  const box = document.getElementById("samples");
  if (!name) { box.replaceChildren(); return; }
  try {
    const data = await getJSON(`/api/samples?run=${encodeURIComponent(name)}`);
    box.replaceChildren(...[...data.samples].reverse().map((s) => el("div", {},
      el("div", { className: "note", textContent: `step ${s.step}` }),
      s.error ? el("div", { className: "error", textContent: s.error }) : el("pre", { textContent: s.text }))));
    showError("samples", null);
  } catch (e) {
    box.replaceChildren(el("div", { className: "error", textContent: `samples of ${name}: ${e.message}` }));
  }
}

function showTab(name) {
  for (const b of document.querySelectorAll("header nav button")) b.classList.toggle("active", b.dataset.tab === name);
  document.getElementById("tab-runs").hidden = name !== "runs";
  document.getElementById("tab-attention").hidden = name !== "attention";
}

document.querySelectorAll("header nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
["x-axis", "y-axis", "show-train", "show-val", "show-lr"].forEach((id) => document.getElementById(id).addEventListener("change", renderChart));
document.getElementById("sample-run").addEventListener("change", refreshSamples);

async function loop() {
  await refreshList();
  await pollAll();
  renderChart();
  refreshSamples();
  setInterval(pollAll, POLL_MS);
  setInterval(refreshList, LIST_MS);
  setInterval(refreshSamples, 5 * LIST_MS);
}
loop();
