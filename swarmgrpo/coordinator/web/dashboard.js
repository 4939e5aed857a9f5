// The run owner's dashboard: polls /status (relative, so it also works behind a path prefix) and
// draws it. Everything a node reports is put on the page as text (textContent, SVG <title>), never
// as HTML, and the server's Content-Security-Policy allows no inline script besides.
"use strict";

// ?poll_ms= sets the period; under 250 ms it would only load the coordinator
const POLL_MS = Math.max(250, Number(new URLSearchParams(location.search).get("poll_ms")) || 2000);
const SVG = "http://www.w3.org/2000/svg";
const MAX_MARKERS = 300; // past this many versions a chart draws its line only
let lastOk = null;
// Every step seen so far: each poll asks only for the versions after the last one (?since=).
let steps = [];
let runId = null;

const newest = () => (steps.length ? steps[steps.length - 1].version : 0);

// Adds a poll's steps to those seen; false if the page must start over (another run on the same
// address, or its state reset), in which case the next poll asks for every step again.
function takeSteps(snap) {
  if (snap.run_id !== runId || snap.policy_version < newest()) {
    const whole = snap.steps_since === 0;
    steps = whole ? snap.steps || [] : [];
    runId = snap.run_id;
    return whole;
  }
  steps = steps.concat((snap.steps || []).filter((s) => s.version > newest()));
  return true;
}

const $ = (id) => document.getElementById(id);

function fmt(x, digits) {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString();
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// A line chart of steps[key] by version; with `spread`, a band of ± steps[spread] around it.
function chart(svg, steps, key, digits, spread) {
  const W = 400, H = 160, L = 46, R = 10, T = 8, B = 22;
  svg.replaceChildren();
  const pts = steps
    .filter((s) => Number.isFinite(s[key]))
    .map((s) => ({ x: s.version, y: s[key], d: spread && Number.isFinite(s[spread]) ? s[spread] : 0 }));
  if (!pts.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no steps yet"));
    return;
  }
  let lo = Math.min(...pts.map((p) => p.y - p.d)), hi = Math.max(...pts.map((p) => p.y + p.d));
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  let x0 = pts[0].x, x1 = pts[pts.length - 1].x;
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const sx = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
  const sy = (v) => T + ((hi - v) / (hi - lo)) * (H - T - B);
  svg.append(
    svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svgEl("text", { x: L - 4, y: T + 8, "text-anchor": "end", class: "tick" }, fmt(hi, digits)),
    svgEl("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "tick" }, fmt(lo, digits)),
    svgEl("text", { x: L, y: H - 6, "text-anchor": "start", class: "tick" }, `v${pts[0].x}`),
    svgEl("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "tick" }, `v${pts[pts.length - 1].x}`),
  );
  if (spread) {
    const upper = pts.map((p) => `${sx(p.x)},${sy(p.y + p.d)}`);
    const lower = pts.map((p) => `${sx(p.x)},${sy(p.y - p.d)}`).reverse();
    svg.append(svgEl("polygon", { points: upper.concat(lower).join(" "), class: "band" }));
  }
  svg.append(svgEl("polyline", { points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), class: "line" }));
  if (pts.length <= MAX_MARKERS) {
    for (const p of pts) {
      const dot = svgEl("circle", { cx: sx(p.x), cy: sy(p.y), r: 2.5, class: "point", "data-version": p.x });
      const label = spread ? `${fmt(p.y, digits)} ± ${fmt(p.d, digits)}` : fmt(p.y, digits);
      dot.append(svgEl("title", {}, `version ${p.x}: ${label}`));
      svg.append(dot);
    }
  }
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function nodeRow(n) {
  const tr = document.createElement("tr");
  const caps = n.capabilities || {};
  const roles = (n.roles || []).map((r) => r.replace(/^ROLE_/, "").toLowerCase()).join(",");
  const id = cell(n.node_id.slice(0, 8));
  id.title = n.node_id;
  tr.dataset.nodeId = n.node_id;
  tr.className = n.alive ? "alive" : "gone";
  tr.append(
    id,
    cell(roles),
    cell((caps.device || "?") + (caps.fp8 ? "+fp8" : "")),
    cell(n.alive ? "yes" : "no"),
    cell(String(n.policy_version), "num"),
    cell(String(n.staleness), "num"),
    cell(fmt(n.tokens_per_s, 0), "num"),
    cell(String(n.tokens_generated), "num"),
    cell(String(n.rollouts_accepted), "num"),
    cell(String(n.steps_trained), "num"),
    cell(n.in_dht ? "yes" : "no"),
    cell(n.activity || ""),
  );
  return tr;
}

function render(snap) {
  const run = snap.run || {};
  const counts = snap.counts || {};
  const nodes = snap.nodes || [];
  $("run-id").textContent = snap.run_id || "";
  document.title = `swarmgrpo ${snap.run_id || ""}: v${snap.policy_version}`;
  $("run-info").textContent = [
    run.model && `model ${run.model}`,
    run.task && `task ${run.task}`,
    run.num_generations && `G = ${run.num_generations}`,
    Number.isFinite(run.max_staleness) && `max staleness ${run.max_staleness}`,
  ].filter(Boolean).join(" · ");
  $("version").textContent = run.max_steps ? `${snap.policy_version} / ${run.max_steps}` : String(snap.policy_version);
  $("bar").value = run.max_steps ? Math.min(1, snap.policy_version / run.max_steps) : 0;
  // the counts of all nodes: the list holds the most recent ones only
  $("alive").textContent = `${snap.nodes_alive ?? nodes.filter((n) => n.alive).length} / ${snap.nodes_total ?? nodes.length}`;
  $("accepted").textContent = String(counts.rollouts_accepted ?? 0);
  $("trained").textContent = String(counts.rollouts_trained ?? 0);
  $("dropped").textContent = String(counts.rollouts_dropped_stale ?? 0);
  $("leases").textContent = String(counts.leases_open ?? 0);
  chart($("chart-reward"), steps, "reward_mean", 3, "reward_std");
  chart($("chart-loss"), steps, "loss", 4);
  chart($("chart-train_s"), steps, "train_s", 1);
  $("nodes").tBodies[0].replaceChildren(...nodes.map(nodeRow));
  $("no-nodes").hidden = nodes.length > 0;
}

function warn(text) {
  $("banner").textContent = text;
  $("banner").hidden = false;
}

async function poll() {
  try {
    let snap;
    try {
      const url = `status?since=${newest()}`;
      const reply = await fetch(url, { cache: "no-store", signal: AbortSignal.timeout(10000) });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      snap = await reply.json();
    } catch (e) {
      const since = lastOk ? `the figures below are from ${clock(lastOk)}` : "no figures yet";
      warn(`coordinator unreachable (${e.message}); retrying every ${POLL_MS / 1000} s; ${since}`);
      return;
    }
    try {
      if (!takeSteps(snap)) return;
      render(snap);
    } catch (e) {
      // the coordinator answered: a page that cannot draw its answer must not blame it
      console.error(e);
      warn(`this page could not draw the coordinator's status (${e.message}); /status has it raw`);
      return;
    }
    lastOk = Date.now();
    $("banner").hidden = true;
    $("updated").textContent = `updated ${clock(lastOk)}`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
