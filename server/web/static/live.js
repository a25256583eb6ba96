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
  var filters = new URLSearchParams();
  ["door", "person", "decision"].forEach(function (k) {
    var v = table.getAttribute("data-" + k);
    if (v) { filters.set(k, v); }
  });

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    el.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
    if (cls) { el.className = cls; }
    return el;
  }

  function snapshotCell(cell, row) {
    cell.textContent = "";
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
      cell.appendChild(link);
    } else if (row.snapshot === "pending") {
      cell.appendChild(text("span", "snapshot pending", "pending"));
    } else if (row.snapshot === "withheld") {
      cell.appendChild(text("span", "withheld (no photo consent)", "hint"));
    } else {
      cell.appendChild(text("span", "none", "hint"));
    }
  }

  function decisionText(row) {
    if (row.type === "access") { return row.decision; }
    if (row.type === "visitor_arrived") { return "visitor arrived"; }
    return row.type.replace(/_/g, " ");
  }

  function reasonText(row) {
    if (row.type === "visitor_arrived") {
      return "host: " + ((row.detail && row.detail.host_name) || "—") + " notified";
    }
    return row.reason_label || row.reason;
  }

  function render(row) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", row.id);
    tr.setAttribute("data-cursor", row.cursor);
    var time = text("td", row.local_time);
    time.title = row.ts;
    tr.appendChild(time);
    tr.appendChild(text("td", row.door_name));
    tr.appendChild(text("td", row.person_name));
    var decision = text("td", decisionText(row), "decision decision-" + (row.decision || row.type));
    tr.appendChild(decision);
    var why = text("td", reasonText(row));
    if (row.reason) { why.title = row.reason; }
    tr.appendChild(why);
    var snap = document.createElement("td");
    snap.className = "snapshot";
    snapshotCell(snap, row);
    tr.appendChild(snap);
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
                    door_name: tr.cells[1].textContent, local_time: tr.cells[0].textContent };
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
