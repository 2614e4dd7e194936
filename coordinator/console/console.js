// The Anom console: a page per hash route over the coordinator's HTTP API (/v1/…), with
// alert changes live over server-sent events. No framework and nothing fetched from
// elsewhere: the coordinator serves this file from its binary.

const $ = (sel, root = document) => root.querySelector(sel);
const page = () => $("#page");

// ---- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body, contentType = "application/json") {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = contentType;
    init.body = contentType === "application/json" ? JSON.stringify(body) : body;
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = text;
  if ((r.headers.get("content-type") || "").includes("json")) {
    try { data = JSON.parse(text); } catch { /* leave as text */ }
  }
  if (!r.ok) throw new ApiError(r.status, typeof data === "object" ? data : { detail: text });
  return data;
}

// ---- small helpers ---------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "html") el.innerHTML = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
  rate: (n) => (n === null || n === undefined ? "–" : n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US")),
  time: (t) => (t ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–"),
  ago: (t) => {
    if (!t) return "–";
    const s = Math.max(0, (Date.now() - new Date(t).getTime()) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
    return `${(s / 86400).toFixed(1)} d ago`;
  },
};

const badge = (word) => h("span", { class: `badge ${word}` }, word);

function toast(message, error = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = error ? "error" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), error ? 9000 : 3500);
}

// Runs an action, showing a refusal's words.
async function attempt(fn) {
  try {
    return await fn();
  } catch (e) {
    toast(e.message, true);
    return undefined;
  }
}

// ---- live alert changes ----------------------------------------------------------------

// One event stream for the whole console; pages subscribe while they are shown. Browsers
// allow six HTTP/1.1 connections per host, and an open stream holds one: a hidden tab (or a
// page left for another, kept in the back-forward cache) closes its stream, so that a few
// tabs cannot starve each other, and reloads what it shows when it is back.
const live = {
  listeners: new Set(),
  source: null,
  stop() {
    if (this.source) this.source.close();
    this.source = null;
    $("#connection").classList.remove("live");
  },
  start() {
    if (this.source) return;
    this.source = new EventSource("/v1/alerts/live");
    this.source.addEventListener("open", () => $("#connection").classList.add("live"));
    this.source.addEventListener("error", () => $("#connection").classList.remove("live"));
    this.source.addEventListener("alert", (e) => {
      const alert = JSON.parse(e.data);
      for (const f of this.listeners) f(alert);
    });
  },
  on(f) { this.listeners.add(f); return () => this.listeners.delete(f); },
};

// ---- the router ------------------------------------------------------------------------

let leave = []; // what the current page stops when another is shown

function route() {
  for (const f of leave) f();
  leave = [];
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/";
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.dataset.nav === (parts[0] || "overview") || (parts[0] === "pipelines" && a.dataset.nav === "overview"));
  }
  page().replaceChildren();
  const shown = (() => {
    if (parts.length === 0) return overviewPage();
    if (parts[0] === "alerts" && parts.length === 1) return alertsPage();
    if (parts[0] === "alerts" && parts.length === 3) return alertPage(parts[1], parts[2]);
    if (parts[0] === "workers") return workersPage();
    if (parts[0] === "new") return pipelinePage(null, "definition");
    if (parts[0] === "pipelines" && parts.length >= 2) return pipelinePage(parts[1], parts[2] || "definition");
    page().append(h("p", {}, "No such page. ", h("a", { href: "#/" }, "Overview")));
  })();
  if (shown && shown.catch) shown.catch((e) => page().append(h("p", { class: "error" }, e.message)));
}

function every(ms, f) {
  f();
  const t = setInterval(f, ms);
  leave.push(() => clearInterval(t));
}

// ---- overview --------------------------------------------------------------------------

