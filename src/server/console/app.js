// mapq's web console: a page of the server itself, with no dependency. Everything it shows
// comes from the HTTP API (and /metrics), and every piece of data is put in the page as text
// (textContent, never innerHTML), so a topic, a key or a value holding markup is shown, not run.
"use strict";

const TOKEN_KEY = "mapq.token"; // sessionStorage: gone when the browser session ends
const state = { who: null, timers: [], aborts: [] };

// ---------------------------------------------------------------- helpers

/** An element: `h("td", {class: "num"}, "12")`; strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function main() { return document.getElementById("main"); }

function show(...nodes) {
  main().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  setTimeout(() => { if (t.textContent === text) t.textContent = ""; }, 4000);
}

function fmtBytes(n) {
  if (n === null || n === undefined || isNaN(n)) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + u[i];
}

function fmtNum(n, digits) {
  if (n === null || n === undefined || isNaN(n)) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return "–";
  if (ms < 1) return (ms * 1000).toFixed(0) + " µs";
  if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 0) + " ms";
  return (ms / 1000).toFixed(1) + " s";
}

function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

function enc(s) { return encodeURIComponent(s); }

/** A later timer or stream of the current page; all stop when the page changes. */
function every(ms, f) {
  f();
  state.timers.push(setInterval(f, ms));
}

function stopPage() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  state.aborts.forEach((a) => a.abort());
  state.aborts = [];
}

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(method, path, body, accept) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (accept) headers["Accept"] = accept;
  let res;
  try {
    res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", "the server cannot be reached: " + e.message);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  if (!res.ok) {
    let code = "http_" + res.status, message = text || res.statusText;
    try {
      const e = JSON.parse(text).error;
      if (e) { code = e.code; message = e.message; }
    } catch (_) { /* not JSON: the text itself */ }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
    }
    throw new ApiError(res.status, code, message);
  }
  if (accept && !accept.includes("json")) return text;
  return text ? JSON.parse(text) : null;
}

/** Shows an API error as the API words it, in place of the page (or of `where`). */
function errorBox(e) {
  const code = e.code ? e.code + ": " : "";
  return h("p", { class: "error", role: "alert" }, code + (e.message || String(e)));
}

async function guarded(f, where) {
  try {
    await f();
  } catch (e) {
    const box = errorBox(e);
    if (where) where.replaceChildren(box); else show(box);
  }
}

// ---------------------------------------------------------------- permissions

/** `*` matches any run of characters (as the server's grants do). */
function matches(pattern, name) {
  const star = pattern.indexOf("*");
  if (star < 0) return pattern === name;
  const prefix = pattern.slice(0, star), rest = pattern.slice(star + 1);
  if (!name.startsWith(prefix)) return false;
  const tail = name.slice(prefix.length);
  for (let i = 0; i <= tail.length; i++) if (matches(rest, tail.slice(i))) return true;
  return false;
}

function may(what, topic) {
  const w = state.who;
  if (!w || !w.tokens) return true;
  return (w.grants || []).some((g) => g.allow.includes(what) && matches(g.topics, topic));
}

function holds(what) {
  const w = state.who;
  if (!w || !w.tokens) return true;
  return (w.grants || []).some((g) => g.allow.includes(what));
}

// ---------------------------------------------------------------- Prometheus text

/** Parses the text format into [{name, labels, value}]. */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

function sum(samples, name, filter) {
  return samples
    .filter((s) => s.name === name && (!filter || filter(s.labels)))
    .reduce((a, s) => a + s.value, 0);
}

/** Histogram buckets of `name` summed over label sets: {le: count}. */
function buckets(samples, name) {
  const b = new Map();
  for (const s of samples) {
    if (s.name !== name + "_bucket") continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    b.set(le, (b.get(le) || 0) + s.value);
  }
  return b;
}

