// arboretum dashboard: one small script, no build step, no dependencies.
// It speaks the node's API (JSON over the WebSocket at /api/ws, protocol 1; docs/api.md),
// authenticated by the HttpOnly cookie the ?token= visit set. Agent text only ever reaches
// the page through textContent / text nodes and setAttribute, never as HTML.
"use strict";
(() => {
  const PAGE = document.body.dataset.page;
  const AGENT = document.body.dataset.agent ? Number(document.body.dataset.agent) : null;
  const STATUSES = ["active", "inactive", "disabled_flapping", "ok", "error", "timeout",
    "cancelled", "skipped", "missed"];
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ DOM helpers (text only)
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const svg = (tag, attrs, ...kids) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(kid));
    return el;
  };
  const pretty = (value) => JSON.stringify(value, null, 2);
  const shorten = (text, n) => (text.length > n ? text.slice(0, n - 1) + "…" : text);

  function badge(status) {
    const known = STATUSES.includes(status) ? status : "unknown";
    return h("span", { class: `badge s-${known}` }, String(status));
  }
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const time = d.toLocaleTimeString("en-GB", { hour12: false });
    if (d.toDateString() === new Date().toDateString()) return time;
    return `${d.toLocaleDateString("en-CA")} ${time.slice(0, 5)}`;
  }
  const timeEl = (iso) => (iso ? h("time", { datetime: iso, title: iso }, fmtTime(iso)) : "—");
  function errorText(text, n, open, onToggle) {
    if (!text) return "—";
    text = String(text);
    if (text.length <= n && !text.includes("\n")) return h("span", { class: "error" }, text);
    const box = h("details", { class: "err", title: text, open: open },
      h("summary", {}, shorten(text.split("\n")[0], n)), h("pre", {}, text));
    if (onToggle) box.addEventListener("toggle", () => onToggle(box.open));
    return box;
  }
  function keepFocus(container, rebuild) {
    // Rebuilding rows must not throw away the keyboard focus.
    const active = document.activeElement;
    const row = active && container.contains(active) ? active.closest("[data-key]") : null;
    const key = row ? row.dataset.key : null;
    const href = active ? active.getAttribute("href") : null;
    const tag = active ? active.tagName.toLowerCase() : "";
    const which = row ? [...row.querySelectorAll(tag)].indexOf(active) : -1;
    rebuild();
    if (key === null) return;
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (!again) return;
    // The same link (by its target), else the same kind of control in the same place.
    const target = href !== null
      ? [...again.querySelectorAll("a")].find((a) => a.getAttribute("href") === href)
      : again.querySelectorAll(tag)[which];
    if (target) target.focus();
  }
  function later(fn) {
    // Coalesce a burst of pushes into one render. A MessageChannel task, unlike a timer,
    // is not throttled in a background tab: a page nobody looks at is still current.
    const channel = new MessageChannel();
    let queued = false;
    channel.port1.onmessage = () => { queued = false; fn(); };
    return () => { if (!queued) { queued = true; channel.port2.postMessage(null); } };
  }

  // ------------------------------------------------------------------ the API connection
  class ApiError extends Error {
    constructor(error) {
      super((error && error.message) || "the node refused the request");
      this.code = error && error.code;
      this.fields = (error && error.fields) || {};
    }
  }
  const conn = { ws: null, nextId: 1, pending: new Map(), delay: 250, onopen: null, onpush: null };
  function setConn(live, text) {
    const el = $("conn");
    el.textContent = text;
    el.className = `conn ${live ? "conn-live" : "conn-wait"}`;
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/ws`);
    conn.ws = ws;
    ws.onopen = () => {
      conn.delay = 250;
      setConn(true, "live");
      if (conn.onopen) Promise.resolve().then(conn.onopen).catch((e) => setConn(false, e.message));
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.event !== undefined) {
        if (conn.onpush) conn.onpush(msg.event, msg.data);
        return;
      }
      const waiter = conn.pending.get(msg.id);
      if (!waiter) return;
      conn.pending.delete(msg.id);
      if (msg.ok) waiter.resolve(msg.result); else waiter.reject(new ApiError(msg.error));
    };
    ws.onclose = () => {
      if (conn.ws !== ws) return;
      conn.ws = null;
      for (const waiter of conn.pending.values()) {
        waiter.reject(new ApiError({ code: "disconnected", message: "the connection to the node was lost" }));
      }
      conn.pending.clear();
      setConn(false, "reconnecting…");
      const delay = conn.delay;
      conn.delay = Math.min(conn.delay * 2, 2000);
      setTimeout(connect, delay);
    };
  }
  function request(op, args) {
    return new Promise((resolve, reject) => {
      if (!conn.ws || conn.ws.readyState !== WebSocket.OPEN) {
        reject(new ApiError({ code: "disconnected", message: "not connected to the node (retrying)" }));
        return;
      }
      const id = conn.nextId++;
      conn.pending.set(id, { resolve, reject });
      conn.ws.send(JSON.stringify({ id, op, args: args || {} }));
    });
  }

  // ------------------------------------------------------------------ index + node panel
  const COUNTERS = [
    ["running", "agents running"], ["agents", "agents stored"], ["active", "active"],
    ["disabled", "disabled (flapping)"], ["restarts", "restarts"], ["runs", "runs"],
    ["failures", "failures"], ["runs_last_minute", "runs / minute"],
    ["failures_last_minute", "failures / minute"], ["uptime_s", "uptime"],
  ];
  function fmtUptime(s) {
    s = Math.floor(Number(s) || 0);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  function renderPanel(stats) {
    $("counters").replaceChildren(...COUNTERS.map(([key, label]) => h("div", { "data-counter": key },
      h("dt", {}, label),
      h("dd", {}, key === "uptime_s" ? fmtUptime(stats[key]) : String(stats[key] ?? 0)))));
    const history = Array.isArray(stats.history) ? stats.history : [];
    const peak = Math.max(1, ...history.map((m) => m.runs || 0));
    const chart = $("chart");
    const width = 600 / Math.max(history.length, 1);
    const bars = [svg("line", { class: "axis", x1: 0, y1: 131, x2: 600, y2: 131 })];
    let total = 0, failed = 0;
    history.forEach((m, i) => {
      const runs = m.runs || 0, failures = m.failures || 0;
      total += runs; failed += failures;
      const x = (i * width + 1).toFixed(1), w = Math.max(width - 2, 1).toFixed(1);
      const rh = (runs / peak) * 120, fh = (failures / peak) * 120;
      const label = `${m.minute} min ago: ${runs} runs, ${failures} failures`;
      bars.push(svg("g", {}, svg("title", {}, label),
        svg("rect", { class: "bar-runs", x, width: w, y: (130 - rh).toFixed(1), height: rh.toFixed(1) }),
        svg("rect", { class: "bar-failures", x, width: w, y: (130 - fh).toFixed(1), height: fh.toFixed(1) })));
    });
    chart.replaceChildren(...bars);
    chart.dataset.total = String(total);
    $("chart-summary").textContent =
      `Last hour: ${total} runs, ${failed} failures; busiest minute: ${peak === 1 && total === 0 ? 0 : peak} runs.`;
    const counts = Object.entries(stats.telemetry || {}).sort(([a], [b]) => a.localeCompare(b));
    $("telemetry").tBodies[0].replaceChildren(...counts.map(([event, n]) =>
      h("tr", {}, h("td", {}, h("code", {}, event)), h("td", { class: "num" }, String(n)))));
  }
  function nextRun(nextRuns) {
    let best = null;
    for (const [key, when] of Object.entries(nextRuns || {})) {
      if (when && (best === null || when < best.when)) best = { key, when };
    }
    return best;
  }
  function indexPage() {
    let records = new Map();
    let states = new Map();
    const openErrors = new Set();
    const tbody = $("agents").tBodies[0];
    const upsert = (rec) => {
      const old = records.get(rec.id);
      if (!old || !(old.updated_at > rec.updated_at)) records.set(rec.id, rec);
    };
    const render = later(() => keepFocus(tbody, () => {
      const query = $("filter-name").value.trim().toLowerCase();
      const status = $("filter-status").value;
      const rows = [];
      for (const rec of [...records.values()].sort((a, b) => a.id - b.id)) {
        if (query && !rec.name.toLowerCase().includes(query)) continue;
        if (status && rec.status !== status) continue;
        const st = states.get(rec.id) || {};
        const next = nextRun(st.next_runs);
        const toggle = (open) => { if (open) openErrors.add(rec.id); else openErrors.delete(rec.id); };
        rows.push(h("tr", { "data-key": rec.id, "data-name": rec.name },
          h("td", {}, h("a", { href: `/agents/${rec.id}` }, rec.name)),
          h("td", {}, badge(rec.status)),
          h("td", {}, st.running ? h("span", { class: "yes" }, "running") : h("span", { class: "no" }, "stopped")),
          h("td", { class: "num" }, String(st.restarts ?? 0)),
          h("td", { class: "last-error" }, errorText(rec.last_error, 60, openErrors.has(rec.id), toggle)),
          h("td", {}, timeEl(st.last_run_at)),
          h("td", {}, next ? [timeEl(next.when), " ", h("span", { class: "muted" }, next.key)] : "—"),
          h("td", {}, h("a", { href: `/agents/${rec.id}/edit`, "aria-label": `Edit ${rec.name}` }, "Edit"))));
      }
      tbody.replaceChildren(...rows);
      $("agents-empty").hidden = rows.length > 0;
    }));
    $("filter-name").addEventListener("input", render);
    $("filter-status").addEventListener("change", render);
    $("filters").addEventListener("submit", (ev) => ev.preventDefault());
    conn.onopen = async () => {
      await request("subscribe", { topics: ["agents", "states", "stats"] });
      const [list, sts] = await Promise.all([request("agents.list"), request("agents.states")]);
      const fresh = new Map(list.map((rec) => [rec.id, rec]));
      for (const [id, rec] of records) {
        if (fresh.has(id) && fresh.get(id).updated_at < rec.updated_at) fresh.set(id, rec);
      }
      records = fresh;
      states = new Map(sts.map((s) => [s.id, s]));
      render();
    };
    conn.onpush = (event, data) => {
      if (event === "agents") {
        if (data.kind === "deleted") records.delete(data.agent.id); else upsert(data.agent);
        render();
      } else if (event === "states") {
        states = new Map(data.agents.map((s) => [s.id, s]));
        render();
      } else if (event === "stats") {
        renderPanel(data);
      }
    };
  }

  // ------------------------------------------------------------------ show
  function fieldList(pairs) {
    return pairs.flatMap(([label, value]) => [h("dt", {}, label), h("dd", {}, value)]);
  }
  const jsonBlock = (value) => h("pre", { class: "json" }, pretty(value));
  function showPage() {
    let agent = null, state = null, gone = false, payloadEdited = false, shownKey = null;
    const runs = new Map();
    const select = $("trigger-key"), payload = $("trigger-payload");
    function markGone(text) {
      gone = true;
      $("agent-gone").textContent = text;
      $("agent-gone").hidden = false;
      for (const id of ["toggle-status", "delete", "trigger-go", "delete-yes"]) $(id).disabled = true;
    }
    function actionError(text) { $("action-error").textContent = text || ""; }
    function renderAgent() {
      $("agent-name").textContent = agent.name;
      $("delete-name").textContent = agent.name;
      document.title = `${agent.name} · arboretum`;
      $("toggle-status").textContent = agent.status === "active" ? "Deactivate" : "Activate";
      $("fields").replaceChildren(...fieldList([
        ["id", String(agent.id)], ["name", agent.name], ["status", badge(agent.status)],
        ["last error", agent.last_error ? h("pre", { class: "json error" }, agent.last_error) : "—"],
        ["abilities", jsonBlock(agent.abilities)],
        ["responsibilities", jsonBlock(agent.responsibilities)],
        ["prompts", jsonBlock(agent.prompts)],
        ["llm config", jsonBlock(agent.llm_config)],
        ["retry policy", jsonBlock(agent.retry_policy)],
        ["created", timeEl(agent.inserted_at)], ["updated", timeEl(agent.updated_at)],
      ]));
      const keys = Object.keys(agent.responsibilities || {});
      const chosen = keys.includes(select.value) ? select.value : keys[0];
      select.replaceChildren(...keys.map((k) => h("option", { value: k, selected: k === chosen }, k)));
      $("trigger-go").disabled = gone || keys.length === 0;
      if (keys.length === 0) select.append(h("option", { value: "" }, "(no responsibilities)"));
      syncPayload(false);
    }
    function syncPayload(force) {
      // The payload editor follows the chosen responsibility until the user edits it.
      const key = select.value;
      if (!agent || (!force && key === shownKey && payloadEdited)) return;
      const resp = (agent.responsibilities || {})[key];
      payload.value = resp ? pretty(resp.payload || {}) : "{}";
      shownKey = key;
      payloadEdited = false;
    }
    function renderState() {
      const s = state || {};
      const nexts = Object.entries(s.next_runs || {});
      $("state").replaceChildren(...fieldList([
        ["status", agent ? badge(agent.status) : "—"],
        ["running", s.running ? h("span", { class: "yes" }, "running") : h("span", { class: "no" }, "stopped")],
        ["restarts", String(s.restarts ?? 0)],
        ["last run", timeEl(s.last_run_at)],
        ["next runs", nexts.length ? h("ul", {}, nexts.map(([k, when]) => h("li", {}, `${k}: `, timeEl(when)))) : "—"],
      ]));
    }
    function renderRuns() {
      const list = [...runs.values()].sort((a, b) => b.id - a.id).slice(0, 25);
      $("runs").tBodies[0].replaceChildren(...list.map((r) => h("tr", { "data-key": r.id, "data-status": r.status },
        h("td", { class: "num" }, String(r.id)), h("td", {}, timeEl(r.inserted_at)),
        h("td", {}, r.responsibility), h("td", {}, r.ability), h("td", {}, r.trigger),
        h("td", {}, badge(r.status)),
        h("td", { class: "num" }, r.duration_ms === null || r.duration_ms === undefined ? "—" : `${r.duration_ms} ms`),
        h("td", { class: "num" }, String(r.attempts)),
        h("td", {}, errorText(r.error, 60, false, null)))));
      $("runs-empty").hidden = list.length > 0;
    }
    function renderResults(results) {
      $("trigger-results").replaceChildren(h("h3", {}, "Results"), ...results.map((r) =>
        h("div", { class: `result ${r.ok ? "ok" : "bad"}` },
          h("p", {}, badge(r.status), " ", h("strong", {}, r.ability),
            ` — ${r.attempts} attempt(s), ${Number(r.duration_s || 0).toFixed(3)} s`),
          r.ok ? jsonBlock(r.value) : h("pre", { class: "json error" }, r.error || r.status))));
    }
    select.addEventListener("change", () => syncPayload(true));
    payload.addEventListener("input", () => { payloadEdited = true; $("trigger-payload-error").textContent = ""; });
    $("trigger-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      let body = null;
      const text = payload.value.trim();
      if (text) {
        try { body = JSON.parse(text); } catch (e) {
          $("trigger-payload-error").textContent = `not valid JSON: ${e.message}`;
          payload.setAttribute("aria-invalid", "true");
          payload.focus();
          return;
        }
        if (body === null || typeof body !== "object" || Array.isArray(body)) {
          $("trigger-payload-error").textContent = "must be a JSON object, e.g. {\"text\": \"hi\"}";
          payload.focus();
          return;
        }
      }
      payload.removeAttribute("aria-invalid");
      const go = $("trigger-go");
      go.disabled = true;
      $("trigger-results").replaceChildren(h("p", { class: "muted" }, "Running…"));
      try {
        renderResults(await request("agents.trigger", { agent: AGENT, responsibility: select.value, payload: body }));
      } catch (e) {
        $("trigger-results").replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
      } finally {
        go.disabled = gone;
      }
    });
    $("toggle-status").addEventListener("click", async () => {
      actionError("");
      try {
        agent = await request("agents.set_status",
          { agent: AGENT, status: agent && agent.status === "active" ? "inactive" : "active" });
        renderAgent();
        renderState();
      } catch (e) { actionError(e.message); }
    });
    const confirmBox = $("delete-confirm");
    const closeConfirm = () => { confirmBox.hidden = true; $("delete").focus(); };
    $("delete").addEventListener("click", () => { confirmBox.hidden = false; $("delete-no").focus(); });
    $("delete-no").addEventListener("click", closeConfirm);
    confirmBox.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeConfirm(); });
    $("delete-yes").addEventListener("click", async () => {
      actionError("");
      try {
        await request("agents.delete", { agent: AGENT });
        location.assign("/");
      } catch (e) { actionError(e.message); }
    });
    conn.onopen = async () => {
      await request("subscribe", { topics: ["agents", "runs", "states"] });
      try {
        agent = await request("agents.get", { agent: AGENT });
      } catch (e) {
        if (e.code === "not_found") { markGone("This agent has been deleted."); return; }
        throw e;
      }
      try { state = await request("agents.state", { agent: AGENT }); } catch { state = null; }
      const list = await request("runs.list", { agent: AGENT, limit: 25 });
      runs.clear();
      for (const r of list) runs.set(r.id, r);
      renderAgent();
      renderState();
      renderRuns();
    };
    conn.onpush = (event, data) => {
      if (event === "agents" && data.agent.id === AGENT) {
        if (data.kind === "deleted") { markGone("This agent has been deleted."); return; }
        if (!agent || !(agent.updated_at > data.agent.updated_at)) agent = data.agent;
        renderAgent();
        renderState();
      } else if (event === "runs" && data.run.agent_id === AGENT) {
        runs.set(data.run.id, data.run);
        renderRuns();
      } else if (event === "states" && agent) {
        const s = data.agents.find((x) => x.id === AGENT);
        if (s) { state = s; renderState(); }
      }
    };
  }

  // ------------------------------------------------------------------ form (new / edit)
  function formPage() {
    const form = $("agent-form");
    const editing = form.dataset.mode === "edit" ? Number(form.dataset.id) : null;
    const controls = [...form.querySelectorAll("[name]")];
    const initial = new Map(controls.map((c) => [c.name, c.value]));
    const touched = new Set();
    let seq = 0;
    const status = (text) => { $("form-status").textContent = text || ""; };
    const canon = (c, text) => {
      if (!c.dataset.json) return text;
      try { return JSON.stringify(JSON.parse(text)); } catch { return text; }
    };
    function collect() {
      const values = {}, bad = {};
      for (const c of controls) {
        if (!c.dataset.json) { values[c.name] = c.value; continue; }
        if (!c.value.trim()) { bad[c.name] = ["is empty: enter a JSON value, e.g. {} or []"]; continue; }
        try { values[c.name] = JSON.parse(c.value); } catch (e) { bad[c.name] = [`is not valid JSON: ${e.message}`]; }
      }
      if (editing === null) return { args: { attrs: values }, bad };
      const changes = {};
      for (const c of controls) {
        if (c.name in values && canon(c, c.value) !== canon(c, initial.get(c.name))) changes[c.name] = values[c.name];
      }
      return { args: { agent: editing, changes }, bad };
    }
    function group(fields, bad) {
      const byField = {}, rest = [];
      for (const [key, messages] of Object.entries(fields || {})) {
        const top = key.split(".")[0];
        const sub = key.slice(top.length + 1);
        for (const m of messages) {
          if (form.elements[top] && controls.includes(form.elements[top])) {
            (byField[top] = byField[top] || []).push(sub ? `${sub}: ${m}` : m);
          } else rest.push(`${key}: ${m}`);
        }
      }
      for (const [key, messages] of Object.entries(bad)) byField[key] = [...messages, ...(byField[key] || [])];
      return { byField, rest };
    }
    function show({ byField, rest }, all) {
      let first = null;
      for (const c of controls) {
        const messages = all || touched.has(c.name) ? byField[c.name] || [] : [];
        $(`f-${c.name}-error`).textContent = messages.join("\n");
        if (messages.length) { c.setAttribute("aria-invalid", "true"); first = first || c; }
        else c.removeAttribute("aria-invalid");
      }
      $("form-errors").textContent = all || touched.size ? rest.join("\n") : "";
      return first;
    }
    async function validate() {
      const mine = ++seq;
      const { args, bad } = collect();
      try {
        const result = await request("agents.validate", args);
        if (mine !== seq) return;
        show(group(result.fields, bad), false);
        status(result.valid && !Object.keys(bad).length ? "Looks good." : "");
      } catch (e) {
        if (mine === seq) status(e.message);
      }
    }
    const validateSoon = (() => {
      let timer = null;
      return () => { clearTimeout(timer); timer = setTimeout(validate, 250); };
    })();
    for (const c of controls) {
      const handler = () => { touched.add(c.name); validateSoon(); };
      c.addEventListener("input", handler);
      c.addEventListener("change", handler);
    }
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      ++seq;
      const save = $("save");
      const { args, bad } = collect();
      if (Object.keys(bad).length) {
        const first = show(group({}, bad), true);
        status("Not saved: fix the fields marked below.");
        if (first) first.focus();
        return;
      }
      save.disabled = true;
      status("Saving…");
      try {
        const saved = editing === null
          ? await request("agents.create", args) : await request("agents.update", args);
        location.assign(`/agents/${saved.id}`);
      } catch (e) {
        seq++;  // no validation still in flight may overwrite these errors
        if (e.code === "validation") {
          const first = show(group(e.fields, {}), true);
          status("Not saved: fix the fields marked below.");
          if (first) first.focus();
        } else status(`Not saved: ${e.message}`);
        save.disabled = false;
      }
    });
    conn.onopen = () => { if (touched.size) validate(); };
    conn.onpush = () => {};
  }

  if (PAGE === "index") indexPage();
  else if (PAGE === "show") showPage();
  else if (PAGE === "form") formPage();
  if (["index", "show", "form"].includes(PAGE)) connect();
})();