async function overviewPage() {
  const body = h("tbody");
  const feed = h("div", { class: "live-list", id: "live-feed" }, h("p", { class: "muted" }, "Alert changes appear here as they happen."));
  page().append(
    h("h1", {}, "Pipelines"),
    h("div", { class: "grid" },
      h("div", {},
        h("table", { id: "pipelines" },
          h("thead", {}, h("tr", {},
            h("th", {}, "pipeline"), h("th", {}, "state"), h("th", { class: "num" }, "events/s"),
            h("th", { class: "num" }, "events"), h("th", { class: "num" }, "firing"),
            h("th", { class: "num" }, "alerts 24 h"), h("th", { class: "num" }, "dead letters"),
            h("th", { class: "num" }, "lag"))),
          body),
        h("p", { class: "muted", id: "cluster-line" })),
      h("div", { class: "card" }, h("h2", {}, "Live anomalies"), feed)));
  leave.push(live.on((a) => {
    if (feed.querySelector("p.muted")) feed.replaceChildren();
    feed.prepend(h("div", { "data-alert": a.id },
      badge(a.status), " ", badge(a.severity), " ",
      h("a", { href: `#/alerts/${encodeURIComponent(a.pipeline)}/${encodeURIComponent(a.id)}` }, `${a.pipeline} · ${a.rule} · ${a.key}`),
      h("div", { class: "muted" }, a.message)));
    while (feed.children.length > 50) feed.lastChild.remove();
  }));
  let first = true;
  every(2000, async () => {
    const o = await attempt(() => api("GET", "/v1/overview"));
    if (!o) return;
    body.replaceChildren(...o.pipelines.map((p) => h("tr", { "data-pipeline": p.name },
      h("td", {}, h("a", { href: `#/pipelines/${encodeURIComponent(p.name)}` }, p.name), h("div", { class: "muted" }, `v${p.version} · ${p.description || ""}`)),
      h("td", {}, p.paused ? badge("paused") : p.unassigned ? h("span", { class: "badge firing", title: "units no worker runs" }, `${p.unassigned} unassigned`) : badge("running")),
      h("td", { class: "num" }, fmt.rate(p.events_per_s)),
      h("td", { class: "num" }, fmt.int(p.events)),
      h("td", { class: "num" }, h("a", { href: `#/alerts?pipeline=${encodeURIComponent(p.name)}` }, fmt.int(p.alerts_firing))),
      h("td", { class: "num" }, fmt.int(p.alerts_24h)),
      h("td", { class: "num" }, h("a", { href: `#/pipelines/${encodeURIComponent(p.name)}/dead-letters` }, fmt.int(p.dead_letters))),
      h("td", { class: "num" }, fmt.int(p.lag)))));
    $("#cluster-line").textContent = `${o.workers_alive} of ${o.workers} workers alive`;
    if (first) {
      first = false;
      // Since the navigation started: what the browser test reports as time to first render.
      document.body.dataset.overviewMs = String(Math.round(performance.now()));
    }
  });
}

// ---- alerts ----------------------------------------------------------------------------

function alertRow(a, onAction) {
  const link = `#/alerts/${encodeURIComponent(a.pipeline)}/${encodeURIComponent(a.id)}`;
  const actions = h("td", {});
  if (a.status === "firing") actions.append(h("button", { "data-action": "acknowledge", onclick: () => onAction(a, "acknowledge") }, "Acknowledge"), " ");
  if (a.status !== "resolved") actions.append(h("button", { "data-action": "resolve", onclick: () => onAction(a, "resolve") }, "Resolve"), " ");
  actions.append(h("button", { "data-action": "silence", onclick: () => onAction(a, "silence") }, "Silence"));
  return h("tr", { "data-alert": a.id, "data-status": a.status },
    h("td", { class: "status" }, badge(a.status)), h("td", {}, badge(a.severity)),
    h("td", {}, a.pipeline), h("td", {}, a.rule), h("td", {}, a.key),
    h("td", {}, h("a", { href: link }, a.message)),
    h("td", { title: a.updated_at }, fmt.ago(a.updated_at)), h("td", { class: "num" }, a.count),
    actions);
}

// Who acts, asked once and kept in the browser (shown in the alert's history).
function who() {
  const by = localStorage.getItem("anom.user") || prompt("Who are you? (shown in the alert's history)") || "";
  if (by) localStorage.setItem("anom.user", by);
  return by;
}

async function act(a, action) {
  if (action === "silence") return silenceDialog(a);
  const by = who();
  if (!by) return;
  const r = await attempt(() => api("POST", `/v1/pipelines/${encodeURIComponent(a.pipeline)}/alerts/${encodeURIComponent(a.id)}/${action}`, { by }));
  if (r) toast(r.applied ? `${action === "acknowledge" ? "Acknowledged" : "Resolved"}` : `Stored, not applied yet: ${r.note}`);
  return r;
}

async function silenceDialog(a) {
  const by = who();
  if (!by) return;
  const matchers = prompt("Silence alerts matching (comma-separated matchers):", `rule=${a.rule}, key=${a.key}`);
  if (!matchers) return;
  const duration = prompt("For how long?", "1h");
  if (!duration) return;
  const s = await attempt(() => api("POST", `/v1/pipelines/${encodeURIComponent(a.pipeline)}/silences`, {
    matchers: matchers.split(",").map((m) => m.trim()).filter(Boolean), duration, created_by: by,
  }));
  if (s) toast(`Silenced until ${fmt.time(s.ends_at)}`);
}