/** The q-quantile (in the histogram's unit) of the observations between two bucket sets. */
function quantile(q, now, before) {
  const les = [...now.keys()].sort((a, b) => a - b);
  const counts = les.map((le) => (now.get(le) || 0) - ((before && before.get(le)) || 0));
  const total = counts[counts.length - 1];
  if (!total || total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) {
    if (counts[i] >= rank) {
      const lo = i ? les[i - 1] : 0, hi = les[i];
      if (hi === Infinity) return lo;
      const below = i ? counts[i - 1] : 0, inBucket = counts[i] - below;
      return lo + (hi - lo) * (inBucket ? (rank - below) / inBucket : 1);
    }
  }
  return null;
}

// ---------------------------------------------------------------- charts

const COLORS = ["#2f5bd3", "#d3582f", "#2fa35b", "#9b2fd3"];

/** A line chart of `series` ([{name, points: [[t, v]]}]) on a canvas, with its legend. */
function chart(title, unit) {
  const canvas = h("canvas", { role: "img", "aria-label": title });
  const legend = h("div", { class: "legend" });
  const box = h("div", { class: "card" }, h("div", {}, h("strong", {}, title)), canvas, legend);
  box.draw = (series) => {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300, hgt = canvas.clientHeight || 180;
    canvas.width = w * dpr;
    canvas.height = hgt * dpr;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    const style = getComputedStyle(document.documentElement);
    const fg = style.getPropertyValue("--muted").trim() || "#666";
    const line = style.getPropertyValue("--line").trim() || "#ddd";
    const pts = series.flatMap((s) => s.points);
    const max = Math.max(1e-9, ...pts.map((p) => p[1]).filter((v) => v !== null));
    const t1 = Math.max(...pts.map((p) => p[0]), Date.now());
    // The last two minutes, or since the first sample when that is more recent.
    const first = Math.min(...pts.map((p) => p[0]));
    const t0 = Math.max(t1 - 120000, Math.min(first, t1 - 10000));
    const left = 56, bottom = hgt - 18;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = fg;
    g.strokeStyle = line;
    for (let i = 0; i <= 3; i++) {
      const y = 6 + ((bottom - 6) * i) / 3;
      g.beginPath(); g.moveTo(left, y); g.lineTo(w - 4, y); g.stroke();
      g.fillText(unit(max * (1 - i / 3)), 2, y + 4);
    }
    g.fillText(Math.round((t1 - t0) / 1000) + " s ago", left, hgt - 4);
    g.fillText("now", w - 28, hgt - 4);
    series.forEach((s, k) => {
      g.strokeStyle = g.fillStyle = COLORS[k % COLORS.length];
      g.lineWidth = 2;
      g.beginPath();
      let started = false;
      const dots = [];
      for (const [t, v] of s.points) {
        if (v === null || t < t0) continue;
        const x = left + ((w - 4 - left) * (t - t0)) / (t1 - t0);
        const y = bottom - ((bottom - 6) * v) / max;
        if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
        dots.push([x, y]);
      }
      g.stroke();
      for (const [x, y] of dots) { g.beginPath(); g.arc(x, y, 2.5, 0, 2 * Math.PI); g.fill(); }
    });
    legend.replaceChildren(...series.map((s, k) => {
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const swatch = h("i", {});
      swatch.style.background = COLORS[k % COLORS.length]; // CSSOM: allowed by the CSP
      return h("span", {}, swatch, s.name + " " + (last === null ? "–" : unit(last)));
    }));
  };
  return box;
}

// ---------------------------------------------------------------- pages

