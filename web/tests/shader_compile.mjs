// Compiles every exported shader specialisation with a real browser's WebGPU (Chromium: Tint
// and Dawn, on SwiftShader) and builds a compute pipeline for each entry point. naga and Tint
// do not agree on everything (workgroup memory accounting, uniformity), so both must accept.
// The export says how many modules and pipelines the crate ships; the check passes only when
// the page built exactly those, each one, and nothing failed. Modules marked `f16` need WebGPU's
// optional shader-f16, those marked `subgroups` its subgroups: each is built where the
// browser's adapter offers the feature, and otherwise left out by name in the output (naga
// validates them in tests/shader_validation.rs).
//
//   node web/tests/shader_compile.mjs SHADERS.json

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

/** The pipelines the export lists, as "module / entry" keys, or throws if the file is not
 *  what examples/export_shaders.rs writes (totals that disagree with the list included).
 *  With `f16: false`, the pipelines of f16 modules are left out (an adapter without
 *  shader-f16 cannot build them), with `subgroups: false` those of subgroup modules; the
 *  totals are checked on the whole list either way. */
export function expectedPipelines(json, { f16 = true, subgroups = true } = {}) {
  const { modules, pipelines, shaders: list } = json;
  if (!Number.isInteger(modules) || !Number.isInteger(pipelines) || !Array.isArray(list)) {
    throw new Error('expected {"modules": M, "pipelines": P, "shaders": [...]} from export_shaders');
  }
  if (list.length !== modules) {
    throw new Error(`the export lists ${list.length} modules but says it ships ${modules}`);
  }
  const keys = list.flatMap((s) => s.entries.map((e) => `${s.name} / ${e}`));
  if (keys.length !== pipelines || new Set(keys).size !== pipelines) {
    throw new Error(`the export lists ${keys.length} pipelines (${new Set(keys).size} distinct) but says it ships ${pipelines}`);
  }
  if (pipelines === 0) throw new Error('the export lists no pipeline');
  return list
    .filter((s) => (f16 || !s.f16) && (subgroups || !s.subgroups))
    .flatMap((s) => s.entries.map((e) => `${s.name} / ${e}`));
}

/** The failures of a page run against the expected pipelines: the page's own, and every
 *  expected pipeline it did not report as built, and any it built that was not expected. */
export function verdict(expected, result) {
  const failures = [...result.failures];
  const built = new Set(result.built);
  for (const key of expected) if (!built.has(key)) failures.push(`${key}: not built`);
  const wanted = new Set(expected);
  for (const key of built) if (!wanted.has(key)) failures.push(`${key}: built but not exported`);
  if (result.built.length !== expected.length) {
    failures.push(`built ${result.built.length} pipelines, expected exactly ${expected.length}`);
  }
  return failures;
}

const page = `<!doctype html><meta charset="utf-8"><pre id="out">running</pre><script type="module">
const out = document.getElementById('out');
try {
  const { shaders } = await (await fetch('/shaders.json')).json();
  if (!navigator.gpu) throw new Error('navigator.gpu is missing: WebGPU is not enabled');
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error('no WebGPU adapter');
  const f16 = adapter.features.has('shader-f16');
  const subgroups = adapter.features.has('subgroups');
  const requiredFeatures = [...(f16 ? ['shader-f16'] : []), ...(subgroups ? ['subgroups'] : [])];
  const device = await adapter.requestDevice({ requiredFeatures });
  const failures = [];
  const built = [];
  for (const s of shaders) {
    if ((s.f16 && !f16) || (s.subgroups && !subgroups)) continue;
    const module = device.createShaderModule({ code: s.code });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === 'error');
    for (const m of errors) failures.push(s.name + ': line ' + m.lineNum + ': ' + m.message);
    for (const entryPoint of s.entries) {
      try {
        await device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint } });
        built.push(s.name + ' / ' + entryPoint);
      } catch (e) {
        failures.push(s.name + ' / ' + entryPoint + ': ' + e.message);
      }
    }
  }
  out.textContent = JSON.stringify({ built, failures, f16, subgroups });
} catch (e) {
  out.textContent = JSON.stringify({ built: [], failures: ['page: ' + e.message], f16: true, subgroups: true });
}
</script>`;

async function main() {
  const shadersPath = process.argv[2];
  if (!shadersPath) {
    console.error('usage: node shader_compile.mjs SHADERS.json');
    process.exit(2);
  }
  const shaders = readFileSync(shadersPath, 'utf8');
  const json = JSON.parse(shaders);
  const all = expectedPipelines(json);
  // Loaded here so that the checks above can be imported and tested without a browser.
  const { chromium } = await import('playwright-core');
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
  const f16 = result.f16 !== false;
  const subgroups = result.subgroups !== false;
  const expected = expectedPipelines(json, { f16, subgroups });
  const leftOut = (feature, kind, only) => {
    const missing = all.length - expectedPipelines(json, only).length;
    console.log(
      `shader_compile: this browser's WebGPU adapter lacks ${feature}: the ${missing} pipelines of ${kind} modules were not built here (naga validates them)`,
    );
  };
  if (!f16) leftOut('shader-f16', 'f16', { f16: false });
  if (!subgroups) leftOut('subgroups', 'subgroup', { subgroups: false });
  const failures = verdict(expected, result);
  for (const f of failures) console.error('FAILED ' + f);
  console.log(
    `shader_compile: ${result.built.length} of ${expected.length} pipelines built, ${failures.length} failures`,
  );
  process.exit(failures.length === 0 ? 0 : 1);
}

// Run as a program (not when imported by its own test).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error('FAILED ' + (e instanceof Error ? e.message : e));
    process.exit(1);
  });
}
