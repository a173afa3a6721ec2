// The autoresearch dashboard: draws one snapshot (see tools/dashboard.py) and fetches the next.
// In a browser it reads GET api/snapshot; as an MCP App (data-transport="mcp-app") it asks the
// host to call the read-only `dashboard_data` tool. Every value from the workspace is put into
// the page as text (textContent), never as markup: descriptions, diffs and logs are the agent's.
"use strict";

(function () {
  const APP = document.documentElement.dataset.transport === "mcp-app";
  const POLL_MS = APP ? 3000 : 1500;
  const COLORS = {
    kept: "#2a9d58",
    discarded: "#8a9099",
    crash: "#d1495b",
    best: "#2a9d58",
    band: "rgba(42, 157, 88, 0.35)",
    bandFill: "rgba(42, 157, 88, 0.12)",
  };
  const RUN_COLORS = ["#2f6fd6", "#e07b24", "#8e44ad", "#16a2b8", "#c2185b", "#6d8a1f"];
  const state = { selected: null, sort: "launch", snapshot: null, charts: {} };

  const $ = (id) => document.getElementById(id);

  function el(tag, options, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(options || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  const fixed = (value, digits = 4) => (value === null || value === undefined ? "" : value.toFixed(digits));
  const signed = (value) => (value === null || value === undefined ? "" : (value > 0 ? "+" : "") + value.toFixed(4));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return seconds.toFixed(0) + " s";
    if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  // ---- header --------------------------------------------------------------------------

  function drawHeader(s) {
    $("workspace").textContent = s.workspace;
    $("workspace").title = s.workspace;
    $("best-value").textContent = s.best_val_bpb === null ? "\u2014" : fixed(s.best_val_bpb);
    const best = s.experiments.find((r) => r.run_id === s.best_run_id);
    $("best-run").textContent = best ? best.run_id + " \u00b7 " + best.description : "nothing kept yet";
    $("best-run").title = best ? best.description : "";
    const counts = [["experiments", s.total], ["kept", s.kept], ["running", s.running], ["queued", s.queued]];
    $("counts").replaceChildren(
      ...counts.map(([label, n]) => el("div", { "data-count": label }, [el("b", { text: String(n) }), el("span", { text: label })]))
    );
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = "status " + kind;
  }

  // ---- leaderboard ---------------------------------------------------------------------

  function columns(rows) {
    const cols = [
      ["run", "id", (r) => r.run_id],
      ["status", "", (r) => r.status],
      ["decision", "", (r) => r.decision || ""],
    ];
    // The verdict column appears once the records carry one (noise-aware verdicts).
    if (rows.some((r) => "verdict" in r)) cols.push(["verdict", "", (r) => r.verdict || ""]);
    cols.push(
      ["val_bpb", "num", (r) => fixed(r.val_bpb)],
      ["\u0394 parent", "num delta", (r) => signed(r.delta_vs_parent)],
      ["\u0394 best", "num delta", (r) => signed(r.delta_vs_best)],
      ["time", "num", (r) => duration(r.duration_seconds)],
      ["mem GB", "num", (r) => (r.memory_gb === null ? "" : r.memory_gb.toFixed(1))],
      ["description", "desc", (r) => r.description]
    );
    return cols;
  }

  function drawLeaderboard(s) {
    let rows = s.experiments.slice();
    if (state.sort === "launch") rows.reverse();
    else rows.sort((a, b) => (a.val_bpb === null) - (b.val_bpb === null) || (a.val_bpb || 0) - (b.val_bpb || 0));
    const cols = columns(rows);
    const table = $("leaderboard");
    table.tHead.rows[0].replaceChildren(...cols.map(([name, cls]) => el("th", { className: cls, text: name })));
    const selected = s.detail ? s.detail.run_id : null;
    table.tBodies[0].replaceChildren(
      ...rows.map((row) => {
        const tr = el("tr", { "data-run": row.run_id });
        tr.className = [row.decision === "keep" ? "keep" : "", row.run_id === selected ? "selected" : ""].join(" ").trim();
        for (const [name, cls, value] of cols) {
          const text = value(row);
          const td = el("td", { className: cls, text: text });
          if (name === "status") td.classList.add("s-" + row.status);
          if (name === "decision" && row.decision) td.classList.add("d-" + row.decision);
          if (cls.includes("delta") && text.startsWith("-")) td.classList.add("better");
          if (cls.includes("delta") && text.startsWith("+")) td.classList.add("worse");
          tr.append(td);
        }
        tr.addEventListener("click", () => select(row.run_id));
        return tr;
      })
    );
    $("board-empty").hidden = rows.length > 0;
  }

  // ---- charts (uPlot) ------------------------------------------------------------------

  function chartWidth(container) {
    return Math.max(280, container.clientWidth);
  }

  // Recreate a chart when its series change; otherwise only give it the new data.
  function drawChart(name, container, key, makeOptions, data) {
    const old = state.charts[name];
    if (old && old.key === key) {
      old.plot.setData(data);
      return;
    }
    if (old) old.plot.destroy();
    const options = makeOptions();
    options.width = chartWidth(container);
    state.charts[name] = { key: key, plot: new uPlot(options, data, container) };
  }

  // Axis text and grid in the page's colours (uPlot draws on a canvas, where CSS does not reach).
  function axis(options) {
    const style = getComputedStyle(document.documentElement);
    const border = style.getPropertyValue("--border").trim();
    return Object.assign(
      { stroke: style.getPropertyValue("--muted").trim(), grid: { stroke: border, width: 1 }, ticks: { stroke: border, width: 1 } },
      options
    );
  }

  function points(color, size) {
    return { stroke: color, paths: () => null, points: { show: true, size: size, fill: color, stroke: color } };
  }

  // Frame the kept frontier and the runs near it; a diverged run far above would flatten the
  // rest, so such runs are drawn on the top edge (as the PNG plot does).
  function yRange(values, keptValues) {
    const low = Math.min(...values);
    const frontierTop = Math.max(...(keptValues.length ? keptValues : values));
    const near = Math.max(0.5 * (frontierTop - low), 0.05 * Math.abs(frontierTop));
    const top = Math.max(frontierTop, Math.min(Math.max(...values), frontierTop + near));
    const span = Math.max(top - low, 0.005 * Math.abs(top), 1e-3);
    return [low - 0.08 * span, top + 0.06 * span];
  }

  // Enough decimals that neighbouring ticks read differently (a noise band is a few 1e-4 wide).
  function tickLabels(ticks) {
    const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
    const decimals = Math.min(6, Math.max(3, Math.ceil(-Math.log10(step || 1))));
    return ticks.map((t) => t.toFixed(decimals));
  }

  function drawProgress(s) {
    const container = $("progress-chart");
    const measured = s.progress.filter((p) => p.val_bpb !== null);
    container.dataset.points = String(measured.length);
    $("progress-empty").hidden = measured.length > 0;
    container.hidden = measured.length === 0;
    if (!measured.length) return;
    const values = measured.map((p) => p.val_bpb);
    const band = s.noise_floor ? s.noise_floor.threshold : null;
    const bestValues = s.progress.map((p) => p.best_so_far).filter((v) => v !== null);
    const bandEdges = band === null ? [] : bestValues.flatMap((v) => [v - band, v + band]);
    const kept = measured.filter((p) => p.kept).map((p) => p.val_bpb);
    const [low, high] = yRange([...values, ...bandEdges], [...kept, ...bandEdges]);
    const clip = (v) => (v === null ? null : Math.min(v, high));
    const xs = s.progress.map((p) => p.x);
    const data = [
      xs,
      s.progress.map((p) => p.best_so_far),
      s.progress.map((p) => (p.kept ? clip(p.val_bpb) : null)),
      s.progress.map((p) => (!p.kept && p.val_bpb !== null ? clip(p.val_bpb) : null)),
      s.progress.map((p) => (p.failed ? low + 0.02 * (high - low) : null)),
    ];
    // The noise band: within it of the running best, a run is not distinguishable from it.
    container.dataset.band = band === null ? "" : band.toFixed(6);
    if (band !== null) {
      data.push(s.progress.map((p) => (p.best_so_far === null ? null : p.best_so_far + band)));
      data.push(s.progress.map((p) => (p.best_so_far === null ? null : p.best_so_far - band)));
    }
    const ids = s.progress.map((p) => p.run_id);
    const bandSeries = (label) => ({
      label: label,
      stroke: COLORS.band,
      width: 1,
      paths: uPlot.paths.stepped({ align: 1 }),
      points: { show: false },
      value: (u, v) => fixed(v),
    });
    const options = () => ({
      height: 280,
      scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] }, y: { range: () => state.progressRange } },
      axes: [
        axis({ label: "experiment", values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : "")) }),
        axis({ label: "val_bpb", values: (u, ticks) => tickLabels(ticks), size: 70 }),
      ],
      series: [
        { label: "run", value: (u, x) => (x === null ? "" : ids[x - 1] || "") },
        { label: "running best", stroke: COLORS.best, width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, value: (u, v) => fixed(v) },
        Object.assign({ label: "kept", value: (u, v) => fixed(v) }, points(COLORS.kept, 9)),
        Object.assign({ label: "discarded / undecided", value: (u, v) => fixed(v) }, points(COLORS.discarded, 7)),
        Object.assign({ label: "crashed", value: (u, v) => (v === null ? "" : "crashed") }, points(COLORS.crash, 7)),
        ...(band === null ? [] : [bandSeries("noise band +"), bandSeries("noise band -")]),
      ],
      bands: band === null ? [] : [{ series: [5, 6], fill: COLORS.bandFill }],
      cursor: { points: { show: false } },
    });
    state.progressRange = [low, high];
    drawChart("progress", container, band === null ? "progress" : "progress+band", options, data);
  }

  function drawLoss(s) {
    const container = $("loss-chart");
    const curves = s.curves.filter((c) => c.points.some((p) => p.loss !== null));
    const total = curves.reduce((n, c) => n + c.points.length, 0);
    container.dataset.points = String(total);
    $("loss-empty").hidden = total > 0;
    container.hidden = total === 0;
    if (!total) return;
    // Runs share a time budget, so the fraction of it used lines them up; steps otherwise.
    const byProgress = curves.every((c) => c.points.every((p) => p.progress !== null));
    const xOf = (p) => (byProgress ? 100 * p.progress : p.step);
    const tables = curves.map((c) => [c.points.map(xOf), c.points.map((p) => p.loss)]);
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    let colorIndex = 0;
    const series = curves.map((c) => {
      const best = c.role === "best";
      const color = best ? COLORS.best : RUN_COLORS[colorIndex++ % RUN_COLORS.length];
      return {
        label: c.run_id + (best ? " (best)" : ""),
        stroke: color,
        width: best ? 2 : 1.5,
        dash: best ? [6, 4] : undefined,
        spanGaps: true,
        points: { show: false },
        value: (u, v) => fixed(v),
      };
    });
    const key = curves.map((c) => c.run_id + c.role).join(",") + (byProgress ? "%" : "#");
    const options = () => ({
      height: 240,
      scales: { x: { time: false } },
      axes: [
        axis({ label: byProgress ? "% of training budget" : "step" }),
        axis({ label: "training loss", values: (u, ticks) => ticks.map((t) => t.toFixed(2)), size: 60 }),
      ],
      series: [{ label: byProgress ? "budget %" : "step", value: (u, v) => (v === null ? "" : v.toFixed(byProgress ? 1 : 0)) }, ...series],
      cursor: { points: { show: false } },
    });
    drawChart("loss", container, key, options, data);
  }

  // ---- devices -------------------------------------------------------------------------

  function drawSlots(s) {
    $("slots").replaceChildren(
      ...s.slots.map((slot) => {
        const card = el("div", { className: "slot" + (slot.run ? "" : " idle"), "data-slot": slot.slot }, [
          el("div", { className: "slot-head" }, [el("span", { text: slot.slot }), el("span", { text: slot.run ? slot.run.phase || "running" : "idle" })]),
        ]);
        if (slot.gpu) {
          const g = slot.gpu;
          const parts = [g.name];
          if (g.utilization_percent !== null) parts.push(g.utilization_percent + "% busy");
          if (g.memory_used_mb !== null && g.memory_total_mb !== null) parts.push((g.memory_used_mb / 1024).toFixed(1) + " / " + (g.memory_total_mb / 1024).toFixed(0) + " GB");
          if (g.temperature_c !== null) parts.push(g.temperature_c + " \u00b0C");
          card.append(el("div", { className: "gpu", text: parts.join(" \u00b7 ") }));
        }
        if (slot.run) {
          const r = slot.run;
          const facts = [];
          if (r.step !== null) facts.push("step " + r.step);
          if (r.loss !== null) facts.push("loss " + r.loss.toFixed(4));
          const line = el("div", { className: "slot-run" }, [el("span", { className: "run-id", text: r.run_id }), " " + r.description]);
          line.addEventListener("click", () => select(r.run_id));
          card.append(line);
          if (facts.length) card.append(el("div", { className: "muted", text: facts.join(" \u00b7 ") }));
          if (r.progress !== null) {
            const fill = el("div");
            fill.style.width = (100 * r.progress).toFixed(1) + "%";
            card.append(el("div", { className: "bar", title: (100 * r.progress).toFixed(0) + "% of the budget" }, [fill]));
          }
        }
        return card;
      })
    );
    const queued = s.experiments.filter((r) => r.status === "queued");
    $("queue").textContent = queued.length ? queued.map((r) => r.run_id + " " + r.description).join("\n") : "empty";
    const h = s.host;
    const hostParts = [(h.cpu_count || "?") + " CPUs, " + h.cpu_percent.toFixed(0) + "% busy", h.ram_used_gb.toFixed(1) + " / " + h.ram_total_gb.toFixed(1) + " GB RAM", h.disk_free_gb.toFixed(0) + " GB disk free"];
    if (s.gpu_message) hostParts.push(s.gpu_message);
    $("host").textContent = hostParts.join("\n");
  }

  // ---- one run: diff and log -----------------------------------------------------------

  function drawDetail(s) {
    const d = s.detail;
    $("detail").hidden = !d;
    if (!d) return;
    $("detail-title").textContent = d.run_id + " \u00b7 " + d.description;
    const meta = [d.status + (d.phase && d.status === "running" ? " (" + d.phase + ")" : "")];
    if (d.decision) meta.push(d.decision + (d.note ? ": " + d.note : ""));
    meta.push("commit " + d.commit.slice(0, 7));
    if (d.parent_commit) meta.push("parent " + (d.parent_run_id ? d.parent_run_id + " " : "") + d.parent_commit.slice(0, 7));
    $("detail-meta").textContent = meta.join(" \u00b7 ");
    $("detail-error").textContent = d.error || "";
    const diff = $("diff");
    const lines = d.diff ? d.diff.split("\n") : [];
    diff.replaceChildren(
      ...lines.map((line) => {
        let cls = "";
        if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff ") || line.startsWith("index ")) cls = "diff-file";
        else if (line.startsWith("+")) cls = "diff-add";
        else if (line.startsWith("-")) cls = "diff-del";
        else if (line.startsWith("@@")) cls = "diff-hunk";
        return el("span", { className: cls, text: line + "\n" });
      })
    );
    if (d.diff_truncated) diff.append(el("span", { className: "muted", text: "\u2026 (diff cut short)\n" }));
    const log = $("log");
    const following = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    if (log.textContent !== d.log_tail) {
      log.textContent = d.log_tail;
      if (following) log.scrollTop = log.scrollHeight;
    }
  }

  // ---- data ----------------------------------------------------------------------------

  function draw(s) {
    state.snapshot = s;
    drawHeader(s);
    drawProgress(s);
    drawLoss(s);
    drawSlots(s);
    drawLeaderboard(s);
    drawDetail(s);
    document.body.dataset.generatedAt = String(s.generated_at);
  }

  async function fetchSnapshot() {
    if (APP) {
      const result = await host.request("tools/call", { name: "dashboard_data", arguments: state.selected ? { run_id: state.selected } : {} });
      if (result.isError) throw new Error((result.content || []).map((c) => c.text || "").join(" ") || "tool error");
      return result.structuredContent;
    }
    const query = state.selected ? "?run=" + encodeURIComponent(state.selected) : "";
    const response = await fetch("api/snapshot" + query, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(response.status === 401 ? "not signed in: open the link the server printed" : "HTTP " + response.status);
    return response.json();
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      draw(await fetchSnapshot());
      setStatus("live \u00b7 updated " + new Date().toLocaleTimeString(), "live");
    } catch (error) {
      setStatus("connection lost (" + error.message + "), retrying", "lost");
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  function select(runId) {
    state.selected = runId;
    refresh();
  }

  for (const button of document.querySelectorAll("[data-sort]")) {
    button.addEventListener("click", () => {
      state.sort = button.dataset.sort;
      for (const other of document.querySelectorAll("[data-sort]")) other.classList.toggle("active", other === button);
      if (state.snapshot) drawLeaderboard(state.snapshot);
    });
  }

  window.addEventListener("resize", () => {
    for (const [name, chart] of Object.entries(state.charts)) {
      const container = $(name + "-chart");
      chart.plot.setSize({ width: chartWidth(container), height: chart.plot.height });
    }
  });

  // ---- as an MCP App: JSON-RPC with the host over postMessage --------------------------

  const host = {
    nextId: 1,
    pending: new Map(),
    request(method, params) {
      const id = this.nextId++;
      window.parent.postMessage({ jsonrpc: "2.0", id: id, method: method, params: params }, "*");
      return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    },
    notify(method, params) {
      window.parent.postMessage({ jsonrpc: "2.0", method: method, params: params }, "*");
    },
    receive(message) {
      if (!message || message.jsonrpc !== "2.0") return;
      if (message.id !== undefined && !message.method && this.pending.has(message.id)) {
        const { resolve, reject } = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.error) reject(new Error(message.error.message || "host error"));
        else resolve(message.result);
        return;
      }
      if (message.method === "ui/notifications/tool-result") refresh();
      else if (message.method === "ui/notifications/host-context-changed") applyHostContext(message.params);
      if (message.id !== undefined && message.method) {
        // ping, ui/resource-teardown: nothing to save, answer at once.
        window.parent.postMessage({ jsonrpc: "2.0", id: message.id, result: {} }, "*");
      }
    },
  };

  function applyHostContext(context) {
    if (!context) return;
    if (context.theme) document.documentElement.dataset.theme = context.theme;
    const variables = (context.styles && context.styles.variables) || {};
    for (const [name, value] of Object.entries(variables)) {
      if (name.startsWith("--") && value) document.documentElement.style.setProperty(name, value);
    }
  }

  async function startApp() {
    window.addEventListener("message", (event) => {
      if (event.source === window.parent) host.receive(event.data);
    });
    try {
      const init = await host.request("ui/initialize", {
        appInfo: { name: "autoresearch-dashboard", version: "1" },
        appCapabilities: { availableDisplayModes: ["inline", "fullscreen"] },
        protocolVersion: "2026-01-26",
      });
      applyHostContext(init && init.hostContext);
    } catch (error) {
      setStatus("the host did not start the app (" + error.message + ")", "lost");
      return;
    }
    host.notify("ui/notifications/initialized", {});
    new ResizeObserver(() => {
      host.notify("ui/notifications/size-changed", { width: document.body.scrollWidth, height: document.body.scrollHeight });
    }).observe(document.body);
    refresh();
  }

  if (window.matchMedia("(prefers-color-scheme: dark)").matches) document.documentElement.dataset.theme = "dark";
  if (APP) startApp();
  else refresh();
})();
