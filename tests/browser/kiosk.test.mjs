// End-to-end tests of the kiosk / tablet page in headless Chromium (Debian's package, driven by
// playwright-core; no browser download), against the real stack: `edge-daemon demo` brings up a
// hub, a unit syncing from it over QUIC, and the LAN API serving the page.
//
//   EDGE_DAEMON_BIN   the edge-daemon binary (default: target/release/edge-daemon from the repo root)
//   CHROMIUM_BIN      the browser (default: /usr/bin/chromium)
//   SCREENSHOT_DIR    where the run saves screenshots (default: target/screenshots)
//   KIOSK_STATIC_DIR  for page development only: serve index.html, app.js and style.css from this
//                     folder (e.g. edge-daemon/static) instead of the ones compiled into the
//                     daemon, so a page change can be tried without rebuilding it
//
// Run with `.ci/browser-tests` (installs what is missing), or `node --test kiosk.test.mjs` here.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = process.env.EDGE_DAEMON_BIN || path.join(root, 'target', 'release', 'edge-daemon');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(root, 'target', 'screenshots');
const STATIC = process.env.KIOSK_STATIC_DIR ? path.resolve(process.env.KIOSK_STATIC_DIR) : null;

let demo; // the child process
let demoOut = '';
let dir;
let base;
let token;
const samples = {}; // description → NHS number, from the demo's banner
let browser;
let context;
let page;
const pageProblems = []; // console errors (CSP violations…) and uncaught exceptions

