// The verdict of shader_compile.mjs without a browser: it must refuse anything short of every
// exported pipeline built.
//
//   node --test web/tests/shader_compile.test.mjs

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { expectedPipelines, verdict } from './shader_compile.mjs';

const exported = {
  modules: 2,
  pipelines: 3,
  shaders: [
    { name: 'Attention A', entries: ['near_field', 'far_field'], code: '' },
    { name: 'Layers', entries: ['linear_forward'], code: '' },
  ],
};
const all = ['Attention A / near_field', 'Attention A / far_field', 'Layers / linear_forward'];

test('every exported pipeline built passes', () => {
  const expected = expectedPipelines(exported);
  assert.deepEqual(expected, all);
  assert.deepEqual(verdict(expected, { built: all, failures: [] }), []);
});

test('a pipeline that was not built fails, even with no reported failure', () => {
  const failures = verdict(all, { built: all.slice(0, 2), failures: [] });
  assert.ok(failures.some((f) => f.includes('Layers / linear_forward: not built')), failures);
  assert.ok(failures.some((f) => f.includes('built 2 pipelines, expected exactly 3')), failures);
});

test('nothing built fails', () => {
  assert.ok(verdict(all, { built: [], failures: [] }).length >= 3);
});

test('a pipeline built twice or one not exported fails', () => {
  assert.notDeepEqual(verdict(all, { built: [...all, all[0]], failures: [] }), []);
  const failures = verdict(all, { built: [...all, 'Other / x'], failures: [] });
  assert.ok(failures.some((f) => f.includes('Other / x: built but not exported')), failures);
});

test('the page reporting a failure fails', () => {
  assert.deepEqual(verdict(all, { built: all, failures: ['page: no WebGPU adapter'] }), [
    'page: no WebGPU adapter',
  ]);
});

test('an export whose totals disagree with its list is refused', () => {
  assert.throws(() => expectedPipelines({ ...exported, pipelines: 4 }), /3 pipelines/);
  assert.throws(() => expectedPipelines({ ...exported, modules: 3 }), /2 modules/);
  const twice = { ...exported, shaders: [exported.shaders[0], exported.shaders[0]] };
  assert.throws(() => expectedPipelines({ ...twice, pipelines: 4 }), /distinct/);
});

test('f16 modules are left out only for an adapter without shader-f16', () => {
  const withF16 = {
    modules: 3,
    pipelines: 4,
    shaders: [...exported.shaders, { name: 'Attention A f16', f16: true, entries: ['near_field'], code: '' }],
  };
  assert.deepEqual(expectedPipelines(withF16), [...all, 'Attention A f16 / near_field']);
  assert.deepEqual(expectedPipelines(withF16, { f16: false }), all);
  // Leaving them out does not relax the totals.
  assert.throws(() => expectedPipelines({ ...withF16, pipelines: 3 }, { f16: false }), /4 pipelines/);
});

test('subgroup modules are left out only for an adapter without subgroups', () => {
  const withSubgroups = {
    modules: 3,
    pipelines: 4,
    shaders: [...exported.shaders, { name: 'DownsampleBackward S', subgroups: true, entries: ['weight_grads_basis'], code: '' }],
  };
  assert.deepEqual(expectedPipelines(withSubgroups), [...all, 'DownsampleBackward S / weight_grads_basis']);
  assert.deepEqual(expectedPipelines(withSubgroups, { subgroups: false }), all);
  assert.deepEqual(expectedPipelines(withSubgroups, { f16: false }), [...all, 'DownsampleBackward S / weight_grads_basis']);
  assert.throws(() => expectedPipelines({ ...withSubgroups, pipelines: 3 }, { subgroups: false }), /4 pipelines/);
});

test('the old format (a bare list of modules) and an empty export are refused', () => {
  assert.throws(() => expectedPipelines(exported.shaders), /export_shaders/);
  assert.throws(() => expectedPipelines({ modules: 0, pipelines: 0, shaders: [] }), /no pipeline/);
});
