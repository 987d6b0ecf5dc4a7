// graphile-worker on the same PostgreSQL and the same no-op workload as keel's
// bench-runtime, so ci/bench can print keel / peer ratios. JSON lines on stdout
// (the shape bench-report reads), progress on stderr.
//
//   KEEL_PG_URL=postgres://postgres@127.0.0.1:5432/test node bench.mjs
//
// Two profiles (BENCH_PROFILES, comma list), each row tagged with its own:
// - `defaults`: graphile-worker as installed (LISTEN/NOTIFY, one job fetched per
//   worker slot, each completion its own statement, sent without waiting);
// - `batched`: the batching its performance docs suggest starting from, a
//   local queue of `concurrency + 1` jobs fetched and locked per process, and
//   completions batched (`completeJobBatchDelay: 0`).
// Latency is measured on the defaults. BENCH_JOBS, BENCH_REPEATS,
// BENCH_WORKERS (comma list), BENCH_LATENCY_SAMPLES; BENCH_DEEP_JOBS, the
// backlog of the `matched` and `deep` profiles (default BENCH_JOBS): at tens of
// thousands of jobs a second a short backlog drains in a fraction of a second,
// so start-up and the last stragglers would weigh on the figure.

import { run, makeWorkerUtils } from "graphile-worker";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const VERSION = require("graphile-worker/package.json").version;
const URL = process.env.KEEL_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const JOBS = Number(process.env.BENCH_JOBS ?? 10000);
const DEEP_JOBS = Number(process.env.BENCH_DEEP_JOBS ?? JOBS);
const REPEATS = Number(process.env.BENCH_REPEATS ?? 3);
const WORKERS = (process.env.BENCH_WORKERS ?? "1,4,16").split(",").map(Number);
const SAMPLES = Number(process.env.BENCH_LATENCY_SAMPLES ?? 300);
const PROFILES = (process.env.BENCH_PROFILES ?? "defaults,batched,matched,deep").split(",");
// keel's claim-ahead profile in bench-runtime; `matched` locks as many jobs ahead.
const CLAIM_AHEAD = Number(process.env.BENCH_CLAIM_AHEAD ?? 8);
const DEEP_QUEUE = 500;
const SCHEMA = "graphile_worker_bench";
const BATCH = 500; // jobs per addJobs call, as keel's ENQUEUE_BATCH
const TIMEOUT_MS = 300_000;

const log = (...a) => console.error("graphile-worker:", ...a);
const emit = (o) => console.log(JSON.stringify({ peer: "graphile-worker", version: VERSION, ...o }));
const logger = new (require("graphile-worker").Logger)(() => (level, message) => {
  if (level === "error") log(message);
});