// ------------------------------------------------------------------ helpers

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function waitFor(pred, what, ms) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const iv = setInterval(() => {
      const v = pred();
      if (v) {
        clearInterval(iv);
        resolve(v);
      } else if (Date.now() - t0 > ms) {
        clearInterval(iv);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}\n--- demo output ---\n${demoOut.slice(-3000)}`));
      }
    }, 50);
  });
}

async function api(p, headers = {}) {
  const r = await fetch(base + p, { headers: { Authorization: `Bearer ${token}`, ...headers } });
  return { status: r.status, body: await r.json() };
}

async function shot(name, opts = {}) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), ...opts });
}

function fmtNhs(d) {
  return `${d.slice(0, 3)} ${d.slice(3, 6)} ${d.slice(6)}`;
}

function sample(re) {
  const k = Object.keys(samples).find((d) => re.test(d));
  assert.ok(k, `the demo printed no sample patient matching ${re}: ${JSON.stringify(samples)}`);
  return samples[k];
}

async function signIn() {
  if (await page.isVisible('#find')) return;
  await page.fill('#token', token);
  await page.press('#token', 'Enter');
  await page.waitForSelector('#find:not([hidden])');
}

async function openByNhs(nhs) {
  if (!(await page.isVisible('#find'))) {
    if (await page.isVisible('#close-record')) await page.click('#close-record');
    else if (await page.isVisible('#problem-back')) await page.click('#problem-back');
    else if (await page.isVisible('#cand-back')) await page.click('#cand-back');
  }
  await page.waitForSelector('#find:not([hidden])');
  await page.fill('#nhs', nhs);
  await page.press('#nhs', 'Enter');
}

async function openSummary(nhs) {
  await openByNhs(nhs);
  await page.waitForSelector('#summary:not([hidden])');
  await page.waitForFunction((d) => document.getElementById('pt-facts').textContent.includes(d), fmtNhs(nhs));
}

async function storageDump() {
  return page.evaluate(() => {
    const dump = (s) => {
      const o = {};
      for (let i = 0; i < s.length; i++) o[s.key(i)] = s.getItem(s.key(i));
      return o;
    };
    return { session: dump(sessionStorage), local: dump(localStorage), cookie: document.cookie };
  });
}

// ------------------------------------------------------------------ the stack

before(async () => {
  assert.ok(fs.existsSync(BIN), `no edge-daemon binary at ${BIN}: build it with cargo build --release -p edge-daemon`);
  const port = await freePort();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kerbside-browser-'));
  base = `http://127.0.0.1:${port}`;
  demo = spawn(BIN, ['demo', '--patients', '2000', '--lan', `127.0.0.1:${port}`, '--dir', dir], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  demo.stdout.on('data', (b) => { demoOut += b.toString(); });
  demo.stderr.on('data', (b) => { demoOut += b.toString(); });
  demo.on('exit', (code, sig) => { demoOut += `\n[demo exited: ${code ?? sig}]\n`; });
  await waitFor(() => /Ctrl-C stops the demo/.test(demoOut) || /demo exited/.test(demoOut), 'the demo to start', 90_000);
  assert.match(demoOut, /Ctrl-C stops the demo/, `the demo did not start:\n${demoOut}`);
  token = /export TOKEN=(\S+)/.exec(demoOut)[1];
  const list = demoOut.split('Patients to try:')[1].split('Ready to paste:')[0];
  for (const line of list.split('\n')) {
    const m = /^\s+(\d{10})\s+(.+?)\s*$/.exec(line);
    if (m) samples[m[2]] = m[1];
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], headless: true });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-GB', timezoneId: 'Europe/London' });
  if (STATIC) {
    const files = { '/': ['index.html', 'text/html'], '/app.js': ['app.js', 'text/javascript'], '/style.css': ['style.css', 'text/css'] };
    await context.route((url) => url.origin === base && url.pathname in files, async (route) => {
      const [file, type] = files[new URL(route.request().url()).pathname];
      const resp = await route.fetch();
      await route.fulfill({ response: resp, body: fs.readFileSync(path.join(STATIC, file)), contentType: `${type}; charset=utf-8` });
    });
  }
  page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on('console', (m) => {
    // The browser logs every 4xx/5xx answer as an error; those are expected here (401, 403, 404).
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of \d{3}/.test(m.text())) {
      pageProblems.push(`console: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => pageProblems.push(`pageerror: ${e.message}`));
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (demo && demo.exitCode === null) {
    demo.kill('SIGINT');
    await new Promise((r) => {
      const t = setTimeout(() => { demo.kill('SIGKILL'); r(); }, 8000);
      demo.once('exit', () => { clearTimeout(t); r(); });
    });
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ the tests (in order)

test('the page loads from the unit and asks for a shift token', async () => {
  const resp = await page.goto(`${base}/`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()['content-security-policy'] || '', /script-src 'self'/);
  assert.equal(await page.getAttribute('html', 'lang'), 'en-GB');
  await page.waitForSelector('#signin:not([hidden])');
  assert.equal(await page.textContent('#signin h1'), 'Sign in');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'token', 'the token field has focus');
  await page.waitForFunction(() => /link up/.test(document.getElementById('unit-status').textContent));
  await shot('01-sign-in');
  // Something that is not a token is refused at once, with a reason.
  await page.fill('#token', 'not a token');
  await page.press('#token', 'Enter');
  assert.match(await page.textContent('#token-error'), /not a shift token/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
});

test('sign in: the token is kept in sessionStorage only, the signed-in name is shown', async () => {
  await page.fill('#token', `export TOKEN=${token}`); // pasting the demo's whole line works too
  await page.press('#token', 'Enter');
  await page.waitForSelector('#find:not([hidden])');
  const s = await storageDump();
  assert.deepEqual(Object.values(s.session), [token]);
  assert.deepEqual(s.local, {});
  assert.match(await page.textContent('#who-text'), /Signed in: DEMO, Paramedic · clinical · until \d\d:\d\d/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'nhs', 'focus moves to the NHS number');
  assert.ok(!page.url().includes('?') && !page.url().includes('#'), 'nothing in the URL');
});

test('the NHS number is formatted 3-3-4 as typed and its check digit verified as typed', async () => {
  await page.fill('#nhs', '');
  await page.type('#nhs', '943476591');
  assert.equal(await page.inputValue('#nhs'), '943 476 591');
  assert.equal(await page.isVisible('#nhs-error'), false, 'no complaint before the tenth digit');
  await page.type('#nhs', '8'); // 9434765918: wrong check digit
  assert.equal(await page.inputValue('#nhs'), '943 476 5918');
  assert.match(await page.textContent('#nhs-error'), /check digit/);
  assert.equal(await page.getAttribute('#nhs', 'aria-invalid'), 'true');
  await page.press('#nhs', 'Enter');
  assert.equal(await page.isVisible('#summary'), false, 'an invalid number is never looked up');
  await page.fill('#nhs', '');
  await page.type('#nhs', '1111111111');
  assert.match(await page.textContent('#nhs-error'), /all ten digits are the same/);
  await page.fill('#nhs', '');
  await page.type('#nhs', '1234567890');
  assert.match(await page.textContent('#nhs-error'), /not a valid NHS number/);
  await page.fill('#nhs', '');
  await page.type('#nhs', '94347659190'); // eleven digits: never silently cut to ten
  assert.equal(await page.inputValue('#nhs'), '943 476 59190');
  assert.match(await page.textContent('#nhs-error'), /10 digits; 11/);
  await page.fill('#nhs', '');
  await page.type('#nhs', '9434765919');
  assert.equal(await page.isVisible('#nhs-error'), false);
  assert.equal(await page.isVisible('#nhs-ok'), true);
  await page.fill('#nhs', '');
});

test('search by NHS number: allergies come first, each with its criticality, reaction and source', async () => {
  const nhs = sample(/^allergies/);
  const { body: json } = await api(`/v1/patients/${nhs}`);
  assert.equal(json.allergies.status, 'entries');
  await openSummary(nhs);
  // The allergies section is the first section of the summary.
  const order = await page.$$eval('#sections > section', (els) => els.map((e) => e.dataset.status && e.className.match(/sec-(\w+)/)[1]));
  assert.deepEqual(order, ['allergies', 'resuscitation', 'care_plans', 'medications', 'conditions', 'alerts']);
  const items = await page.$$('.sec-allergies li.item');
  assert.equal(items.length, json.allergies.entries.length);
  const text = await page.textContent('.sec-allergies');
  for (const a of json.allergies.entries) {
    const name = a.concept.text || a.concept.coding.display;
    assert.ok(text.includes(name), `allergy ${name} shown`);
    const want = { high: 'HIGH criticality', low: 'Low criticality', 'unable-to-assess': 'Criticality: unable to assess' }[a.criticality] || 'Criticality not recorded';
    assert.ok(text.includes(want), `criticality "${want}" shown for ${name}`);
    for (const r of a.reactions || []) assert.ok(text.includes(r.manifestation.text || r.manifestation.coding.display), 'reaction shown');
    assert.ok(text.includes(a.provenance.source_name || a.provenance.source_ods), 'source organisation shown');
  }
  assert.equal(await page.$$eval('.sec-allergies li.item', (els) => els.filter((e) => /Source: .+ · updated \d\d-\w{3}-\d{4}/.test(e.textContent)).length), items.length, 'every item says its source and when it was last updated');
  // Identity with the summary, and the freshness banner.
  const facts = await page.textContent('#pt-facts');
  assert.ok(facts.includes(fmtNhs(nhs)));
  assert.ok(facts.includes(json.patient.postcode));
  assert.equal(await page.textContent('#pt-name'), `${json.patient.family.toUpperCase()}, ${json.patient.given.join(' ')}`);
  assert.match(await page.textContent('#fresh-banner'), /^Record as of \d\d:\d\d — less than a minute ago\./);
  assert.equal(await page.getAttribute('#fresh-banner', 'data-stale'), 'false');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'pt-name', 'focus moves to the patient name');
  // Every empty section says why, in words.
  for (const sec of ['resuscitation', 'care_plans', 'medications', 'conditions', 'alerts']) {
    if (json[sec].status === 'entries') continue;
    const t = await page.textContent(`.sec-${sec} .empty-main`);
    assert.match(t, /^No .+ (recorded|available)$|withheld$/, `${sec}: ${t}`);
  }
});

test('a richer summary (resuscitation decision, care plan, high-risk medicine) for the screenshot', async () => {
  // Prefer a patient with a bit of everything; the demo's sample is the fallback.
  let nhs = process.env.KIOSK_RICH_NHS || '9994594575';
  const r = await api(`/v1/patients/${nhs}`);
  if (r.status !== 200) nhs = sample(/resuscitation decision or care plan/);
  const { body: json } = await api(`/v1/patients/${nhs}`);
  await openSummary(nhs);
  for (const m of json.medications.entries.filter((x) => x.high_risk)) {
    const li = page.locator('.sec-medications li.item', { hasText: m.concept.text || m.concept.coding.display });
    assert.match(await li.textContent(), /HIGH-RISK/);
  }
  for (const sec of ['resuscitation', 'care_plans']) {
    assert.equal(await page.locator(`.sec-${sec} li.item`).count(), json[sec].entries.length);
  }
  // Every item of every section names its source organisation and when it was last updated.
  const items = await page.$$eval('#sections li.item', (els) => els.map((e) => e.textContent));
  const total = ['allergies', 'resuscitation', 'care_plans', 'medications', 'conditions', 'alerts'].reduce((n, k) => n + json[k].entries.length, 0);
  assert.equal(items.length, total);
  for (const t of items) assert.match(t, /Source: .+ \(\w+\) · updated \d\d-\w{3}-\d{4}/);
  await shot('02-summary');
  await shot('02-summary-full', { fullPage: true });
  await page.setViewportSize({ width: 1920, height: 1080 });
  await shot('02-summary-kiosk-1080p');
  await page.setViewportSize({ width: 1280, height: 800 });
});

test('"No known allergies recorded" and "No allergy information available" are told apart', async () => {
  const nka = sample(/no known allergies/);
  const { body: a } = await api(`/v1/patients/${nka}`);
  assert.equal(a.allergies.status, 'none_known');
  await openSummary(nka);
  assert.equal(await page.textContent('.sec-allergies .empty-main'), 'No known allergies recorded');
  assert.equal(await page.getAttribute('.sec-allergies', 'data-status'), 'none_known');
  assert.ok(!(await page.textContent('.sec-allergies')).includes('No allergy information available'));

  const noinfo = sample(/no allergy information/);
  const { body: b } = await api(`/v1/patients/${noinfo}`);
  assert.equal(b.allergies.status, 'no_information');
  await openSummary(noinfo);
  assert.equal(await page.textContent('.sec-allergies .empty-main'), 'No allergy information available');
  assert.match(await page.textContent('.sec-allergies'), /does not mean the patient has no allergies/);
  assert.ok(!(await page.textContent('.sec-allergies')).includes('No known allergies recorded'));
  await shot('03-no-allergy-information');
});

test('search by family name + birth date + postcode lists candidates and never auto-selects', async () => {
  const nhs = sample(/^allergies/);
  const { body: json } = await api(`/v1/patients/${nhs}`);
  const p = json.patient;
  const [y, m, d] = p.birth_date.split('-');
  await page.click('#close-record');
  // Fewer than two of family / birth date / postcode: told before anything is sent.
  await page.fill('#family', p.family);
  await page.click('#search-form button[type=submit]');
  assert.match(await page.textContent('#search-error'), /at least two of/);
  await page.fill('#dob-day', String(Number(d)));
  await page.fill('#dob-month', String(Number(m)));
  await page.fill('#dob-year', y);
  await page.fill('#postcode', p.postcode.toLowerCase());
  await page.click('#search-form button[type=submit]');
  await page.waitForSelector('#candidates:not([hidden])');
  const cands = page.locator('#cand-list li.cand');
  assert.ok((await cands.count()) >= 1);
  assert.equal(await page.isVisible('#summary'), false, 'even one candidate is not opened by itself');
  const mine = page.locator('#cand-list li.cand', { hasText: fmtNhs(nhs) });
  assert.equal(await mine.count(), 1);
  const t = await mine.textContent();
  for (const want of [p.family.toUpperCase(), p.given[0], p.postcode, fmtNhs(nhs), `${d}-`, 'years', p.gender === 'female' ? 'Female' : 'Male']) {
    assert.ok(t.includes(want), `candidate shows ${want}: ${t}`);
  }
  assert.ok(!page.url().includes(p.family) && !page.url().includes(nhs), 'no patient data in the URL');
  await shot('04-candidates');
  await mine.locator('button.select').click();
  await page.waitForSelector('#summary:not([hidden])');
  assert.ok((await page.textContent('#pt-facts')).includes(fmtNhs(nhs)));
});

test('a wider search shows several candidates with enough to tell them apart', async () => {
  // Family name + postcode district: several people. (Synthetic data: skip quietly if none.)
  let found = null;
  for (const [family, district] of [['Williams', 'SW9'], ['White', 'SE6'], ['Hughes', 'E2']]) {
    const r = await api(`/v1/search?family=${family}&postcode=${district}`);
    if (r.status === 200 && r.body.candidates.length >= 2) { found = [family, district, r.body.candidates.length]; break; }
  }
  if (!found) return;
  await page.click('#close-record');
  await page.fill('#family', found[0]);
  await page.fill('#postcode', found[1]);
  await page.press('#postcode', 'Enter');
  await page.waitForSelector('#candidates:not([hidden])');
  assert.equal(await page.locator('#cand-list li.cand').count(), found[2]);
  assert.match(await page.textContent('#cand-h'), /possible matches — choose the right person/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'cand-h');
  await shot('04-candidates-several');
  await page.click('#cand-back');
});

test('a number the unit does not hold (link up): not cached, and says the link is up', async () => {
  await openByNhs('9434765919');
  await page.waitForSelector('#problem:not([hidden])');
  assert.match(await page.textContent('#problem-h'), /No record for this patient/);
  assert.match(await page.textContent('#problem-body'), /hub has none to share \(the link is up\)/);
});

test('restricted record: break glass asks for a reason and sends ETREAT with it', async () => {
  // The synthetic data has no restricted record, so the first answer is made restricted here;
  // the break-glass request itself goes to the real unit.
  const nhs = sample(/resuscitation decision or care plan/);
  const sent = [];
  await page.route(`**/v1/patients/${nhs}`, async (route) => {
    const h = route.request().headers();
    sent.push({ purpose: h['x-purpose-of-use'], reason: h['x-break-glass-reason'] });
    if (h['x-purpose-of-use'] !== 'ETREAT') {
      await route.fulfill({ status: 403, contentType: 'application/json', body: JSON.stringify({ error: 'restricted', message: 'this record is restricted' }) });
    } else {
      await route.continue();
    }
  });
  await page.click('#problem-back');
  await openByNhs(nhs);
  await page.waitForSelector('#bg-form:not([hidden])');
  assert.match(await page.textContent('#problem-h'), /restricted/);
  await page.click('#bg-form button[type=submit]');
  assert.match(await page.textContent('#bg-error'), /reason/);
  await page.fill('#bg-reason', 'Unconscious patient, treating now, no other source');
  await page.click('#bg-form button[type=submit]');
  await page.waitForSelector('#summary:not([hidden])');
  assert.equal(await page.isVisible('#bg-banner'), true);
  assert.match(await page.textContent('#bg-banner'), /opened for emergency treatment/);
  assert.deepEqual(sent.at(-1), { purpose: 'ETREAT', reason: 'Unconscious patient, treating now, no other source' });
  await page.unroute(`**/v1/patients/${nhs}`);
});

test('stale banner: an old record is shown in amber with its age', async () => {
  // The demo's data is minutes old, so the answer is aged here: stale=true and 30 hours.
  const nhs = sample(/^allergies/);
  await page.route(`**/v1/patients/${nhs}`, async (route) => {
    const resp = await route.fetch();
    const json = await resp.json();
    json.stale = true;
    json.age_seconds = 30 * 3600;
    await route.fulfill({ response: resp, json });
  });
  await page.click('#close-record');
  await openSummary(nhs);
  const b = page.locator('#fresh-banner');
  assert.equal(await b.getAttribute('data-stale'), 'true');
  assert.match(await b.getAttribute('class'), /\bstale\b/);
  assert.match(await b.textContent(), /^OLD DATA — Record as of \d\d:\d\d (yesterday|on \d\d-\w{3}-\d{4}) — 30 hours ago\./);
  const bg = await b.evaluate((el) => getComputedStyle(el).backgroundColor);
  assert.equal(bg, 'rgb(255, 191, 71)', 'amber');
  await shot('05-stale');
  await page.unroute(`**/v1/patients/${nhs}`);
});

test('offline: the banner appears when the hub goes down; cached records still show; uncached say the link is down', async () => {
  demo.stdin.write('h\n');
  await waitFor(() => /hub is OFFLINE/.test(demoOut), 'the demo hub to go offline', 10_000);
  await page.waitForFunction(() => /OFFLINE/.test(document.getElementById('link-banner').textContent), null, { timeout: 30_000 });
  assert.equal(await page.isVisible('#link-banner'), true);
  assert.equal(await page.getAttribute('#link-banner', 'role'), 'status');
  assert.equal(await page.getAttribute('#link-banner', 'aria-live'), 'polite');
  const nhs = sample(/resuscitation decision or care plan/);
  await page.click('#close-record');
  await openSummary(nhs);
  assert.match(await page.textContent('#link-banner'), /OFFLINE — no link to the hub/);
  await shot('06-offline');
  await openByNhs('9434765919');
  await page.waitForSelector('#problem:not([hidden])');
  assert.match(await page.textContent('#problem-body'), /link to the hub is DOWN/);
  // Back online: the banner goes.
  demo.stdin.write('h\n');
  await page.waitForFunction(() => document.getElementById('link-banner').hidden, null, { timeout: 30_000 });
});

test('keyboard only: sign in, find, read; focus is always visible', async () => {
  const nhs = sample(/no known allergies/);
  await page.click('#problem-back');
  await page.keyboard.press('Tab'); // from the NHS number field to its button
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Show summary');
  const ring = await page.evaluate(() => {
    const s = getComputedStyle(document.activeElement);
    return { outline: s.outlineStyle, shadow: s.boxShadow, bg: s.backgroundColor };
  });
  assert.ok(ring.outline !== 'none' || ring.shadow !== 'none', `a visible focus ring: ${JSON.stringify(ring)}`);
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.type(nhs);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#summary:not([hidden])');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'pt-name');
  // Every input has a label.
  const unlabelled = await page.$$eval('input, textarea', (els) => els.filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id));
  assert.deepEqual(unlabelled, []);
});

test('works at tablet (768 px) and kiosk (1080p) sizes without sideways scrolling', async () => {
  for (const [w, hgt] of [[768, 1024], [1920, 1080]]) {
    await page.setViewportSize({ width: w, height: hgt });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${w} px: ${overflow} px of sideways scroll`);
    const fontPx = await page.evaluate(() => parseFloat(getComputedStyle(document.querySelector('.item-name, .empty-main')).fontSize));
    assert.ok(fontPx >= 20, `${w} px: large type (${fontPx} px)`);
    await shot(`07-summary-${w}`);
  }
  await page.setViewportSize({ width: 1280, height: 800 });
});

