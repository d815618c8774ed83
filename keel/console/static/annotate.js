// Annotation: keyboard shortcuts over the item panel. Every shortcut has a visible control
// (a button or link with its key shown), so the page works by Tab and Enter too, and without
// this script at all (the form posts and the server redirects to the next item).
"use strict";

(function () {
  function panel() { return document.getElementById("annotate-item"); }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "SELECT" ||
      (target.tagName === "INPUT" && target.type !== "checkbox" && target.type !== "radio") ||
      target.isContentEditable);
  }

  function press(selector) {
    const el = panel() && panel().querySelector(selector);
    if (el) { el.click(); return true; }
    return false;
  }

  function toggleHelp() {
    const help = document.getElementById("annotate-help");
    if (help) help.hidden = !help.hidden;
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.metaKey) return;
    const target = event.target;
    if (typing(target)) {
      if (event.key === "Escape") { target.blur(); event.preventDefault(); }
      else if (event.key === "Enter" && event.ctrlKey && target.id === "ideal") {
        press(".annotate-ideal-only"); event.preventDefault();
      }
      return;
    }
    if (event.ctrlKey) return;
    const key = event.key;
    let done = false;
    if (/^[1-5pf]$/.test(key)) done = press('button[data-key="' + key + '"]');
    else if (key === "n" || key === "j") done = press('a[data-key="n"]');
    else if (key === "k") done = press('a[data-key="k"]');
    else if (key === "i" || key === "c") {
      const box = document.getElementById(key === "i" ? "ideal" : "comment");
      if (box) { box.focus(); done = true; }
    } else if (key === "?") { toggleHelp(); done = true; }
    if (done) event.preventDefault();
  });

  // A refused answer (400: no grade and no new ideal) comes back as the same item with the
  // reason; htmx does not swap error responses unless told to.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.xhr.status === 400 && event.detail.target && event.detail.target.id === "annotate-item") {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // After a save swaps in the next item, keep the keyboard's place on the new item.
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "annotate-item") {
      const alert = document.querySelector("#annotate-item [role=alert]");
      const heading = document.getElementById("item-h");
      if (!alert && heading) heading.focus();
    }
  });
})();
