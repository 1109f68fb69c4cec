// The console's live parts. One Server-Sent Events stream per page (`/api/v1/events`, read with
// the session cookie) says when something changed: a status shown on the page is updated in
// place, and anything else re-renders the page's `data-refresh` sections from the server (at
// most twice a second). A running execution's output, which the stream does not carry, is read
// from its log every half second. The overview's counts and ages are re-rendered every 2 s.
"use strict";
const TERMINAL = ["succeeded", "failed", "canceled", "timeout", "abandoned"];
const EXECUTION_EVENTS = ["ExecutionRequested", "ExecutionScheduled", "ExecutionPending", "ExecutionRunning",
  "ExecutionCanceling", "ExecutionCompleted"];
const WORKER_EVENTS = ["WorkerRegistered", "WorkerActive", "WorkerInactive", "WorkerDeregistered"];

const get = async (path) => {
  const r = await fetch(path, { credentials: "same-origin" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
};
const setStatus = (el, s) => { if (el && s && el.textContent !== s) { el.textContent = s; el.className = "status " + s; } };

// Follows the event stream; `on(event)` gets each event's data. EventSource reconnects by itself
// (with Last-Event-ID), so a server restart costs nothing but a moment.
function follow(kind, names, on) {
  const es = new EventSource(`/api/v1/events?kind=${kind}`);
  for (const n of names) es.addEventListener(n, (m) => { try { on(JSON.parse(m.data)); } catch (e) { console.warn(e); } });
  es.addEventListener("open", () => document.body.classList.remove("offline"));
  es.addEventListener("error", () => document.body.classList.add("offline"));
  return es;
}

// Re-renders the page's `data-refresh` sections from a fresh copy of the page.
let refreshing = false, again = false;
async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const r = await fetch(location.href, { credentials: "same-origin" });
    if (r.ok) {
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const el of document.querySelectorAll("[data-refresh][id]")) {
        const fresh = doc.getElementById(el.id);
        if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
      }
    }
  } catch (e) { console.warn(e); }
  setTimeout(() => { refreshing = false; if (again) { again = false; refresh(); } }, 500);
}

// Rows of executions (`tr[data-execution]`) take their new status from the stream; an execution
// the page does not show yet re-renders it (a new workflow task, a new execution on the list), and
// so does a shown one whose row is more than its status (`opts.refreshKnown`: a workflow's task
// that starts waiting for an answer gains its Respond link, an ended one its duration).
function followRows(opts) {
  return follow("execution", EXECUTION_EVENTS, (ev) => {
    const rows = document.querySelectorAll(`tr[data-execution="${ev.execution_id}"]`);
    for (const tr of rows) setStatus(tr.querySelector('[data-field="status"]'), ev.status);
    if (opts.onEvent) opts.onEvent(ev);
    if (rows.length ? opts.refreshKnown && opts.refreshKnown() : opts.refreshUnknown()) refresh();
  });
}

function followExecution(box) {
  const id = box.dataset.execution;
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const tree = document.getElementById("tree");
  let after = 0, seen = "", ended = box.dataset.terminal === "true";
  const update = (s) => {
    setStatus(status, s);
    // Ended: the stored record is the whole truth; reload once to show result and history.
    if (TERMINAL.includes(s) && !ended) { ended = true; location.reload(); }
  };
  const es = followRows({
    refreshUnknown: () => !!tree && !ended,
    refreshKnown: () => !!tree && !ended,
    onEvent: (ev) => {
      if (ev.execution_id !== id) return;
      if (ev.worker) document.getElementById("worker").textContent = ev.worker;
      if (ev.attempt != null) document.getElementById("attempt").textContent = ev.attempt;
      update(ev.status);
    },
  });
  // The stream starts at "now": what happened between rendering and connecting is read once.
  es.addEventListener("open", () => get(`/api/v1/executions/${id}`).then((e) => {
    document.getElementById("attempt").textContent = e.attempt;
    update(e.status);
  }, console.warn));
  const readLog = async () => {
    if (ended) return;
    if (["running", "canceling"].includes(status.textContent)) {
      try {
        const logs = await get(`/api/v1/executions/${id}/logs?after=${after}`);
        for (const c of logs.chunks || []) {
          if (c.stream === "stdout") seen += c.encoding === "base64" ? atob(c.text) : c.text;
          after = Math.max(after, c.seq);
        }
        if (seen && log.textContent !== seen) log.textContent = seen;
      } catch (e) { console.warn(e); }
    }
    setTimeout(readLog, 500);
  };
  if (!ended) readLog();
  if (tree && !ended) setInterval(refresh, 5000); // durations of running tasks
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("execution");
  const list = document.querySelector('[data-live="executions"]');
  const workers = document.querySelector('[data-live="workers"]');
  if (box) followExecution(box);
  // The first page of a list shows new executions as they come; an older page only updates.
  else if (list) followRows({ refreshUnknown: () => !("paged" in list.dataset) });
  // The overview: workers change on their events; counts, queues and ages every 2 s.
  if (workers) {
    follow("worker", WORKER_EVENTS, () => refresh());
    setInterval(refresh, 2000);
  }
});
