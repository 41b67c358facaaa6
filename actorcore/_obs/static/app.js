// actorcore dashboard: hash routes, one server-sent-events stream per page, no reloads.
"use strict";
(function () {
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  let source = null;
  let logLines = [];

  function esc(v) {
    if (v === null || v === undefined) return "";
    return String(v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  }
  // ids are a per-process prefix and a counter: show both ends
  function short(id) {
    if (!id) return "";
    const s = String(id);
    return `<span title="${esc(s)}">${esc(s.length > 16 ? s.slice(0, 6) + "…" + s.slice(-6) : s)}</span>`;
  }
  function mib(b) { return b == null ? "" : (b / 1048576).toFixed(1) + " MiB"; }
  function ms(t) { return t == null ? "" : new Date(t).toLocaleTimeString(); }
  function state(s) { return `<span class="state-${esc(s)}">${esc(s)}</span>`; }
  function table(id, cols, rows) {
    if (!rows || !rows.length) return `<p class="muted" id="${id}-empty">none</p>`;
    const head = cols.map(c => `<th>${esc(c[0])}</th>`).join("");
    const body = rows.map(r => `<tr>${cols.map(c => `<td>${c[1](r)}</td>`).join("")}</tr>`).join("");
    return `<table id="${id}"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
  }
  function bar(used, total) {
    const pct = total ? Math.min(100, 100 * used / total) : 0;
    return `<div class="bar"><div style="width:${pct.toFixed(1)}%"></div></div>`;
  }
  function counts(obj) {
    return Object.entries(obj || {}).map(([k, v]) => `${state(k)} ${v}`).join(" &middot; ") || "none";
  }

  const render = {
    overview(d) {
      const nodes = d.nodes.map(n => `<div class="card node" data-node="${esc(n.node_id)}">
        <div><b>node</b> <span class="mono">${short(n.node_id)}</span> ${esc(n.node_ip)} ${state(n.state)}</div>
        <div>CPU ${n.cpu_percent == null ? "?" : n.cpu_percent.toFixed(0)}%</div>${bar(n.cpu_percent || 0, 100)}
        <div>memory ${mib(n.mem_used)} / ${mib(n.mem_total)}</div>${bar(n.mem_used || 0, n.mem_total || 1)}
        <div>object store ${mib(n.store_used)} / ${mib(n.store_capacity)}, ${esc(n.store_objects)} objects</div>
        ${bar(n.store_used || 0, n.store_capacity || 1)}
        <div class="muted">up ${esc(n.uptime_s)} s, ${esc(JSON.stringify(n.workers))}</div></div>`).join("");
      return `<h2>Nodes</h2><div class="cards" id="nodes">${nodes}</div>
        <h2>Actors</h2><p id="actor-counts">${counts(d.actors_by_state)}</p>
        <h2>Tasks</h2><p id="task-counts">${counts(d.tasks_by_state)}</p>
        <h2>Workers</h2>${table("workers", [["worker", r => `<span class="mono">${short(r.worker_id)}</span>`],
          ["node", r => `<span class="mono">${short(r.node_id)}</span>`],
          ["pid", r => esc(r.pid)], ["role", r => esc(r.role)], ["actors", r => esc(r.actors)],
          ["CPU %", r => esc(r.cpu_percent)], ["RSS", r => mib(r.rss)]], d.workers)}`;
    },
    actors(d) {
      return `<h2>Actors (${d.actors.length})</h2>` + table("actors", [
        ["actor", r => `<a class="mono" href="#/actor/${esc(r.actor_id)}">${short(r.actor_id)}</a>`],
        ["class", r => esc(r.class_name)], ["name", r => esc(r.name)], ["state", r => state(r.state)],
        ["node", r => `<span class="mono">${short(r.node_id)}</span>`], ["pid", r => esc(r.pid)],
        ["restarts", r => esc(r.num_restarts)], ["death cause", r => esc(r.death_cause)]], d.actors);
    },
    actor(d) {
      if (!d.actor) return `<p>No actor ${esc(d.arg)} on this cluster.</p>`;
      const a = d.actor;
      return `<h2>Actor ${esc(a.class_name)} <span class="mono">${esc(a.actor_id)}</span></h2>
        <p id="actor-state">${state(a.state)} on node <span class="mono">${short(a.node_id)}</span>, pid ${esc(a.pid)},
        ${esc(a.num_restarts)} restart(s) ${a.name ? "name " + esc(a.name) : ""}</p>
        <h2>Recent calls</h2>${taskTable("calls", d.calls)}
        <h2>Log lines</h2><pre class="logs" id="actor-logs">${d.logs.map(logLine).join("")}</pre>`;
    },
    tasks(d) {
      const by = Object.entries(d.summary.by_name).map(([n, c]) => ({name: n, c: c}));
      return `<h2>Tasks by name and state</h2>` + table("task-summary", [["name", r => esc(r.name)],
        ["states", r => counts(r.c)]], by) +
        `<h2>Failures</h2>` + table("failures", [["task", r => `<span class="mono">${short(r.task_id)}</span>`],
          ["name", r => esc(r.name)], ["when", r => ms(r.end_time_ms)],
          ["error", r => `<pre>${esc(r.error_message)}</pre>`]], d.failed) +
        `<h2>Recent tasks</h2>${taskTable("tasks", d.recent)}`;
    },
    objects(d) {
      return `<h2>Objects (${d.objects.length})</h2>` + table("objects", [
        ["object", r => `<span class="mono">${short(r.object_id)}</span>`], ["size", r => mib(r.object_size)],
        ["owner", r => `<span class="mono">${short(r.owner_id)}</span>`],
        ["locations", r => (r.locations || []).map(short).join(", ")], ["state", r => esc(r.state)],
        ["spilled", r => r.spilled ? "yes" : ""], ["pins", r => esc(r.pins)]], d.objects);
    },
    logs(d) {
      logLines = d.append ? logLines.concat(d.lines) : d.lines;
      if (logLines.length > 5000) logLines = logLines.slice(-5000);
      return `<h2>Worker output ${d.arg ? "(" + esc(d.arg) + ")" : ""}</h2>
        <pre class="logs" id="logs">${logLines.map(logLine).join("")}</pre>`;
    },
  };
  function taskTable(id, rows) {
    return table(id, [["task", r => `<span class="mono">${short(r.task_id)}</span>`], ["name", r => esc(r.name)],
      ["state", r => state(r.state)], ["node", r => `<span class="mono">${short(r.node_id)}</span>`],
      ["pid", r => esc(r.worker_pid)], ["start", r => ms(r.start_time_ms)],
      ["ms", r => r.end_time_ms && r.start_time_ms ? r.end_time_ms - r.start_time_ms : ""]], rows);
  }
  function logLine(l) {
    const node = l.node_id ? `, node=${String(l.node_id).slice(0, 8)}` : "";
    return `<span class="${l.stream === "err" ? "err" : ""}">(${esc(l.label)}${esc(node)}) ${esc(l.line)}</span>\n`;
  }

  function open() {
    const parts = (location.hash || "#/overview").slice(2).split("/");
    const view = render[parts[0]] ? parts[0] : "overview";
    const arg = parts.slice(1).join("/");
    document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.dataset.view === view));
    if (source) source.close();
    logLines = [];
    main.innerHTML = `<p class="muted">loading</p>`;
    source = new EventSource(`/api/stream?view=${encodeURIComponent(view)}&arg=${encodeURIComponent(arg)}`);
    source.onopen = () => { live.textContent = "live"; live.classList.remove("off"); };
    source.onerror = () => { live.textContent = "reconnecting"; live.classList.add("off"); };
    source.onmessage = ev => {
      const d = JSON.parse(ev.data);
      const box = document.getElementById("logs") || document.getElementById("actor-logs");
      const atEnd = !box || box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      main.innerHTML = render[view](d);
      main.dataset.view = view;
      main.dataset.updated = String(Date.now());
      const nbox = document.getElementById("logs") || document.getElementById("actor-logs");
      if (nbox && atEnd) nbox.scrollTop = nbox.scrollHeight;
    };
  }
  window.addEventListener("hashchange", open);
  open();
})();