test('a token the unit refuses signs the user out and clears it', async () => {
  const forged = `${token.split('.')[0]}.${'A'.repeat(86)}`;
  await page.click('#signout');
  await page.fill('#token', forged);
  await page.press('#token', 'Enter');
  await page.waitForSelector('#find:not([hidden])');
  await openByNhs(sample(/^allergies/));
  await page.waitForSelector('#signin:not([hidden])');
  assert.match(await page.textContent('#token-error'), /did not accept your shift token/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await signIn();
});

test('sign out leaves no token and no clinical data in the browser', async () => {
  const nhs = sample(/^allergies/);
  const { body: json } = await api(`/v1/patients/${nhs}`);
  await openSummary(nhs);
  await page.click('#signout');
  await page.waitForSelector('#signin:not([hidden])');
  const s = await storageDump();
  assert.deepEqual(s, { session: {}, local: {}, cookie: '' });
  const state = await context.storageState();
  assert.deepEqual(state.cookies, []);
  for (const o of state.origins) assert.deepEqual(o.localStorage, []);
  const all = await page.evaluate(() => document.documentElement.outerHTML + document.body.innerText);
  for (const secret of [token, nhs, fmtNhs(nhs), json.patient.family, json.allergies.entries[0].concept.coding.display]) {
    assert.ok(!all.includes(secret), `"${secret.slice(0, 24)}" is gone from the page`);
  }
  assert.ok(!(await page.inputValue('#nhs')) && !(await page.inputValue('#family')), 'the forms are empty');
  // A reload does not bring anyone back.
  await page.reload();
  await page.waitForSelector('#signin:not([hidden])');
});

test('no script errors and no Content-Security-Policy violations on the way', () => {
  assert.deepEqual(pageProblems, []);
});
