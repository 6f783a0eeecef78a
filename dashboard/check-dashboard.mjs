// Opens the Sluice dashboard in headless Chromium (Debian's, driven by
// playwright-core), with every request off the host blocked, waits until
// its charts show data, saves a screenshot and prints a JSON summary.
// Exits 1 on any console error, page error or failed request.
//   node check-dashboard.mjs http://127.0.0.1:8080 OUT_DIR
import { chromium } from "playwright-core";

const [base, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic"],
});
const errors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1200 } });
  page.on("console", m => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
  page.on("pageerror", e => errors.push(`page: ${e}`));
  page.on("requestfailed", r => errors.push(`request failed: ${r.url()}`));
  // Offline: the page must need nothing but the host.
  await page.route("**/*", route => route.request().url().startsWith(base) ? route.continue() : route.abort());
  await page.goto(`${base}/`, { waitUntil: "load" });
  await page.waitForFunction(() => {
    const s = window.sluice;
    if (!s || s.stats < 3 || s.reports < 1 || s.pipelines < 1) return false;
    const c = s.charts;
    return c.throughput.data.datasets[0].data.some(v => v > 0) && c.category.data.labels.length > 0 &&
      c.products.data.labels.length > 0 && c.day.data.labels.length > 0 && c.store.data.labels.length > 0 &&
      c.latency.data.labels.length > 0;
  }, null, { timeout: 60000, polling: 250 });
  const summary = await page.evaluate(() => {
    const c = window.sluice.charts;
    return {
      categories: c.category.data.labels,
      category_revenue: c.category.data.datasets[0].data,
      stages: [...document.querySelectorAll("#stages tr td:first-child")].map(td => td.textContent),
      max_in_per_s: Math.max(...c.throughput.data.datasets[0].data),
      generation: document.getElementById("generation").textContent,
    };
  });
  await page.screenshot({ path: `${out}/dashboard.png`, fullPage: true });
  console.log(JSON.stringify({ errors, ...summary }));
} catch (e) {
  errors.push(String(e));
  console.log(JSON.stringify({ errors }));
} finally {
  await browser.close();
}
process.exit(errors.length ? 1 : 0);
