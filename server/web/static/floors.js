// doorkeep security desk, floor view: follows the live stream (GET /api/v1/events/stream, as the Live page)
// and, on every new event, snapshot or alarm change, fetches GET /api/v1/floors and redraws the cards in place
// (no reload: focus and scroll stay). A slow poll catches a state the edge reported without an event. Plain
// JavaScript, no build step; every text is set with textContent (names come from the site and visitors).
(function () {
  "use strict";
  var root = document.getElementById("floors");
  if (!root) { return; }
  var status = document.getElementById("floors-status");
  var path = root.getAttribute("data-floors");
  var POLL_MS = 5000;      // the backstop: a door state changed without an event
  var SETTLE_MS = 150;     // events arrive in bursts (a badge, the door opening): one fetch for the burst
  var MIN_GAP_MS = 1000;   // and at most one a second on a busy site, however fast events come
  var last = 0;
  var asked = 0;           // fetches started; only the newest one's answer is drawn (answers may cross)
  var pending = null;
  var source = null;

  function field(card, name) { return card.querySelector('[data-field="' + name + '"]'); }

  function setText(el, value) {
    if (el && el.textContent !== value) { el.textContent = value; }
  }

  function alarmsText(n) {
    return n ? n + (n === 1 ? " open alarm" : " open alarms") : "no open alarm";
  }

  function snapshot(card, d) {
    var box = field(card, "snapshot");
    var event = d.snapshot ? d.snapshot.event : "";
    if (box.getAttribute("data-event") === event) { return; }
    box.setAttribute("data-event", event);
    box.textContent = "";
    if (!d.snapshot) {
      var none = document.createElement("span");
      none.className = "hint";
      none.textContent = "No snapshot yet";
      box.appendChild(none);
      return;
    }
    var link = document.createElement("a");
    link.href = d.snapshot.url;
    link.target = "_blank";
    link.rel = "noopener";
    var img = document.createElement("img");
    img.className = "thumb";
    img.width = 160;
    img.src = d.snapshot.url;
    img.alt = "Snapshot at " + d.name + ", " + d.snapshot.when + ": " + d.snapshot.text + " (opens full size)";
    link.appendChild(img);
    box.appendChild(link);
  }

  function door(section, d) {
    // A lift has a card under each floor it serves: each section's own card is redrawn.
    var card = section.querySelector('li[data-door="' + d.id + '"]');
    if (!card) { return false; }
    card.setAttribute("data-state", d.state);
    var state = field(card, "state");
    setText(state, d.state_label);
    state.className = "state state-" + d.state;
    field(card, "tamper").hidden = !d.tamper;
    var ov = field(card, "override");
    ov.hidden = !d.override_text;
    setText(ov, d.override_text || "");
    var dev = field(card, "device_status");
    dev.hidden = d.device_status === "online";
    setText(dev, "device " + d.device_status);
    setText(field(card, "alarms"), alarmsText(d.alarms));
    var prio = field(card, "alarm_priority");
    prio.hidden = !d.alarm_priority;
    setText(prio, d.alarm_priority ? d.alarm_priority + " priority" : "");
    prio.className = "priority priority-" + (d.alarm_priority || "none");
    setText(field(card, "last_event"), d.last_event ? d.last_event.text : "none yet");
    var when = field(card, "last_when");
    when.hidden = !d.last_event;
    if (d.last_event) {
      when.setAttribute("datetime", d.last_event.ts);
      setText(when, d.last_event.when);
    }
    snapshot(card, d);
    return true;
  }

  function apply(data) {
    var known = true;
    data.areas.forEach(function (a) {
      var section = root.querySelector('section[data-area="' + a.id + '"]');
      if (!section) { known = false; return; }
      field(section, "lockdown").hidden = !a.lockdown;
      setText(field(section, "area_alarms"), alarmsText(a.alarms));
      a.doors.forEach(function (d) { known = door(section, d) && known; });
    });
    if (!known) { status.textContent = "The site's doors changed: reload the page to see them all."; }
    root.setAttribute("data-updated", String(Number(root.getAttribute("data-updated") || "0") + 1));
  }

  function refresh(why) {
    pending = null;
    last = Date.now();
    if (why === "stream") {  // how many redraws the stream asked for: a test tells them from the poll's
      root.setAttribute("data-stream-refreshes", String(Number(root.getAttribute("data-stream-refreshes") || "0") + 1));
    }
    var mine = ++asked;
    return window.doorkeep.api(path).then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data && mine === asked) { apply(data); } })
      .catch(function () { /* the next event or poll tries again */ });
  }

  function soon() {
    if (pending !== null) { return; }
    var wait = Math.max(SETTLE_MS, last + MIN_GAP_MS - Date.now());
    pending = window.setTimeout(function () { refresh("stream"); }, wait);
  }

  function poll() {
    refresh("poll").then(function () { window.setTimeout(poll, POLL_MS); });
  }

  function connect() {
    // Every event row, a snapshot that landed late, a change of the alarms: each can change a card.
    source = new EventSource("/api/v1/events/stream");
    source.onopen = function () {
      root.setAttribute("data-live", "open");
      status.textContent = "Live: the cards update as events arrive.";
      soon();  // anything that happened while the stream was down
    };
    source.onerror = function () {
      root.setAttribute("data-live", "reconnecting");
      status.textContent = "The live feed was interrupted; reconnecting…";
    };
    ["row", "snapshot", "alarms"].forEach(function (kind) { source.addEventListener(kind, soon); });
    source.addEventListener("end", function () {
      source.close();
      root.setAttribute("data-live", "reconnecting");
      status.textContent = "The live feed was interrupted; reconnecting…";
      window.setTimeout(connect, 2000);
    });
  }

  if (window.EventSource) { connect(); } else { status.textContent = "Updating every few seconds."; }
  window.setTimeout(poll, POLL_MS);
})();