async function freshUtils() {
  const utils = await makeWorkerUtils({ connectionString: URL, schema: SCHEMA, logger });
  await utils.withPgClient((c) => c.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`));
  await utils.migrate();
  return utils;
}

async function enqueueBacklog(utils, n) {
  for (let i = 0; i < n; i += BATCH) {
    const specs = [];
    for (let j = i; j < Math.min(n, i + BATCH); j++) specs.push({ identifier: "noop", payload: { i: j } });
    await utils.addJobs(specs);
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))];
}

/** CPU of every local postgres process, ms (0 without procfs). */
async function postgresCpuMs() {
  const fs = await import("node:fs/promises");
  let ticks = 0;
  for (const pid of await fs.readdir("/proc").catch(() => [])) {
    if (!/^\d+$/.test(pid)) continue;
    const comm = await fs.readFile(`/proc/${pid}/comm`, "utf8").catch(() => "");
    if (comm.trim() !== "postgres") continue;
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(f[11] ?? 0) + Number(f[12] ?? 0);
  }
  return ticks * 10; // USER_HZ = 100
}

/** graphile-worker's preset for a profile (see the header). */
function preset(profile, concurrency) {
  switch (profile) {
    case "defaults":
      return {};
    case "batched":
      return { worker: { localQueue: { size: concurrency + 1 }, completeJobBatchDelay: 0 } };
    case "matched":
      return {
        worker: { localQueue: { size: concurrency * (CLAIM_AHEAD + 1) }, completeJobBatchDelay: 0 },
      };
    case "deep":
      return { worker: { localQueue: { size: DEEP_QUEUE } , completeJobBatchDelay: 0 } };
    default:
      throw new Error(`unknown profile ${profile}; use defaults, batched, matched or deep`);
  }
}

/** Jobs in one backlog run of `profile`. */
const jobsOf = (profile) => (profile === "matched" || profile === "deep" ? DEEP_JOBS : JOBS);

/** Drain a backlog of `jobsOf(profile)` no-op jobs with `concurrency` workers; jobs/s. */
async function drain(profile, concurrency) {
  const jobs = jobsOf(profile);
  const utils = await freshUtils();
  await enqueueBacklog(utils, jobs);
  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const cpu0 = process.cpuUsage();
  const db0 = await postgresCpuMs();
  const began = performance.now();
  const runner = await run({
    connectionString: URL,
    schema: SCHEMA,
    concurrency,
    noHandleSignals: true,
    logger,
    preset: preset(profile, concurrency),
    taskList: {
      noop: async () => {
        if (++done === jobs) finish();
      },
    },
  });
  const timer = setTimeout(() => finish(), TIMEOUT_MS);
  await finished;
  clearTimeout(timer);
  const secs = (performance.now() - began) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const db = (await postgresCpuMs()) - db0;
  await runner.stop();
  await utils.release();
  if (done < jobs) throw new Error(`only ${done} of ${jobs} jobs finished in ${TIMEOUT_MS} ms`);
  return { rate: jobs / secs, cpuUs: (cpu.user + cpu.system) / jobs, dbUs: (db * 1000) / jobs };
}

/** Enqueue-to-start latency of single jobs with 4 workers, ms, sorted. */
async function latency(loadPerS) {
  const utils = await freshUtils();
  const waiting = new Map();
  const runner = await run({
    connectionString: URL,
    schema: SCHEMA,
    concurrency: 4,
    noHandleSignals: true,
    logger,
    taskList: {
      noop: async (payload) => {
        const w = waiting.get(payload.sample);
        if (w) w(performance.now());
      },
    },
  });
  let load;
  if (loadPerS > 0) {
    const perBatch = Math.max(1, Math.round(loadPerS / 100));
    load = setInterval(() => {
      const specs = Array.from({ length: perBatch }, () => ({ identifier: "noop", payload: {} }));
      utils.addJobs(specs).catch(() => {});
    }, 10);
  }
  const out = [];
  for (let s = 0; s < SAMPLES; s++) {
    const started = new Promise((r) => waiting.set(s, r));
    const sent = performance.now();
    await utils.addJob("noop", { sample: s });
    out.push((await started) - sent);
    waiting.delete(s);
  }
  if (load) clearInterval(load);
  await runner.stop();
  await utils.release();
  return out.sort((a, b) => a - b);
}

async function main() {
  let capacity4 = 0;
  for (const profile of PROFILES) {
    preset(profile, 1); // an unknown profile fails before any run
    for (const w of WORKERS) {
      const runs = [];
      for (let r = 0; r < REPEATS; r++) runs.push(await drain(profile, w));
      const rates = runs.map((x) => x.rate);
      const m = median(rates);
      if (w === 4 && profile === "defaults") capacity4 = m;
      log(`${profile} backlog x${w}: ${m.toFixed(0)} jobs/s`);
      emit({
        metric: "throughput", feed: "backlog", profile, workers: w, jobs: jobsOf(profile),
        median_jobs_per_s: m, min: Math.min(...rates), max: Math.max(...rates), runs: rates,
        cpu_us_per_job: median(runs.map((x) => x.cpuUs)), db_cpu_us_per_job: median(runs.map((x) => x.dbUs)),
      });
    }
  }
  if (capacity4 === 0) capacity4 = 2000; // no defaults row: a moderate load
  for (const [queue, load] of [["idle", 0], ["loaded", Math.max(1, Math.round(capacity4 / 2))]]) {
    const l = await latency(load);
    log(`latency ${queue}: p50 ${quantile(l, 0.5).toFixed(2)} ms, p99 ${quantile(l, 0.99).toFixed(2)} ms`);
    emit({
      metric: "latency", queue, workers: 4, load_jobs_per_s: load, samples: l.length,
      p50_ms: quantile(l, 0.5), p99_ms: quantile(l, 0.99), max_ms: l[l.length - 1],
    });
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    log(`failed: ${e.message}`);
    process.exit(1);
  },
);
