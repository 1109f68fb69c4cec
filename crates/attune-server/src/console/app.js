// The console's live parts: an execution's status and output, the executions list and the
// workers on the overview follow the API (read with the session) without reloading the page.
"use strict";
const get = async (path) => {
  const r = await fetch(path, { credentials: "same-origin" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
};
const every = (ms, f) => { const tick = async () => { try { if (await f() === false) return; } catch (e) { console.warn(e); } setTimeout(tick, ms); }; setTimeout(tick, ms); };
const setStatus = (el, s) => { if (el && el.textContent !== s) { el.textContent = s; el.className = "status " + s; } };

function followExecution(box) {
  const id = box.dataset.execution;
  const log = document.getElementById("log");
  let after = 0, seen = "";
  every(500, async () => {
    const logs = await get(`/api/v1/executions/${id}/logs?after=${after}`);
    for (const c of logs.chunks || []) {
      if (c.stream === "stdout") seen += c.encoding === "base64" ? atob(c.text) : c.text;
      after = Math.max(after, c.seq);
    }
    const e = await get(`/api/v1/executions/${id}`);
    setStatus(document.getElementById("status"), e.status);
    document.getElementById("worker").textContent = e.worker || "";
    if (["succeeded", "failed", "canceled", "timeout", "abandoned"].includes(e.status)) {
      // Ended: the stored output is the whole truth; reload once to show result and history.
      if (box.dataset.terminal !== "true") location.reload();
      return false;
    }
    if (seen && log.textContent !== seen) log.textContent = seen;
  });
}

function followList(table) {
  every(1000, async () => {
    const rows = table.querySelectorAll("tr[data-execution]");
    if (!rows.length) return;
    const page = await get(`/api/v1/executions?limit=200`);
    const byId = new Map(page.items.map((e) => [e.id, e]));
    for (const tr of rows) {
      const e = byId.get(tr.dataset.execution);
      if (e) setStatus(tr.querySelector('[data-field="status"]'), e.status);
    }
  });
}

function followWorkers(table) {
  every(1000, async () => {
    const workers = await get(`/api/v1/workers`);
    const byId = new Map(workers.map((w) => [w.id, w]));
    for (const tr of table.querySelectorAll("tr[data-worker]")) {
      const w = byId.get(tr.dataset.worker);
      setStatus(tr.querySelector('[data-field="status"]'), w ? w.status : "inactive");
      if (w) {
        const secs = Math.max(0, Math.round((Date.now() - Date.parse(w.last_heartbeat)) / 1000));
        tr.querySelector('[data-field="heartbeat"]').textContent = secs + " s ago";
        tr.querySelector('[data-field="load"]').textContent = `${w.in_flight} / ${w.concurrency}`;
      }
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("execution");
  if (box && box.dataset.terminal !== "true") followExecution(box);
  const list = document.querySelector('[data-live="executions"]');
  if (list) followList(list);
  const workers = document.querySelector('[data-live="workers"]');
  if (workers) followWorkers(workers);
});
