// doorkeep security desk: the doors board and alarms pages refresh themselves; the muster page prints.
// Plain JavaScript, no build step, loaded only by those pages (templates/doors.html, alarms.html, muster.html).
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function poll(path, apply) {
    function tick() {
      window.doorkeep.api(path).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { apply(data); } })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { window.setTimeout(tick, PERIOD_MS); });
    }
    window.setTimeout(tick, PERIOD_MS);
  }

  // Doors board: redraw each row's state in place (no reload, so focus and scroll stay where they are).
  var board = document.querySelector("table[data-board]");
  if (board) {
    poll(board.getAttribute("data-board"), function (data) {
      data.doors.forEach(function (d) {
        var row = board.querySelector('tr[data-door="' + d.id + '"]');
        if (!row) { return; }
        var state = row.querySelector('[data-field="state"]');
        if (state.textContent !== d.state) {
          state.textContent = d.state;
          state.className = "state state-" + d.state;
        }
        row.querySelector('[data-field="lockdown"]').hidden = !d.lockdown;
        row.querySelector('[data-field="device_status"]').textContent = d.device_status;
        row.querySelector('[data-field="alarms"]').textContent = String(d.alarms);
      });
    });
  }

  // Alarms: reload when the open alarms change, unless the operator is typing a note.
  var alarms = document.querySelector("[data-refresh][data-fingerprint]");
  if (alarms) {
    poll(alarms.getAttribute("data-refresh"), function (data) {
      var now = data.alarms.map(function (a) { return a.id + ":" + a.state + ":" + a.occurrences; }).join(",");
      if (now === alarms.getAttribute("data-fingerprint")) { return; }
      var typing = Array.prototype.some.call(document.querySelectorAll("textarea"), function (t) {
        return t.value.trim() !== "" || t === document.activeElement;
      });
      if (!typing) { window.location.reload(); return; }
      alarms.textContent = "The alarms changed: reload the page when your note is saved.";
      alarms.className = "notice";
      alarms.setAttribute("role", "status");
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-print]"), function (b) {
    b.addEventListener("click", function () { window.print(); });
  });
})();