async function pageOverview() {
  const cards = h("div", { class: "cards" });
  const charts = {
    rate: chart("Records appended per second", (v) => fmtNum(v, v < 10 ? 1 : 0)),
    bytes: chart("Bytes appended per second", (v) => fmtBytes(v) + "/s"),
    latency: chart("Produce latency", (v) => fmtMs(v * 1000)),
    disk: chart("Data on disk", fmtBytes),
  };
  const topicsBox = h("div", { class: "scroll" });
  show(h("h1", {}, "Overview"), cards,
    h("div", { class: "charts" }, Object.values(charts)),
    h("h2", {}, "Topics"), topicsBox);
  const hist = { rate: [], bytes: [], p50: [], p99: [], disk: [] };
  let prev = null;
  const growth = new Map();
  let prevEnds = null;
  every(2000, () => guarded(async () => {
    const [text, list] = await Promise.all([
      api("GET", "/metrics", undefined, "text/plain"),
      api("GET", "/v1/topics"),
    ]);
    const now = Date.now();
    const m = parseMetrics(text);
    const visible = new Set(list.topics.map((t) => t.name));
    const cur = {
      t: now,
      records: sum(m, "mapq_records_appended_total"),
      bytes: sum(m, "mapq_bytes_appended_total"),
      lat: buckets(m, "mapq_produce_duration_seconds"),
      // What the logs hold (the disk quota's own count is there only with a quota).
      disk: sum(m, "mapq_log_size_bytes"),
    };
    if (prev) {
      const dt = (now - prev.t) / 1000;
      const keep = (arr, v) => { arr.push([now, v]); while (arr.length > 70) arr.shift(); };
      keep(hist.rate, Math.max(0, (cur.records - prev.records) / dt));
      keep(hist.bytes, Math.max(0, (cur.bytes - prev.bytes) / dt));
      keep(hist.p50, quantile(0.5, cur.lat, prev.lat));
      keep(hist.p99, quantile(0.99, cur.lat, prev.lat));
      keep(hist.disk, cur.disk);
    }
    prev = cur;
    charts.rate.draw([{ name: "records/s", points: hist.rate }]);
    charts.bytes.draw([{ name: "bytes/s", points: hist.bytes }]);
    charts.latency.draw([{ name: "p50", points: hist.p50 }, { name: "p99", points: hist.p99 }]);
    charts.disk.draw([{ name: "used", points: hist.disk }]);

    // Per topic, from the log gauges: records held, size, growth.
    const per = new Map();
    for (const s of m) {
      const t = s.labels.topic;
      if (!t || !visible.has(t)) continue;
      const e = per.get(t) || { start: 0, end: 0, size: 0 };
      if (s.name === "mapq_log_start_offset") e.start += s.value;
      if (s.name === "mapq_log_end_offset") e.end += s.value;
      if (s.name === "mapq_log_size_bytes") e.size += s.value;
      per.set(t, e);
    }
    const ends = new Map([...per].map(([t, e]) => [t, e.end]));
    if (prevEnds) {
      for (const [t, end] of ends) {
        const before = prevEnds.ends.get(t);
        if (before !== undefined) growth.set(t, (end - before) / ((now - prevEnds.t) / 1000));
      }
    }
    prevEnds = { t: now, ends };
    const last = (a) => (a.length ? a[a.length - 1][1] : null);
    cards.replaceChildren(
      card("Topics", fmtNum(list.topics.length)),
      card("Records/s", fmtNum(last(hist.rate), 1)),
      card("Produce p50 / p99", seconds(last(hist.p50)) + " / " + seconds(last(hist.p99))),
      card("Data on disk", fmtBytes(cur.disk)),
      card("Records appended", fmtNum(cur.records)),
    );
    topicsBox.replaceChildren(table(
      ["Topic", "Partitions", "Records", "Size", "Growth (records/s)"],
      list.topics.map((t) => {
        const e = per.get(t.name) || {};
        return [
          h("a", { href: "#/topics/" + enc(t.name) }, t.name),
          num(t.partitions), num(e.end - e.start), num(e.size, fmtBytes),
          num(growth.get(t.name), (v) => fmtNum(v, 1)),
        ];
      }),
      "No topics yet."));
  }));
}

function seconds(s) {
  return s === null || s === undefined ? "–" : fmtMs(s * 1000);
}

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "muted" }, label), h("div", { class: "v" }, value));
}

function num(v, f) {
  return h("td", { class: "num" }, v === undefined || v === null || isNaN(v) ? "–" : (f || fmtNum)(v));
}

/** A table: `rows` of cells (a node, a <td>, or text). */
function table(heads, rows, empty) {
  if (!rows.length && empty) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, heads.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) =>
      c instanceof HTMLTableCellElement ? c : h("td", {}, c))))));
}

