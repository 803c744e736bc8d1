// The segmentation page: draw many digits on a large canvas; after each stroke the page
// segmenter (multipole-vit, Burn on WebGPU with FMA's kernels; web/pkg-burn/) labels every
// pixel, and the strokes take their digit's colour. Beside the FMA time it shows what exact
// attention costs on the same canvas: measured on request, and the score matrix Burn's own
// attention would hold against the device's largest binding.

const $ = (id) => document.getElementById(id);
const status = (text, error = false) => {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
};

const WEIGHTS = "models/seg-fma.safetensors";
const BACKGROUND = 10;

let wasm = null;
let model = null;
let palette = null;
let busy = false;
let again = false;

const page = $("page");
const ctx = page.getContext("2d", { willReadFrequently: true });
const mask = $("mask");
const small = document.createElement("canvas");
const smallCtx = small.getContext("2d", { willReadFrequently: true });

function clearPage() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, page.width, page.height);
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  $("time").textContent = "–";
}
clearPage();

const side = () => Number($("resolution").value);

async function main() {
  if (!navigator.gpu) {
    status(
      "This page needs WebGPU, which this browser does not offer. It works in Chrome or Edge 113+ " +
        "(on Linux: --enable-unsafe-webgpu --enable-features=Vulkan), Safari 26+, and Firefox 141+ " +
        "on Windows.",
      true,
    );
    return;
  }
  status("Loading the model…");
  try {
    wasm = await import("./pkg-burn/multipole.js");
  } catch (e) {
    throw new Error(`the Burn build is missing (web/pkg-burn/: cargo xtask demo --burn builds it): ${e.message || e}`);
  }
  const exports = await wasm.default();
  // For the page test: the wasm heap's size (a leak grows it).
  window.wasmMemoryBytes = () => exports.memory.buffer.byteLength;
  const response = await fetch(WEIGHTS);
  if (!response.ok) throw new Error(`could not load ${WEIGHTS}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  $("progress").value = 1;
  model = await wasm.Segmenter.create(bytes);
  palette = wasm.palette();
  window.segmenterPalette = Array.from(palette);
  for (let c = 0; c < 10; c++) {
    const li = document.createElement("li");
    const chip = document.createElement("span");
    chip.style.background = `rgb(${palette[3 * c]}, ${palette[3 * c + 1]}, ${palette[3 * c + 2]})`;
    li.append(chip, String(c));
    $("classes").append(li);
  }
  $("measure").disabled = false;
  describe();
  status(`Ready: ${model.adapter()}. Write some digits.`);
}

// What exact attention would need at this resolution.
function describe() {
  const s = side();
  const n = (s / model.patch()) ** 2;
  $("tokens").textContent = `${n.toLocaleString("en")} tokens (${s} × ${s} pixels, ${model.patch()} × ${model.patch()} per token)`;
  const scores = model.heads() * n * n * 4;
  const binding = model.max_binding();
  const mib = (b) => `${Math.round(b / 2 ** 20).toLocaleString("en")} MiB`;
  $("exact").textContent =
    `its ${model.heads()} × n × n scores take ${mib(scores)}` +
    (scores > binding ? `, above this device's largest binding (${mib(binding)}): a standard attention kernel cannot hold them.` : ".");
  mask.width = mask.height = s;
}

// The page at the model's resolution, as RGBA.
function pixels() {
  const s = side();
  small.width = small.height = s;
  smallCtx.imageSmoothingEnabled = true;
  smallCtx.drawImage(page, 0, 0, s, s);
  return smallCtx.getImageData(0, 0, s, s);
}

async function segment() {
  if (!model) return;
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  try {
    const img = pixels();
    const s = side();
    const started = performance.now();
    const labels = await model.segment(new Uint8Array(img.data.buffer), s, s, false);
    const ms = performance.now() - started;
    paint(labels, img, s);
    $("time").textContent = `${ms.toFixed(1)} ms`;
    // How many segmentations finished: the page test waits on it.
    page.dataset.done = String(Number(page.dataset.done || 0) + 1);
    status(`Ready: ${model.adapter()}.`);
  } catch (e) {
    if (e && e.name === "Empty") {
      status("The page is empty: write some digits.");
      mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
      page.dataset.done = String(Number(page.dataset.done || 0) + 1);
    } else {
      status(`Segmentation failed (the GPU device may have been lost; reload the page): ${e.message || e}`, true);
    }
  } finally {
    busy = false;
  }
  if (again) {
    again = false;
    await segment();
  }
}

// Every inked pixel in its class's colour, the rest transparent (the drawing shows through).
// Ink is what the model calls ink: grey from 32 of 255 (canvas::INK).
function paint(labels, img, s) {
  const out = new ImageData(s, s);
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    if (l === BACKGROUND || img.data[4 * i] < 32) continue;
    out.data[4 * i] = palette[3 * l];
    out.data[4 * i + 1] = palette[3 * l + 1];
    out.data[4 * i + 2] = palette[3 * l + 2];
    out.data[4 * i + 3] = 255;
  }
  mask.getContext("2d").putImageData(out, 0, 0);
}

async function measureExact() {
  const img = pixels();
  const s = side();
  $("measure").disabled = true;
  status("Running exact attention on the same canvas…");
  try {
    const started = performance.now();
    await model.segment(new Uint8Array(img.data.buffer), s, s, true);
    const ms = performance.now() - started;
    describe();
    $("exact").textContent = `${ms.toFixed(1)} ms here (FMA's kernels with one cell over the whole grid). ` + $("exact").textContent;
    status(`Ready: ${model.adapter()}.`);
  } catch (e) {
    status(e && e.name === "Empty" ? "The page is empty: write some digits first." : `Exact attention failed: ${e.message || e}`, e?.name !== "Empty");
  } finally {
    $("measure").disabled = false;
  }
}

// Drawing: white strokes on black; segment after every stroke.
let drawing = false;
function point(e) {
  const r = page.getBoundingClientRect();
  return [((e.clientX - r.left) * page.width) / r.width, ((e.clientY - r.top) * page.height) / r.height];
}
page.addEventListener("pointerdown", (e) => {
  drawing = true;
  page.setPointerCapture(e.pointerId);
  const [x, y] = point(e);
  ctx.strokeStyle = "#fff";
  // Strokes about as wide, relative to a digit, as MNIST's at the model's resolution.
  ctx.lineWidth = (page.width / side()) * 4;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(x, y);
  ctx.lineTo(x + 0.01, y);
  ctx.stroke();
});
page.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const [x, y] = point(e);
  ctx.lineTo(x, y);
  ctx.stroke();
});
const endStroke = () => {
  if (!drawing) return;
  drawing = false;
  segment();
};
page.addEventListener("pointerup", endStroke);
page.addEventListener("pointercancel", endStroke);
$("clear").addEventListener("click", () => {
  clearPage();
  segment();
});
// For the page test: whether no segmentation runs or waits.
window.segmenterIdle = () => !busy && !again;
// For the page test: one segmentation of the page as it is now, after any in flight.
window.segmentNow = async () => {
  while (busy) await new Promise((r) => setTimeout(r, 20));
  await segment();
};
$("resolution").addEventListener("change", () => {
  if (!model) return;
  describe();
  segment();
});
$("measure").addEventListener("click", measureExact);

main().catch((e) => status(`Could not start: ${e.message || e}`, true));
