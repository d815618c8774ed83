// Keel reference chat: streams answers from POST /v1/chat/completions (SSE), with stop,
// regenerate, edit-and-resend, feedback (POST /v1/feedback on the answer's trace id), citations,
// tool runs and guardrail notices. No libraries; every model text is inserted as text, never HTML.
// Works inside the console (keel.fetch sends X-Keel-Console so the sign-in cookie counts) and in
// chat_embed.html copied into an app (see docs/console-chat.md).
"use strict";

(function () {
  const root = document.getElementById("kc");
  if (!root || !document.getElementById("kc-form")) return;

  const api = root.dataset.api || "/v1";
  const traceBase = root.dataset.traceBase || "";
  const changesBase = root.dataset.changesBase || "";
  const feedbackOn = root.dataset.feedback !== "off";
  const routes = JSON.parse(document.getElementById("kc-routes").textContent || "[]");
  const $ = (id) => document.getElementById(id);
  const log = $("kc-log"), empty = $("kc-empty"), input = $("kc-input"), form = $("kc-form");
  const sendBtn = $("kc-send"), stopBtn = $("kc-stop"), status = $("kc-status");
  const modelSelect = $("kc-model");

  // One entry per turn: {role, content, el, ...}; assistant turns also hold their trace id.
  let turns = [];
  let controller = null; // the AbortController of the answer being streamed
  let model = root.dataset.model || (routes[0] && routes[0].name) || "";

  function request(url, options) {
    if (window.keel && typeof window.keel.fetch === "function") return window.keel.fetch(url, options);
    options = options || {};
    options.headers = Object.assign({ "X-Keel-Console": "1" }, options.headers || {});
    options.credentials = "same-origin";
    return fetch(url, options);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function say(text) { status.textContent = text; }

  // -- routes and suggested prompts -----------------------------------------------------------

  function route() { return routes.find((r) => r.name === model) || { suggested_prompts: [] }; }

  function showRoute() {
    const r = route();
    const desc = $("kc-description");
    desc.textContent = r.description || "";
    desc.hidden = !r.description;
    const prompts = $("kc-prompts");
    prompts.replaceChildren(...(r.suggested_prompts || []).map(
      (p) => el("button", { type: "button", class: "kc-prompt", text: p })));
    input.placeholder = `Message ${model} (Enter sends, Shift+Enter new line)`;
  }

  if (modelSelect) {
    modelSelect.addEventListener("change", () => {
      model = modelSelect.value;
      showRoute();
      const url = new URL(window.location.href);
      url.searchParams.set("model", model);
      window.history.replaceState(null, "", url);
    });
  }
  $("kc-prompts").addEventListener("click", (event) => {
    const button = event.target.closest(".kc-prompt");
    if (button && !controller) send(button.textContent);
  });
  $("kc-new").addEventListener("click", () => {
    stop();
    turns.forEach((t) => t.el.remove());
    turns = [];
    updateEmpty();
    say("New conversation");
    input.focus();
  });

  function updateEmpty() { empty.hidden = turns.length > 0; }

  // -- sending --------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) { event.preventDefault(); stop(); }
  });
  stopBtn.addEventListener("click", () => stop());

  function stop() { if (controller) controller.abort(); }

  function send(text) {
    addUser(text);
    generate();
  }

  function history() {
    return turns.filter((t) => t.content && (t.role === "user" || t.state === "done" || t.state === "stopped"))
      .map((t) => ({ role: t.role, content: t.content }));
  }

  function busy(on) {
    stopBtn.hidden = !on;
    sendBtn.disabled = on;
    log.setAttribute("aria-busy", on ? "true" : "false");
    for (const b of log.querySelectorAll(".kc-regen, .kc-edit-btn")) b.disabled = on;
  }

  // -- the user's turns -----------------------------------------------------------------------

  function addUser(text) {
    const turn = { role: "user", content: text };
    turn.bubble = el("div", { class: "kc-bubble", text });
    turn.el = el("div", { class: "kc-turn user" },
      el("span", { class: "kc-who", text: "You" }), turn.bubble,
      el("div", { class: "kc-row" },
        el("button", { type: "button", class: "kc-link kc-edit-btn", "aria-label": "Edit and resend this message",
                       text: "Edit", onclick: () => edit(turn) })));
    turns.push(turn);
    log.append(turn.el);
    updateEmpty();
  }

  function edit(turn) {
    if (controller) return;
    const box = el("textarea", { rows: 3, "aria-label": "Edit your message" });
    box.value = turn.content;
    const done = () => { form_.remove(); turn.bubble.hidden = false; };
    const resend = () => {
      const text = box.value.trim();
      if (!text) return;
      const at = turns.indexOf(turn);
      for (const t of turns.splice(at)) t.el.remove();  // this message and all after it
      send(text);
    };
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); resend(); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); done(); }
    });
    const form_ = el("div", { class: "kc-edit" }, box,
      el("div", { class: "kc-row" },
        el("button", { type: "button", class: "kc-send", text: "Send", onclick: resend }),
        el("button", { type: "button", text: "Cancel", onclick: done })));
    turn.bubble.hidden = true;
    turn.bubble.after(form_);
    box.focus();
  }

  // -- the assistant's turns ------------------------------------------------------------------

  async function generate() {
    const turn = { role: "assistant", content: "", state: "streaming" };
    turn.bubble = el("div", { class: "kc-bubble", "aria-busy": "true" });
    turn.extra = el("div", { class: "kc-extra" });
    turn.row = el("div", { class: "kc-row" });
    turn.el = el("article", { class: "kc-turn assistant", "aria-label": "Answer" },
      el("span", { class: "kc-who", text: model }), turn.extra, turn.bubble, turn.row);
    turn.model = model;
    turns.push(turn);
    log.append(turn.el);
    updateEmpty();
    turn.el.scrollIntoView({ block: "nearest" });
    controller = new AbortController();
    turn.controller = controller;
    busy(true);
    say(`${model} is answering…`);
    const body = { model, stream: true, messages: history() };
    try {
      const response = await request(`${api}/chat/completions`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: controller.signal,
      });
      turn.traceId = response.headers.get("x-keel-trace-id");
      if (!response.ok) {
        await failed(turn, response);
      } else {
        guardNotices(turn, response.headers);
        await readStream(turn, response);
      }
    } catch (err) {
      if (err && err.name === "AbortError") {
        turn.state = "stopped";
      } else {
        turn.state = "error";
        showError(turn, `Could not reach Keel (${err && err.message ? err.message : err}).`);
      }
    } finally {
      if (turn.state === "streaming") turn.state = "done";
      controller = null;
      busy(false);
      finish(turn);
    }
  }

  async function readStream(turn, response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        if (onEvent(turn, event) === "end") return;
      }
    }
  }

  function onEvent(turn, event) {
    const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
    if (!data) return null;
    if (data === "[DONE]") return "end";
    let chunk;
    try { chunk = JSON.parse(data); } catch (e) { return null; }
    if (chunk.error) {  // an error after the stream began: the answer so far stays
      turn.state = "error";
      showError(turn, chunk.error.message || "The answer failed.", chunk.error.code);
      return "end";
    }
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      if (delta.content) {
        turn.content += delta.content;
        turn.bubble.textContent = turn.content;
      }
      if (choice.finish_reason) turn.finish = choice.finish_reason;
    }
    if (chunk.citations) turn.citations = chunk.citations;
    if (chunk.tool_runs) turn.toolRuns = chunk.tool_runs;
    return null;
  }

  async function failed(turn, response) {
    let error = {};
    try { error = (await response.json()).error || {}; } catch (e) { /* not JSON */ }
    const message = error.message || `${response.status} ${response.statusText}`;
    turn.state = "error";
    if (error.code === "guardrail_blocked") {
      turn.state = "blocked";
      turn.extra.append(el("p", { class: "kc-guard blocked", role: "alert" },
        el("strong", { text: "Your message was blocked before it reached the model. " }),
        message + ". Edit it and send again."));
      return;
    }
    const what = response.status === 429 ? "Too many requests" :
      response.status >= 500 ? "Keel or the model failed" : "The request was refused";
    showError(turn, `${what} (${response.status}): ${message}`, error.code);
  }

  function showError(turn, message, code) {
    const retry = el("button", { type: "button", text: "Retry", onclick: () => {
      if (controller) return;
      turns.splice(turns.indexOf(turn), 1);
      turn.el.remove();
      generate();
    } });
    turn.extra.append(el("p", { class: "kc-error", role: "alert" },
      el("span", { text: message }), retry));
    say(message);
  }

  // -- after an answer ------------------------------------------------------------------------

  function finish(turn) {
    turn.bubble.removeAttribute("aria-busy");
    if (turn.content) renderAnswer(turn);
    else if (turn.state !== "done") turn.bubble.hidden = true;
    if (turn.finish === "content_filter") {
      turn.extra.append(el("p", { class: "kc-guard" },
        "This answer was withheld or cut short by a content filter."));
    }
    if (turn.toolRuns && turn.toolRuns.length) turn.el.insertBefore(toolRuns(turn.toolRuns), turn.bubble);
    if (turn.citations && turn.citations.length) turn.row.before(sources(turn));
    const row = turn.row;
    row.replaceChildren();
    if (turn.state === "stopped") row.append(el("span", { class: "kc-tag stopped", text: "stopped" }));
    if (turn.state === "error") row.append(el("span", { class: "kc-tag error", text: "failed" }));
    if (turn.state === "done" || turn.state === "stopped") {
      row.append(el("button", { type: "button", class: "kc-link kc-regen", text: "Regenerate",
                                "aria-label": "Regenerate this answer", onclick: () => regenerate(turn) }));
      if (feedbackOn && turn.traceId) row.append(...thumbs(turn));
    }
    if (turn.traceId && traceBase) {
      row.append(el("a", { href: traceBase + encodeURIComponent(turn.traceId), class: "kc-trace",
                           text: "view trace" }));
    }
    refreshRegenerate();
    say({ done: "Answer complete", stopped: "Stopped: the partial answer is kept",
          blocked: "Your message was blocked", error: status.textContent }[turn.state] || "");
    if (turn.afterStream) { turn.afterStream(); turn.afterStream = null; }  // guardrail labels
    form.scrollIntoView({ block: "nearest" });
  }

  function refreshRegenerate() {
    // Regenerate is offered on the last answer only: it replaces that answer, same history.
    const last = turns[turns.length - 1];
    for (const t of turns) {
      const b = t.el.querySelector(".kc-regen");
      if (b) b.hidden = t !== last;
    }
  }

  function regenerate(turn) {
    if (controller || turns[turns.length - 1] !== turn) return;
    turns.pop();
    turn.el.remove();
    generate();
  }

  // The answer as text, with [n] turned into links to its numbered sources. No HTML from the
  // model is ever interpreted; `code` spans are the only markdown rendered.
  function renderAnswer(turn) {
    const known = new Set((turn.citations || []).map((c) => String(c.index)));
    turn.id = turn.id || `a${Math.random().toString(36).slice(2, 9)}`;
    const parts = [];
    for (const piece of turn.content.split(/(\[\d+\]|`[^`\n]+`)/)) {
      const cite = /^\[(\d+)\]$/.exec(piece);
      if (cite && known.has(cite[1])) {
        parts.push(el("sup", {}, el("a", { href: `#${turn.id}-src-${cite[1]}`, text: `[${cite[1]}]`,
                                           "aria-label": `source ${cite[1]}` })));
      } else if (/^`[^`\n]+`$/.test(piece)) {
        parts.push(el("code", { text: piece.slice(1, -1) }));
      } else if (piece) {
        parts.push(document.createTextNode(piece));
      }
    }
    turn.bubble.replaceChildren(...parts);
  }

  function sources(turn) {
    const list = el("ol");
    for (const c of turn.citations) {
      const title = c.title || c.document_id || c.source || `source ${c.index}`;
      const link = /^https?:\/\//i.test(c.source || "") ?
        el("a", { href: c.source, target: "_blank", rel: "noopener noreferrer", text: title }) :
        el("span", { text: title });
      const where = c.source && !/^https?:\/\//i.test(c.source) ? ` — ${c.source}` : "";
      list.append(el("li", { id: `${turn.id}-src-${c.index}` },
        el("details", {},
          el("summary", {}, el("span", { class: "kc-num", text: `[${c.index}] ` }), link,
             el("span", { class: "kc-meta", text: where + (c.cited ? " · cited" : "") })),
          el("blockquote", { text: c.text || "" }))));
    }
    return el("section", { class: "kc-sources", "aria-label": "Sources" },
      el("h3", { text: `Sources (${turn.citations.length})` }), list);
  }

  function toolRuns(runs) {
    const list = el("ol");
    runs.forEach((run, i) => {
      let args = run.arguments;
      try { args = JSON.stringify(typeof args === "string" ? JSON.parse(args) : args, null, 2); }
      catch (e) { /* as given */ }
      list.append(el("li", {}, el("details", {},
        el("summary", { text: `Step ${i + 1}: ${run.name} — ${run.ok ? "ok" : "failed"}` +
                              (run.duration_ms != null ? ` · ${Math.round(run.duration_ms)} ms` : "") }),
        el("pre", { text: `arguments: ${args}` }),
        run.error ? el("p", { class: "kc-meta", text: `error: ${run.error}` }) : null)));
    });
    return el("details", { class: "kc-tools" },
      el("summary", { text: `Ran ${runs.length} tool step${runs.length === 1 ? "" : "s"}` }), list);
  }

  // -- guardrails -----------------------------------------------------------------------------

  // x-keel-guardrails: "name=action,..." (names only); the console endpoint adds the labels.
  function guardNotices(turn, headers) {
    const verdicts = (headers.get("x-keel-guardrails") || "").split(",").filter(Boolean)
      .map((e) => e.split("=")).filter(([, a]) => ["redact", "pseudonymize", "rewrite", "flag"].includes(a));
    const notice = headers.get("x-keel-guardrails-notice");
    if (!verdicts.length && !notice) return;
    const box = el("p", { class: "kc-guard", role: "note" });
    turn.extra.append(box);
    const fallback = verdicts.filter(([, a]) => a !== "flag")
      .map(([name, action]) => `guardrail '${name}' ${pastTense(action)} part of it`);
    const show = (changes) => {
      const text = changes.length ? changes.join("; ") : (notice || "");
      box.replaceChildren(el("strong", { text: "Your message was changed before it reached the model: " }),
                          text + ".");
      if (!changes.length && !notice) box.remove();
    };
    show(fallback);
    if (changesBase && turn.traceId) {
      // Labels come from the trace, written once the answer has ended.
      turn.afterStream = () => request(changesBase + encodeURIComponent(turn.traceId))
        .then((r) => (r.ok ? r.json() : null)).then((found) => {
          if (!found) return;
          const labelled = found.input.filter((c) => c.action !== "flag").map(describe);
          if (labelled.length) show(labelled);
          const out = found.output.filter((c) => c.action !== "flag").map(describe);
          if (out.length) {
            turn.extra.append(el("p", { class: "kc-guard", role: "note" },
              el("strong", { text: "The answer was changed by a guardrail: " }), out.join("; ") + "."));
          }
        }).catch(() => {});
    }
  }

  function describe(change) {
    const labels = Object.keys(change.labels || {});
    return labels.length ? labels.map((l) => `${l} ${pastTense(change.action)}`).join(", ") :
      `guardrail '${change.guard}' ${pastTense(change.action)} part of it`;
  }

  function pastTense(action) {
    return { redact: "redacted", pseudonymize: "pseudonymized", rewrite: "rewrote", flag: "flagged" }[action] || action;
  }

  // -- feedback -------------------------------------------------------------------------------

  function thumbs(turn) {
    const up = el("button", { type: "button", class: "kc-thumb", "aria-pressed": "false",
                              "aria-label": "Good answer", title: "Good answer", text: "▲ Good" });
    const down = el("button", { type: "button", class: "kc-thumb", "aria-pressed": "false",
                                "aria-label": "Bad answer", title: "Bad answer", text: "▼ Bad" });
    up.addEventListener("click", () => openFeedback(turn, 1, up, down));
    down.addEventListener("click", () => openFeedback(turn, -1, down, up));
    return [up, down];
  }

  function openFeedback(turn, score, pressed, other) {
    pressed.setAttribute("aria-pressed", "true");
    other.setAttribute("aria-pressed", "false");
    if (turn.feedbackForm) turn.feedbackForm.remove();
    const id = `${turn.id || "a"}-fb-${score > 0 ? "up" : "down"}`;
    const label = score > 0 ? "Comment (optional)" : "What should the answer have been? (optional correction)";
    const box = el("textarea", { id, rows: 2 });
    const note = el("span", { class: "kc-meta", role: "status" });
    const submit = el("button", { type: "button", text: "Send feedback" });
    const form_ = el("div", { class: "kc-feedback" }, el("label", { for: id, text: label }), box,
      el("div", { class: "kc-row" }, submit,
        el("button", { type: "button", class: "kc-link", text: "Cancel", onclick: () => {
          form_.remove(); pressed.setAttribute("aria-pressed", "false"); } }), note));
    submit.addEventListener("click", async () => {
      const text = box.value.trim();
      const payload = { trace_id: turn.traceId, score, scale: "thumbs" };
      if (text) payload[score > 0 ? "comment" : "correction"] = text;
      submit.disabled = true;
      note.textContent = "Saving…";
      try {
        const r = await request(`${api}/feedback`, { method: "POST",
          headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
        if (!r.ok) {
          let msg = `${r.status}`;
          try { msg = (await r.json()).error.message; } catch (e) { /* keep status */ }
          throw new Error(msg);
        }
        const saved = el("span", { class: "kc-saved kc-meta", role: "status",
                                   text: `Feedback saved (${score > 0 ? "good" : "bad"} answer${text ? ", with " + (score > 0 ? "comment" : "correction") : ""}). Thank you.` });
        form_.replaceWith(saved);
        turn.feedbackForm = saved;
      } catch (err) {
        submit.disabled = false;
        note.textContent = `Could not save feedback: ${err.message}`;
        note.className = "kc-meta kc-error-text";
      }
    });
    turn.row.after(form_);
    turn.feedbackForm = form_;
    box.focus();
  }

  showRoute();
  updateEmpty();
})();
