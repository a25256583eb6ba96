// doorkeep security desk: a little plain JavaScript, no build step.
// doorkeep.api(path, options) calls the desk API with the session's CSRF token on state-changing requests,
// so later pages (visitors, alarms, doors) need no token plumbing of their own.
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : null;
  function api(path, options) {
    options = options || {};
    var method = (options.method || "GET").toUpperCase();
    var headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    if (csrf && ["GET", "HEAD", "OPTIONS"].indexOf(method) < 0) { headers.set("X-CSRF-Token", csrf); }
    if (options.json !== undefined) {
      headers.set("Content-Type", "application/json");
      options.body = JSON.stringify(options.json);
    }
    return fetch(path, { method: method, headers: headers, body: options.body, credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname)); }
        return r;
      });
  }
  window.doorkeep = { api: api };
})();
