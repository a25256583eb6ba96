// Type-ahead for person pickers (the visitor's host): an <input list=...> whose <datalist> is refilled from
// data-picker (/api/v1/people/search) as the receptionist types. Without scripting the page's own suggestions
// remain, and the server accepts an id or an exact name either way.
(function () {
  "use strict";
  var DELAY_MS = 150;

  function attach(input) {
    var list = document.getElementById(input.getAttribute("list"));
    if (!list) return;
    var timer = null;
    var asked = "";
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = input.value.trim();
        if (q === asked || q.length < 2) return;
        asked = q;
        fetch(input.dataset.picker + "?limit=10&q=" + encodeURIComponent(q), {credentials: "same-origin"})
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (body) {
            if (!body || asked !== q) return;  // a newer keystroke won
            list.textContent = "";
            body.people.forEach(function (p) {
              var option = document.createElement("option");
              option.value = p.id;
              option.label = p.name;
              option.textContent = p.name;
              list.appendChild(option);
            });
          })
          .catch(function () { /* keep the suggestions already there */ });
      }, DELAY_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-picker]").forEach(attach);
  });
})();
