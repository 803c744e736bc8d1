// The demo page: draw or upload a digit, classify it on the GPU, and show where one token's
// FMA attention went. The model and the image preprocessing are the Rust library (pkg/).

const $ = (id) => document.getElementById(id);
const status = (text, error = false) => {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
};

const WEIGHTS = "models/fma-vit-mnist.safetensors";
const COLOURS = { near: [255, 200, 0], 1: [0, 200, 255], 2: [255, 60, 200], 3: [120, 255, 80] };

let model = null;
let wasm = null;
let digit = null; // the last classified digit, 28 x 28 bytes
let token = null; // the token shown in the overlay

// Weights with a progress bar (fetch streams the body).
async function fetchWeights() {
  const response = await fetch(WEIGHTS);
  if (!response.ok) throw new Error(`could not load ${WEIGHTS}: HTTP ${response.status}`);
  const total = Number(response.headers.get("content-length")) || 0;
  const reader = response.body.getReader();
  const parts = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    if (total) $("progress").value = received / total;
  }
  $("progress").value = 1;
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return bytes;
}

async function main() {
  if (!navigator.gpu) {
    status(
      "This demo needs WebGPU, which this browser does not offer. It works in Chrome or Edge 113+ " +
        "(on Linux: chrome://flags/#enable-unsafe-webgpu, or --enable-unsafe-webgpu " +
        "--enable-features=Vulkan), Safari 26+, and Firefox 141+ on Windows (Nightly elsewhere, " +
        "with dom.webgpu.enabled).",
      true,
    );
    return;
  }
  status("Loading the model…");
  // `?burn`: the same model built on Burn (multipole-vit, `cargo xtask demo --burn`).
  const burn = new URLSearchParams(location.search).has("burn");
  wasm = await import(burn ? "./pkg-burn/multipole.js" : "./pkg/multipole.js");
  await wasm.default();
  const bytes = await fetchWeights();
  model = await wasm.Classifier.create(bytes);
  for (let b = 0; b < model.depth(); b++) {
    const o = document.createElement("option");
    o.value = b;
    o.textContent = `${b + 1} of ${model.depth()}`;
    $("block").append(o);
  }
  $("block").value = model.depth() - 1;
  status(`Ready: ${model.adapter()}${burn ? " (Burn model)" : ""}`);
  redrawOverlay();
}

// Drawing: white strokes on black, like MNIST; classify after every stroke.
const pad = $("canvas");
const ctx = pad.getContext("2d", { willReadFrequently: true });
function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
}
clearPad();
let drawing = false;
function point(e) {
  const r = pad.getBoundingClientRect();
  return [((e.clientX - r.left) * pad.width) / r.width, ((e.clientY - r.top) * pad.height) / r.height];
}
pad.addEventListener("pointerdown", (e) => {
  drawing = true;
  pad.setPointerCapture(e.pointerId);
  const [x, y] = point(e);
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 20;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x + 0.01, y);
  ctx.stroke();
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const [x, y] = point(e);
  ctx.lineTo(x, y);
  ctx.stroke();
});
const endStroke = () => {
  if (!drawing) return;
  drawing = false;
  classifyPad();
};
function classifyPad() {
  const img = ctx.getImageData(0, 0, pad.width, pad.height);
  classify(() => wasm.digit_from_rgba(new Uint8Array(img.data.buffer), pad.width, pad.height));
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
function showNoDigit() {
  digit = null;
  $("prediction").textContent = "no digit found";
  $("bars").replaceChildren();
  $("time").textContent = "";
  redrawOverlay();
}
$("clear").addEventListener("click", () => {
  clearPad();
  digit = null;
  $("prediction").textContent = "–";
  $("bars").replaceChildren();
  $("time").textContent = "";
  redrawOverlay();
  // The blank pad goes through the classifier too, which answers "no digit found".
  classifyPad();
});
$("upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  classify(() => wasm.digit_from_file(bytes));
});
$("block").addEventListener("change", () => redrawOverlay());

let running = Promise.resolve();
function classify(makeDigit) {
  // One classification at a time, in order.
  running = running.then(async () => {
    if (!model) return;
    try {
      digit = makeDigit();
      const t0 = performance.now();
      const probs = await model.classify(digit);
      const ms = performance.now() - t0;
      showProbs(probs, ms);
      status(`Ready: ${model.adapter()}${burn ? " (Burn model)" : ""}`);
      redrawOverlay();
    } catch (err) {
      // A blank canvas or picture is not a failure: there is just nothing to classify.
      if (err?.name === "NoDigit") {
        showNoDigit();
        status("No digit found: draw a digit or upload a picture of one.");
      } else {
        status(`Could not classify: ${err.message ?? err}`, true);
      }
    }
  });
}

