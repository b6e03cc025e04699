// The live race page in a real browser: Debian's chromium, driven headless
// by playwright-core. Run by `loadtest/tests/browser.rs`, which starts the
// all-in-one and the load-test harness, and stops and starts the server
// when this script asks (a line "ASK stop" or "ASK start" on stdout, answered
// by "done stop" or "done start" on stdin).
//
//   node page.test.mjs <base URL> <screenshot directory> <racerId to follow>
//
// Each check prints "ok - ..."; the first that fails ends the script with
// exit status 1. The last line is "RESULT {json}": the page's bytes and the
// time from navigation to the first table row.
import { launch } from "./chromium.mjs";
import { mkdirSync } from "node:fs";
import { createServer } from "node:http";
import readline from "node:readline";

const [base, shots, racerId] = process.argv.slice(2);
if (!base || !shots || !racerId) {
  console.error("usage: node page.test.mjs <base URL> <screenshot directory> <racerId to follow>");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const input = readline.createInterface({ input: process.stdin });
const answers = input[Symbol.asyncIterator]();
const WAIT = { timeout: 30_000 };

function ok(condition, what) {
  if (!condition) throw new Error("not ok - " + what);
  console.log("ok - " + what);
}

async function ask(what) {
  console.log("ASK " + what);
  const { value } = await answers.next();
  if (value !== "done " + what) throw new Error(`expected "done ${what}", got ${JSON.stringify(value)}`);
}

/// Clicks the button `id` as soon as it is enabled, in one step inside the
/// page: the live tables above the pager grow while a race runs, and a
/// pointer click aimed at where the button was can land beside it (or on
/// it while a refresh has just disabled it).
async function clickWhenEnabled(page, id) {
  await page.waitForFunction((id) => {
    const button = document.getElementById(id);
    if (button.disabled) return false;
    button.click();
    return true;
  }, id, WAIT);
}

/// Waits until the text of `selector` is no longer `before`.
async function changes(page, selector, before) {
  await page.waitForFunction(
    ([s, b]) => document.querySelector(s).textContent !== b,
    [selector, before],
    WAIT,
  );
}

const browser = await launch();
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (error) => errors.push(error.message));

  const started = Date.now();
  const response = await page.goto(base + "/?classId=1&racerId=" + racerId);
  const pageBytes = (await response.body()).length;
  await page.waitForSelector("#here-now tr", WAIT);
  const firstTableMs = Date.now() - started;
  ok((await page.locator("#here-now tr").count()) > 0, "the Here now table fills");
  ok((await page.locator("#all-time tr").count()) > 0, "the All time table fills");
  ok(await page.locator('#status[data-state="live"]').isVisible(), "the status says live");

  await changes(page, "#race-info", await page.textContent("#race-info"));
  ok(true, "the tables update (the race's second moves on)");
  await page.waitForSelector("#all-time tr.new-record .badge", WAIT);
  ok(true, "a new record is marked");
  await page.waitForFunction(() => document.getElementById("you-figures").textContent.includes("here now"), null, WAIT);
  ok(true, "the followed racer's rank is shown");
  await page.waitForFunction(() => /against your best(ahead|behind)/.test(document.getElementById("you-figures").textContent), null, WAIT);
  ok(true, "the followed racer races its own best (ghost figures)");

  await page.waitForFunction(() => {
    const line = document.querySelector("#chart path.best");
    return line && line.getAttribute("d").split("L").length > 5;
  }, null, WAIT);
  ok(true, "the chart of the class file's best per second is drawn");

  await page.waitForSelector("#races li strong", WAIT);
  ok(true, "recent race results are listed");
  await page.waitForSelector("#leaderboard td.num", WAIT);
  const firstRank = await page.textContent("#leaderboard tr:first-child td:first-child");
  ok(firstRank === "1", "the leaderboard starts at rank 1");
  await page.waitForSelector("#next:not([disabled])", WAIT);
  // The next page's first request fails (as when the server restarts): the
  // page asks again within seconds, not at its next 30 s refresh.
  const leaderboardRequests = /\/v1\/leaderboard\?/;
  let refused = 0;
  await page.route(leaderboardRequests, (route) => refused++ === 0
    ? route.fulfill({ status: 503, contentType: "application/json", body: '{"error":"unavailable"}' })
    : route.continue());
  await clickWhenEnabled(page, "next");
  await page.waitForFunction(() => document.querySelector("#page").textContent === "page 2", null, { timeout: 8_000 });
  ok(refused >= 2, `a failed leaderboard request is asked again within seconds (${refused} requests)`);
  await page.unroute(leaderboardRequests);
  await page.waitForFunction(() => document.querySelector("#leaderboard tr:first-child td").textContent === "11", null, WAIT);
  ok(true, "the leaderboard pages (page 2 starts at rank 11)");
  await clickWhenEnabled(page, "prev");
  await page.waitForFunction(() => document.querySelector("#leaderboard tr:first-child td").textContent === "1", null, WAIT);
  // Today's board: asked for by its period, and shown from rank 1 (the
  // finished race was posted today).
  const dayAnswer = page.waitForResponse((r) => r.url().includes("/v1/leaderboard?") && r.url().includes("period=day"), WAIT);
  await page.selectOption("#period", "day");
  const day = await (await dayAnswer).json();
  ok(day.period === "day" && day.total >= 15 && day.from === day.to, `today's leaderboard is asked for (${day.total} racers, ${day.from})`);
  // Drawn from that answer: its rows, its first racer.
  await page.waitForFunction(([rows, name]) => {
    const shown = document.querySelectorAll("#leaderboard tr");
    return shown.length === rows && shown[0].querySelector("td.name").textContent.includes(name);
  }, [Math.min(10, day.entries.length), day.entries[0].name], WAIT);
  ok(true, "today's leaderboard is shown from its answer");
  await page.selectOption("#period", "all");

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: shots + "/page-desktop.png" });
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  phone.on("pageerror", (error) => errors.push(error.message));
  // This page's first request for the race results and for the class file
  // each fail: both are asked again within seconds (their refreshes are 15 s
  // and 5 min).
  const failFirst = async (pattern) => {
    let seen = 0;
    await phone.route(pattern, (route) => seen++ === 0 ? route.abort("connectionreset") : route.continue());
    return () => seen;
  };
  const racesAsked = await failFirst(/\/v1\/races\?/);
  const classFileAsked = await failFirst(/\/class-1\.gz/);
  await phone.goto(base + "/?classId=1&racerId=" + racerId);
  await phone.waitForSelector("#here-now tr", WAIT);
  await phone.waitForSelector("#races li strong", { timeout: 10_000 });
  await phone.waitForSelector("#chart path.best", { timeout: 10_000 });
  ok(racesAsked() >= 2 && classFileAsked() >= 2, `failed requests for race results and the class file are asked again within seconds (${racesAsked()}, ${classFileAsked()} requests)`);
  await phone.unrouteAll();
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  ok(overflow <= 0, `nothing is wider than a phone's screen (${overflow} px over)`);
  await phone.screenshot({ path: shots + "/page-phone.png", fullPage: true });
  await phone.close();

  // The same page served from another origin (another port), its APIs
  // named by ?api=: everything it fetches crosses origins, under CORS.
  const html = await response.body();
  const elsewhere = createServer((_, res) => res.writeHead(200, { "content-type": "text/html" }).end(html));
  await new Promise((done) => elsewhere.listen(0, "127.0.0.1", done));
  const foreign = await browser.newPage();
  foreign.on("pageerror", (error) => errors.push(error.message));
  await foreign.goto(`http://127.0.0.1:${elsewhere.address().port}/?classId=1&api=${encodeURIComponent(base)}`);
  await foreign.waitForSelector("#here-now tr", WAIT);
  await foreign.waitForSelector("#chart path.best", WAIT);
  await foreign.waitForSelector("#leaderboard td.num", WAIT);
  await foreign.waitForSelector("#races li strong", WAIT);
  ok(true, "served from another origin, the page works through the APIs' CORS rules");
  await foreign.close();
  elsewhere.close();

  // The test posted a racer named like markup: shown as text, never run.
  ok((await page.textContent("#leaderboard")).includes("<img src=x onerror="), "a name that looks like markup is shown as text");
  ok((await page.locator("img").count()) === 0, "and is not made into an element");

  await ask("stop");
  await page.waitForSelector('#status[data-state="reconnecting"]', WAIT);
  ok(true, "the page says it is reconnecting while the server is down");
  await ask("start");
  await page.waitForSelector('#status[data-state="live"]', WAIT);
  await changes(page, "#race-info", await page.textContent("#race-info"));
  ok(true, "after the restart the page is live and updating again");

  ok(errors.length === 0, "no script errors" + (errors.length ? ": " + errors.join("; ") : ""));
  console.log("RESULT " + JSON.stringify({ pageBytes, firstTableMs }));
} finally {
  input.close(); // or stdin keeps the script running
  await browser.close();
}
