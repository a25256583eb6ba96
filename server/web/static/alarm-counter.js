// doorkeep security desk: the alarm counter in every page's header, kept current by the live stream
// (GET /api/v1/events/stream?only=alarms, "alarms" messages), a sound on a new high-priority alarm and a
// second, distinct one on an escalation (unless the operator turned the sound off), and a browser
// notification when the operator allowed them. Plain JavaScript, no build step; text set with textContent.
(function () {
  "use strict";
  var box = document.getElementById("alarm-counter");
  if (!box || !window.EventSource) { return; }
  var link = document.getElementById("alarm-count");
  var announce = document.getElementById("alarm-announce");
  var soundOn = box.getAttribute("data-sound") === "on";
  var KEY = "doorkeep.alarms.heard";  // per tab: what this operator already heard, so a page change never re-rings
  var source = null;

  function loadHeard() {
    try { return JSON.parse(window.sessionStorage.getItem(KEY) || "null"); } catch (e) { return null; }
  }
  function saveHeard(h) {
    try { window.sessionStorage.setItem(KEY, JSON.stringify(h)); } catch (e) { /* private mode: ring again */ }
  }
  var heard = loadHeard();

  function play(kind) {
    if (!soundOn) { return; }
    var audio = new Audio("/sounds/" + kind + ".wav");
    var done = audio.play();
    if (done && done.catch) {
      done.catch(function () {  // the browser wants a click on the page before it plays a sound
        announce.textContent = "New alarm: the sound is blocked by the browser until you click on the page.";
      });
    }
  }

  function notify(title, body, tag) {
    if (!("Notification" in window) || window.Notification.permission !== "granted") { return; }
    try {
      var n = new window.Notification(title, { body: body, tag: tag, requireInteraction: true });
      n.onclick = function () { window.focus(); window.location.assign("/alarms"); };
    } catch (e) { /* some browsers allow notifications from a service worker only */ }
  }

  function fresh(ids, known) {
    return ids.filter(function (id) { return !known || known.indexOf(id) < 0; });
  }

  function apply(s) {
    var unacked = s.unacknowledged_by_priority || {};
    ["high", "medium", "low"].forEach(function (p) {
      var pill = link.querySelector('[data-priority="' + p + '"]');
      var n = unacked[p] || 0;
      pill.querySelector("[data-count]").textContent = String(n);
      pill.classList.toggle("ac-zero", n === 0);
    });
    link.querySelector('[data-field="unacknowledged"]').textContent = String(s.unacknowledged);
    link.querySelector('[data-field="open"]').textContent = String(s.open);
    var esc = link.querySelector('[data-field="escalated"]');
    esc.textContent = s.escalated + " escalated";
    esc.hidden = !s.escalated;
    link.classList.toggle("has-high", (unacked.high || 0) > 0);

    var newHigh = fresh(s.ring || [], heard && heard.ring);
    var newEsc = fresh(s.escalated_ids || [], heard && heard.esc);
    if (newEsc.length) {
      play("escalation");
      announce.textContent = newEsc.length + " alarm(s) escalated: not acknowledged in time.";
      notify("doorkeep: alarm escalated", newEsc.length + " alarm(s) not acknowledged in time", "esc-" + newEsc[0]);
    } else if (newHigh.length) {
      play("alarm");
      announce.textContent = "New high-priority alarm: " + (unacked.high || 0) + " high unacknowledged.";
      notify("doorkeep: high-priority alarm", (unacked.high || 0) + " high-priority alarm(s) to acknowledge",
             "high-" + newHigh[0]);
    }
    heard = { ring: s.ring || [], esc: s.escalated_ids || [] };
    saveHeard(heard);
    box.setAttribute("data-rang", String(Number(box.getAttribute("data-rang") || "0") + (newEsc.length || newHigh.length ? 1 : 0)));
  }

  function refresh() {
    window.doorkeep.api("/api/v1/alarms/summary").then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) { if (s) { apply(s); } }).catch(function () { /* the stream brings the next one */ });
  }

  function connect() {
    source = new EventSource("/api/v1/events/stream?only=alarms");
    source.onopen = function () {  // anything raised while the page loaded or the stream was down
      box.setAttribute("data-live", "open");
      refresh();
    };
    source.onerror = function () { box.setAttribute("data-live", "reconnecting"); };
    source.addEventListener("alarms", function (e) { apply(JSON.parse(e.data)); });
    source.addEventListener("end", function () { source.close(); window.setTimeout(connect, 2000); });
  }

  try { apply(JSON.parse(box.getAttribute("data-summary"))); } catch (e) { /* the stream corrects it */ }
  connect();

  // The Alarms page offers to allow notifications (a browser asks only after a click).
  var allow = document.getElementById("allow-notifications");
  if (allow && "Notification" in window && window.Notification.permission === "default") {
    allow.hidden = false;
    allow.addEventListener("click", function () {
      window.Notification.requestPermission().then(function () { allow.hidden = true; });
    });
  }
})();
