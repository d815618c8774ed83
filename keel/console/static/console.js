// Keel console: shared behaviour. htmx requests already carry HX-Request, which keel.api.auth
// accepts with the console cookie; fetch() calls must send X-Keel-Console themselves.
"use strict";

window.keel = window.keel || {};

/** fetch() with the console's cookie counted by the server (see keel/api/auth.py). */
keel.fetch = function (url, options) {
  options = options || {};
  options.headers = Object.assign({ "X-Keel-Console": "1" }, options.headers || {});
  options.credentials = "same-origin";
  return fetch(url, options);
};