async function pageTopics() {
  const list = await api("GET", "/v1/topics");
  const form = holds("admin") ? createTopicForm() : null;
  show(h("h1", {}, "Topics"),
    h("div", { class: "scroll" }, table(["Topic", "Partitions"],
      list.topics.map((t) => [h("a", { href: "#/topics/" + enc(t.name) }, t.name), num(t.partitions)]),
      "No topics yet.")),
    form ? [h("h2", {}, "Create a topic"), form] : []);
}

function createTopicForm() {
  const name = h("input", { name: "name", required: true, autocomplete: "off" });
  const parts = h("input", { name: "partitions", type: "number", min: 1, value: 1 });
  const out = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "inline", id: "create-topic" },
    h("label", {}, "Name", name), h("label", {}, "Partitions", parts),
    h("button", { class: "primary", type: "submit" }, "Create"), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      await api("POST", "/v1/topics", { name: name.value, partitions: Number(parts.value) });
      location.hash = "#/topics/" + enc(name.value);
    }, out);
  });
  return form;
}

async function pageTopic(topic) {
  const t = await api("GET", "/v1/topics/" + enc(topic));
  const c = t.config;
  const del = may("admin", topic)
    ? h("button", { class: "danger", type: "button", id: "delete-topic", onclick: () => confirmDelete(topic) },
      "Delete topic…")
    : null;
  show(h("h1", {}, "Topic ", h("span", { id: "topic-name" }, t.name)),
    h("div", { class: "cards" },
      card("Partitions", fmtNum(t.partitions)),
      card("Retention", c.retention_ms ? fmtMs(c.retention_ms) : "forever"),
      card("Retention size", c.retention_bytes ? fmtBytes(c.retention_bytes) : "unlimited"),
      card("Segment size", fmtBytes(c.segment_bytes)),
      card("Segment age", fmtMs(c.segment_ms)),
      card("Idempotency keys", fmtNum(t.idempotency_keys))),
    h("h2", {}, "Partitions"),
    h("div", { class: "scroll" }, table(
      ["Partition", "Start", "End", "Durable", "High watermark", "Size", "Segments"],
      t.partition_stats.map((p) => [
        h("a", { href: "#/topics/" + enc(topic) + "/" + p.partition }, String(p.partition)),
        num(p.start_offset), num(p.end_offset), num(p.durable_offset), num(p.high_watermark),
        num(p.size_bytes, fmtBytes), num(p.segments),
      ]))),
    may("produce", topic) ? h("p", {}, h("a", { href: "#/produce/" + enc(topic) }, "Produce to this topic")) : null,
    del);
}

function confirmDelete(topic) {
  const input = h("input", { "aria-label": "Topic name", autocomplete: "off", id: "confirm-name" });
  const out = h("div", { "aria-live": "polite" });
  const go = h("button", { class: "danger", type: "submit", id: "confirm-delete", disabled: true }, "Delete");
  input.addEventListener("input", () => { go.disabled = input.value !== topic; });
  const dlg = h("dialog", { "aria-labelledby": "dlg-title" },
    h("form", { method: "dialog", class: "stack" },
      h("h2", { id: "dlg-title" }, "Delete topic ", topic, "?"),
      h("p", {}, "Its records and the committed offsets on it go for good. Type the topic's name to confirm."),
      input, out,
      h("div", {}, go, " ", h("button", { type: "button", onclick: () => dlg.close() }, "Cancel"))));
  dlg.querySelector("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      await api("DELETE", "/v1/topics/" + enc(topic));
      dlg.close();
      toast("Topic " + topic + " deleted");
      location.hash = "#/topics";
    }, out);
  });
  dlg.addEventListener("close", () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  input.focus();
}

/** A record's value (or key) as the console shows it: JSON pretty, text, or hex. */
function shown(r, field) {
  if (r[field + "_b64"] !== undefined) {
    const bin = atob(r[field + "_b64"]);
    let hex = "";
    for (let i = 0; i < bin.length; i++) {
      hex += bin.charCodeAt(i).toString(16).padStart(2, "0") + (i % 16 === 15 ? "\n" : " ");
    }
    return h("pre", { class: "hex", title: bin.length + " bytes, binary" }, hex.trim());
  }
  const v = r[field];
  if (v === null || v === undefined) return h("span", { class: "muted" }, "null");
  if (typeof v === "string") return h("pre", {}, v);
  return h("pre", { class: "json" }, JSON.stringify(v, null, 2));
}

