// The longvos page: upload a video, mark objects on its first frame, segment, watch and download.
// Marks are kept here in video pixels; the server turns them into a mask with the same GrabCut code as
// `longvos segment --box` and sends back the first frame with that mask drawn over it.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const context = canvas.getContext("2d");
const POLL_MS = 400;
const MIN_BOX_SIDE = 4; // as the server's GrabCut prompt code requires

const state = {
  job: null,           // the server's status of the uploaded video
  frame: null,         // the first frame (HTMLImageElement)
  preview: null,       // the first frame with the current mask, from the server
  tool: "box",
  objects: [emptyObject()],
  current: 0,          // index into objects
  history: [],         // snapshots of objects, for Undo
  maskFile: false,     // the mask came from an uploaded file, not from marks
  drag: null,          // {x0, y0, x1, y1} while a box is being drawn
  promptRequest: 0,    // sequence number: only the newest prompt response is shown
  running: false,      // a run is queued or in progress: the marks are locked
  shownFrame: 0,       // the frame count of the live preview on show
};

function emptyObject() { return { box: null, points: [] }; }
function isMarked(object) { return object.box !== null || object.points.some((p) => p[2] === 1); }

// The DAVIS palette (the PASCAL VOC bit pattern), so colours here match the masks and the overlay.
function paletteColour(id) {
  let r = 0, g = 0, b = 0;
  for (let bit = 0, c = id; bit < 8; bit++, c >>= 3) {
    r |= (c & 1) << (7 - bit);
    g |= ((c >> 1) & 1) << (7 - bit);
    b |= ((c >> 2) & 1) << (7 - bit);
  }
  return `rgb(${r}, ${g}, ${b})`;
}

function setStatus(element, text, isError = false) {
  element.textContent = text;
  element.classList.toggle("error", isError);
}

