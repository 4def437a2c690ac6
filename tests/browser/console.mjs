// Drives the cutover console in Debian's headless Chromium with playwright-core (no bundled
// browser download). Usage: node console.mjs URL SCREENSHOT_PATH TRACE_TARGET
// Prints one JSON line of what the page showed; the pytest side judges it.
import { chromium } from "playwright-core";

const [url, screenshot, traceTarget] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
const out = { errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } });
  page.on("pageerror", (e) => out.errors.push(String(e)));
  await page.goto(url);
  await page.waitForSelector("#board tbody tr[data-domain]", { timeout: 15000 });
  out.overall = await page.textContent("#overall");
  out.modes = await page.$$eval("#board tbody tr[data-domain]", (rows) =>
    Object.fromEntries(rows.map((r) => [r.dataset.domain, r.children[1].textContent])));
  out.failed_checks = await page.$$eval('#board tr[data-domain="customer"] .chip.fail', (cs) =>
    cs.map((c) => c.dataset.check));
  out.reasons = await page.$$eval('#board tr[data-domain="customer"] .reason', (rs) =>
    rs.map((r) => r.textContent));
  await page.waitForSelector("#groups tr[data-group]", { timeout: 15000 });
  await page.click("#groups tr[data-group]");
  await page.waitForSelector("#records tr[data-record]", { timeout: 10000 });
  await page.click("#records tr[data-record]");
  await page.waitForSelector("#record-detail pre", { timeout: 10000 });
  out.detail = await page.textContent("#record-detail");
  await page.fill("#trace-target", traceTarget);
  await page.click("#trace-form button");
  await page.waitForSelector("#trace-table tr:nth-child(2)", { timeout: 15000 });
  out.trace_rows = (await page.$$("#trace-table tr")).length - 1;
  await page.waitForSelector("#drift-chart svg", { timeout: 10000 });
  out.charts = await page.$$eval("#charts-section svg", (s) => s.length);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  out.errors.push(String(e));
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
