// Drives `keel serve` in headless Chromium as an operator would: loads every
// page and fails when a page does not render its table, retries a discarded
// job and waits to see it complete, pauses a queue and sees claiming stop,
// resumes it and sees claiming start again. Screenshots go to $OUT.
//
// Usage: node ci/dashboard-check.mjs BASE_URL OUT_DIR LABEL   (see ci/dashboard-check)
import { chromium } from "playwright-core";

const [base, out, label] = process.argv.slice(2);
const fail = (why) => {
  console.error(`dashboard-check (${label}): ${why}`);
  process.exit(1);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const dialogs = [];
page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
const shot = (name) => page.screenshot({ path: `${out}/${label}-${name}.png`, fullPage: true });

// Every page renders its table.
async function load(path, table, name) {
  const response = await page.goto(base + path);
  if (!response || response.status() !== 200) fail(`${path}: HTTP ${response && response.status()}`);
  const rows = await page.locator(`table#${table} tbody tr`).count();
  if (rows < 1) fail(`${path}: table#${table} has no rows`);
  await shot(name);
  return rows;
}
await load("/?refresh=off", "queues", "queues");
await load("/jobs?refresh=off", "jobs", "jobs");
await load("/leader?refresh=off", "leases", "leader");
await load("/periodic?refresh=off", "periodic", "periodic");
const metrics = await (await page.goto(base + "/metrics")).text();
if (!metrics.includes("keel_queue_depth")) fail("/metrics has no keel_queue_depth");

// The discarded job: its error is shown as text, and no script runs.
await load("/jobs?state=discarded&refresh=off", "jobs", "discarded");
await page.locator("table#jobs tbody tr td a").first().click();
const jobUrl = page.url();
if ((await page.locator("ol#attempts li.discarded").count()) !== 1) fail("no discarded attempt on the job page");
const body = await page.locator("main").innerText();
if (!body.includes("<script>alert('x')</script>")) fail("the error's markup is not shown as text");
if ((await page.locator("script").count()) !== 0 || dialogs.length) fail("a script element made it into the page");
await shot("job-discarded");

// Retry it, through the confirmation page, and see it run.
await page.locator("p.actions a", { hasText: "retry" }).click();
await page.locator("button#confirm").click();
await page.waitForURL(/done=/);
if (!(await page.locator("p.notice").innerText()).includes("retry: done")) fail("no notice after retry");
let state = "";
for (let i = 0; i < 40 && state !== "completed"; i++) {
  await sleep(500);
  await page.goto(jobUrl + "?refresh=off");
  state = await page.locator("dl.fields dd span.state").first().innerText();
}
if (state !== "completed") fail(`the retried job is ${state}, not completed`);
if ((await page.locator("ol#attempts li.completed").count()) !== 1) fail("no completed attempt after retry");
await shot("job-retried");

// Pause `mail` and see claiming stop: its finished count holds still while
// new jobs pile up as available.
async function mail() {
  await page.goto(base + "/?refresh=off");
  const row = page.locator("table#queues tbody tr", { has: page.locator("a", { hasText: /^mail$/ }) });
  const cells = await row.locator("td").allInnerTexts();
  // queue, status, workers, then the states in lifecycle order.
  return { status: cells[1], available: +cells[4], running: +cells[5], completed: +cells[7], row };
}
let m = await mail();
await m.row.locator("button", { hasText: "Pause" }).click();
await page.waitForURL(/done=/);
await sleep(2500); // a supervisor tick retires the workers; a running job finishes
const paused = await mail();
if (paused.status !== "paused") fail(`mail shows ${paused.status} after Pause`);
await sleep(3000);
const later = await mail();
if (later.completed !== paused.completed) fail(`mail completed ${paused.completed} -> ${later.completed} while paused`);
if (later.available <= paused.available) fail("no job waited while mail was paused");
await shot("mail-paused");
await later.row.locator("button", { hasText: "Resume" }).click();
await page.waitForURL(/done=/);
let resumed = await mail();
for (let i = 0; i < 20 && resumed.completed <= later.completed; i++) {
  await sleep(500);
  resumed = await mail();
}
if (resumed.completed <= later.completed) fail("claiming did not start again after Resume");
await shot("mail-resumed");

await browser.close();
console.log(`dashboard-check (${label}): ok (mail: ${paused.completed} completed while paused held, ${later.available} waited, ${resumed.completed} after resume)`);