function headersText(hs) {
  return Object.entries(hs || {}).map(([k, v]) => k + ": " + v).join("\n");
}

function recordRow(r) {
  return h("tr", {}, num(r.offset), h("td", {}, fmtTime(r.timestamp_ms)),
    h("td", {}, shown(r, "key")), h("td", {}, shown(r, "value")),
    h("td", {}, h("pre", {}, headersText(r.headers))));
}

function recordsTable(id) {
  const body = h("tbody", { id });
  return [h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, ["Offset", "Time (UTC)", "Key", "Value", "Headers"].map((x) =>
      h("th", { scope: "col", class: x === "Offset" ? "num" : null }, x)))), body)), body];
}

async function pagePartition(topic, partition) {
  const t = await api("GET", "/v1/topics/" + enc(topic));
  const p = t.partition_stats.find((x) => String(x.partition) === String(partition));
  if (!p) throw new ApiError(404, "partition_not_found", "topic " + topic + " has no partition " + partition);
  const base = "/v1/topics/" + enc(topic) + "/partitions/" + enc(partition);
  const offset = h("input", { type: "number", min: 0, value: p.start_offset, name: "offset", id: "browse-offset" });
  const time = h("input", { type: "datetime-local", name: "time", step: 1 });
  const status = h("div", { "aria-live": "polite", class: "muted" });
  const [browseTable, browseBody] = recordsTable("records");
  let next = null;
  const load = (query) => guarded(async () => {
    const r = await api("GET", base + "/records?max_records=50&" + query);
    browseBody.replaceChildren(...r.records.map(recordRow));
    next = r.next_offset;
    status.textContent = r.records.length
      ? "Offsets " + r.records[0].offset + " to " + r.records[r.records.length - 1].offset + " of " + r.high_watermark
      : "No records there (the high watermark is " + r.high_watermark + ").";
  }, status);
  const browse = h("form", { class: "inline", id: "browse" },
    h("label", {}, "From offset", offset), h("label", {}, "or from time (UTC)", time),
    h("button", { class: "primary", type: "submit" }, "Show"),
    h("button", { type: "button", onclick: () => { if (next !== null) { offset.value = next; time.value = ""; load("offset=" + next); } } }, "Next 50"));
  browse.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (time.value) load("timestamp_ms=" + Date.parse(time.value + "Z"));
    else load("offset=" + (offset.value || 0));
  });

  // The live tail: SSE read with fetch (EventSource cannot send a token).
  const [tailTable, tailBody] = recordsTable("tail");
  const tailState = h("span", { class: "muted", id: "tail-state" }, "stopped");
  const toggle = h("button", { type: "button", id: "tail-toggle" }, "Start live tail");
  let ctl = null, paused = false, lastId = null, buffered = [];
  const flush = () => {
    for (const r of buffered) {
      tailBody.prepend(recordRow(r));
      while (tailBody.children.length > 200) tailBody.lastChild.remove();
    }
    buffered = [];
  };
  const start = async () => {
    ctl = new AbortController();
    state.aborts.push(ctl);
    tailState.textContent = "live";
    toggle.textContent = "Pause";
    const headers = authHeaders();
    if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
    try {
      const res = await fetch(base + "/stream?offset=latest", { headers, signal: ctl.signal });
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        throw new ApiError(res.status, body.error && body.error.code, (body.error && body.error.message) || res.statusText);
      }
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let data = "", id = null, event = "message";
          for (const line of block.split("\n")) {
            if (line.startsWith("data:")) data += line.slice(5).trim();
            else if (line.startsWith("id:")) id = Number(line.slice(3).trim());
            else if (line.startsWith("event:")) event = line.slice(6).trim();
          }
          if (!data) continue;
          const rec = JSON.parse(data);
          if (event === "error") throw new ApiError(0, rec.error.code, rec.error.message);
          if (id !== null) lastId = id;
          buffered.push(rec);
        }
        if (!paused) flush();
      }
    } catch (e) {
      if (e.name !== "AbortError") {
        tailState.replaceChildren(errorBox(e));
        toggle.textContent = "Start live tail";
        ctl = null;
      }
    }
  };
  toggle.addEventListener("click", () => {
    if (!ctl) { paused = false; start(); return; }
    paused = !paused;
    toggle.textContent = paused ? "Resume" : "Pause";
    tailState.textContent = paused ? "paused (records are kept until you resume)" : "live";
    if (!paused) flush();
  });

  show(h("h1", {}, "Topic ", h("a", { href: "#/topics/" + enc(topic) }, topic), ", partition " + partition),
    h("div", { class: "cards" }, card("Start", fmtNum(p.start_offset)), card("End", fmtNum(p.end_offset)),
      card("Durable", fmtNum(p.durable_offset)), card("Size", fmtBytes(p.size_bytes))),
    h("h2", {}, "Live tail"), h("p", {}, toggle, " ", tailState), tailTable,
    h("h2", {}, "Browse"), browse, status, browseTable);
  load("offset=" + p.start_offset);
}

