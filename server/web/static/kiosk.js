// The kiosk's camera (templates/kiosk.html): scanning the pass and taking the visitor's photo, both with the
// tablet's camera through getUserMedia. A scan sends one JPEG frame at a time to POST /kiosk/scan (decoded on
// the server with OpenCV) until a code is read, then submits the code as if it had been typed (to check in, or
// to check out). A photo is one frame, put in the hidden "photo" field as a JPEG data URL; nothing is sent
// before "Check in".
(function () {
  "use strict";
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function camera(video, facing) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("no camera here");
    const stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: facing, width: {ideal: 1280}}, audio: false});
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    return stream;
  }
  function stopCamera(video) {
    const stream = video.srcObject;
    if (stream) stream.getTracks().forEach(function (t) { t.stop(); });
    video.srcObject = null;
    video.hidden = true;
  }
  function frame(video, type, quality) {
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    return new Promise(function (resolve) { canvas.toBlob(resolve, type, quality); });
  }

  // Two scanners on the first page: checking in ("scan-…", the pass form) and leaving ("scan-out-…", the
  // check-out form); each fills its own form's code and submits it.
  function scanner(prefix, formId) {
    const scan = document.getElementById(prefix + "-start");
    if (!scan) return;
    const video = document.getElementById(prefix + "-video");
    const status = document.getElementById(prefix + "-status");
    const form = document.getElementById(formId);
    let scanning = false;
    scan.addEventListener("click", async function () {
      if (scanning) return;
      try {
        await camera(video, "user");
      } catch (err) {
        status.textContent = "The camera is not available: type the code instead.";
        return;
      }
      scanning = true;
      status.textContent = "Looking for your QR code…";
      while (scanning) {
        const blob = await frame(video, "image/jpeg", 0.85);
        try {
          const r = await fetch("/kiosk/scan", {method: "POST", body: blob, credentials: "same-origin",
                                                headers: {"Content-Type": "image/jpeg", "X-CSRF-Token": csrf}});
          if (r.ok) {
            const body = await r.json();
            scanning = false;
            stopCamera(video);
            status.textContent = "Pass read.";
            form.elements.code.value = body.code;
            form.submit();
            return;
          }
        } catch (err) { /* the network blinked: try the next frame */ }
        await new Promise(function (resolve) { setTimeout(resolve, 400); });
      }
    });
  }
  scanner("scan", "pass-form");
  scanner("scan-out", "checkout-form");

  const take = document.getElementById("photo-take");
  if (take) {
    const video = document.getElementById("photo-video");
    const preview = document.getElementById("photo-preview");
    const status = document.getElementById("photo-status");
    const field = document.getElementById("photo");
    const consent = document.getElementById("photo-consent");
    let live = false;
    consent.addEventListener("change", function () {
      if (!consent.checked) {  // declined after all: nothing is kept
        field.value = "";
        preview.hidden = true;
        stopCamera(video);
        live = false;
        take.textContent = "Take my photo";
      }
    });
    take.addEventListener("click", async function () {
      if (!consent.checked) {
        status.textContent = "Tick the photo box first (or check in without a photo).";
        return;
      }
      if (!live) {
        try {
          await camera(video, "user");
        } catch (err) {
          status.textContent = "The camera is not available: you can check in without a photo.";
          return;
        }
        live = true;
        preview.hidden = true;
        take.textContent = "Capture";
        status.textContent = "Look at the camera, then press Capture.";
        return;
      }
      const blob = await frame(video, "image/jpeg", 0.85);
      const reader = new FileReader();
      reader.onload = function () {
        field.value = reader.result;
        preview.src = reader.result;
        preview.hidden = false;
        stopCamera(video);
        live = false;
        take.textContent = "Take it again";
        status.textContent = "Photo taken.";
      };
      reader.readAsDataURL(blob);
    });
  }
})();