async function apiJson(response) {
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${url}`));
    image.src = url;
  });
}

// -- 1. upload -------------------------------------------------------------------------------------------------

$("video-input").addEventListener("change", () => {
  const file = $("video-input").files[0];
  if (file) upload(file);
});

function upload(file) {
  const status = $("upload-status");
  setStatus(status, `Uploading ${file.name}...`);
  for (const id of ["step-prompt", "step-run", "step-result"]) $(id).hidden = true;
  const request = new XMLHttpRequest(); // not fetch: it reports upload progress
  request.open("POST", "/api/jobs");
  request.setRequestHeader("X-Filename", encodeURIComponent(file.name));
  request.upload.onprogress = (event) => {
    if (event.lengthComputable) {
      setStatus(status, `Uploading ${file.name}: ${Math.round((100 * event.loaded) / event.total)}%`);
    }
  };
  request.onerror = () => setStatus(status, "The upload failed: is the server still running?", true);
  request.onload = async () => {
    let body;
    try { body = JSON.parse(request.responseText); } catch { body = { error: request.statusText }; }
    if (request.status !== 200) return setStatus(status, body.error || "The upload failed", true);
    state.job = body;
    setStatus(status, `${body.name}: ${body.frames} frames, ${body.width}x${body.height}`);
    state.frame = await loadImage(`/api/jobs/${body.id}/frame.jpg`);
    state.preview = null;
    canvas.width = state.frame.naturalWidth;
    canvas.height = state.frame.naturalHeight;
    state.objects = [emptyObject()];
    state.current = 0;
    state.history = [];
    state.maskFile = false;
    $("step-prompt").hidden = false;
    $("step-run").hidden = false;
    $("run").disabled = true;
    setStatus($("prompt-status"), "Drag a box around an object, or click on it.");
    render();
  };
  request.send(file);
}

// -- 2. marks ----------------------------------------------------------------------------------------------------

for (const button of document.querySelectorAll(".tool")) {
  button.addEventListener("click", () => {
    state.tool = button.dataset.tool;
    for (const other of document.querySelectorAll(".tool")) other.setAttribute("aria-pressed", other === button);
  });
}

$("new-object").addEventListener("click", () => {
  if (!isMarked(state.objects[state.objects.length - 1])) {
    state.current = state.objects.length - 1; // the last one is still empty: use it
  } else {
    remember();
    state.objects.push(emptyObject());
    state.current = state.objects.length - 1;
  }
  render();
});

$("undo").addEventListener("click", () => {
  if (!state.history.length || state.running) return;
  state.objects = state.history.pop();
  state.current = Math.min(state.current, state.objects.length - 1);
  sendMarks();
});

$("clear").addEventListener("click", () => {
  if (state.running) return;
  remember();
  state.objects = [emptyObject()];
  state.current = 0;
  sendMarks();
});

function remember() {
  state.history.push(JSON.parse(JSON.stringify(state.objects)));
  state.maskFile = false;
}

function framePoint(event) {
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height;
  const clamp = (value, size) => Math.max(0, Math.min(size - 1, Math.round(value)));
  return [clamp(x, canvas.width), clamp(y, canvas.height)];
}

canvas.addEventListener("pointerdown", (event) => {
  if (!state.frame || state.running) return;
  canvas.setPointerCapture(event.pointerId);
  const [x, y] = framePoint(event);
  if (state.tool === "box") state.drag = { x0: x, y0: y, x1: x, y1: y };
});

canvas.addEventListener("pointermove", (event) => {
  if (!state.drag) return;
  [state.drag.x1, state.drag.y1] = framePoint(event);
  render();
});

canvas.addEventListener("pointerup", (event) => {
  if (!state.frame || state.running) return;
  const [x, y] = framePoint(event);
  const object = state.objects[state.current];
  if (state.tool === "box") {
    const drag = state.drag;
    state.drag = null;
    if (!drag) return;
    const box = [Math.min(drag.x0, x), Math.min(drag.y0, y), Math.max(drag.x0, x), Math.max(drag.y0, y)];
    if (box[2] - box[0] < MIN_BOX_SIDE || box[3] - box[1] < MIN_BOX_SIDE) {
      render();
      return setStatus($("prompt-status"), "Drag to draw a box (or pick + Click to click on the object).");
    }
    remember();
    state.objects[state.current].box = box;
  } else {
    const positive = state.tool === "positive" ? 1 : 0;
    if (!positive && !isMarked(object)) {
      return setStatus($("prompt-status"), "First mark the object: a box around it or a + click on it.", true);
    }
    remember();
    state.objects[state.current].points.push([x, y, positive]);
  }
  sendMarks();
});

// Marked objects, in order; object ids on the server are their positions from 1.
function markedObjects() { return state.objects.filter(isMarked); }

async function sendMarks() {
  const request = ++state.promptRequest;
  render();
  setStatus($("prompt-status"), "Making the mask...");
  try {
    const response = await fetch(`/api/jobs/${state.job.id}/prompt`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ objects: markedObjects() }),
    });
    const status = await apiJson(response);
    if (request !== state.promptRequest) return; // a newer change is on its way
    await showMask(status);
  } catch (error) {
    if (request === state.promptRequest) setStatus($("prompt-status"), error.message, true);
  }
}

$("mask-input").addEventListener("change", async () => {
  const file = $("mask-input").files[0];
  if (!file || !state.job) return;
  const request = ++state.promptRequest;
  try {
    const status = await apiJson(await fetch(`/api/jobs/${state.job.id}/mask`, {
      method: "POST", body: file, headers: { "X-Filename": encodeURIComponent(file.name) },
    }));
    if (request !== state.promptRequest) return;
    state.history = [];
    state.objects = [emptyObject()];
    state.current = 0;
    state.maskFile = true;
    await showMask(status);
  } catch (error) {
    setStatus($("prompt-status"), error.message, true);
  } finally {
    $("mask-input").value = "";
  }
});

async function showMask(status) {
  state.job = status;
  state.preview = await loadImage(`/api/jobs/${status.id}/prompt.png?v=${state.promptRequest}`);
  const count = status.objects.length;
  const source = state.maskFile ? " (from the mask file)" : "";
  setStatus($("prompt-status"), count ? `${count} object${count > 1 ? "s" : ""} ready${source}.`
    : "Drag a box around an object, or click on it.");
  $("run").disabled = count === 0;
  render();
}

function render() {
  if (!state.frame) return;
  context.drawImage(state.preview || state.frame, 0, 0, canvas.width, canvas.height);
  const line = Math.max(2, Math.round(canvas.width / 320));
  markedObjects().forEach((object, index) => drawMarks(object, paletteColour(index + 1), line));
  const current = state.objects[state.current];
  if (!isMarked(current)) drawMarks(current, paletteColour(markedObjects().length + 1), line);
  if (state.drag) {
    const { x0, y0, x1, y1 } = state.drag;
    context.setLineDash([4 * line, 3 * line]);
    context.strokeStyle = "#fff";
    context.lineWidth = line;
    context.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    context.setLineDash([]);
  }
  renderObjectList();
}

function drawMarks(object, colour, line) {
  if (object.box) {
    const [x0, y0, x1, y1] = object.box;
    context.setLineDash([4 * line, 3 * line]);
    context.strokeStyle = colour;
    context.lineWidth = line;
    context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    context.setLineDash([]);
  }
  for (const [x, y, positive] of object.points) {
    context.beginPath();
    context.arc(x, y, 3 * line, 0, 2 * Math.PI);
    context.fillStyle = positive ? "#16a34a" : "#dc2626";
    context.fill();
    context.lineWidth = line;
    context.strokeStyle = "#fff";
    context.stroke();
  }
}

function renderObjectList() {
  const list = $("objects");
  list.replaceChildren();
  let id = 0;
  state.objects.forEach((object, index) => {
    const marked = isMarked(object);
    if (marked) id += 1;
    if (!marked && index !== state.current) return;
    const item = document.createElement("li");
    item.className = index === state.current ? "current" : "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = paletteColour(marked ? id : markedObjects().length + 1);
    const clicks = object.points.length;
    const parts = [object.box ? `box ${object.box.join(",")}` : null,
      clicks ? `${clicks} click${clicks > 1 ? "s" : ""}` : null];
    item.append(swatch, `Object ${marked ? id : "(new)"}: ${parts.filter(Boolean).join(", ") || "not marked yet"}`);
    item.dataset.objectId = marked ? String(id) : "";
    item.dataset.box = object.box ? object.box.join(",") : "";
    item.dataset.points = JSON.stringify(object.points);
    item.addEventListener("click", () => { state.current = index; render(); });
    list.append(item);
  });
  // The same first mask from the command line, when boxes alone made it.
  const marked = markedObjects();
  const boxesOnly = marked.length > 0 && !state.maskFile && marked.every((o) => o.box && !o.points.length);
  $("cli-line").hidden = !boxesOnly;
  if (boxesOnly) {
    const boxes = marked.map((o) => `--box ${o.box.join(",")}`).join(" ");
    $("cli-command").textContent = `longvos segment ${shellQuote(state.job.name)} ${boxes} --out masks/`;
  }
}

// A file name as one shell word: a name like `$(...)` or `a;b` must not run anything when the line is pasted.
function shellQuote(text) {
  return /^[\w.,+@%\/-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

// -- 3. run ------------------------------------------------------------------------------------------------------

$("run").addEventListener("click", async () => {
  try {
    const status = await apiJson(await fetch(`/api/jobs/${state.job.id}/run`, { method: "POST" }));
    state.running = true;
    state.shownFrame = 0;
    $("run").disabled = true;
    $("step-result").hidden = true;
    $("live").hidden = true;
    poll(status);
  } catch (error) {
    setStatus($("run-status"), error.message, true);
  }
});

async function poll(status) {
  const progress = $("progress");
  progress.max = status.frames;
  progress.value = status.done;
  if (status.state === "queued") setStatus($("run-status"), "Waiting for another video to finish...");
  if (status.state === "running") {
    setStatus($("run-status"), `Segmenting: ${status.done} of ${status.frames} frames (${status.fps} fps)`);
    if (status.done > 0 && status.done !== state.shownFrame) {
      state.shownFrame = status.done;
      $("live").src = `/api/jobs/${status.id}/latest.jpg?n=${status.done}`;
      $("live").hidden = false;
    }
  }
  if (status.state === "done" || status.state === "failed") return finish(status);
  await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  try {
    poll(await apiJson(await fetch(`/api/jobs/${status.id}`)));
  } catch (error) {
    setStatus($("run-status"), `Lost the server: ${error.message}`, true);
    state.running = false;
  }
}

// -- 4. result ---------------------------------------------------------------------------------------------------

function finish(status) {
  state.running = false;
  $("run").disabled = false;
  if (status.state === "failed") return setStatus($("run-status"), `Failed: ${status.error}`, true);
  $("progress").value = status.frames;
  setStatus($("run-status"), `Done: ${status.frames} frames (${status.fps} fps).`);
  const stamp = Date.now(); // a new run replaces the files: never show a cached one
  $("overlay").src = `/api/jobs/${status.id}/overlay.mp4?run=${stamp}`;
  $("download-masks").href = `/api/jobs/${status.id}/masks.zip?run=${stamp}`;
  $("download-overlay").href = `/api/jobs/${status.id}/overlay.mp4?run=${stamp}`;
  $("live").hidden = true;
  $("step-result").hidden = false;
}
