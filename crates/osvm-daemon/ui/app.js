// osvm's dashboard: read-only views of the daemon, built with DOM calls only.
//
// Every string that comes from the daemon (names, log lines, event details, tool
// descriptions) reaches the page as a text node or an attribute value: this file never
// assigns innerHTML or outerHTML, never calls document.write, and never builds a URL that
// is not a "#/..." route of its own. The server's Content-Security-Policy forbids inline
// script besides.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const HISTORY = 90; // samples kept per component: 3 minutes at REFRESH_MS
  const EVENTS_KEPT = 500;

  const view = document.getElementById("view");
  const live = document.getElementById("live");
  const state = {
    components: [],
    error: null,
    history: new Map(), // "stack/name" -> [{ mem, cpu }]
    events: [],
    page: null,
  };

  // ---- DOM helpers ------------------------------------------------------------------------

  const ATTRS = new Set(["id", "title", "type", "value", "placeholder", "name", "for",
    "colspan", "list", "autocomplete"]);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = String(v);
      else if (k === "href") e.setAttribute("href", route(v));
      else if (k.startsWith("data-") || ATTRS.has(k)) e.setAttribute(k, String(v));
      else throw new Error("attribute not allowed: " + k);
    }
    append(e, children);
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      // Geometry and presentation only: no event handlers, no links.
      if (!/^[a-zA-Z][a-zA-Z0-9-]*$/.test(k) || /^on/i.test(k) || /href$/i.test(k)) {
        throw new Error("attribute not allowed: " + k);
      }
      e.setAttribute(k, String(v));
    }
    append(e, children);
    return e;
  }

  function append(e, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  // Links go only to this page's own routes.
  function route(h) {
    return typeof h === "string" && h.startsWith("#/") ? h : "#/";
  }

  function table(id, headings, rows, empty) {
    return el("table", { id },
      el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows
        : el("tr", {}, el("td", { colspan: headings.length, class: "empty" }, empty))));
  }

  // ---- data -------------------------------------------------------------------------------

  async function api(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) {
      location.assign("/login");
      throw new Error("signed out");
    }
    if (!r.ok) {
      let message = "HTTP " + r.status;
      try {
        const body = await r.json();
        message = body.message || (body.error && body.error.message) || message;
      } catch (_) { /* not JSON */ }
      throw new Error(message);
    }
    const type = r.headers.get("content-type") || "";
    if (type.startsWith("text/plain")) return r.text();
    if (type.includes("ndjson")) {
      return (await r.text()).split("\n").filter(Boolean).map((l) => JSON.parse(l));
    }
    return r.json();
  }

  const key = (c) => c.stack + "/" + c.name;

  async function refresh() {
    try {
      state.components = await api("/api/v1/components");
      state.error = null;
      for (const c of state.components) {
        const h = state.history.get(key(c)) || [];
        h.push({ mem: c.stats ? c.stats.memory_bytes : null, cpu: c.cpu_percent });
        if (h.length > HISTORY) h.shift();
        state.history.set(key(c), h);
      }
    } catch (e) {
      state.error = e.message;
    }
    if (state.page && state.page.draw) state.page.draw();
  }

  function stream() {
    const source = new EventSource("/ui/events");
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
    source.onmessage = (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch (_) { return; }
      state.events.push(e);
      if (state.events.length > EVENTS_KEPT) state.events.shift();
      if (state.page && state.page.onEvent) state.page.onEvent(e);
    };
  }

  // ---- formatting -------------------------------------------------------------------------

  function tone(c) {
    const health = c.health && c.health.state;
    if (c.status === "failed" || health === "failing") return "bad";
    if (c.status === "running") return "ok";
    if (c.status === "stopped") return "idle";
    return "warn";
  }

  function healthText(h) {
    if (!h) return "-";
    if (h.state === "healthy") return "healthy";
    if (h.state === "failing") return "failing: " + (Array.isArray(h.detail) ? h.detail[1] : "");
    return h.state;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m";
    return Math.floor(s / 3600) + "h";
  }

  function exitText(x) {
    if (!x) return "-";
    if (x.oom_killed) return "OOM-killed";
    if (x.signal !== null && x.signal !== undefined) return "signal " + x.signal;
    return "code " + x.code;
  }

  function time(ms) {
    return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  }

  function spark(samples, field, max) {
    const values = samples.map((s) => s[field]).filter((v) => typeof v === "number");
    const w = 80, h = 18;
    if (values.length < 2) return svg("svg", { class: "spark", width: w, height: h });
    const top = Math.max(max || 0, ...values) || 1;
    const points = values.map((v, i) =>
      (i * w / (values.length - 1)).toFixed(1) + "," + (h - 1 - v * (h - 2) / top).toFixed(1));
    return svg("svg", { class: "spark", width: w, height: h, "data-samples": values.length },
      svg("polyline", { points: points.join(" ") }));
  }

  // ---- pages ------------------------------------------------------------------------------

  function componentsPage() {
    const body = el("div");
    view.replaceChildren(el("h1", {}, "Components"), body);
    const draw = () => {
      const rows = state.components.map((c) => {
        const h = state.history.get(key(c)) || [];
        return el("tr", { class: tone(c), "data-component": key(c), "data-status": c.status },
          el("td", {}, el("a", { href: "#/component/" + encodeURIComponent(c.stack) + "/"
            + encodeURIComponent(c.name) }, key(c))),
          el("td", { class: "status" }, c.status),
          el("td", {}, healthText(c.health)),
          el("td", {}, c.runtime),
          el("td", { class: "num" }, c.restarts),
          el("td", { class: "num" }, bytes(c.stats ? c.stats.memory_bytes : null), " ",
            spark(h, "mem", c.memory_limit ? 0 : 0)),
          el("td", { class: "num" }, (c.cpu_percent || 0).toFixed(1) + "% ", spark(h, "cpu", 100)),
          el("td", { class: "num" }, duration(c.uptime_secs)),
          el("td", {}, exitText(c.last_exit)),
          el("td", {}, c.reason || ""));
      });
      body.replaceChildren(
        ...(state.error ? [el("p", { class: "error" }, "The daemon did not answer: " + state.error)] : []),
        table("components", ["Component", "Status", "Health", "Runtime", "Restarts", "Memory",
          "CPU", "Uptime", "Last exit", "Reason"], rows,
        "No components: apply a stack with `osvm up -d stack.toml`."));
    };
    draw();
    return { draw };
  }

  function eventRow(e) {
    return el("tr", { "data-seq": e.seq },
      el("td", { class: "mono" }, time(e.at_ms)),
      el("td", {}, e.stack && e.component ? e.stack + "/" + e.component : e.stack || "daemon"),
      el("td", {}, e.kind),
      el("td", {}, e.detail));
  }

  function eventsPage() {
    const body = el("div");
    view.replaceChildren(el("h1", {}, "Events"), body);
    const draw = () => body.replaceChildren(table("events", ["Time", "Component", "Kind", "Detail"],
      state.events.slice().reverse().map(eventRow), "No events yet."));
    draw();
    return { onEvent: draw };
  }

  function componentPage(stack, name) {
    const k = stack + "/" + name;
    const facts = el("dl", { class: "facts" });
    const logs = el("pre", { class: "logs", id: "logs" }, "loading...");
    const events = el("div");
    view.replaceChildren(el("h1", {}, k), facts, el("h2", {}, "Recent output"), logs,
      el("h2", {}, "Events"), events);
    const drawFacts = () => {
      const c = state.components.find((x) => key(x) === k);
      if (!c) { facts.replaceChildren(el("dt", {}, "state"), el("dd", {}, "not known to the daemon")); return; }
      const h = state.history.get(k) || [];
      const pairs = [
        ["status", el("span", { class: "status", "data-status": c.status }, c.status)],
        ["health", healthText(c.health)], ["runtime", c.runtime],
        ["instance", c.instance || c.last_instance || "-"], ["pid", c.pid || "-"],
        ["memory", [bytes(c.stats ? c.stats.memory_bytes : null), " of ",
          bytes(c.memory_limit), " ", spark(h, "mem")]],
        ["CPU", [(c.cpu_percent || 0).toFixed(1) + "% ", spark(h, "cpu", 100)]],
        ["restarts", c.restarts], ["last exit", exitText(c.last_exit)],
        ["listens", (c.listen || []).join(", ") || "-"],
        ["published", (c.published || []).join(", ") || "-"], ["reason", c.reason || "-"],
      ];
      if (c.vm) pairs.push(["VM", JSON.stringify(c.vm)]);
      if (c.unikernel) pairs.push(["unikernel", JSON.stringify(c.unikernel)]);
      facts.replaceChildren(...pairs.flatMap(([t, d]) => [el("dt", {}, t), el("dd", {}, d)]));
    };
    const drawEvents = () => events.replaceChildren(table("component-events",
      ["Time", "Component", "Kind", "Detail"],
      state.events.filter((e) => e.stack === stack && e.component === name).reverse().map(eventRow),
      "No events for this component in the stream yet."));
    const loadLogs = async () => {
      try {
        const text = await api("/api/v1/components/" + encodeURIComponent(k) + "/logs?tail=200");
        // Each line is "TIME STREAM PAYLOAD".
        const lines = String(text).split("\n").filter(Boolean).map((l) => {
          const [at, stream, ...rest] = l.split(" ");
          return { at, stream, payload: rest.join(" ") };
        });
        logs.replaceChildren(...lines.map((l) => el("span",
          { class: l.stream === "stderr" ? "stderr" : "", "data-stream": l.stream },
          l.at + " " + l.payload + "\n")));
        if (!lines.length) logs.textContent = "(no output)";
      } catch (e) {
        logs.textContent = "Logs unavailable: " + e.message;
      }
    };
    drawFacts(); drawEvents(); loadLogs();
    const timer = setInterval(loadLogs, REFRESH_MS * 2);
    return { draw: drawFacts, onEvent: drawEvents, leave: () => clearInterval(timer) };
  }

  // The selector of a rule as a node id and label: a component of the stack, or an outside
  // endpoint (any, a kind, a network, an identity).
  function endpoint(sel) {
    if (sel === "any") return { id: "*", label: "*", external: true };
    if (sel.component) return { id: sel.component, label: sel.component, external: false };
    if (sel.kind) return { id: "type:" + sel.kind, label: "type:" + sel.kind, external: true };
    if (sel.cidr) return { id: "cidr:" + JSON.stringify(sel.cidr), label: "cidr:" + String(sel.cidr), external: true };
    if (sel.identity) return { id: sel.identity, label: sel.identity, external: true };
    return { id: JSON.stringify(sel), label: JSON.stringify(sel), external: true };
  }

  function policyPage() {
    const body = el("div", {}, "loading...");
    view.replaceChildren(el("h1", {}, "Policy"), body);
    let loaded = 0;
    const load = async () => {
      loaded = Date.now();
      const stacks = [...new Set(state.components.map((c) => c.stack))].sort();
      let counters = [];
      try { counters = await api("/ui/counters"); } catch (_) { /* shown as "-" */ }
      const sections = [];
      for (const stack of stacks) {
        let policy = null;
        let problem = null;
        try { policy = await api("/api/v1/stacks/" + encodeURIComponent(stack) + "/policy"); }
        catch (e) { problem = e.message; }
        sections.push(el("section", { "data-stack": stack }, el("h2", {}, "Stack " + stack),
          problem ? el("p", { class: "error" }, problem) : [
            el("p", {}, "Default: " + (policy.default || "deny") + ". Arrows are rules: green "
              + "allows, red dashed denies; the count is new flows the hub let through."),
            graph(stack, state.components.filter((c) => c.stack === stack), policy.rules || [],
              counters)]));
      }
      body.replaceChildren(...(sections.length ? sections : [el("p", { class: "empty" }, "No stacks.")]));
    };
    // Drawn once the components are known, then again every few seconds for the counters.
    const draw = () => {
      if (state.components.length && Date.now() - loaded > 5000) load();
    };
    draw();
    return { draw };
  }

  function graph(stack, members, rules, counters) {
    const nodes = new Map();
    for (const c of members) nodes.set(c.name, { id: c.name, label: c.name, external: false, tone: tone(c) });
    const edges = rules.map((r) => {
      const from = endpoint(r.rule.from), to = endpoint(r.rule.to);
      for (const n of [from, to]) if (!nodes.has(n.id)) nodes.set(n.id, n);
      const counted = counters.find((x) => x.stack === stack && x.index === r.index);
      return { from: from.id, to: to.id, action: r.rule.action, index: r.index,
        ports: (r.rule.ports || []).join(",") || "all ports", protocol: r.rule.protocol,
        packets: counted ? counted.counter.packets : null, text: r.text };
    });
    const list = [...nodes.values()];
    const W = 640, H = Math.max(320, 90 * Math.ceil(list.length / 2)), R = 26;
    const cx = W / 2, cy = H / 2, ring = Math.min(W, H) / 2 - 50;
    list.forEach((n, i) => {
      const a = (2 * Math.PI * i) / list.length - Math.PI / 2;
      n.x = cx + ring * Math.cos(a); n.y = cy + ring * Math.sin(a);
    });
    const defs = svg("defs", {}, ["allow", "deny"].map((a) => svg("marker",
      { id: "arrow-" + a, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: a === "allow" ? "#1e7b34" : "#c62828" }))));
    const drawn = edges.map((e) => {
      const a = nodes.get(e.from), b = nodes.get(e.to);
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const ux = dx / len, uy = dy / len;
      const label = e.action + " " + e.ports + (e.packets !== null ? " (" + e.packets + " new)" : "");
      return svg("g", { class: "edge " + e.action, "data-edge": e.from + "->" + e.to,
        "data-action": e.action, "data-ports": e.ports, "data-rule": e.index },
      svg("title", {}, e.text),
      svg("line", { x1: a.x + ux * R, y1: a.y + uy * R, x2: b.x - ux * R, y2: b.y - uy * R,
        "marker-end": "url(#arrow-" + e.action + ")" }),
      svg("text", { x: (a.x + b.x) / 2 + uy * 12, y: (a.y + b.y) / 2 - ux * 12 }, label));
    });
    const circles = list.map((n) => svg("g", { class: "node " + (n.external ? "external" : n.tone),
      "data-node": n.id, "data-tone": n.tone || "" },
    svg("circle", { cx: n.x, cy: n.y, r: R }),
    svg("text", { x: n.x, y: n.y + R + 14 }, n.label)));
    const rows = edges.map((e) => el("tr", { "data-rule": e.index }, el("td", { class: "num" }, e.index),
      el("td", {}, e.text), el("td", { class: "num" }, e.packets === null ? "-" : e.packets)));
    return el("div", {},
      svg("svg", { class: "graph", width: W, height: H, viewBox: "0 0 " + W + " " + H,
        "data-stack": stack }, defs, drawn, circles),
      table("rules-" + stack, ["#", "Rule", "New flows"], rows,
        "No rules: everything between components is denied."));
  }

  function mcpPage() {
    const servers = el("div", {}, "loading...");
    const tools = el("div");
    const client = el("input", { placeholder: "client", id: "audit-client" });
    const tool = el("input", { placeholder: "server.tool", id: "audit-tool" });
    const outcome = el("select", { id: "audit-outcome" },
      ["", "ok", "tool_error", "denied", "rate_limited", "timeout", "upstream_error", "unknown",
        "unavailable", "cancelled"].map((o) => el("option", { value: o }, o || "any outcome")));
    const audit = el("div");
    view.replaceChildren(el("h1", {}, "MCP"), el("h2", {}, "Servers"), servers,
      el("h2", {}, "Tools"), tools, el("h2", {}, "Audit trail"),
      el("div", { class: "filters" }, client, tool, outcome), audit);
    const loadAudit = async () => {
      const q = new URLSearchParams({ client: client.value, tool: tool.value, outcome: outcome.value, limit: "200" });
      try {
        const records = await api("/ui/audit?" + q.toString());
        audit.replaceChildren(table("audit", ["Time", "Client", "Method", "Tool", "Outcome", "Detail", "ms"],
          records.map((r) => el("tr", { "data-outcome": r.outcome },
            el("td", { class: "mono" }, r.time), el("td", {}, r.client), el("td", {}, r.method),
            el("td", {}, (r.server || "-") + "." + (r.tool || "-")), el("td", {}, r.outcome),
            el("td", {}, r.detail), el("td", { class: "num" }, Number(r.latency_ms).toFixed(1)))),
          "No audit records match."));
      } catch (e) { audit.replaceChildren(el("p", { class: "error" }, e.message)); }
    };
    for (const input of [client, tool, outcome]) input.addEventListener("change", loadAudit);
    const load = async () => {
      try {
        const list = await api("/api/v1/mcp/servers");
        servers.replaceChildren(table("mcp-servers", ["Server", "Component", "State", "Detail"],
          list.map((s) => el("tr", { "data-server": s.server, class: s.state === "up" ? "ok" : "bad" },
            el("td", {}, s.server), el("td", {}, s.component), el("td", { class: "status" }, s.state),
            el("td", {}, s.detail))), "No MCP servers."));
      } catch (e) { servers.replaceChildren(el("p", { class: "error" }, e.message)); }
      try {
        // Every tool, whoever may call it (the policy decides per client: see the audit).
        const list = await api("/api/v1/mcp/tools?all=true");
        const items = Array.isArray(list) ? list : list.tools || [];
        tools.replaceChildren(table("mcp-tools", ["Tool", "Component", "Description"],
          items.map((t) => el("tr", { "data-tool": t.name }, el("td", { class: "mono" }, t.name),
            el("td", {}, t.component || ""), el("td", {}, t.description || ""))), "No tools."));
      } catch (e) { tools.replaceChildren(el("p", { class: "error" }, e.message)); }
      loadAudit();
    };
    load();
    return {};
  }

  function identitiesPage() {
    const body = el("div", {}, "loading...");
    view.replaceChildren(el("h1", {}, "Identities"), body);
    (async () => {
      try {
        const domains = await api("/ui/identities");
        const now = Date.now() / 1000;
        const sections = Object.entries(domains).map(([domain, d]) => el("section", {},
          el("h2", {}, "Trust domain " + domain),
          d.error ? el("p", { class: "error" }, d.error)
            : table("identities-" + domain, ["SPIFFE ID", "Serial", "Valid until", "State"],
              d.issued.slice().reverse().map((c) => {
                const st = c.revoked_at ? "revoked" : c.not_after < now ? "expired" : "valid";
                return el("tr", { class: st === "valid" ? "ok" : "bad", "data-spiffe": c.spiffe_id, "data-state": st },
                  el("td", { class: "mono" }, c.spiffe_id), el("td", { class: "mono" }, c.serial),
                  el("td", {}, time(c.not_after * 1000)), el("td", { class: "status" }, st));
              }), "None issued.")));
        body.replaceChildren(...(sections.length ? sections : [el("p", { class: "empty" }, "No CA yet.")]));
      } catch (e) { body.replaceChildren(el("p", { class: "error" }, e.message)); }
    })();
    return {};
  }

  // ---- routing ----------------------------------------------------------------------------

  function navigate() {
    if (state.page && state.page.leave) state.page.leave();
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    for (const a of document.querySelectorAll("header nav a")) {
      a.className = a.getAttribute("href") === "#/" + (parts[0] || "") ? "here" : "";
    }
    switch (parts[0]) {
      case "events": state.page = eventsPage(); break;
      case "component": state.page = componentPage(parts[1] || "", parts[2] || ""); break;
      case "policy": state.page = policyPage(); break;
      case "mcp": state.page = mcpPage(); break;
      case "identities": state.page = identitiesPage(); break;
      default: state.page = componentsPage();
    }
  }

  window.addEventListener("hashchange", navigate);
  navigate();
  stream();
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
