// The live race page's weight and its time to the first table row, on a
// server that is already under load, in Debian's chromium:
//
//   node tests/browser/measure.mjs <base URL> [loads] [screenshot.png] [racerId]
//
// Loads the page `loads` times (5), each in a fresh browser context (no
// cache), and prints each time and their median; then, if a screenshot path
// is given, keeps one page open for 10 s of live updates and saves it.
import { launch } from "./chromium.mjs";

const [base, loadsArg, screenshot, racerId] = process.argv.slice(2);
if (!base) {
  console.error("usage: node measure.mjs <base URL> [loads] [screenshot.png] [racerId]");
  process.exit(2);
}
const loads = Number(loadsArg || 5);
const url = base + "/?classId=1" + (racerId ? "&racerId=" + racerId : "");
const browser = await launch();
try {
  const times = [];
  let pageBytes = 0;
  for (let i = 0; i < loads; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const started = Date.now();
    const response = await page.goto(url);
    pageBytes = (await response.body()).length;
    await page.waitForSelector("#here-now tr", { timeout: 60_000 });
    times.push(Date.now() - started);
    await context.close();
  }
  const sorted = [...times].sort((a, b) => a - b);
  console.log(JSON.stringify({ pageBytes, firstTableMs: times, medianFirstTableMs: sorted[sorted.length >> 1] }));
  if (screenshot) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(url);
    await page.waitForSelector("#chart path.best", { timeout: 60_000 });
    await page.waitForTimeout(10_000);
    await page.screenshot({ path: screenshot });
  }
} finally {
  await browser.close();
}
