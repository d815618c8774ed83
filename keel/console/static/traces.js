// Traces list: new traces at the top as they are recorded (server-sent events from
// /console/traces/live, which sends rendered rows), with a pause button. Without JS the list is
// a plain page; reload (or the filter form) shows what is new.
"use strict";

(function () {
  const box = document.querySelector(".live[data-live-url]");
  const rows = document.getElementById("trace-rows");
  if (!box || !rows || !window.EventSource) return;
  const label = box.querySelector(".live-label");
  const toggle = box.querySelector(".live-toggle");
  let source = null;
  let paused = false;
  let added = 0;

  function url() {
    // Resume from the newest row the page has, so nothing shown is sent again.
    const newest = rows.querySelector("tr[data-created]");
    const u = new URL(box.dataset.liveUrl, location.href);
    if (newest) {
      const at = parseFloat(newest.dataset.created);
      if (at > parseFloat(u.searchParams.get("after") || "0")) u.searchParams.set("after", String(at));
    }
    return u.toString();
  }

  function setState(state, text) {
    box.classList.toggle("paused", state === "paused");
    box.classList.toggle("offline", state === "offline");
    label.textContent = text;
  }

  function addRow(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const row = template.content.firstElementChild;
    if (!row || document.getElementById(row.id)) return;  // already on the page
    rows.prepend(row);
    added += 1;
    document.querySelectorAll("[data-empty]").forEach((el) => { el.hidden = true; });
    document.querySelectorAll("table.traces[data-waiting]").forEach((t) => t.removeAttribute("data-waiting"));
    setState("live", added === 1 ? "Live · 1 new" : "Live · " + added + " new");
  }

  function start() {
    source = new EventSource(url());
    source.addEventListener("row", (event) => addRow(event.data));
    source.onopen = () => setState("live", added ? "Live · " + added + " new" : "Live");
    source.onerror = () => setState("offline", "Reconnecting…");
  }

  function stop() {
    if (source) source.close();
    source = null;
  }

  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.setAttribute("aria-pressed", String(paused));
    toggle.textContent = paused ? "Resume" : "Pause";
    if (paused) { stop(); setState("paused", "Paused"); } else { start(); }
  });
  window.addEventListener("pagehide", stop);
  box.hidden = false;
  start();
})();