async function pageProduce(topic) {
  if (!holds("produce")) {
    return show(h("h1", {}, "Produce"), h("p", { class: "muted", id: "no-produce" },
      "This token may not produce to any topic."));
  }
  const list = await api("GET", "/v1/topics");
  const names = list.topics.map((t) => t.name).filter((n) => may("produce", n));
  const dl = h("datalist", { id: "topic-names" }, names.map((n) => h("option", { value: n })));
  const f = {
    topic: h("input", { name: "topic", list: "topic-names", required: true, value: topic || "", autocomplete: "off" }),
    partition: h("input", { name: "partition", type: "number", min: 0, placeholder: "by key, or any" }),
    key: h("input", { name: "key", autocomplete: "off" }),
    value: h("textarea", { name: "value", required: true }),
    json: h("input", { name: "json", type: "checkbox" }),
    headers: h("textarea", { name: "headers", placeholder: "name: value (one per line)" }),
    durability: h("select", { name: "durability" }, h("option", { value: "" }, "server default"),
      h("option", { value: "memory" }, "memory"), h("option", { value: "fsync" }, "fsync")),
  };
  const out = h("div", { "aria-live": "polite", id: "produce-result" });
  const form = h("form", { class: "stack", id: "produce" },
    h("label", {}, "Topic", f.topic), dl, h("label", {}, "Partition (optional)", f.partition),
    h("label", {}, "Key (optional)", f.key), h("label", {}, "Value", f.value),
    h("label", { class: "check" }, h("span", {}, f.json, " The value is JSON")),
    h("label", {}, "Headers", f.headers), h("label", {}, "Durability", f.durability),
    h("div", {}, h("button", { class: "primary", type: "submit" }, "Produce")), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      const rec = {};
      if (f.json.checked) {
        try { rec.value = JSON.parse(f.value.value); } catch (e) {
          throw new ApiError(0, "bad_json", "the value is not JSON: " + e.message);
        }
      } else rec.value = f.value.value;
      if (f.key.value) rec.key = f.key.value;
      if (f.partition.value !== "") rec.partition = Number(f.partition.value);
      const headers = {};
      for (const line of f.headers.value.split("\n")) {
        if (!line.trim()) continue;
        const i = line.indexOf(":");
        if (i < 0) throw new ApiError(0, "bad_header", "a header line needs a colon: " + line);
        headers[line.slice(0, i).trim()] = line.slice(i + 1).trim();
      }
      if (Object.keys(headers).length) rec.headers = headers;
      const q = f.durability.value ? "?durability=" + f.durability.value : "";
      const name = f.topic.value;
      const r = await api("POST", "/v1/topics/" + enc(name) + "/records" + q, { records: [rec] });
      const o = r.offsets[0];
      out.replaceChildren(h("p", { class: "ok" }, "Appended to partition " + o.partition + " at offset " + o.offset + ". ",
        h("a", { href: "#/topics/" + enc(name) + "/" + o.partition }, "See the partition")));
    }, out);
  });
  show(h("h1", {}, "Produce"), form);
}

