// The status page: follows /api/events (server-sent events), or polls /api/status where that is not possible,
// and draws the snapshot. Plain DOM, text set with textContent only (values and device messages come from the
// field). Nothing here sends anything but GET requests.
"use strict";

const POLL_MS = 2000;
let latest = null;      // the last snapshot
let receivedAt = 0;     // Date.now() when it came
let previous = null;    // the one before, for the CPU share

function $(id) { return document.getElementById(id); }

function element(tag, text, className) {
  const made = document.createElement(tag);
  if (text !== undefined && text !== null) made.textContent = String(text);
  if (className) made.className = className;
  return made;
}

function cell(row, label, text, className) {
  const td = element("td", text, className);
  td.dataset.label = label;
  row.appendChild(td);
  return td;
}

// The gateway's time now, as far as the page can tell: the snapshot's time plus what passed since it came.
function serverNow() { return latest ? latest.time_ms + (Date.now() - receivedAt) : Date.now(); }

function age(ms) {
  if (ms === null || ms === undefined) return "–";
  const s = Math.max(0, Math.round((serverNow() - ms) / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

// An element whose text is the age of `ms`, kept current every second between updates.
function ageOf(tag, ms) {
  const made = element(tag, age(ms));
  if (ms !== null && ms !== undefined) made.dataset.since = String(ms);
  return made;
}

function clock(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
  return (n / 1073741824).toFixed(2) + " GiB";
}

function count(n) { return Number(n).toLocaleString("en"); }

function shown(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) {
    return Math.abs(value) < 10000 ? String(Number(value.toPrecision(5))) : value.toFixed(1);
  }
  return String(value);
}

function definitions(list, pairs) {
  list.replaceChildren();
  for (const [term, value] of pairs) {
    list.appendChild(element("dt", term));
    const dd = element("dd");
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    list.appendChild(dd);
  }
}

const STATE_CLASS = { online: "good", degraded: "warn", starting: "", failing: "bad" };
const QUALITY_CLASS = { good: "good", uncertain: "warn", bad: "bad" };

function drawHeader(s) {
  $("gateway").textContent = s.name ? s.gateway + " · " + s.name : s.gateway;
  $("version").textContent = "version " + s.version + (s.running ? "" : " · starting or stopping");
  document.title = s.gateway + " · status";
}

function drawUplink(s) {
  const u = s.uplink;
  const state = $("uplink-state");
  state.textContent = u.connected ? "connected" : "not connected";
  state.className = "pill " + (u.connected ? "good" : "bad");
  $("uplink-broker").textContent = u.broker;
  const pairs = [];
  if (u.connected) pairs.push(["connected for", ageOf("span", u.since_ms)]);
  if (u.problem) pairs.push(["problem", u.problem]);
  pairs.push(["published", count(u.messages_published) + " messages, " + bytes(u.bytes_published)]);
  pairs.push(["acknowledged", count(u.messages_acked)]);
  pairs.push(["reconnects", count(u.reconnects) + " (" + count(u.connect_failures) + " failed attempts)"]);
  definitions($("uplink"), pairs);
}

function drawBuffer(s) {
  const b = s.buffer;
  definitions($("buffer"), [
    ["waiting", count(b.messages) + " messages, " + count(b.readings) + " readings"],
    ["size", bytes(b.bytes) + " of " + bytes(b.max_bytes)],
    ["oldest", b.oldest_ms === null ? "nothing waits" : ageOf("span", b.oldest_ms)],
    ["dropped", count(b.dropped_messages) + " messages, " + count(b.dropped_readings) + " readings (size cap)"],
  ]);
}

function drawProcess(s) {
  const p = s.process;
  let cpu = "–";
  if (previous && s.time_ms > previous.time_ms) {
    cpu = (100 * (p.cpu_seconds - previous.process.cpu_seconds) / ((s.time_ms - previous.time_ms) / 1000))
      .toFixed(1) + " % of a core";
  }
  definitions($("process"), [
    ["running for", ageOf("span", p.started_ms)],
    ["memory", bytes(p.rss_bytes)],
    ["CPU", cpu],
    ["event-loop lag", (1000 * p.loop_lag_seconds).toFixed(0) + " ms (worst " +
      (1000 * p.loop_lag_max_seconds).toFixed(0) + " ms)"],
    ["readings made", count(s.readings_total)],
    ["system clock", s.clock],
  ]);
}

function drawAlarms(s) {
  const list = $("alarms");
  list.replaceChildren();
  $("alarm-count").textContent = s.alarms.length;
  $("no-alarms").hidden = s.alarms.length > 0;
  for (const a of s.alarms) {
    const item = element("li", null, a.severity);
    item.dataset.alarm = a.alarm;
    item.appendChild(element("span", a.severity, "pill " + (a.severity === "minor" || a.severity === "warning"
      ? "warn" : "bad")));
    item.appendChild(document.createTextNode(" "));
    item.appendChild(element("span", a.alarm, "what"));
    item.appendChild(element("div", a.device ? a.asset + " · device " + a.device : "the gateway itself", "muted"));
    if (a.indicator) {
      item.appendChild(element("div", a.indicator + " " + shown(a.value) + " " + (a.unit || "") +
        (a.limit !== null ? " (limit " + shown(a.limit) + ")" : "")));
    }
    if (a.message) item.appendChild(element("div", a.message));
    const since = element("div", "since " + clock(a.since_ms) + ", ", "muted");
    since.appendChild(ageOf("span", a.since_ms));
    since.appendChild(document.createTextNode(" ago"));
    item.appendChild(since);
    list.appendChild(item);
  }
}

function drawDevices(s) {
  const body = $("devices");
  body.replaceChildren();
  $("device-count").textContent = s.devices.length;
  for (const d of s.devices) {
    const row = element("tr");
    row.dataset.device = d.id;
    const name = cell(row, "device", d.id);
    name.appendChild(element("div", d.protocol + " · " + d.asset, "muted"));
    cell(row, "state").appendChild(element("span", d.state, "pill " + (STATE_CLASS[d.state] || "")));
    cell(row, "since").appendChild(ageOf("span", d.since_ms));
    cell(row, "last error", d.reason ? d.reason + (d.message ? ": " + d.message : "") : "–", d.reason ? "error" : "");
    cell(row, "polls", count(d.polls), "num");
    cell(row, "failures", count(d.failures) + (d.consecutive_failures ? " (" + d.consecutive_failures + " in a row)" : ""),
      "num");
    cell(row, "poll time", d.last_poll_seconds === null ? "–" : (1000 * d.last_poll_seconds).toFixed(0) + " ms", "num");
    const counters = Object.entries(d.counters);
    const more = cell(row, "counters");
    if (counters.length) {
      const details = element("details");
      details.appendChild(element("summary", counters.length + " counters"));
      const list = element("dl");
      definitions(list, counters.map(([k, v]) => [k, count(v)]));
      details.appendChild(list);
      more.appendChild(details);
    } else {
      more.textContent = "–";
    }
    body.appendChild(row);
  }
}

function drawValues(s) {
  const words = $("filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const body = $("values");
  body.replaceChildren();
  let shownCount = 0;
  for (const v of s.values) {
    const text = (v.asset + " " + v.indicator + " " + v.device + " " + v.point).toLowerCase();
    if (!words.every((w) => text.includes(w))) continue;
    shownCount += 1;
    const row = element("tr");
    row.dataset.key = v.asset + "|" + v.indicator;
    cell(row, "asset", v.asset);
    const indicator = cell(row, "indicator", v.indicator);
    indicator.title = "device " + v.device + ", point " + v.point;
    cell(row, "value", shown(v.value), "num value");
    cell(row, "unit", v.unit);
    const quality = cell(row, "quality");
    quality.appendChild(element("span", v.quality, "pill " + (QUALITY_CLASS[v.quality] || "")));
    if (v.reason) quality.appendChild(element("div", v.reason, "muted"));
    cell(row, "age").appendChild(ageOf("span", v.source_ms));
    cell(row, "source time", clock(v.source_ms), "muted");
    body.appendChild(row);
  }
  $("value-count").textContent = shownCount === s.values.length ? s.values.length
    : shownCount + " of " + s.values.length;
}

function drawPanels(s) {
  const holder = $("panels");
  holder.replaceChildren();
  for (const p of s.panels || []) {
    const section = element("section");
    section.id = "panel-" + p.id;
    section.appendChild(element("h2", p.title));
    if (!p.rows.length) {
      section.appendChild(element("p", "Nothing yet.", "muted panel-empty"));
    } else {
      const table = element("table", null, "rows");
      const head = element("tr");
      for (const c of p.columns) head.appendChild(element("th", c));
      table.appendChild(element("thead")).appendChild(head);
      const body = table.appendChild(element("tbody"));
      for (const r of p.rows) {
        const row = element("tr");
        r.forEach((value, i) => cell(row, p.columns[i] || "", shown(value)));
        body.appendChild(row);
      }
      section.appendChild(table);
    }
    holder.appendChild(section);
  }
}

function draw(s) {
  previous = latest;
  latest = s;
  receivedAt = Date.now();
  drawHeader(s);
  drawUplink(s);
  drawBuffer(s);
  drawProcess(s);
  drawAlarms(s);
  drawDevices(s);
  drawValues(s);
  drawPanels(s);
  $("updated").textContent = "updated " + clock(s.time_ms).slice(11);
}

function setLive(text, className) {
  const live = $("live");
  live.textContent = text;
  live.className = "pill " + className;
}

function tickAges() {
  for (const e of document.querySelectorAll("[data-since]")) e.textContent = age(Number(e.dataset.since));
}

async function pollOnce() {
  try {
    const reply = await fetch("api/status", { cache: "no-store" });
    if (!reply.ok) throw new Error(reply.status + " " + reply.statusText);
    draw(await reply.json());
    setLive("live (polling)", "good");
  } catch (error) {
    setLive("no answer: " + error.message, "bad");
  }
}

function poll() {
  pollOnce();
  setInterval(pollOnce, POLL_MS);
}

function follow() {
  if (!window.EventSource) { poll(); return; }
  const events = new EventSource("api/events");
  events.addEventListener("snapshot", (event) => { draw(JSON.parse(event.data)); setLive("live", "good"); });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) { poll(); return; }  // refused (too many pages): poll instead
    setLive("reconnecting…", "warn");  // EventSource tries again by itself
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", () => { if (latest) drawValues(latest); });
  setInterval(tickAges, 1000);
  follow();
});
