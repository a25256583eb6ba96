// doorkeep live view: history from GET /api/v1/events, then new rows from the server-sent events of
// GET /api/v1/events/stream. Everything shown is set with textContent (names come from visitors): no HTML
// is ever built from data.
(function () {
  "use strict";
  var table = document.getElementById("live");
  if (!table) { return; }
  var body = document.getElementById("live-rows");
  var status = document.getElementById("live-status");
  var more = document.getElementById("live-more");
  var MAX_ROWS = 500;
  var newest = 0;
  var nextBefore = null;
  var source = null;
  // The filter as the server built it from the form (door, area, person, decision, reason, kinds, since,
  // until): the history, the stream and the CSV link all use the same one, so a streamed row appears only
  // when it matches what the operator chose.
  var filters = new URLSearchParams(table.getAttribute("data-query") || "");
  var LABELS = ["Time", "Door", "Person", "Decision", "Reason", "Snapshot"];

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
    if (cls) { el.className = cls; }
    return el;
  }

  // The cardholder's photo on file (server/photos.py), beside the snapshot so the operator can compare the
  // face at the door with the person the card belongs to; only present when the person has one.
  function photoFigure(row) {
    var fig = document.createElement("figure");
    var img = document.createElement("img");
    img.src = row.photo_url;
    img.className = "thumb photo";
    img.width = 72;
    img.alt = "Photo of " + (row.person_name || "the cardholder") + " on file";
    fig.appendChild(img);
    fig.appendChild(text("figcaption", "on file"));
    return fig;
  }

  function snapshotCell(cell, row) {
    cell.textContent = "";
    var box = cell;
    if (row.photo_url) {
      cell.setAttribute("data-photo", row.photo_url);
      var pair = document.createElement("div");
      pair.className = "snapshot-pair";
      pair.appendChild(photoFigure(row));
      box = document.createElement("figure");
      pair.appendChild(box);
      cell.appendChild(pair);
    }
    if (row.snapshot === "ready" && row.snapshot_url) {
      var link = document.createElement("a");
      link.href = row.snapshot_url;
      link.target = "_blank";
      link.rel = "noopener";
      var img = document.createElement("img");
      img.src = row.snapshot_url;
      img.className = "thumb";
      img.width = 96;
      img.alt = "Snapshot at " + (row.door_name || "the door") + ", " + (row.local_time || "") + " (opens full size)";
      link.appendChild(img);
      box.appendChild(link);
    } else if (row.snapshot === "pending") {
      box.appendChild(text("span", "snapshot pending", "pending"));
    } else if (row.snapshot === "withheld") {
      box.appendChild(text("span", "withheld (no photo consent)", "hint"));
    } else {
      box.appendChild(text("span", "none", "hint"));
    }
    if (box !== cell) { box.appendChild(text("figcaption", "at the door")); }
  }

  function decisionText(row) {
    if (row.type === "access") { return row.decision; }
    if (row.type === "visitor_arrived") { return "visitor arrived"; }
    var what = row.type.replace(/_/g, " ");
    return row.kind === "alarm" ? "alarm: " + what : what;  // said in words, not by colour alone
  }

  function timeCell(row) {
    var td = document.createElement("td");
    var t = document.createElement("time");
    t.setAttribute("datetime", row.ts);
    t.textContent = (row.local_date ? row.local_date + " " : "") + row.local_time + (row.zone ? " " + row.zone : "");
    td.appendChild(t);
    td.title = row.ts + " (UTC, by the device's clock)";
    return td;
  }

  function reasonCell(row) {
    var td = document.createElement("td");
    if (row.reason) { td.title = row.reason; }  // the code on hover too (it is also shown beside the words)
    var box = document.createElement("span");  // one grid cell when the row reflows on a phone
    td.appendChild(box);
    box.appendChild(text("span", reasonText(row)));
    if (row.reason && row.reason_label && row.reason_label.toLowerCase() !== row.reason) {
      box.appendChild(document.createTextNode(" "));
      box.appendChild(text("code", row.reason, "reason-code"));
    }
    if (row.grant_url) {  // a passage or a floor chosen: the badge whose grant it used
      box.appendChild(document.createTextNode(" "));
      var badge = document.createElement("a");
      badge.href = row.grant_url;
      badge.className = "grant-link";
      badge.textContent = "Badge";
      badge.setAttribute("aria-label", "The badge this " + row.type.replace(/_/g, " ") + " followed");
      box.appendChild(badge);
    }
    if (row.why_url) {
      box.appendChild(document.createTextNode(" "));
      var why = document.createElement("a");
      why.href = row.why_url;
      why.className = "why-link";
      why.textContent = "Why?";
      why.setAttribute("aria-label", "Why was " + (row.person_name || "this badge") + " refused at " +
                       (row.door_name || "the door") + "?");
      box.appendChild(why);
    }
    return td;
  }

  function reasonText(row) {
    if (row.type === "visitor_arrived") {
      return "host: " + ((row.detail && row.detail.host_name) || "—") + " notified";
    }
    if (row.type === "floor_chosen") { return "to " + (row.floor || "—"); }
    var words = row.reason_label || row.reason;
    // A lift's badge: the floors it enabled, and the floor asked for before the badge (destination dispatch).
    if (row.floors && row.floors.length) { words = (words ? words + ": " : "") + "floors " + row.floors.join(", "); }
    if (row.type === "access" && row.floor) { words = (words ? words + " " : "") + "(asked for " + row.floor + ")"; }
    return words;
  }

  function render(row) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", row.id);
    tr.setAttribute("data-cursor", row.cursor);
    tr.setAttribute("data-kind", row.kind || "system");
    tr.appendChild(timeCell(row));
    tr.appendChild(text("td", row.door_name));
    tr.appendChild(text("td", row.person_name));
    var decision = text("td", decisionText(row), "decision decision-" + (row.decision || row.kind || row.type));
    tr.appendChild(decision);
    tr.appendChild(reasonCell(row));
    var snap = document.createElement("td");
    snap.className = "snapshot";
    snapshotCell(snap, row);
    tr.appendChild(snap);
    for (var i = 0; i < tr.cells.length; i++) { tr.cells[i].setAttribute("data-label", LABELS[i]); }
    return tr;
  }

  function findRow(id) {
    var rows = body.querySelectorAll("tr[data-id]");
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute("data-id") === id) { return rows[i]; }
    }
    return null;
  }

  function addNew(row) {
    var old = findRow(row.id);
    var tr = render(row);
    if (old) { body.replaceChild(tr, old); } else { body.insertBefore(tr, body.firstChild); }
    newest = Math.max(newest, row.cursor);
    while (body.rows.length > MAX_ROWS) { body.deleteRow(body.rows.length - 1); }
  }

  function loadPage(before) {
    var params = new URLSearchParams(filters);
    params.set("limit", "50");
    if (before) { params.set("before", before); }
    return window.doorkeep.api("/api/v1/events?" + params.toString()).then(function (r) {
      if (!r.ok) { throw new Error("the event history did not load (" + r.status + ")"); }
      return r.json();
    }).then(function (page) {
      page.events.forEach(function (row) {
        if (!findRow(row.id)) { body.appendChild(render(row)); }
        newest = Math.max(newest, row.cursor);
      });
      nextBefore = page.next_before;
      more.hidden = !nextBefore;
    });
  }

  function connect() {
    var params = new URLSearchParams(filters);
    params.set("after", String(newest));
    source = new EventSource("/api/v1/events/stream?" + params.toString());
    source.onopen = function () { status.textContent = "Live: new events appear at the top."; };
    source.addEventListener("row", function (e) { addNew(JSON.parse(e.data)); });
    source.addEventListener("snapshot", function (e) {
      var data = JSON.parse(e.data);
      var tr = findRow(data.id);
      if (tr) {
        var cell = tr.querySelector("td.snapshot");
        var row = { snapshot: data.snapshot, snapshot_url: data.snapshot_url,
                    door_name: tr.cells[1].textContent, local_time: tr.cells[0].textContent,
                    photo_url: cell.getAttribute("data-photo"), person_name: tr.cells[2].textContent };
        snapshotCell(cell, row);
      }
    });
    source.addEventListener("end", function () {
      source.close();
      status.textContent = "The live feed was interrupted; reconnecting…";
      window.setTimeout(connect, 2000);
    });
    source.onerror = function () { status.textContent = "The live feed was interrupted; reconnecting…"; };
  }

  more.addEventListener("click", function () { if (nextBefore) { loadPage(nextBefore); } });
  loadPage(null).then(connect, function (err) { status.textContent = err.message; connect(); });
})();