async function pageGroups() {
  const list = await api("GET", "/v1/groups");
  show(h("h1", {}, "Groups"), h("div", { class: "scroll" }, table(["Group"],
    list.groups.map((g) => [h("a", { href: "#/groups/" + enc(g) }, g)]), "No groups yet.")));
}

async function pageGroup(group) {
  const g = await api("GET", "/v1/groups/" + enc(group));
  if (g.type === "queue") return pageQueue(g);
  const s = g.settings || {};
  show(h("h1", {}, "Group ", g.name, " ", h("span", { class: "tag" }, "with members")),
    h("div", { class: "cards" }, card("Members", fmtNum(g.members.length)), card("Epoch", fmtNum(g.epoch)),
      card("Total lag", fmtNum(g.lag)), card("Session timeout", fmtMs(s.session_timeout_ms)),
      card("Offset reset", s.auto_offset_reset || "–")),
    h("h2", {}, "Members and assignment"),
    h("div", { class: "scroll" }, table(["Member", "Epoch", "Assigned", "Revoking", "Last seen"],
      g.members.map((m) => [m.member, num(m.member_epoch),
        (m.assignment || []).map((a) => a.topic + "/" + a.partition).join(", ") || "–",
        (m.revoking || []).map((a) => a.topic + "/" + a.partition).join(", ") || "–",
        fmtTime(m.last_seen_ms)]), "No members now.")),
    h("h2", {}, "Committed offsets and lag"),
    h("div", { class: "scroll" }, table(["Topic", "Partition", "Committed", "Lag"],
      g.offsets.map((o) => [h("a", { href: "#/topics/" + enc(o.topic) }, o.topic),
        h("a", { href: "#/topics/" + enc(o.topic) + "/" + o.partition }, String(o.partition)),
        num(o.offset), num(o.lag)]), "No offsets.")));
}

function pageQueue(g) {
  const s = g.settings;
  const dlq = s.dead_letter_topic
    ? h("a", { href: "#/topics/" + enc(s.dead_letter_topic), id: "dlq-link" }, s.dead_letter_topic)
    : "none (dropped after the last delivery)";
  show(h("h1", {}, "Group ", g.name, " ", h("span", { class: "tag" }, "queue")),
    h("div", { class: "cards" }, card("Backlog", fmtNum(g.backlog)), card("In flight", fmtNum(g.in_flight)),
      card("Oldest unacked", fmtMs(g.oldest_unacked_age_ms)), card("Dead-lettered", fmtNum(g.dead_lettered)),
      card("Lease", fmtMs(s.lease_ms)), card("Max deliveries", fmtNum(s.max_deliveries))),
    g.window_full ? h("p", { class: "warn" }, "The in-flight window (" + s.max_in_flight + ") is full.") : null,
    h("p", {}, "Dead-letter topic: ", dlq),
    h("div", { class: "scroll" }, table(["Topic", "Partition", "Backlog", "In flight", "Oldest unacked", "Dead-lettered"],
      g.partitions.map((p) => [h("a", { href: "#/topics/" + enc(p.topic) }, p.topic),
        h("a", { href: "#/topics/" + enc(p.topic) + "/" + p.partition }, String(p.partition)),
        num(p.backlog), num(p.in_flight), num(p.oldest_unacked_age_ms, fmtMs), num(p.dead_lettered)]))));
}

