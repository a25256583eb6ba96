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