async function alertsPage() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const filters = {
    pipeline: params.get("pipeline") || "",
    status: params.get("status") || "firing,acknowledged",
    severity: params.get("severity") || "",
  };
  const pipelines = await api("GET", "/v1/pipelines");
  const body = h("tbody");
  const total = h("span", { class: "muted" });
  const select = (name, options) => h("select", { name, onchange: (e) => { filters[name] = e.target.value; load(); } },
    ...options.map(([v, label]) => h("option", { value: v, selected: filters[name] === v }, label)));
  page().append(
    h("h1", {}, "Alerts"),
    h("div", { class: "toolbar" },
      select("pipeline", [["", "every pipeline"], ...pipelines.map((p) => [p.name, p.name])]),
      select("status", [["firing,acknowledged", "active"], ["firing", "firing"], ["acknowledged", "acknowledged"], ["resolved", "resolved"], ["", "any status"]]),
      select("severity", [["", "any severity"], ["critical", "critical"], ["warning", "warning"], ["info", "info"]]),
      total),
    h("table", { id: "alerts" },
      h("thead", {}, h("tr", {}, ...["status", "severity", "pipeline", "rule", "key", "message", "updated", "count", ""].map((c) => h("th", {}, c)))),
      body));
  const matches = (a) => (!filters.pipeline || a.pipeline === filters.pipeline)
    && (!filters.status || filters.status.split(",").includes(a.status))
    && (!filters.severity || a.severity === filters.severity);
  const onAction = async (a, action) => { await act(a, action); };
  async function load() {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    q.set("page_size", "200");
    const r = await attempt(() => api("GET", `/v1/alerts?${q}`));
    if (!r) return;
    body.replaceChildren(...r.alerts.map((a) => alertRow(a, onAction)));
    total.textContent = `${r.total} alert${r.total === 1 ? "" : "s"}`;
  }
  await load();
  leave.push(live.on((a) => {
    const old = body.querySelector(`tr[data-alert="${CSS.escape(a.id)}"]`);
    if (!matches(a)) { if (old) old.remove(); return; }
    const row = alertRow(a, onAction);
    row.classList.add("flash");
    if (old) old.replaceWith(row); else body.prepend(row);
  }));
}

async function alertPage(pipeline, id) {
  const a = await api("GET", `/v1/pipelines/${encodeURIComponent(pipeline)}/alerts/${encodeURIComponent(id)}`);
  const head = h("div", {});
  const render = (a) => {
    head.replaceChildren(
      h("h1", {}, badge(a.status), " ", a.message),
      h("div", { class: "toolbar", id: "alert-actions" },
        a.status === "firing" ? h("button", { "data-action": "acknowledge", onclick: async () => { await act(a, "acknowledge"); } }, "Acknowledge") : null,
        a.status !== "resolved" ? h("button", { "data-action": "resolve", onclick: async () => { await act(a, "resolve"); } }, "Resolve") : null,
        h("button", { "data-action": "silence", onclick: () => silenceDialog(a) }, "Silence")),
      h("div", { class: "grid" },
        h("div", { class: "card" },
          h("dl", { class: "kv" },
            h("dt", {}, "pipeline"), h("dd", {}, h("a", { href: `#/pipelines/${encodeURIComponent(a.pipeline)}` }, a.pipeline)),
            h("dt", {}, "rule"), h("dd", {}, a.rule),
            h("dt", {}, "key"), h("dd", {}, a.key),
            h("dt", {}, "severity"), h("dd", {}, badge(a.severity)),
            h("dt", {}, "why"), h("dd", { id: "explanation" }, a.explanation),
            h("dt", {}, "started"), h("dd", {}, fmt.time(a.starts_at)),
            h("dt", {}, "updated"), h("dd", {}, fmt.time(a.updated_at)),
            h("dt", {}, "detections"), h("dd", {}, a.count),
            a.acknowledged_by ? [h("dt", {}, "acknowledged"), h("dd", {}, `${a.acknowledged_by} at ${fmt.time(a.acknowledged_at)}`)] : null,
            a.resolved_by ? [h("dt", {}, "resolved"), h("dd", {}, a.resolved_by)] : null)),
        h("div", { class: "card" }, h("h2", {}, "The event"), h("pre", { class: "json" }, JSON.stringify(a.event, null, 2)))),
      h("div", { class: "card" }, h("h2", {}, "History"),
        h("table", {}, h("tbody", {}, ...(a.history || []).map((t) => h("tr", {}, h("td", {}, fmt.time(t.at)), h("td", {}, badge(t.status)), h("td", {}, t.by), h("td", {}, t.note)))))));
  };
  render(a);
  const plotCard = h("div", { class: "card", id: "alert-series" }, h("h2", {}, `The series of ${a.key}`),
    h("p", { class: "muted" }, "Replaying this key's history through the current version (backtest engine)…"));
  page().append(head, plotCard);
  leave.push(live.on((b) => { if (b.id === a.id) render(b); }));
  // The series around the alert: an hour before it started until now, by stored time.
  const from = new Date(new Date(a.starts_at || a.raised_at).getTime() - 3600_000).toISOString();
  const report = await runBacktest(a.pipeline, { from, plot_key: a.key }, plotCard);
  if (!report) return;
  const r = report.report || report.comparison?.b;
  plotCard.replaceChildren(h("h2", {}, `The series of ${a.key}`),
    r?.plot ? seriesPlot(r.plot, { marks: [new Date(a.event_time).getTime()], thresholds: r.thresholds }) : h("p", { class: "muted" }, "No numeric series to plot."));
  document.body.dataset.plotMs = String(Math.round(performance.now()));
}