async function pageCluster() {
  const c = await api("GET", "/v1/cluster");
  const under = c.partitions.filter((p) => p.isr.length < p.replicas.length);
  show(h("h1", {}, "Cluster"),
    h("div", { class: "cards" }, card("Nodes alive", c.nodes.filter((n) => n.alive).length + " of " + c.nodes.length),
      card("Controller", c.controller || "none"), card("Under-replicated", fmtNum(under.length)),
      card("This node", c.node_id || "–")),
    h("h2", {}, "Nodes"),
    h("div", { class: "scroll" }, table(["Node", "HTTP", "Kafka", "Alive"],
      c.nodes.map((n) => [n.node_id, n.advertised_http, n.advertised_kafka || "–",
        h("td", { class: n.alive ? "ok" : "error" }, n.alive ? "yes" : "no")]))),
    h("h2", {}, "Partitions"),
    h("div", { class: "scroll" }, table(["Topic", "Partition", "Leader", "Epoch", "Replicas", "In sync", "High watermark"],
      c.partitions.map((p) => [p.topic, num(p.partition), p.leader || h("span", { class: "error" }, "none"),
        num(p.leader_epoch), p.replicas.join(", "),
        h("td", { class: p.isr.length < p.replicas.length ? "warn" : null }, p.isr.join(", ")),
        num(p.high_watermark)]))));
}

async function pageLogin(message) {
  const input = h("input", { type: "password", name: "token", required: true, autocomplete: "off", id: "token" });
  const out = h("div", { "aria-live": "polite" }, message ? h("p", { class: "error" }, message) : null);
  const form = h("form", { class: "stack", id: "login" },
    h("p", {}, "This server requires a token. It is kept for this browser session only."),
    h("label", {}, "Token", input), h("div", {}, h("button", { class: "primary", type: "submit" }, "Sign in")), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      sessionStorage.setItem(TOKEN_KEY, input.value);
      const who = await whoami();
      if (!who.authenticated) {
        sessionStorage.removeItem(TOKEN_KEY);
        throw new ApiError(401, "unauthorized", "this token is not valid");
      }
      route();
    }, out);
  });
  show(h("h1", {}, "Sign in"), form);
  input.focus();
}

// ---------------------------------------------------------------- the frame

async function whoami() {
  state.who = await api("GET", "/v1/whoami");
  const w = state.who;
  document.getElementById("who").textContent = w.tokens ? (w.authenticated ? "token: " + w.name : "") : "";
  document.getElementById("logout").hidden = !(w.tokens && w.authenticated);
  document.getElementById("nav-produce").hidden = !holds("produce");
  document.getElementById("nav-cluster").hidden = !w.cluster;
  return w;
}

const ROUTES = [
  [/^\/?$/, "overview", () => pageOverview()],
  [/^\/topics$/, "topics", () => pageTopics()],
  [/^\/topics\/([^/]+)$/, "topics", (t) => pageTopic(t)],
  [/^\/topics\/([^/]+)\/(\d+)$/, "topics", (t, p) => pagePartition(t, p)],
  [/^\/produce(?:\/([^/]+))?$/, "produce", (t) => pageProduce(t)],
  [/^\/groups$/, "groups", () => pageGroups()],
  [/^\/groups\/([^/]+)$/, "groups", (g) => pageGroup(g)],
  [/^\/cluster$/, "cluster", () => pageCluster()],
];

async function route() {
  stopPage();
  const path = location.hash.replace(/^#/, "") || "/";
  try {
    if (!state.who || (state.who.tokens && !state.who.authenticated)) await whoami();
    if (state.who.tokens && !state.who.authenticated) return pageLogin();
    for (const [re, page, render] of ROUTES) {
      const m = path.match(re);
      if (!m) continue;
      document.querySelectorAll("nav a[data-page]").forEach((a) => {
        if (a.dataset.page === page) a.setAttribute("aria-current", "page");
        else a.removeAttribute("aria-current");
      });
      await render(...m.slice(1).map((x) => (x === undefined ? undefined : decodeURIComponent(x))));
      return;
    }
    show(h("h1", {}, "Not found"), h("p", {}, "No console page at ", path, ". ", h("a", { href: "#/" }, "Overview")));
  } catch (e) {
    if (e.status === 401) {
      state.who = null;
      return pageLogin(e.message);
    }
    show(h("h1", {}, "Error"), errorBox(e));
  }
}

document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.who = null;
  route();
});
// After a navigation, the keyboard goes on from the new page's content.
window.addEventListener("hashchange", () => route().then(() => main().focus({ preventScroll: true })));
route();
