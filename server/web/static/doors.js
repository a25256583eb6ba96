// doorkeep security desk: the doors board redraws each row in place every 2 s from GET /api/v1/board (no
// reload, so focus and scroll stay where they are). Plain JavaScript, no build step; loaded by doors.html only.
(function () {
  "use strict";
  var PERIOD_MS = 2000;
  var board = document.querySelector("table[data-board]");
  if (!board) { return; }

  function text(row, field, value) {
    var el = row.querySelector('[data-field="' + field + '"]');
    if (el && el.textContent !== value) { el.textContent = value; }
    return el;
  }

  function alarmsText(d) {
    if (!d.alarms) { return "none"; }
    return d.alarms + (d.alarms === 1 ? " open alarm" : " open alarms");
  }

  function apply(data) {
    data.doors.forEach(function (d) {
      var row = board.querySelector('tr[data-door="' + d.id + '"]');
      if (!row) { return; }
      var state = text(row, "state", d.state_label);
      state.className = "state state-" + d.state;
      row.querySelector('[data-field="lockdown"]').hidden = !d.lockdown;
      row.querySelector('[data-field="tamper"]').hidden = !d.tamper;
      var ov = row.querySelector('[data-field="override"]');
      ov.hidden = !d.override;
      if (d.override) {
        text(row, "override", (d.override.kind === "unlock" ? "unlocked until " : "locked until ") +
          d.override.until_text);
      }
      text(row, "device_status", d.device_status);
      text(row, "alarms", alarmsText(d));
      var prio = row.querySelector('[data-field="alarm_priority"]');
      prio.hidden = !d.alarm_priority;
      prio.textContent = d.alarm_priority ? d.alarm_priority + " priority" : "";
      prio.className = "priority priority-" + (d.alarm_priority || "none");
    });
  }

  function tick() {
    window.doorkeep.api(board.getAttribute("data-board"))
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) { if (data) { apply(data); } })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { window.setTimeout(tick, PERIOD_MS); });
  }
  window.setTimeout(tick, PERIOD_MS);
})();
