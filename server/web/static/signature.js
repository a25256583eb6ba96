// The kiosk's signature box (templates/kiosk.html, step "agree"): strokes drawn with a finger, a pen or a mouse
// on a <canvas>; "I accept: use my signature" sends it as a PNG data URL in the hidden "signature" field. An
// empty box is not sent: the visitor is asked to sign (the server refuses a blank PNG too).
(function () {
  "use strict";
  const canvas = document.getElementById("signature-pad");
  const form = document.getElementById("agree-form");
  if (!canvas || !form) return;
  const field = document.getElementById("signature");
  const status = document.getElementById("signature-status");
  const ctx = canvas.getContext("2d");
  const ink = getComputedStyle(document.body).getPropertyValue("--ink").trim() || "#0b0c0c";
  let drawing = false;
  let drawn = false;

  function at(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  }
  canvas.addEventListener("pointerdown", function (event) {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    const [x, y] = at(event);
    ctx.lineWidth = 3;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = ink;
    ctx.beginPath();
    ctx.moveTo(x, y);
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!drawing) return;
    const [x, y] = at(event);
    ctx.lineTo(x, y);
    ctx.stroke();
    drawn = true;
    event.preventDefault();
  });
  function stop() { drawing = false; }
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  document.getElementById("signature-clear").addEventListener("click", function () {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    drawn = false;
    field.value = "";
    status.textContent = "Cleared.";
  });
  form.addEventListener("submit", function (event) {
    const method = event.submitter ? event.submitter.value : "";
    if (method !== "drawn") return;
    if (!drawn) {
      event.preventDefault();
      status.textContent = "Sign in the box first, or type your name below.";
      return;
    }
    field.value = canvas.toDataURL("image/png");
  });
})();
