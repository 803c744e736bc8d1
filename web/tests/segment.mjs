// The segmentation page in a real browser (Chromium, WebGPU on SwiftShader): it loads the
// page segmenter, labels three digits drawn far apart on the big canvas in their own colours,
// shows the token count, says so for an empty page, creates no GPU buffer or pipeline once
// warm, keeps the wasm heap and the JS heap flat over 200 segmentations, and logs no console
// error. It prints the page's time at 4,096 and 16,384 tokens, and exact attention's at 4,096.
//
//   node web/tests/segment.mjs http://127.0.0.1:PORT/ OUT_DIR

import { mkdirSync } from 'node:fs';
import { launch } from './browser.mjs';

const [base, outDir = 'target/web-test'] = process.argv.slice(2);
if (!base) {
  console.error('usage: node segment.mjs BASE_URL [OUT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

// `gc()` for the heap check: the collector runs before each reading.
const browser = await launch(['--js-flags=--expose-gc']);
const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
// Count what the page asks WebGPU to create (the device's prototype, before any script runs).
await page.addInitScript(() => {
  window.gpuCreated = { buffers: 0, pipelines: 0, bindGroups: 0 };
  const wrap = (name, key) => {
    const original = GPUDevice.prototype[name];
    GPUDevice.prototype[name] = function (...args) {
      window.gpuCreated[key] += 1;
      return original.apply(this, args);
    };
  };
  wrap('createBuffer', 'buffers');
  wrap('createComputePipeline', 'pipelines');
  wrap('createComputePipelineAsync', 'pipelines');
});
const errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
page.on('pageerror', (e) => errors.push(String(e)));
const check = (ok, what) => { if (!ok) throw new Error(what); };
let step = 'start';

// Waits until no segmentation runs or waits (strokes during one are coalesced into the next).
async function settled() {
  await page.waitForFunction(() => window.segmenterIdle(), null, { timeout: 300_000, polling: 100 });
}
const ms = async () => Number(/([\d.]+) ms/.exec(await page.textContent('#time'))?.[1]);

// Strokes in the page canvas's own 512 x 512 coordinates.
async function stroke(points) {
  const box = await page.locator('#page').boundingBox();
  const at = ([x, y]) => [box.x + (x * box.width) / 512, box.y + (y * box.height) / 512];
  await page.mouse.move(...at(points[0]));
  await page.mouse.down();
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    for (let s = 1; s <= 8; s++) await page.mouse.move(...at([x0 + ((x1 - x0) * s) / 8, y0 + ((y1 - y0) * s) / 8]));
  }
  await page.mouse.up();
}

// The most frequent mask colour inside a box of the page (512 coordinates), as a class.
async function classIn([x0, y0, x1, y1]) {
  return page.evaluate(([x0, y0, x1, y1]) => {
    const mask = document.getElementById('mask');
    const k = mask.width / 512;
    const img = mask.getContext('2d').getImageData(Math.floor(x0 * k), Math.floor(y0 * k), Math.ceil((x1 - x0) * k), Math.ceil((y1 - y0) * k));
    const palette = window.segmenterPalette;
    const votes = new Array(10).fill(0);
    for (let i = 0; i < img.data.length; i += 4) {
      if (img.data[i + 3] === 0) continue;
      for (let c = 0; c < 10; c++) {
        if (img.data[i] === palette[3 * c] && img.data[i + 1] === palette[3 * c + 1] && img.data[i + 2] === palette[3 * c + 2]) votes[c] += 1;
      }
    }
    const best = votes.indexOf(Math.max(...votes));
    return { best, votes };
  }, [x0, y0, x1, y1]);
}

try {
  step = 'load';
  await page.goto(new URL('segment.html', base).href);
  await page.waitForFunction(() => /^(Ready|Could not|This page needs)/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
  const status = await page.textContent('#status');
  check(status.startsWith('Ready'), `status: ${status}`);
  console.log(`segment page: ${status}`);
  const tokens = await page.textContent('#tokens');
  check(tokens.startsWith('4,096 tokens'), `token count: ${tokens}`);

  step = 'draw three digits';
  // A 1 top left, a 7 top right, a 4 bottom centre: far apart, about 120 pixels tall.
  const digits = [
    { label: 1, box: [60, 40, 200, 200], strokes: [[[130, 50], [128, 190]]] },
    { label: 7, box: [300, 40, 480, 200], strokes: [[[320, 60], [450, 60], [360, 190]]] },
    { label: 4, box: [170, 290, 350, 470], strokes: [[[230, 300], [200, 400], [320, 400]], [[290, 320], [290, 460]]] },
  ];
  for (const d of digits) {
    for (const s of d.strokes) await stroke(s);
  }
  await settled();
  // The page as drawn, segmented once more (the last stroke's run may have started earlier).
  await page.evaluate(() => window.segmentNow());
  for (const d of digits) {
    const { best, votes } = await classIn(d.box);
    check(best === d.label, `the drawn ${d.label} was coloured as ${best} (votes ${votes.join(',')})`);
  }
  await page.screenshot({ path: `${outDir}/segment.png`, fullPage: true });

  step = 'time at 4,096 tokens';
  const times = [];
  for (let i = 0; i < 5; i++) {
    await page.evaluate(() => window.segmentNow());
    times.push(await ms());
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`segment page: 4,096 tokens in ${median(times).toFixed(1)} ms (median of 5: ${times.map((t) => t.toFixed(1)).join(', ')})`);

  step = 'no new GPU objects once warm';
  const before = await page.evaluate(() => ({ ...window.gpuCreated }));
  for (let i = 0; i < 5; i++) await page.evaluate(() => window.segmentNow());
  const after = await page.evaluate(() => ({ ...window.gpuCreated }));
  console.log(`segment page: GPU objects created before ${JSON.stringify(before)}, after 5 more ${JSON.stringify(after)}`);
  check(after.buffers === before.buffers && after.pipelines === before.pipelines, `a warm segmentation created GPU objects: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);

  step = '200 in a row';
  const heap = () => page.evaluate(() => {
    window.gc();
    return { wasm: window.wasmMemoryBytes(), js: performance.memory.usedJSHeapSize };
  });
  for (let i = 0; i < 20; i++) await page.evaluate(() => window.segmentNow());
  const start = await heap();
  const t200 = Date.now();
  for (let i = 0; i < 200; i++) await page.evaluate(() => window.segmentNow());
  const end = await heap();
  console.log(`segment page: 200 segmentations in ${((Date.now() - t200) / 1000).toFixed(0)} s`);
  console.log(`segment page: after 200 more, wasm heap ${start.wasm} -> ${end.wasm} bytes, JS heap ${start.js} -> ${end.js}`);
  check(end.wasm === start.wasm, `the wasm heap grew over 200 segmentations: ${start.wasm} -> ${end.wasm}`);
  // Measured after a full collection; a labels array kept per call would add 3.2 MB.
  check(end.js - start.js < 2 ** 19, `the JS heap grew over 200 segmentations: ${start.js} -> ${end.js}`);

  step = 'exact attention';
  await page.click('#measure');
  await page.waitForFunction(() => /ms here/.test(document.getElementById('exact').textContent), null, { timeout: 300_000 });
  console.log(`segment page: exact attention at 4,096 tokens: ${await page.textContent('#exact')}`);

  step = '16,384 tokens';
  await page.selectOption('#resolution', '256');
  await settled();
  const big = [];
  for (let i = 0; i < 3; i++) {
    await page.evaluate(() => window.segmentNow());
    big.push(await ms());
  }
  check((await page.textContent('#tokens')).startsWith('16,384 tokens'), 'token count at 256 x 256');
  console.log(`segment page: 16,384 tokens in ${median(big).toFixed(1)} ms (median of 3); exact attention: ${await page.textContent('#exact')}`);

  step = 'empty page';
  await page.click('#clear');
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('empty'), null, { timeout: 60_000 });

  step = 'console';
  check(errors.length === 0, `console errors: ${errors.join(' | ')}`);

  step = 'no WebGPU';
  const plain = await browser.newPage();
  const plainErrors = [];
  plain.on('pageerror', (e) => plainErrors.push(String(e)));
  await plain.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
  await plain.goto(new URL('segment.html', base).href);
  await plain.waitForFunction(() => document.getElementById('status').textContent.includes('needs WebGPU'), null, { timeout: 60_000 });
  check(plainErrors.length === 0, `page errors without WebGPU: ${plainErrors.join(' | ')}`);
  console.log('segment page: all browser checks passed');
} catch (e) {
  const shot = `${outDir}/segment-failure.png`;
  await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  console.error(`segment page test FAILED at "${step}": ${e.message}\nscreenshot: ${shot}`);
  if (errors.length) console.error(`console errors: ${errors.join(' | ')}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
