// doorkeep security desk, Alarms page: the "select every alarm in this list" boxes (shown only with scripting;
// without it the "all matching" buttons do the same on the server). Plain JavaScript, no build step.
(function () {
  "use strict";
  Array.prototype.forEach.call(document.querySelectorAll("[data-select-all]"), function (all) {
    var table = all.closest("table");
    var boxes = table.querySelectorAll("[data-select]");
    all.hidden = false;
    all.addEventListener("change", function () {
      Array.prototype.forEach.call(boxes, function (b) { b.checked = all.checked; });
    });
  });
})();

// Keyboard shortcuts of the alarm console (listed on the page under "Keyboard shortcuts", and in docs/desk.md):
// j/k or the arrows move between alarm rows, x selects, a acknowledges, r opens the resolution note, Ctrl+Enter
// in a note resolves, Esc leaves a note or closes the help, ? shows the help. A key never acts while the
// operator types in a field or holds Ctrl, Alt or Meta. The row moved to takes the focus (so a screen reader
// reads it), and survives the reload after an action, so the operator can carry on down the list.
(function () {
  "use strict";
  var KEY = "doorkeep.alarms.row";  // the alarm row to return to after this tab's own action reloads the page
  var help = document.getElementById("shortcuts");
  var announce = document.getElementById("shortcut-announce");
  var bulk = document.getElementById("bulk");
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr[data-alarm]"));
  if (!help) { return; }

  function say(text) { if (announce) { announce.textContent = text; } }

  function current() {
    var el = document.activeElement;
    var row = el && el.closest ? el.closest("tr[data-alarm]") : null;
    return row || rows.filter(function (r) { return r.tabIndex === 0; })[0] || null;
  }

  function focusRow(row) {
    rows.forEach(function (r) { r.tabIndex = r === row ? 0 : -1; r.classList.toggle("is-current", r === row); });
    row.focus();
    row.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    if (!rows.length) { say("No alarm to move to."); return; }
    var at = rows.indexOf(current());
    var next = at < 0 ? (step > 0 ? 0 : rows.length - 1) : Math.min(rows.length - 1, Math.max(0, at + step));
    focusRow(rows[next]);
  }

  function selected() { return document.querySelectorAll("[data-select]:checked"); }

  function remember(row) {
    try { window.sessionStorage.setItem(KEY, row ? row.getAttribute("data-alarm") : ""); } catch (e) { /* ok */ }
  }

  function submit(form, button) {
    remember(current());
    if (form.requestSubmit) { form.requestSubmit(button || undefined); } else { form.submit(); }
  }

  function acknowledge() {
    var row = current();
    if (selected().length && bulk) {
      submit(bulk, bulk.querySelector('button[value="acknowledge:selected"]'));
      return;
    }
    if (!row) { say("Move to an alarm first (j or the down arrow)."); return; }
    var button = row.querySelector("[data-acknowledge]");
    if (!button) { say("This alarm is already acknowledged."); return; }
    submit(button.form, button);
  }

  function openNote() {
    if (selected().length && bulk) {
      var note = document.getElementById("bulk-note");
      note.focus();
      say("Note for resolving the " + selected().length + " selected alarms: Ctrl+Enter resolves them.");
      return;
    }
    var row = current();
    if (!row) { say("Move to an alarm first (j or the down arrow)."); return; }
    row.querySelector("[data-note]").focus();
    say("Resolution note: Ctrl+Enter resolves, Esc goes back to the alarm.");
  }

  function toggleHelp() {
    help.open = !help.open;
    if (help.open) { help.querySelector("summary").focus(); }
  }

  function typing(el) {
    if (!el) { return false; }
    var tag = el.tagName;
    return tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable ||
      (tag === "INPUT" && ["checkbox", "radio", "button", "submit", "reset"].indexOf(el.type) < 0);
  }

  document.addEventListener("keydown", function (e) {
    var el = document.activeElement;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && el && el.tagName === "TEXTAREA") {
      if (el.id === "bulk-note" && bulk) {
        e.preventDefault();
        submit(bulk, bulk.querySelector('button[value="resolve:selected"]'));
      } else if (el.hasAttribute("data-note")) {
        e.preventDefault();
        submit(el.form, el.form.querySelector('button[type="submit"]'));
      }
      return;
    }
    if (e.key === "Escape") {
      if (typing(el)) {
        var row = el.closest("tr[data-alarm]");
        if (row) { focusRow(row); } else { el.blur(); }
      } else if (help.open) {
        help.open = false;
        help.querySelector("summary").focus();
      }
      return;
    }
    if (e.defaultPrevented || e.ctrlKey || e.altKey || e.metaKey || typing(el)) { return; }
    var onRow = !!(el && el.closest && el.closest("tr[data-alarm]"));
    switch (e.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "ArrowDown": if (!onRow) { return; } move(1); break;  // elsewhere the arrows scroll, as usual
      case "ArrowUp": if (!onRow) { return; } move(-1); break;
      case "x": {
        var row2 = current();
        if (!row2) { say("Move to an alarm first (j or the down arrow)."); break; }
        var box = row2.querySelector("[data-select]");
        box.checked = !box.checked;
        say((box.checked ? "Selected. " : "Not selected. ") + selected().length + " selected.");
        break;
      }
      case "a": acknowledge(); break;
      case "r": openNote(); break;
      case "?": toggleHelp(); break;
      default: return;
    }
    e.preventDefault();
  });

  // Back to the row the operator was on before their own action reloaded the page.
  var back = null;
  try { back = window.sessionStorage.getItem(KEY); window.sessionStorage.removeItem(KEY); } catch (e) { /* ok */ }
  var again = back ? rows.filter(function (r) { return r.getAttribute("data-alarm") === back; })[0] : null;
  rows.forEach(function (r) { r.tabIndex = -1; });
  if (again) { focusRow(again); } else if (rows.length) { rows[0].tabIndex = 0; }
})();