function showProbs(probs, ms) {
  let top = 0;
  probs.forEach((p, i) => { if (p > probs[top]) top = i; });
  $("prediction").textContent = String(top);
  const bars = [...probs].map((p, i) => {
    const row = document.createElement("div");
    row.className = i === top ? "bar top" : "bar";
    row.innerHTML = `<span>${i}</span><span class="fill" style="width:${(p * 12).toFixed(2)}rem"></span><span>${(100 * p).toFixed(1)}%</span>`;
    return row;
  });
  $("bars").replaceChildren(...bars);
  $("time").textContent = `inference ${ms.toFixed(1)} ms on the GPU`;
}

// The overlay: the digit on its 32 x 32 canvas (28 x 28 centred), the 16 x 16 token grid,
// and for the chosen token its near field and coarse cells, coloured by level.
const overlay = $("overlay");
const octx = overlay.getContext("2d");
overlay.addEventListener("click", (e) => {
  const r = overlay.getBoundingClientRect();
  const g = model ? model.grid() : 16;
  const x = Math.floor(((e.clientX - r.left) / r.width) * g);
  const y = Math.floor(((e.clientY - r.top) / r.height) * g);
  token = Math.min(g - 1, y) * g + Math.min(g - 1, x);
  redrawOverlay();
});

// Redraws the overlay; a failure shows in the status line.
function redrawOverlay() {
  drawOverlay().catch((err) => status(`The attention map failed: ${err.message ?? err}`, true));
}

// Each redraw's number: a map that comes back after a newer click or digit is dropped.
let overlaySeq = 0;

async function drawOverlay() {
  const seq = ++overlaySeq;
  // The map first (the GPU reads back asynchronously), so the overlay is never half drawn.
  let map = null;
  if (model && digit && token !== null) {
    map = await model.attention(digit, Number($("block").value), token);
    if (seq !== overlaySeq) return;
  }
  const W = overlay.width;
  const g = model ? model.grid() : 16;
  const cell = W / g;
  octx.fillStyle = "#000";
  octx.fillRect(0, 0, W, W);
  if (digit) {
    const px = W / 32;
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const v = digit[y * 28 + x];
        if (!v) continue;
        octx.fillStyle = `rgb(${v},${v},${v})`;
        octx.fillRect((x + 2) * px, (y + 2) * px, px, px);
      }
    }
  }
  octx.strokeStyle = "rgba(255,255,255,0.15)";
  for (let i = 0; i <= g; i++) {
    octx.beginPath(); octx.moveTo(i * cell, 0); octx.lineTo(i * cell, W); octx.stroke();
    octx.beginPath(); octx.moveTo(0, i * cell); octx.lineTo(W, i * cell); octx.stroke();
  }
  overlay.dataset.token = token ?? "";
  if (!map) {
    $("legend").replaceChildren();
    delete overlay.dataset.near;
    delete overlay.dataset.levels;
    return;
  }
  // Alpha grows with the probability relative to the largest one shown.
  let max = 0;
  for (const [, p] of map.near) max = Math.max(max, p);
  for (const c of map.far) max = Math.max(max, c[5]);
  const fill = (rgb, p, x, y, w, h) => {
    octx.fillStyle = `rgba(${rgb.join(",")},${0.15 + 0.6 * (p / max)})`;
    octx.fillRect(x * cell, y * cell, w * cell, h * cell);
  };
  const totals = { near: 0 };
  for (const [t, p] of map.near) {
    fill(COLOURS.near, p, t % g, Math.floor(t / g), 1, 1);
    totals.near += p;
  }
  for (const [level, top, left, h, w, p] of map.far) {
    fill(COLOURS[level] ?? [200, 200, 200], p, left, top, w, h);
    octx.strokeStyle = `rgb(${(COLOURS[level] ?? [200, 200, 200]).join(",")})`;
    octx.strokeRect(left * cell + 1, top * cell + 1, w * cell - 2, h * cell - 2);
    totals[level] = (totals[level] ?? 0) + p;
  }
  octx.strokeStyle = "#fff";
  octx.lineWidth = 2;
  octx.strokeRect((token % g) * cell, Math.floor(token / g) * cell, cell, cell);
  octx.lineWidth = 1;
  const levels = Object.keys(totals).filter((k) => k !== "near");
  overlay.dataset.near = map.near.length;
  overlay.dataset.levels = levels.map((l) => `${l}:${map.far.filter((c) => String(c[0]) === l).length}`).join(",");
  overlay.dataset.total = (Object.values(totals).reduce((a, b) => a + b, 0)).toFixed(4);
  const item = (rgb, text) => {
    const li = document.createElement("li");
    li.innerHTML = `<span style="background:rgb(${rgb.join(",")})"></span>${text}`;
    return li;
  };
  $("legend").replaceChildren(
    item(COLOURS.near, `near field: ${map.near.length} tokens, ${(100 * totals.near).toFixed(1)}% of the attention`),
    ...levels.map((l) => item(COLOURS[l] ?? [200, 200, 200],
      `level ${l}: ${map.far.filter((c) => String(c[0]) === l).length} cells, ${(100 * totals[l]).toFixed(1)}%`)),
  );
}

main().catch((err) => status(`The demo could not start: ${err.message ?? err}`, true));
