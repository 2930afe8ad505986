#!/usr/bin/env node
// The ONNX Runtime reference for toptag's inference: toptag's own ONNX export (toptag export) of a
// checkpoint, run by onnxruntime-node on the CPU execution provider, on the same machine as toptag.
//   batch-1 latency: median (p50), min and p90 over --latency-reps runs after two warm-up runs
//   batch-N throughput (--batch, default 64; 0: skip): images/s over --infer-batches runs after one
// The image size and channels come from the model's input; pixels are uniform in [0, 1), as in
// bench_resnet and torch_resnet.py, whose lines these line up with. bench/compare.sh runs all three.
//
// For benchmarking only (toptag and its tests never need it), installed outside the repository;
// ONNXRUNTIME_NODE_INSTALL=skip stops its install script fetching the CUDA provider (the CPU one is
// in the package):
//   ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix ~/ort onnxruntime-node
//   build/toptag export -c run/best.h5 -o model.onnx
//   NODE_PATH=~/ort/node_modules node bench/ort_resnet.js model.onnx --threads 2
'use strict';
const ort = require('onnxruntime-node');

const usage =
    'usage: node bench/ort_resnet.js MODEL.onnx [--threads N (2)] [--latency-reps N (20)] ' +
    '[--infer-batches N (5)] [--batch N (64; 0: no throughput)]';

function parseArgs(argv) {
  const a = {model: null, threads: 2, latencyReps: 20, inferBatches: 5, batch: 64};
  const flags = {'--threads': 'threads', '--latency-reps': 'latencyReps', '--infer-batches': 'inferBatches',
                 '--batch': 'batch'};
  for (let i = 0; i < argv.length; ++i) {
    const key = flags[argv[i]];
    if (key) {
      a[key] = Number(argv[++i]);
      if (!Number.isInteger(a[key]) || a[key] < (key === 'batch' ? 0 : 1)) throw new Error(`${argv[i - 1]}: ${usage}`);
    } else if (a.model === null && !argv[i].startsWith('-')) {
      a.model = argv[i];
    } else {
      throw new Error(usage);
    }
  }
  if (a.model === null) throw new Error(usage);
  return a;
}

function randomImages(n, dims) {
  const data = new Float32Array(n * dims.reduce((x, y) => x * y, 1));
  for (let i = 0; i < data.length; ++i) data[i] = Math.random();
  return new ort.Tensor('float32', data, [n, ...dims]);
}

// The value at nearest rank p (0 < p <= 1) of ascending `sorted`, as toptag perf reports percentiles.
function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
}

async function timedRun(session, feeds, fetch) {
  const t0 = process.hrtime.bigint();
  await session.run(feeds, fetch);
  return Number(process.hrtime.bigint() - t0) * 1e-6;  // ms
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const session = await ort.InferenceSession.create(a.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: a.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
  const input = session.inputMetadata[0];
  const dims = input.shape.slice(1);  // [C, H, W]; the batch dimension is symbolic
  if (dims.length !== 3 || !dims.every(Number.isInteger)) {
    throw new Error(`${a.model}: input ${input.name} is ${JSON.stringify(input.shape)}, not [batch, C, H, W]`);
  }
  const [channels, size] = dims;
  const fetch = [session.outputNames[0]];  // probabilities: the whole network runs for them
  console.log(`onnxruntime-node ${require('onnxruntime-node/package.json').version} (Node ${process.version}), ` +
              `CPU EP, ${a.threads} intra-op threads, 1 inter-op, graph optimisation all, ${a.model}`);

  const one = {[input.name]: randomImages(1, dims)};
  for (let i = 0; i < 2; ++i) await session.run(one, fetch);
  const ms = [];
  for (let i = 0; i < a.latencyReps; ++i) ms.push(await timedRun(session, one, fetch));
  ms.sort((x, y) => x - y);
  const median = percentile(ms, 0.5).toFixed(2).padStart(8);
  console.log(`latency    ${size}x${size}x${channels} batch 1 : ${median} ms median, ${ms[0].toFixed(2)} ms min, ` +
              `${percentile(ms, 0.9).toFixed(2)} ms p90`);

  if (a.batch > 0) {
    const many = {[input.name]: randomImages(a.batch, dims)};
    await session.run(many, fetch);
    let total = 0;
    for (let i = 0; i < a.inferBatches; ++i) total += await timedRun(session, many, fetch);
    const rate = (a.batch * a.inferBatches) / (total * 1e-3);
    console.log(`inference  ${size}x${size} batch ${a.batch} : ${rate.toFixed(1).padStart(8)} images/s`);
  }
  await session.release();
}

main().catch((e) => {
  console.error(`ort_resnet: ${e.message}`);
  process.exit(1);
});