// ---- backtests -------------------------------------------------------------------------

// Starts a backtest, shows its progress in `where`, resolves with its JSON report.
async function runBacktest(pipeline, body, where) {
  const bar = h("div", {});
  const progress = h("div", { class: "progress" }, bar);
  const line = h("p", { class: "muted" });
  where.append(progress, line);
  const started = await attempt(() => api("POST", `/v1/pipelines/${encodeURIComponent(pipeline)}/backtests`, body));
  if (!started) { progress.remove(); return null; }
  const final = await new Promise((resolve) => {
    const es = new EventSource(`/v1/backtests/${encodeURIComponent(started.id)}/progress`);
    leave.push(() => es.close());
    es.addEventListener("status", (e) => {
      const s = JSON.parse(e.data);
      bar.style.width = `${Math.round(s.fraction * 100)}%`;
      line.textContent = `${s.state}: ${fmt.int(s.read)} messages read, ${fmt.rate(s.messages_per_s)}/s`;
      if (s.state !== "running") { es.close(); resolve(s); }
    });
    es.addEventListener("error", () => { es.close(); api("GET", `/v1/backtests/${encodeURIComponent(started.id)}`).then(resolve, () => resolve(null)); });
  });
  progress.remove();
  if (!final || final.state !== "done") {
    line.textContent = `The backtest ${final ? final.state : "stopped"}${final?.error ? `: ${final.error}` : ""}`;
    return null;
  }
  line.remove();
  return attempt(() => api("GET", `/v1/backtests/${encodeURIComponent(started.id)}/report`));
}

// ---- the series plot (SVG, pan with a drag, zoom with the wheel, reset with a double click)

