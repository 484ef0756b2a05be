// The node's dashboard: reads this node's own JSON API (the same the CLI reads),
// updated live from /relaymesh/v1/events. No framework, nothing fetched from elsewhere.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { self: null, private: false, earnings: [], rates: [], busy: false };

// --- The API ------------------------------------------------------------------

function headers(extra = {}) {
  const h = { ...extra };
  const key = localStorage.getItem("relaymesh-api-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function askForKey() {
  const key = window.prompt("This node's API needs a key (Authorization: Bearer KEY):");
  if (key) localStorage.setItem("relaymesh-api-key", key.trim());
}

async function api(path) {
  const r = await fetch(path, { headers: headers() });
  if (r.status === 401) {
    askForKey();
    throw new Error("this node's API needs a key");
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// Reads a text/event-stream response, calling onEvent(name, data) per event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// --- Rendering helpers ----------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElementNS(
    attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml",
    tag
  );
  for (const [k, v] of Object.entries(attrs)) {
    if (k !== "svg" && v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

const short = (id) => (id && id.length > 14 ? id.slice(0, 8) + "…" + id.slice(-4) : id || "");
const idCell = (id) => el("td", { class: "id", title: id }, id === state.self ? "this node" : short(id));
const num = (n, digits = 0) => (n === null || n === undefined ? "" : Number(n).toFixed(digits));

function uptime(secs) {
  if (secs === undefined) return "";
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600);
  const m = Math.floor((secs % 3600) / 60), s = secs % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function fill(selector, rows) {
  const body = $(selector + " tbody");
  body.replaceChildren(...rows);
}

function fact(label, value, title) {
  return el("span", { title }, el("b", {}, label), value);
}

function polyline(values, max, width, height, cls) {
  if (values.length < 2) return el("polyline", { svg: true });
  const step = width / (values.length - 1);
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - (v / (max || 1)) * (height - 4) - 2).toFixed(1)}`)
    .join(" ");
  return el("polyline", { svg: true, points, fill: "none", stroke: cls, "stroke-width": 2 });
}

// --- Panels ---------------------------------------------------------------------

// The revocation lists a member enforces, from /relaymesh/v1/membership.
function revocations(membership) {
  const lists = (membership && membership.revocations) || [];
  const revoked = lists.reduce((n, l) => n + l.invites.length + l.peers.length, 0);
  return lists.length ? `; ${revoked} revoked in ${lists.length} list(s)` : "; nothing revoked";
}

// What this node serves itself, from /api/ps: where each model runs and its free slots.
function serving(loaded) {
  return (loaded.models || []).map((m) => {
    const r = m.relaymesh || {};
    const layers = r.gpu_layers ? `, ${r.gpu_layers[0]}/${r.gpu_layers[1]} layers on GPU` : "";
    const where = r.device ? `${r.device}${layers}` : r.engine || "";
    return `${m.name} (${where}; ${r.free_slots}/${r.total_slots} slots free)`;
  }).join(", ") || "nothing";
}

function renderNode(status, loaded, membership) {
  state.self = status.peer_id;
  state.private = Boolean(status.membership);
  const clock = status.clock && status.clock.offset_ms !== null && status.clock.offset_ms !== undefined
    ? `${status.clock.offset_ms} ms` + (status.clock.off ? " (off!)" : "")
    : "not yet heard";
  $("#node").replaceChildren(
    fact("peer", short(status.peer_id), status.peer_id),
    fact("mesh", status.mesh_name, status.mesh_id),
    fact("role", status.role),
    fact("reachability", status.reachability ? status.reachability.state : ""),
    fact("peers", status.connected_peers),
    fact("uptime", uptime(status.uptime_secs)),
    fact("clock vs peers", clock),
    fact("version", status.version),
    ...(status.membership ? [el("span", { id: "membership", title: status.membership.invite ? `invite ${status.membership.invite}` : "" },
      el("b", {}, "member as"), memberText(status.membership) + (status.membership.ended ? ` — refused now: ${status.membership.ended}` : ""),
      revocations(membership))] : []),
    el("span", { id: "serving" }, el("b", {}, "serving"), serving(loaded))
  );
  const l = status.links || {};
  $("#links").textContent =
    `links: ${l.direct || 0} direct, ${l.hole_punched || 0} hole-punched, ${l.relayed || 0} relayed; ` +
    `${status.suppliers} supplier(s) known`;
}

function renderGraph(peers, models) {
  const svg = $("#graph");
  const connected = new Map(peers.map((p) => [p.peer_id, p]));
  const suppliers = new Set(models.map((m) => m.supplier));
  const others = [...new Set([...connected.keys(), ...suppliers])].filter((id) => id !== state.self);
  const shapes = [];
  const radius = 120;
  others.forEach((id, i) => {
    const angle = (2 * Math.PI * i) / Math.max(others.length, 1) - Math.PI / 2;
    const x = (radius * Math.cos(angle)).toFixed(1), y = (radius * 0.95 * Math.sin(angle)).toFixed(1);
    const peer = connected.get(id);
    shapes.push(el("line", { svg: true, x1: 0, y1: 0, x2: x, y2: y, class: peer ? peer.link : "known" }));
    shapes.push(
      el("circle", { svg: true, cx: x, cy: y, r: 10, "data-peer": id, class: suppliers.has(id) ? "supplier" : "" },
        el("title", { svg: true }, `${id}\n${peer ? peer.link + (peer.rtt_ms ? `, ${num(peer.rtt_ms, 1)} ms` : "") : "known from its ad, not connected"}${suppliers.has(id) ? "\nsupplier" : ""}`))
    );
    shapes.push(el("text", { svg: true, x, y: Number(y) + 24 }, short(id)));
  });
  shapes.push(el("circle", { svg: true, cx: 0, cy: 0, r: 13, class: "self", "data-self": state.self }));
  shapes.push(el("text", { svg: true, x: 0, y: 30 }, "this node"));
  svg.replaceChildren(...shapes);
}

// What a member of a private mesh was admitted as: its role, and until when (an owner
// needs no invite).
function memberText(m) {
  if (!m) return "";
  if (!m.invite) return `${m.role} (owner)`;
  const until = m.expires_ms ? ` until ${new Date(m.expires_ms).toLocaleString()}` : "";
  return `${m.role}${until}`;
}

function renderPeers(peers) {
  // In a private mesh each peer also shows what it was admitted as.
  $("#peers").classList.toggle("private", state.private);
  fill("#peers", peers.map((p) =>
    el("tr", { "data-peer": p.peer_id },
      idCell(p.peer_id), el("td", {}, p.link), el("td", {}, num(p.rtt_ms, 1)),
      el("td", {}, p.clock_offset_ms ?? ""),
      el("td", { class: "member", title: p.member && p.member.invite ? `invite ${p.member.invite}` : "" }, memberText(p.member)),
      el("td", {}, p.agent || ""))));
}

// A figure this node measured, or else the supplier's own (marked "ad").
function measuredOr(measured, advertised, digits) {
  if (measured !== null && measured !== undefined) {
    return el("td", { title: "measured by this node's requests" }, num(measured, digits));
  }
  if (!advertised) return el("td", {}, "-");
  return el("td", { class: "muted", title: "as the supplier advertises it" }, `${num(advertised, digits)} ad`);
}

function renderModels(models) {
  fill("#models", models.map((m) => {
    const seen = m.measured || {};
    const errors = seen.errors ? `${num(seen.errors, 1)} recent failures here` : "no recent failures here";
    return el("tr", { "data-model": m.name },
      el("td", {}, m.name), idCell(m.supplier), el("td", {}, `${m.free_slots} / ${m.total_slots}`),
      measuredOr(seen.tokens_per_sec, m.tokens_per_sec, 1), measuredOr(seen.ttft_ms, m.ttft_ms, 0),
      el("td", { class: "score", title: `routing score here (typical requests a second); ${errors}` },
        seen.score === null || seen.score === undefined ? "-" : Number(seen.score).toPrecision(3) + (seen.errors >= 0.5 ? " !" : "")),
      el("td", {}, m.price_per_cu), el("td", {}, m.tau), el("td", {}, `${m.expires_in_s} s`));
  }));
  const select = $("#chat-model");
  const names = [...new Set(models.map((m) => m.name))].sort();
  const chosen = select.value;
  if (select.options.length !== names.length || names.some((n, i) => select.options[i].value !== n)) {
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(chosen)) select.value = chosen;
  }
}

function requestRow(r) {
  const when = new Date(r.at_ms).toLocaleTimeString();
  const servedBy = el("td", { class: "id", title: r.served_by.join("\n") },
    r.served_by.map((id) => (id === state.self ? "this node" : short(id))).join(" → "));
  const outcome = el("td", { class: r.outcome === "done" ? "ok" : "fail" }, r.outcome);
  return el("tr", {},
    el("td", {}, when), el("td", {}, r.model), servedBy,
    el("td", {}, `${r.prompt_tokens} + ${r.completion_tokens}`), el("td", {}, r.ttft_ms ?? ""),
    el("td", {}, num(r.tokens_per_sec, 1)), el("td", {}, r.failovers), outcome);
}

function addRequest(r) {
  const body = $("#requests tbody");
  body.prepend(requestRow(r));
  while (body.children.length > 50) body.lastChild.remove();
  if (r.tokens_per_sec) state.rates.push(r.tokens_per_sec);
  state.rates = state.rates.slice(-60);
  const max = Math.max(...state.rates, 1);
  $("#rate").replaceChildren(polyline(state.rates, max, 300, 60, "#4fb3ff"));
}

function renderAccounts(ledger, claims, refused) {
  const me = ledger.me || {};
  const credit = ledger.credit;
  $("#me").replaceChildren(
    fact("balance", me.balance), fact("earned", me.earned), fact("spent", me.spent),
    fact("free to commit", credit ? credit.available : "—"),
    fact("epoch", ledger.epoch), fact("final before", ledger.frozen_before),
    fact("claims", `${ledger.claims_pending} pending, ${ledger.claims_settled} settled, ${ledger.claims_void} void, ${ledger.claims_unfunded} unfunded`)
  );
  state.earnings.push([Number(me.earned || 0), Number(me.spent || 0)]);
  state.earnings = state.earnings.slice(-120);
  const max = Math.max(...state.earnings.flat(), 1);
  $("#earnings").replaceChildren(
    polyline(state.earnings.map((e) => e[0]), max, 300, 60, "#3ccf7a"),
    polyline(state.earnings.map((e) => e[1]), max, 300, 60, "#f0b429"));
  const rows = [...claims].sort((a, b) => b.epoch - a.epoch).slice(0, 30);
  fill("#claims", rows.map((c) =>
    el("tr", { title: `claim ${c.id}\nsession ${c.session}` },
      el("td", {}, c.epoch), idCell(c.supplier), idCell(c.app), el("td", {}, c.count),
      el("td", {}, c.value), el("td", {}, c.paid),
      el("td", { class: c.status === "settled" ? "ok" : c.status === "pending" ? "" : "fail" }, c.status))));
  if (refused.length) {
    fill("#refused", [...refused].reverse().map((r) =>
      el("tr", { title: r.detail },
        el("td", {}, new Date(r.at_ms).toLocaleTimeString()), el("td", {}, r.kind),
        el("td", { class: "id", title: r.supplier ? `${r.supplier}\n(as the claim names it: not verified)` : "" },
          r.supplier ? short(r.supplier) : ""),
        el("td", { class: "fail" }, `${r.reason}: ${r.detail}`))));
  }
}

// --- Refreshing -----------------------------------------------------------------

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [status, peers, models, loaded] = await Promise.all([
      api("/relaymesh/v1/status"), api("/relaymesh/v1/peers"), api("/relaymesh/v1/models"),
      api("/api/ps"),
    ]);
    const membership = status.membership ? await api("/relaymesh/v1/membership") : null;
    renderNode(status, loaded, membership);
    renderGraph(peers, models);
    renderPeers(peers);
    renderModels(models);
    const [ledger, claims] = await Promise.all([api("/relaymesh/v1/ledger"), api("/relaymesh/v1/claims")]);
    renderAccounts(ledger, claims.claims || [], claims.refused || []);
  } catch (e) {
    $("#live").textContent = String(e.message || e);
  } finally {
    state.busy = false;
  }
}

async function follow() {
  for (;;) {
    try {
      const r = await fetch("/relaymesh/v1/events", { headers: headers() });
      if (!r.ok) throw new Error(`events: HTTP ${r.status}`);
      $("#live").className = "badge on";
      $("#live").textContent = "live";
      await readEvents(r, (name, data) => {
        if (name === "request") addRequest(JSON.parse(data));
        else if (name === "tick") refresh();
      });
    } catch (e) {
      console.warn(e);
    }
    $("#live").className = "badge off";
    $("#live").textContent = "offline: retrying";
    await new Promise((done) => setTimeout(done, 3000));
  }
}

// --- The playground -------------------------------------------------------------

async function chat(event) {
  event.preventDefault();
  const model = $("#chat-model").value;
  const prompt = $("#chat-prompt").value.trim();
  if (!model || !prompt) return;
  const answer = $("#chat-answer"), meta = $("#chat-meta"), send = $("#chat-send");
  answer.textContent = "";
  meta.textContent = "asking the mesh…";
  send.disabled = true;
  const started = performance.now();
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model, stream: true, stream_options: { include_usage: true },
        messages: [{ role: "user", content: prompt }],
      }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
    }
    const supplier = r.headers.get("x-relaymesh-supplier") || "";
    let usage = null, failed = null;
    await readEvents(r, (_, data) => {
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) failed = chunk.error.message || String(chunk.error);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        // Follow the answer as it grows, unless the reader scrolled up to read.
        const following = answer.scrollTop + answer.clientHeight >= answer.scrollHeight - 4;
        answer.textContent += delta.content;
        if (following) answer.scrollTop = answer.scrollHeight;
      }
      if (chunk.usage) usage = chunk.usage;
    });
    if (failed) throw new Error(failed);
    const secs = ((performance.now() - started) / 1000).toFixed(1);
    const by = (usage && usage.relaymesh && usage.relaymesh.suppliers) || supplier.split(",").filter(Boolean);
    meta.dataset.done = "true";
    meta.textContent = `answered by ${by.length ? by.map((id) => (id === state.self ? "this node" : short(id))).join(" → ") : "this node"}` +
      (usage ? `, ${usage.completion_tokens} tokens` : "") + ` in ${secs} s`;
    meta.title = by.join("\n");
  } catch (e) {
    meta.textContent = "failed: " + (e.message || e);
  } finally {
    send.disabled = false;
  }
}

async function start() {
  $("#chat").addEventListener("submit", chat);
  await refresh();
  try {
    const recent = await api("/relaymesh/v1/requests");
    for (const r of (recent.requests || []).slice().reverse()) addRequest(r);
  } catch (e) {
    console.warn(e);
  }
  follow();
  setInterval(() => { if ($("#live").className.includes("off")) refresh(); }, 5000);
}

start();
