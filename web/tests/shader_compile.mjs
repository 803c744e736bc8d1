// Compiles every exported shader specialisation with a real browser's WebGPU (Chromium: Tint
// and Dawn, on SwiftShader) and builds a compute pipeline for each entry point. naga and Tint
// do not agree on everything (workgroup memory accounting, uniformity), so both must accept.
//
//   node web/tests/shader_compile.mjs SHADERS.json

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

const shadersPath = process.argv[2];
if (!shadersPath) {
  console.error('usage: node shader_compile.mjs SHADERS.json');
  process.exit(2);
}
const shaders = readFileSync(shadersPath, 'utf8');

const page = `<!doctype html><meta charset="utf-8"><pre id="out">running</pre><script type="module">
const out = document.getElementById('out');
try {
  const shaders = await (await fetch('/shaders.json')).json();
  if (!navigator.gpu) throw new Error('navigator.gpu is missing: WebGPU is not enabled');
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error('no WebGPU adapter');
  const device = await adapter.requestDevice();
  const failures = [];
  let passed = 0;
  for (const s of shaders) {
    const module = device.createShaderModule({ code: s.code });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === 'error');
    for (const m of errors) failures.push(s.name + ': line ' + m.lineNum + ': ' + m.message);
    for (const entryPoint of s.entries) {
      try {
        await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint } });
        passed++;
      } catch (e) {
        failures.push(s.name + ' / ' + entryPoint + ': ' + e.message);
      }
    }
  }
  out.textContent = JSON.stringify({ passed, failures });
} catch (e) {
  out.textContent = JSON.stringify({ passed: 0, failures: ['page: ' + e.message] });
}
</script>`;

const server = createServer((req, res) => {
  if (req.url === '/shaders.json') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(shaders);
  } else if (req.url === '/') {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader',
    '--enable-features=Vulkan', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-quic', '--no-first-run',
  ],
});
let result;
try {
  const tab = await browser.newPage();
  await tab.goto(url);
  await tab.waitForFunction(() => document.getElementById('out').textContent !== 'running', null, {
    timeout: 600_000,
  });
  result = JSON.parse(await tab.textContent('#out'));
} finally {
  await browser.close();
  server.close();
}
for (const f of result.failures) console.error('FAILED ' + f);
console.log(`shader_compile: ${result.passed} passed, ${result.failures.length} failed`);
process.exit(result.failures.length === 0 && result.passed > 0 ? 0 : 1);