const COLORS = ["#2f5fd0", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

function seriesPlot(series, opts = {}) {
  const W = 960, H = 340, L = 64, R = 16, T = 16, B = 28;
  const scoreNames = Object.keys(series.lines || {}).filter((n) => n.startsWith("score:"));
  const valueNames = Object.keys(series.lines || {}).filter((n) => !n.startsWith("score:") && n !== series.field);
  const hasScores = scoreNames.length > 0;
  const mainH = hasScores ? 210 : H - T - B;
  const shown = new Set(valueNames.slice(0, 2));
  const allTimes = [...series.points.map((p) => p[0]), ...series.alerts, ...series.detections];
  // A lone point (or none) gets a minute either side, so it is not drawn on the axis.
  let t0 = Math.min(...allTimes), t1 = Math.max(...allTimes);
  if (!isFinite(t0)) { t0 = Date.now() - 60_000; t1 = Date.now(); }
  if (t1 - t0 < 1000) { t0 -= 60_000; t1 += 60_000; }
  let view = [t0, t1];
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "plot");
  svg.setAttribute("data-points", String(series.points.length));
  const legend = h("div", { class: "legend" });
  const ns = (tag, attrs) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  };
  const x = (t) => L + ((t - view[0]) / (view[1] - view[0])) * (W - L - R);
  function draw() {
    svg.replaceChildren();
    const inView = (pts) => pts.filter((p) => p[0] >= view[0] && p[0] <= view[1]);
    const lines = [[series.field, series.points], ...[...shown].map((n) => [n, series.lines[n] || []])];
    const vals = lines.flatMap(([, pts]) => inView(pts).map((p) => p[1]));
    let v0 = Math.min(...vals), v1 = Math.max(...vals);
    if (!isFinite(v0)) { v0 = 0; v1 = 1; }
    if (v1 === v0) { v0 -= 1; v1 += 1; }
    const y = (v) => T + mainH - ((v - v0) / (v1 - v0)) * mainH;
    const grid = ns("g", { class: "grid" }), axis = ns("g", { class: "axis" });
    for (let i = 0; i <= 4; i++) {
      const v = v0 + ((v1 - v0) * i) / 4;
      grid.append(ns("line", { x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      const label = ns("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" });
      label.textContent = String(Number(v.toPrecision(5)));
      axis.append(label);
    }
    for (let i = 0; i <= 5; i++) {
      const t = view[0] + ((view[1] - view[0]) * i) / 5;
      const label = ns("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 5 ? "end" : "middle" });
      label.textContent = new Date(t).toISOString().slice(11, 19);
      axis.append(label);
    }
    svg.append(grid, axis);
    for (const [a, b] of series.windows || []) {
      svg.append(ns("rect", { x: x(a), y: T, width: Math.max(1, x(b) - x(a)), height: mainH, fill: "#fde68a", opacity: 0.45, class: "labelled" }));
    }
    lines.forEach(([name, pts], i) => {
      const vis = inView(pts);
      if (!vis.length) return;
      const d = vis.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      svg.append(ns("path", { d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": i ? 1.2 : 1.6, class: i ? "aggregate" : "series", "data-name": name }));
    });
    const valueAt = (t) => {
      let best = null;
      for (const p of series.points) if (best === null || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      return best ? best[1] : v0;
    };
    for (const t of series.detections.filter((t) => t >= view[0] && t <= view[1])) {
      svg.append(ns("circle", { cx: x(t), cy: y(valueAt(t)), r: 4, fill: "none", stroke: "#c9302c", "stroke-width": 1.5, class: "detection" }));
    }
    for (const t of [...series.alerts, ...(opts.marks || [])].filter((t) => t >= view[0] && t <= view[1])) {
      svg.append(ns("line", { x1: x(t), x2: x(t), y1: T, y2: T + mainH, stroke: "#c9302c", "stroke-dasharray": "4 3", class: "alert" }));
    }
    if (hasScores) {
      const top = T + mainH + 14, sh = H - B - top;
      const scores = scoreNames.flatMap((n) => inView(series.lines[n]).map((p) => p[1]));
      const thresholds = (opts.thresholds || []).filter((d) => scoreNames.includes(`score:${d.detector}`)).map((d) => d.current.threshold);
      let s1 = Math.max(...scores, ...thresholds, 0), s0 = Math.min(...scores, 0);
      if (s1 === s0) s1 = s0 + 1;
      const ys = (v) => top + sh - ((v - s0) / (s1 - s0)) * sh;
      svg.append(ns("rect", { x: L, y: top, width: W - L - R, height: sh, fill: "#fafbfc", stroke: "#eef0f4" }));
      scoreNames.forEach((n, i) => {
        const vis = inView(series.lines[n]);
        if (!vis.length) return;
        const d = vis.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${ys(p[1]).toFixed(1)}`).join("");
        svg.append(ns("path", { d, fill: "none", stroke: COLORS[(i + 3) % COLORS.length], "stroke-width": 1.2, class: "score", "data-name": n }));
      });
      for (const th of thresholds) {
        svg.append(ns("line", { x1: L, x2: W - R, y1: ys(th), y2: ys(th), stroke: "#c9302c", "stroke-width": 1, "stroke-dasharray": "2 2", class: "threshold" }));
      }
      const label = ns("text", { x: L - 6, y: top + 10, "text-anchor": "end", class: "axis" });
      label.textContent = "score";
      svg.append(label);
    }
  }
  function drawLegend() {
    legend.replaceChildren(
      h("span", {}, h("i", { style: `background:${COLORS[0]}` }), ` ${series.field} of ${series.key}`),
      ...valueNames.map((n) => h("label", {}, h("input", { type: "checkbox", checked: shown.has(n), onchange: (e) => { if (e.target.checked) shown.add(n); else shown.delete(n); drawLegend(); draw(); } }), n)),
      ...scoreNames.map((n) => h("span", {}, n)),
      h("span", { class: "muted" }, "red dashes: alerts · circles: detections · yellow: labelled · drag to pan, wheel to zoom, double-click to reset"));
  }
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    const at = view[0] + ((e.clientX - r.left) / r.width * W - L) / (W - L - R) * (view[1] - view[0]);
    const k = e.deltaY < 0 ? 0.8 : 1.25;
    view = [at - (at - view[0]) * k, at + (view[1] - at) * k];
    draw();
  }, { passive: false });
  let drag = null;
  svg.addEventListener("mousedown", (e) => { drag = { x: e.clientX, view: [...view] }; });
  window.addEventListener("mouseup", () => { drag = null; });
  svg.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    const dt = ((e.clientX - drag.x) / r.width) * W / (W - L - R) * (drag.view[1] - drag.view[0]);
    view = [drag.view[0] - dt, drag.view[1] - dt];
    draw();
  });
  svg.addEventListener("dblclick", () => { view = [t0, t1]; draw(); });
  draw();
  drawLegend();
  return h("div", {}, svg, legend);
}

// ---- a pipeline ------------------------------------------------------------------------

const TEMPLATE = `name: my_pipeline
description: what it watches
key: host
schema:
  host: { type: string, required: true }
  latencyMs: float
rules:
  - name: slow
    when: latencyMs > 500
    message: "{{host}} answered in {{latencyMs}} ms"
`;

async function pipelinePage(name, tab) {
  const detail = name ? await api("GET", `/v1/pipelines/${encodeURIComponent(name)}`) : null;
  const tabs = [["definition", "Definition"], ["history", "History"], ["events", "Events"], ["dead-letters", "Dead letters"]];
  page().append(
    h("h1", {}, name ? [name, " ", detail.status.paused ? badge("paused") : badge("running"), h("span", { class: "muted" }, ` v${detail.status.current_version}`)] : "New pipeline"),
    name ? h("div", { class: "tabs" }, ...tabs.map(([t, label]) => h("a", { href: `#/pipelines/${encodeURIComponent(name)}/${t}`, class: t === tab ? "active" : "" }, label))) : null);
  if (tab === "definition") return definitionTab(name, detail);
  if (tab === "history") return historyTab(name, detail);
  if (tab === "events") return eventsTab(name);
  if (tab === "dead-letters") return deadLettersTab(name);
}

function definitionTab(name, detail) {
  const text = detail ? detail.definition.yaml : TEMPLATE;
  const gutter = h("pre", { class: "gutter" });
  const area = h("textarea", { id: "definition", spellcheck: "false", autocomplete: "off" });
  area.value = text;
  const problems = h("ul", { class: "problems", id: "problems" });
  const verdict = h("p", { id: "verdict", class: "muted" });
  const comment = h("input", { id: "comment", placeholder: "why this change (shown in the history)", size: 44 });
  const result = h("div", { id: "backtest-result" });
  const source = `${name || "draft"}.yaml`;
  let bad = new Set();
  const drawGutter = () => {
    const n = area.value.split("\n").length;
    gutter.replaceChildren(...Array.from({ length: n }, (_, i) => [bad.has(i + 1) ? h("span", { class: "bad" }, i + 1) : String(i + 1), "\n"]).flat());
    gutter.scrollTop = area.scrollTop;
  };
  const goTo = (line, column) => {
    const lines = area.value.split("\n");
    const offset = lines.slice(0, line - 1).reduce((s, l) => s + l.length + 1, 0) + Math.max(0, column - 1);
    area.focus();
    area.setSelectionRange(offset, offset);
  };
  let checking = 0;
  const check = async () => {
    const mine = ++checking;
    const r = await attempt(() => api("POST", `/v1/check?source=${encodeURIComponent(source)}`, area.value, "application/yaml"));
    if (!r || mine !== checking) return;
    bad = new Set(r.problems.map((p) => p.line));
    problems.replaceChildren(...r.problems.map((p) => h("li", { "data-line": p.line, onclick: () => goTo(p.line, p.column) }, p.text)));
    verdict.className = r.valid ? "ok" : "muted";
    verdict.textContent = r.valid
      ? `Valid: key ${r.plan.key}, ${r.plan.partitions} partition(s), ${r.plan.units} units; rules ${r.plan.rules.join(", ") || "none"}${r.plan.aggregates.length ? `; aggregates ${r.plan.aggregates.join(", ")}` : ""}`
      : `${r.problems.length} problem${r.problems.length === 1 ? "" : "s"}`;
    drawGutter();
  };
  let timer;
  area.addEventListener("input", () => { drawGutter(); clearTimeout(timer); timer = setTimeout(check, 250); });
  area.addEventListener("scroll", () => { gutter.scrollTop = area.scrollTop; });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Tab") { e.preventDefault(); area.setRangeText("  ", area.selectionStart, area.selectionEnd, "end"); area.dispatchEvent(new Event("input")); }
  });
  const apply = async () => {
    const by = localStorage.getItem("anom.user") || "";
    const q = new URLSearchParams({ source, comment: comment.value, author: by });
    const r = await attempt(() => api("POST", `/v1/pipelines?${q}`, area.value, "application/yaml"));
    if (!r) return check();
    toast(r.changed ? `Version ${r.version.version} applied` : "Unchanged: nothing applied");
    location.hash = `#/pipelines/${encodeURIComponent(r.version.name)}/definition`;
    if (name === r.version.name) route();
  };
  const toggle = async (what) => {
    const r = await attempt(() => api("POST", `/v1/pipelines/${encodeURIComponent(name)}/${what}`));
    if (r) route();
  };
  const backtest = async () => {
    result.replaceChildren(h("h2", {}, "This draft against the current version"));
    const report = await runBacktest(name, { from: "7d", compare: { draft: area.value }, plot: true }, result);
    if (!report) return;
    const c = report.comparison;
    const row = (label, r) => h("tr", {}, h("td", {}, label), h("td", { class: "num" }, fmt.int(r.events)), h("td", { class: "num" }, fmt.int(r.alerts.length)), h("td", { class: "num" }, r.alerts_per_1000_events.toFixed(2)));
    result.append(
      h("table", { id: "backtest-table" }, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "events"), h("th", { class: "num" }, "alerts"), h("th", { class: "num" }, "per 1,000 events"))),
        h("tbody", {}, row(`current (v${c.a.version})`, c.a), row("this draft", c.b))),
      h("p", {}, `${c.only_a.length} alert(s) only the current version raises, ${c.only_b.length} only the draft raises.`),
      ...[["only the draft", c.only_b], ["only the current version", c.only_a]].filter(([, l]) => l.length).map(([label, l]) =>
        h("div", {}, h("h2", {}, `Alerts ${label} raises`), h("table", {}, h("tbody", {}, ...l.slice(0, 50).map((a) => h("tr", {}, h("td", {}, fmt.time(a.fired_ms)), h("td", {}, a.rule), h("td", {}, a.key), h("td", {}, a.message))))))),
      c.b.plot ? h("div", {}, h("h2", {}, "The draft's plotted series"), seriesPlot(c.b.plot, { thresholds: c.b.thresholds })) : h("p", { class: "muted" }, "No numeric series to plot."));
  };
  page().append(
    h("div", { class: "editor" }, gutter, area),
    verdict, problems,
    h("div", { class: "toolbar" },
      comment,
      h("button", { class: "primary", id: "apply", onclick: apply }, name ? "Apply" : "Create"),
      name ? h("button", { id: "backtest", onclick: backtest }, "Backtest this draft against the current version") : null,
      name ? (detail.status.paused
        ? h("button", { id: "resume", onclick: () => toggle("resume") }, "Resume")
        : h("button", { id: "pause", onclick: () => toggle("pause") }, "Pause")) : null),
    result);
  drawGutter();
  check();
}

async function historyTab(name) {
  const versions = await api("GET", `/v1/pipelines/${encodeURIComponent(name)}/versions`);
  const diff = h("div", { id: "diff" });
  const show = async (v) => {
    const d = await attempt(() => api("GET", `/v1/pipelines/${encodeURIComponent(name)}/diff?to=${v}`));
    if (!d) return;
    diff.replaceChildren(h("h2", {}, `v${v - 1} → v${v}`), h("p", {}, d.summary.join("; ") || "no change"),
      h("pre", { class: "diff" }, ...d.unified.split("\n").map((l) => h("span", { class: l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : "" }, l + "\n"))));
  };
  page().append(
    h("table", { id: "versions" }, h("thead", {}, h("tr", {}, ...["version", "applied", "by", "why", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, ...versions.slice().reverse().map((v) => h("tr", {},
        h("td", {}, `v${v.version}`), h("td", {}, fmt.time(v.applied_at)), h("td", {}, v.author), h("td", {}, v.comment),
        h("td", {}, v.version > 1 ? h("button", { onclick: () => show(v.version) }, "Diff with the previous") : null))))),
    diff);
}

async function eventsTab(name) {
  const key = h("input", { placeholder: "key", id: "event-key" });
  const from = h("input", { value: "15m", size: 8, title: "from: an age (15m, 2h) or RFC 3339" });
  const out = h("div", {});
  const load = async () => {
    const q = new URLSearchParams({ from: from.value, limit: "200" });
    if (key.value) q.set("key", key.value);
    const r = await attempt(() => api("GET", `/v1/pipelines/${encodeURIComponent(name)}/events?${q}`));
    if (!r) return;
    out.replaceChildren(
      h("p", { class: "muted" }, `${r.events.length} event(s) of ${fmt.int(r.scanned)} scanned in ${r.stream}${r.complete ? "" : " (stopped at the scan limit: narrow the range)"}`),
      h("table", { id: "events" }, h("thead", {}, h("tr", {}, ...["stored", "sequence", "key", "event"].map((c) => h("th", {}, c)))),
        h("tbody", {}, ...r.events.slice().reverse().map((e) => h("tr", {},
          h("td", {}, fmt.time(e.stored_at)), h("td", { class: "num" }, e.sequence), h("td", {}, e.key || "–"),
          h("td", {}, e.event ? h("code", {}, JSON.stringify(e.event)) : [h("code", {}, e.raw), h("div", { class: "problems" }, `${e.refused.kind}: ${e.refused.reason}`)]))))));
  };
  page().append(h("div", { class: "toolbar" }, key, from, h("button", { onclick: load }, "Show")), out);
  await load();
}

async function deadLettersTab(name) {
  const out = h("div", {});
  const chosen = new Set();
  const load = async () => {
    const r = await attempt(() => api("GET", `/v1/pipelines/${encodeURIComponent(name)}/dead-letters?limit=500`));
    if (!r) return;
    chosen.clear();
    out.replaceChildren(
      h("div", { class: "toolbar" },
        h("button", { class: "primary", id: "replay", onclick: replay }, "Replay the chosen ones"),
        h("span", { class: "muted" }, `${r.dead_letters.length} dead letter(s). Fix the definition first: a replay is checked against the current version.`)),
      h("table", { id: "dead-letters" }, h("thead", {}, h("tr", {}, ...["", "stored", "stage", "kind", "reason", "payload"].map((c) => h("th", {}, c)))),
        h("tbody", {}, ...r.dead_letters.slice().reverse().map((d) => h("tr", { "data-sequence": d.sequence },
          h("td", {}, h("input", { type: "checkbox", onchange: (e) => (e.target.checked ? chosen.add(d.sequence) : chosen.delete(d.sequence)) })),
          h("td", {}, fmt.time(d.stored_at)), h("td", {}, d.stage), h("td", {}, d.kind),
          h("td", {}, d.reason, d.line ? h("span", { class: "muted" }, ` (line ${d.line})`) : null),
          h("td", {}, h("code", {}, d.payload ?? d.payload_hex)))))));
  };
  const replay = async () => {
    if (!chosen.size) return toast("Choose dead letters first", true);
    const r = await attempt(() => api("POST", `/v1/pipelines/${encodeURIComponent(name)}/dead-letters/replay`, { sequences: [...chosen] }));
    if (!r) return;
    toast([`${r.replayed.length} replayed`, ...r.still_refused.map((s) => `#${s.sequence} still refused: ${s.reason}`), r.not_found.length ? `${r.not_found.length} not found` : ""].filter(Boolean).join("\n"), r.still_refused.length > 0);
    await load();
  };
  page().append(out);
  await load();
}

// ---- workers ---------------------------------------------------------------------------

async function workersPage() {
  const out = h("div", {});
  page().append(h("h1", {}, "Workers and assignments"), out);
  every(3000, async () => {
    const [workers, a] = await Promise.all([api("GET", "/v1/workers"), api("GET", "/v1/assignments")]).catch((e) => { toast(e.message, true); return [null, null]; });
    if (!workers) return;
    const unit = (u) => h("tr", {}, h("td", {}, u.pipeline), h("td", {}, u.stage + (u.sink ? ` ${u.sink}` : "")), h("td", { class: "num" }, u.partition),
      h("td", {}, u.worker_id || "–"), h("td", { class: "num" }, u.version), h("td", { class: "num" }, u.running_version || "–"));
    const unitHead = h("thead", {}, h("tr", {}, ...["pipeline", "stage", "partition", "worker", "version", "running"].map((c) => h("th", {}, c))));
    out.replaceChildren(
      h("table", { id: "workers" }, h("thead", {}, h("tr", {}, ...["worker", "alive", "units", "running", "last heartbeat", "host", "metrics"].map((c) => h("th", {}, c)))),
        h("tbody", {}, ...workers.map((w) => h("tr", {}, h("td", {}, w.worker_id), h("td", {}, w.alive ? badge("running") : badge("firing")),
          h("td", { class: "num" }, w.assigned_units), h("td", { class: "num" }, w.running_units), h("td", {}, fmt.ago(w.last_heartbeat)), h("td", {}, w.hostname), h("td", {}, w.metrics_addr))))),
      h("h2", {}, `Assignment (generation ${a.generation})`),
      h("table", { id: "assignments" }, unitHead, h("tbody", {}, ...a.units.map(unit))),
      a.unassigned.length ? [h("h2", {}, "Units no worker runs"), h("table", {}, unitHead.cloneNode(true), h("tbody", {}, ...a.unassigned.map(unit)))] : null);
  });
}

// ---- start -----------------------------------------------------------------------------

window.addEventListener("hashchange", route);
window.addEventListener("pagehide", () => live.stop());
window.addEventListener("pageshow", (e) => { if (e.persisted) { live.start(); route(); } });
document.addEventListener("visibilitychange", () => {
  if (document.hidden) return live.stop();
  live.start();
  route();
});
live.start();
route();
