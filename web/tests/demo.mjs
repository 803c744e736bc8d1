// The demo page in a real browser (Chromium, WebGPU on SwiftShader): it loads, classifies a
// drawn 1 and 7 and an uploaded image, draws a token's attention over the hierarchy, runs the
// library's GPU checks, and logs no console error. On failure it saves a screenshot. It also
// prints the inference time per digit the page reports (median of 10 after a warm-up): a
// benchmark figure, never a reason to fail.
//
//   node web/tests/demo.mjs http://127.0.0.1:PORT/ OUT_DIR

import { mkdirSync } from 'node:fs';
import { launch } from './browser.mjs';

const [base, outDir = 'target/web-test'] = process.argv.slice(2);
if (!base) {
  console.error('usage: node demo.mjs BASE_URL [OUT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
const errors = [];
page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
page.on('pageerror', (e) => errors.push(String(e)));
const check = (ok, what) => { if (!ok) throw new Error(what); };
let step = 'start';
const timings = [];

async function prediction() {
  await page.waitForFunction(() => document.getElementById('time').textContent !== '', null, { timeout: 120_000 });
  const digit = (await page.textContent('#prediction')).trim();
  const time = await page.textContent('#time');
  const ms = Number(/([\d.]+) ms/.exec(time)?.[1]);
  check(Number.isFinite(ms), `the page reports no inference time: "${time}"`);
  timings.push(ms);
  return digit;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function stroke(points) {
  const box = await page.locator('#canvas').boundingBox();
  const at = ([x, y]) => [box.x + (x * box.width) / 280, box.y + (y * box.height) / 280];
  await page.mouse.move(...at(points[0]));
  await page.mouse.down();
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    for (let s = 1; s <= 10; s++) await page.mouse.move(...at([x0 + ((x1 - x0) * s) / 10, y0 + ((y1 - y0) * s) / 10]));
  }
  await page.mouse.up();
}

async function draw(strokes) {
  await page.click('#clear');
  for (const s of strokes) await stroke(s);
  return prediction();
}

try {
  step = 'load';
  await page.goto(base);
  await page.waitForFunction(() => /^(Ready|The demo could not|This demo needs)/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
  const status = await page.textContent('#status');
  check(status.startsWith('Ready'), `status: ${status}`);
  console.log(`demo: ${status}`);

  step = 'draw a 1';
  const one = await draw([[[140, 40], [138, 240]]]);
  check(one === '1', `a drawn 1 was classified as ${one}`);

  step = 'time a 1';
  // The 1 above was the warm-up; the page times model.classify alone (not the drawing).
  timings.length = 0;
  for (let i = 0; i < 10; i++) {
    const again = await draw([[[140, 40], [138, 240]]]);
    check(again === '1', `a drawn 1 was classified as ${again} on run ${i + 1}`);
  }
  const perDigit = timings.map((t) => t.toFixed(1));
  console.log(`demo: inference ${median(timings).toFixed(1)} ms per digit (median of 10 on ${status.replace(/^Ready: /, '')}; runs ${perDigit.join(', ')})`);

  step = 'clear';
  // A blank pad is no digit: the page says so instead of naming a class.
  await page.click('#clear');
  await page.waitForFunction(() => document.getElementById('prediction').textContent === 'no digit found', null, { timeout: 60_000 });

  step = 'draw a 7';
  const seven = await draw([[[70, 60], [210, 60], [120, 240]]]);
  check(seven === '7', `a drawn 7 was classified as ${seven}`);

  step = 'upload';
  // A dark-on-light 4 as a PNG file, drawn by the browser itself.
  const png = await page.evaluate(async () => {
    const c = new OffscreenCanvas(120, 150);
    const g = c.getContext('2d');
    g.fillStyle = '#fff'; g.fillRect(0, 0, 120, 150);
    g.strokeStyle = '#111'; g.lineWidth = 12; g.lineCap = 'round';
    g.beginPath(); g.moveTo(30, 20); g.lineTo(20, 85); g.lineTo(100, 85); g.stroke();
    g.beginPath(); g.moveTo(80, 30); g.lineTo(80, 135); g.stroke();
    const blob = await c.convertToBlob({ type: 'image/png' });
    const bytes = new Uint8Array(await blob.arrayBuffer());
    let s = ''; for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s);
  });
  await page.click('#clear');
  await page.setInputFiles('#upload', { name: 'four.png', mimeType: 'image/png', buffer: Buffer.from(png, 'base64') });
  const four = await prediction();
  check(four === '4', `an uploaded 4 was classified as ${four}`);

  step = 'overlay';
  const box = await page.locator('#overlay').boundingBox();
  // Token (3, 12) of the 16 x 16 grid: away from the centre, so every level has cells.
  await page.mouse.click(box.x + (12.5 * box.width) / 16, box.y + (3.5 * box.height) / 16);
  await page.waitForFunction(() => document.getElementById('overlay').dataset.near !== undefined, null, { timeout: 60_000 });
  const data = await page.evaluate(() => ({ ...document.getElementById('overlay').dataset }));
  check(data.token === String(3 * 16 + 12), `overlay token ${data.token}`);
  check(Number(data.near) === 36, `near field of ${data.near} tokens (a 3 x 3 block of 2 x 2 cells is 36)`);
  check(/1:\d+/.test(data.levels) && /2:\d+/.test(data.levels), `levels ${data.levels}`);
  check(Math.abs(Number(data.total) - 1) < 1e-3, `attention sums to ${data.total}`);
  const legend = await page.locator('#legend li').count();
  check(legend === 3, `legend has ${legend} entries`);

  await page.screenshot({ path: `${outDir}/demo.png`, fullPage: true });

  step = 'gpu checks';
  await page.goto(new URL('gpu-checks.html', base).href);
  await page.waitForFunction(() => document.getElementById('status').textContent !== 'Running…', null, { timeout: 600_000 });
  const report = await page.textContent('#report');
  const checksStatus = await page.textContent('#status');
  console.log(report);
  // browser_checks::run: five FMA cases and two vision transformers (tests/browser_checks.rs
  // asserts the same count natively). Fewer would mean checks silently left out.
  const expectedChecks = 7;
  const counts = await page.evaluate(() => ({ ...document.getElementById('status').dataset }));
  check(
    checksStatus.startsWith('passed') && Number(counts.passed) === expectedChecks && Number(counts.failed) === 0,
    `GPU checks: ${checksStatus} (expected all ${expectedChecks} to pass)`,
  );

  step = 'console';
  check(errors.length === 0, `console errors: ${errors.join(' | ')}`);

  step = 'no WebGPU';
  // A browser without WebGPU gets a message that says what works, and no exception.
  const plain = await browser.newPage();
  const plainErrors = [];
  plain.on('pageerror', (e) => plainErrors.push(String(e)));
  await plain.addInitScript(() => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }));
  await plain.goto(base);
  await plain.waitForFunction(() => document.getElementById('status').textContent.includes('needs WebGPU'), null, { timeout: 60_000 });
  check(plainErrors.length === 0, `page errors without WebGPU: ${plainErrors.join(' | ')}`);
  console.log('demo: all browser checks passed');
} catch (e) {
  const shot = `${outDir}/demo-failure.png`;
  await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  console.error(`demo test FAILED at "${step}": ${e.message}\nscreenshot: ${shot}`);
  if (errors.length) console.error(`console errors: ${errors.join(' | ')}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
