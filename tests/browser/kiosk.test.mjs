// End-to-end tests of the kiosk / tablet page in headless Chromium (Debian's package, driven by
// playwright-core; no browser download), against the real stack: `kerbside demo` brings up a
// hub, a unit syncing from it over QUIC, and the LAN API serving the page.
//
//   KERBSIDE_BIN      the kerbside demo binary (default: target/release/kerbside from the repo root)
//   CHROMIUM_BIN      the browser (default: /usr/bin/chromium)
//   SCREENSHOT_DIR    where the run saves screenshots (default: target/screenshots)
//   KIOSK_STATIC_DIR  for page development only: serve index.html, app.js and style.css from this
//                     folder (e.g. edge-daemon/static) instead of the ones compiled into the
//                     daemon, so a page change can be tried without rebuilding it
//   KIOSK_CASES       hand-written FHIR bundles loaded into the demo hub with `--ingest`
//                     (default: cases.ndjson here; see docs/kiosk.md for what each patient shows)
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
const BIN = process.env.KERBSIDE_BIN || path.join(root, 'target', 'release', 'kerbside');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(root, 'target', 'screenshots');
const STATIC = process.env.KIOSK_STATIC_DIR ? path.resolve(process.env.KIOSK_STATIC_DIR) : null;
const CASES = process.env.KIOSK_CASES ? path.resolve(process.env.KIOSK_CASES) : path.join(here, 'cases.ndjson');

// The patients of cases.ndjson (NHS numbers in the 999 test range, none used by tests/corpus).
const CASE = {
  dnacpr: '9998100003', // DNACPR as a Consent denying CPR (SNOMED 89666000), King's
  rescinded: '9998100011', // a DNACPR rescinded at its source (Consent inactive): no current decision
  medicines: '9998100038', // warfarin recorded four times, a stopped apixaban, an unresolved reference
  allergies: '9998100046', // current, resolved and refuted allergies; active and expired flags
  noAllergyInfo: '9998100054', // IPS "no-allergy-info" on an AllergyIntolerance
  respect: '9998100062', // ReSPECT form (not for CPR) replacing an older one; a discharge summary
  conflict: '9998100070', // King's DNACPR and a later GP "for resuscitation"
  restricted: '9998100089', // restricted (meta.security R) DNACPR, allergy and condition
  deceased: '9998100097',
  oldNumber: '9998100100', // superseded by 9998100119
  newNumber: '9998100119',
  sFlag: '9998100127', // PDS S-flag: address withheld
};

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

/** A screenshot of one element (a section), whatever the scroll position. */
async function shotOf(selector, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.locator(selector).screenshot({ path: path.join(SHOTS, `${name}.png`) });
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

async function openSummary(nhs, shown = nhs) {
  await openByNhs(nhs);
  await page.waitForSelector('#summary:not([hidden])');
  await page.waitForFunction((d) => document.getElementById('pt-facts').textContent.includes(d), fmtNhs(shown));
}

/** 27-Mar-1957, as the page writes a FHIR date. */
function pageDate(s) {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(s);
  const mon = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][Number(m[2]) - 1];
  return `${m[3]}-${mon}-${m[1]}`;
}

/** The page's background colour of an element, as the browser computes it. */
function bgOf(sel) {
  return page.$eval(sel, (el) => getComputedStyle(el).backgroundColor);
}

/**
 * cases.ndjson with its stopped medicines' end dates moved to 45 days ago: "recently stopped"
 * is within a year of the unit's today, and the file's own dates would age out of that.
 */
function casesForToday() {
  const ended = new Date(Date.now() - 45 * 86_400_000).toISOString().slice(0, 10);
  const lines = fs.readFileSync(CASES, 'utf8').split('\n').filter((l) => l.trim());
  const out = lines.map((l) => {
    const b = JSON.parse(l);
    for (const e of b.entry || []) {
      const r = e.resource;
      if (r.resourceType === 'MedicationStatement' && r.status === 'stopped' && r.effectivePeriod && r.effectivePeriod.end) {
        r.effectivePeriod.end = ended;
      }
    }
    return JSON.stringify(b);
  });
  const file = path.join(dir, 'cases.ndjson');
  fs.writeFileSync(file, `${out.join('\n')}\n`);
  return file;
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
  assert.ok(fs.existsSync(BIN), `no kerbside binary at ${BIN}: build it with cargo build --release -p kerbside`);
  const port = await freePort();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kerbside-browser-'));
  base = `http://127.0.0.1:${port}`;
  demo = spawn(BIN, ['demo', '--patients', '2000', '--lan', `127.0.0.1:${port}`, '--dir', dir, '--ingest', casesForToday()], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  demo.stdout.on('data', (b) => { demoOut += b.toString(); });
  demo.stderr.on('data', (b) => { demoOut += b.toString(); });
  demo.on('exit', (code, sig) => { demoOut += `\n[demo exited: ${code ?? sig}]\n`; });
  await waitFor(() => /Ctrl-C stops the demo/.test(demoOut) || /demo exited/.test(demoOut), 'the demo to start', 90_000);
  assert.match(demoOut, /Ctrl-C stops the demo/, `the demo did not start:\n${demoOut}`);
  assert.match(demoOut, /cases\.ndjson: \d+ bundles accepted, 0 rejected/, `every case bundle was accepted:\n${demoOut}`);
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
  const items = await page.$$('.sec-allergies > ul.items > li.item');
  assert.equal(items.length, json.allergies.entries.length, 'the current allergies (past ones are grouped below)');
  const text = await page.textContent('.sec-allergies');
  for (const a of json.allergies.entries) {
    const name = a.concept.text || a.concept.coding.display;
    assert.ok(text.includes(name), `allergy ${name} shown`);
    const want = { high: 'HIGH criticality', low: 'Low criticality', 'unable-to-assess': 'Criticality: unable to assess' }[a.criticality] || 'Criticality not recorded';
    assert.ok(text.includes(want), `criticality "${want}" shown for ${name}`);
    for (const r of a.reactions || []) assert.ok(text.includes(r.manifestation.text || r.manifestation.coding.display), 'reaction shown');
    assert.ok(text.includes(a.provenance.source_name || a.provenance.source_ods), 'source organisation shown');
  }
  assert.equal(await page.$$eval('.sec-allergies > ul.items > li.item', (els) => els.filter((e) => /Source: .+ · updated \d\d-\w{3}-\d{4}/.test(e.textContent)).length), items.length, 'every item says its source and when it was last updated');
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
    assert.match(t, /^No information$|^None known — .+|withheld$/, `${sec}: ${t}`);
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
    assert.equal(await page.locator(`.sec-${sec} > ul.items > li.item`).count(), json[sec].entries.length);
  }
  // Every item of every section (current and past) names its source and when it was updated.
  const items = await page.$$eval('#sections li.item', (els) => els.map((e) => e.textContent));
  const lists = ['entries', 'past', 'stopped', 'superseded', 'history'];
  const total = ['allergies', 'resuscitation', 'care_plans', 'medications', 'conditions', 'alerts']
    .reduce((n, k) => n + lists.reduce((m, l) => m + (json[k][l] || []).filter((x) => !(k === 'allergies' && x.verification_status === 'refuted')).length, 0), 0);
  assert.equal(items.length, total);
  for (const t of items) assert.match(t, /Source: .+ \(\w+\) · updated \d\d-\w{3}-\d{4}/);
  await shot('02-summary');
  await shot('02-summary-full', { fullPage: true });
  await page.setViewportSize({ width: 1920, height: 1080 });
  await shot('02-summary-kiosk-1080p');
  await page.setViewportSize({ width: 1280, height: 800 });
});

test('"None known — who, when" and "No information" are told apart', async () => {
  const nka = sample(/no known allergies/);
  const { body: a } = await api(`/v1/patients/${nka}`);
  assert.equal(a.allergies.status, 'none_known');
  await openSummary(nka);
  const p = a.allergies.basis[0].provenance;
  const main = await page.textContent('.sec-allergies .empty-main');
  assert.match(main, /^None known — .+, \d\d-\w{3}-\d{4}$/);
  assert.ok(main.includes(p.source_name || p.source_ods), `who said so: ${main}`);
  assert.equal(await page.getAttribute('.sec-allergies', 'data-status'), 'none_known');
  assert.ok(!(await page.textContent('.sec-allergies')).includes('No information'));

  const noinfo = sample(/no allergy information/);
  const { body: b } = await api(`/v1/patients/${noinfo}`);
  assert.equal(b.allergies.status, 'no_information');
  await openSummary(noinfo);
  assert.equal(await page.textContent('.sec-allergies .empty-main'), 'No information');
  assert.match(await page.textContent('.sec-allergies'), /does not mean the patient has no allergies/);
  assert.doesNotMatch(await page.textContent('.sec-allergies'), /none/i, 'no information is never "none"');
  await shot('03-no-allergy-information');
});

// ------------------------------------------------------------------ the clinical view (cases.ndjson)

test('DNACPR sent as a Consent denying CPR: a red "NOT FOR CPR" banner in the unit\'s words, first', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.dnacpr}`);
  const dec = json.resuscitation.decision;
  assert.equal(dec.state, 'not_for_cpr');
  await page.setViewportSize({ width: 1366, height: 768 });
  await openSummary(CASE.dnacpr);
  const banner = page.locator('#decision');
  assert.equal(await banner.getAttribute('data-state'), 'not_for_cpr');
  assert.equal(await page.textContent('#decision-h'), dec.headline, 'the headline word for word');
  assert.match(dec.headline, /^NOT FOR CPR — DNACPR, 1 March 2025, King's College Hospital/);
  assert.equal(await bgOf('#decision'), 'rgb(164, 0, 15)', 'red');
  // Before every section, and on the first screen of a 1366 × 768 kiosk.
  assert.ok(await page.$eval('#decision', (d) => !!(d.compareDocumentPosition(document.getElementById('sections')) & Node.DOCUMENT_POSITION_FOLLOWING)));
  const box = await banner.boundingBox();
  assert.ok(box.y + box.height <= 768, `the banner is on the first screen (${JSON.stringify(box)})`);
  assert.ok(parseFloat(await page.$eval('#decision-h', (e) => getComputedStyle(e).fontSize)) >= 30, 'large');
  // The item says what the decision means, never the bare recorded concept ("Cardiopulmonary resuscitation").
  const item = page.locator('.sec-resuscitation > ul.items > li.item').first();
  assert.equal(await item.locator('.item-name').textContent(), 'NOT for CPR');
  assert.doesNotMatch(await page.textContent('.sec-resuscitation'), /Cardiopulmonary resuscitation/);
  await shot('10-dnacpr');
  // On a phone too, the decision is on the first screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const phone = await banner.boundingBox();
  assert.ok(phone.y < 844 - 120, `the banner's headline is on a phone's first screen (${JSON.stringify(phone)})`);
  await shot('10-dnacpr-phone');
  await page.setViewportSize({ width: 1366, height: 768 });
});

test('conflicting current decisions: a CONFLICT banner lists each decision with its source and date', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.conflict}`);
  const res = json.resuscitation;
  assert.equal(res.decision.state, 'conflict');
  assert.equal(res.entries.length, 2);
  await openSummary(CASE.conflict);
  assert.equal(await page.getAttribute('#decision', 'data-state'), 'conflict');
  const text = await page.textContent('#decision');
  assert.ok(text.includes(res.decision.headline), 'the headline word for word');
  assert.match(text, /CONFLICT/);
  const listed = await page.$$eval('#decision .conflict-list li', (els) => els.map((e) => e.textContent));
  assert.equal(listed.length, 2);
  for (const e of res.entries) {
    const line = listed.find((l) => l.includes(e.provenance.source_name));
    assert.ok(line, `${e.provenance.source_name} listed: ${listed}`);
    assert.ok(line.includes(pageDate(e.decided)), `with its date: ${line}`);
    assert.ok(line.startsWith({ not_for_cpr: 'NOT for CPR', for_cpr: 'For CPR' }[e.cpr]), line);
  }
  assert.notEqual(await bgOf('#decision'), 'rgb(164, 0, 15)', 'not the plain DNACPR banner');
  await shot('11-conflict');
});

test('no current decision (the only DNACPR was rescinded): "No resuscitation decision recorded", never for CPR', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.rescinded}`);
  const res = json.resuscitation;
  assert.equal(res.decision.state, 'no_decision');
  assert.equal(res.entries.length, 0);
  assert.equal(res.history[0].state, 'rescinded');
  await openSummary(CASE.rescinded);
  assert.equal(await page.getAttribute('#decision', 'data-state'), 'no_decision');
  assert.equal(await page.textContent('#decision-h'), 'No resuscitation decision recorded');
  const text = await page.textContent('#decision');
  assert.doesNotMatch(text, /\bfor CPR\b/i, 'nothing reads as "for CPR"');
  assert.doesNotMatch(text, /NOT FOR CPR/, 'the rescinded DNACPR is not the decision');
  assert.ok(!['rgb(0, 112, 60)', 'rgb(230, 244, 236)'].includes(await bgOf('#decision')), 'not green');
  // The rescinded DNACPR is history: folded away below, marked as such.
  assert.equal(await page.locator('.sec-resuscitation > ul.items').count(), 0);
  const hist = page.locator('.sec-resuscitation details.past-history');
  assert.equal(await hist.getAttribute('open'), null, 'history starts folded');
  assert.match(await hist.locator('summary').textContent(), /History.*\(1\)/);
  assert.match(await hist.textContent(), /Rescinded/);
  await shot('12-no-decision');
});

test('restricted items: the decision and a section withheld in words; break glass shows them, marked restricted', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.restricted}`);
  assert.equal(json.resuscitation.decision.state, 'withheld');
  assert.equal(json.resuscitation.withheld, 1);
  assert.equal(json.allergies.withheld, 1);
  assert.equal(json.conditions.status, 'withheld');
  await openSummary(CASE.restricted);
  assert.equal(await page.getAttribute('#decision', 'data-state'), 'withheld');
  assert.equal(await page.textContent('#decision-h'), json.resuscitation.decision.headline);
  assert.match(json.resuscitation.decision.headline, /withheld.*restricted.*break-glass/i);
  assert.match(await page.textContent('.sec-allergies .withheld-line'), /^1 restricted item withheld — break-glass to see/);
  assert.equal(await page.textContent('.sec-conditions .empty-main'), 'Conditions withheld');
  assert.match(await page.textContent('.sec-conditions'), /1 restricted item withheld — break-glass to see/);
  assert.doesNotMatch(await page.textContent('#sections'), /Sulfonamide|immunodeficiency/i, 'nothing restricted on the page');
  assert.equal(await page.isVisible('#bg-banner'), false, 'nothing was opened: no break-glass banner');
  await shot('13-withheld');
  // Break glass from the banner: the same form and headers as a restricted record.
  const sent = [];
  const onReq = (r) => { if (r.url().includes(`/v1/patients/${CASE.restricted}`)) sent.push(r.headers()); };
  page.on('request', onReq);
  await page.click('#decision button.bg-open');
  await page.waitForSelector('#bg-form:not([hidden])');
  assert.equal(await page.isVisible('#problem-record'), true, 'a way back to the record without breaking the glass');
  // A reason in any language: a smart apostrophe and an accent (the page percent-encodes it,
  // since browsers refuse non-ASCII header values; the unit decodes it).
  const reason = 'Cardiac arrest, patient’s café collapse — need the decision now';
  await page.fill('#bg-reason', reason);
  await page.click('#bg-form button[type=submit]');
  await page.waitForSelector('#summary:not([hidden])');
  await page.waitForFunction(() => document.getElementById('decision').dataset.state !== 'withheld');
  page.off('request', onReq);
  assert.equal(sent.at(-1)['x-purpose-of-use'], 'ETREAT');
  assert.equal(decodeURIComponent(sent.at(-1)['x-break-glass-reason']), reason);
  const { body: open } = await api(`/v1/patients/${CASE.restricted}`, { 'X-Purpose-Of-Use': 'ETREAT', 'X-Break-Glass-Reason': 'browser test: compare' });
  assert.equal(open.resuscitation.withheld, 0);
  assert.equal(await page.getAttribute('#decision', 'data-state'), open.resuscitation.decision.state);
  assert.equal(await page.textContent('#decision-h'), open.resuscitation.decision.headline);
  assert.match(await page.textContent('#bg-banner'), /opened for emergency treatment/);
  const sulfa = page.locator('.sec-allergies li.item', { hasText: 'Sulfonamide' });
  assert.equal(await sulfa.locator('.badge.restricted-badge').textContent(), 'Restricted');
  assert.equal(await page.locator('.withheld-line').count(), 0, 'nothing left withheld');
  await shot('13-withheld-break-glass');
});

test('allergies: a refuted allergy is not shown; a resolved one is under "Past" without criticality styling', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.allergies}`);
  const all = [...json.allergies.entries, ...json.allergies.past];
  assert.ok(all.some((a) => a.verification_status === 'refuted') || !JSON.stringify(json.allergies).includes('91936005'), 'the refuted penicillin allergy is at most past');
  assert.ok(!json.allergies.entries.some((a) => a.verification_status === 'refuted' || a.clinical_status === 'resolved'), 'neither is current');
  await openSummary(CASE.allergies);
  const sec = await page.textContent('.sec-allergies');
  assert.doesNotMatch(sec, /penicillin/i, 'refuted: never shown');
  const current = page.locator('.sec-allergies > ul.items > li.item');
  assert.equal(await current.count(), 2);
  assert.equal(await current.filter({ hasText: 'Latex allergy' }).locator('.badge.crit-high').count(), 1);
  const past = page.locator('.sec-allergies .past-past');
  assert.equal(await past.locator('h3').textContent(), 'Past (resolved / inactive) (1)');
  const egg = past.locator('li.item', { hasText: 'Egg allergy' });
  assert.equal(await egg.count(), 1);
  assert.match(await egg.textContent(), /Resolved/);
  assert.equal(await egg.locator('.badge.crit-high, .badge.crit-low, .badge.crit-unknown').count(), 0, 'no criticality badge');
  assert.doesNotMatch(await egg.getAttribute('class'), /is-high/);
  assert.equal(await egg.evaluate((e) => getComputedStyle(e).backgroundColor), 'rgba(0, 0, 0, 0)', 'no red background');
  await shot('14-allergies-past');
  await shotOf('.sec-allergies', '14-allergies-section');
});

test('IPS "no information about allergies" is not an allergy: "No information", never "none" or a count', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.noAllergyInfo}`);
  assert.equal(json.allergies.status, 'no_information');
  assert.equal(json.allergies.entries.length, 0);
  await openSummary(CASE.noAllergyInfo);
  assert.equal(await page.textContent('.sec-allergies h2'), 'Allergies and adverse reactions');
  assert.equal(await page.textContent('.sec-allergies .empty-main'), 'No information');
  assert.equal(await page.locator('.sec-allergies li.item').count(), 0);
  assert.doesNotMatch(await page.textContent('.sec-allergies'), /none/i);
});

test('medicines: warfarin recorded four times is one line naming its records; a stopped anticoagulant is "Recently stopped", no high-risk badge', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.medicines}`);
  const meds = json.medications;
  const warf = meds.entries.filter((m) => /warfarin/i.test(m.concept.text || m.concept.coding.display));
  assert.equal(warf.length, 1, 'one warfarin line');
  assert.equal(warf[0].records.length, 4);
  assert.equal(meds.stopped.length, 1);
  assert.equal(meds.stopped[0].high_risk, undefined);
  await openSummary(CASE.medicines);
  const lines = page.locator('.sec-medications > ul.items > li.item', { hasText: /Warfarin/ });
  assert.equal(await lines.count(), 1, 'warfarin shown once');
  const w = await lines.textContent();
  assert.match(w, /HIGH-RISK: anticoagulant/);
  assert.match(w, /Recorded as: statement \+ request \+ 2 orders, Barts Health NHS Trust/);
  const stopped = page.locator('.sec-medications .past-stopped');
  assert.equal(await stopped.locator('h3').textContent(), 'Recently stopped (1)');
  const apix = stopped.locator('li.item', { hasText: 'Apixaban' });
  const t = await apix.textContent();
  assert.match(t, /Stopped/);
  assert.ok(t.includes(`Ended ${pageDate(meds.stopped[0].ended)}`), t);
  assert.equal(await apix.locator('.badge.high-risk').count(), 0, 'no high-risk badge on a stopped medicine');
  assert.doesNotMatch(t, /HIGH-RISK/);
  // A medicine whose Medication reference resolved nowhere says so; no allergies recorded says who and when.
  assert.match(await page.locator('.sec-medications li.item', { hasText: 'Ramipril' }).textContent(), /Reference could not be resolved/);
  const nka = json.allergies.basis[0].provenance;
  assert.equal(await page.textContent('.sec-allergies .empty-main'), `None known — Barts Health NHS Trust, ${pageDate(new Date(nka.last_updated).toISOString())}`);
  await shot('15-medicines');
  await shotOf('.sec-medications', '15-medicines-section');
});

test('alerts: an expired flag is under "Past alerts"; the active one is current', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.allergies}`);
  assert.equal(json.alerts.entries.length, 1);
  assert.equal(json.alerts.past.length, 1);
  await openSummary(CASE.allergies);
  const current = page.locator('.sec-alerts > ul.items > li.item');
  assert.equal(await current.count(), 1);
  assert.match(await current.textContent(), /British Sign Language/);
  const past = page.locator('.sec-alerts .past-past');
  assert.equal(await past.locator('h3').textContent(), 'Past alerts (1)');
  assert.match(await past.textContent(), /MARAC.*ended 31-May-2026/s);
  assert.equal(await page.textContent('.sec-alerts h2 .count'), ' (1)');
  await shotOf('.sec-alerts', '14-alerts-section');
});

test('ReSPECT form: an amber banner; the replaced form folded away; a discharge summary is no care plan; cut text says so', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.respect}`);
  assert.equal(json.resuscitation.decision.state, 'respect_plan');
  assert.equal(json.care_plans.entries.length, 1);
  assert.equal(json.care_plans.superseded.length, 1);
  await openSummary(CASE.respect);
  assert.equal(await page.textContent('#decision-h'), json.resuscitation.decision.headline);
  assert.equal(await bgOf('#decision'), 'rgb(255, 244, 214)', 'amber');
  const cp = page.locator('.sec-care_plans > ul.items > li.item');
  assert.equal(await cp.count(), 1);
  assert.match(await cp.textContent(), /Text truncated — full record at Guy's and St Thomas' NHS Foundation Trust \(RJ1\)/);
  const replaced = page.locator('.sec-care_plans details.past-superseded');
  assert.equal(await replaced.getAttribute('open'), null, 'the replaced plan is behind a note');
  assert.match(await replaced.locator('summary').textContent(), /1 earlier plan replaced/);
  assert.doesNotMatch(await page.textContent('#sections'), /Discharge summary/);
  await shot('16-respect');
});

test('notices first: recorded as deceased; a former NHS number redirected to the current record', async () => {
  const { body: dead } = await api(`/v1/patients/${CASE.deceased}`);
  assert.equal(dead.patient.deceased, true);
  await openSummary(CASE.deceased);
  assert.equal(await page.textContent('#pt-notices .deceased'), `Recorded as deceased — ${pageDate(dead.patient.deceased_at)}`);
  assert.ok(await page.$eval('#pt-notices', (n) => !!(n.compareDocumentPosition(document.getElementById('pt-name')) & Node.DOCUMENT_POSITION_FOLLOWING)), 'above the name');
  await shot('17-deceased');

  const { body: moved } = await api(`/v1/patients/${CASE.oldNumber}`);
  assert.equal(moved.redirected_from, CASE.oldNumber);
  assert.equal(moved.nhs_number, CASE.newNumber);
  await openSummary(CASE.oldNumber, CASE.newNumber);
  assert.match(await page.textContent('#pt-notices .redirected'),
    new RegExp(`^You asked for ${fmtNhs(CASE.oldNumber)} — this record now lives under ${fmtNhs(CASE.newNumber)}: the old number was superseded or merged`));
  assert.match(await page.textContent('#pt-facts'), new RegExp(`NHS number:?${fmtNhs(CASE.newNumber)}.*Former NHS numbers:?${fmtNhs(CASE.oldNumber)}`, 's'));
  await shot('18-redirected');
});

test('S-flag: the address is withheld, and the page says so', async () => {
  const { body: json } = await api(`/v1/patients/${CASE.sFlag}`);
  assert.equal(json.patient.restricted, true);
  assert.equal(json.patient.postcode, undefined);
  await openSummary(CASE.sFlag);
  assert.equal(await page.textContent('#pt-notices .restricted'), 'Address withheld (restricted record)');
  assert.match(await page.textContent('#pt-facts'), /Postcode:?Withheld \(restricted record\)/);
  assert.doesNotMatch(await page.textContent('#summary'), /NW1 0PE|Plender/);
  await page.setViewportSize({ width: 1280, height: 800 });
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
  assert.deepEqual({ ...sent.at(-1), reason: decodeURIComponent(sent.at(-1).reason) }, { purpose: 'ETREAT', reason: 'Unconscious patient, treating now, no other source' });
  await page.unroute(`**/v1/patients/${nhs}`);
});

test('conveying: the crew names the ED, the code is checked as typed, and the unit says what happens next', async () => {
  const nhs = sample(/^allergies/);
  await openSummary(nhs);
  // The demo's unit is a vehicle: the control is offered.
  await page.waitForSelector('#convey-open:not([hidden])');
  await page.click('#convey-open');
  await page.waitForSelector('#convey-form:not([hidden])');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'convey-site');
  await page.fill('#convey-site', 'R!');
  await page.click('#convey-form button[type=submit]');
  assert.match(await page.textContent('#convey-error'), /ODS code/);
  const sent = [];
  page.on('request', (req) => {
    if (req.url().endsWith('/conveying')) sent.push({ method: req.method(), body: req.postData(), auth: req.headers().authorization });
  });
  await page.fill('#convey-site', 'rj122');
  await page.click('#convey-form button[type=submit]');
  await page.waitForFunction(() => /^Sent:/.test(document.getElementById('convey-msg').textContent));
  assert.match(await page.textContent('#convey-msg'), /RJ122 will be sent this patient's record/);
  assert.equal(await page.isVisible('#convey-form'), false);
  assert.deepEqual(sent.at(-1), { method: 'POST', body: JSON.stringify({ site: 'RJ122' }), auth: `Bearer ${token}` });
  // Closing the record forgets the message.
  await page.click('#close-record');
  assert.equal(await page.textContent('#convey-msg'), '');
  // Leave a record open, as the next test expects.
  await openSummary(nhs);
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

test('a full disk on the unit is said on every screen, and the notice goes when space returns', async () => {
  // The real unit's status with storage.disk_full set (filling the disk is tests/system/disk_full.rs).
  await page.route('**/v1/status', async (route) => {
    const r = await route.fetch();
    const s = await r.json();
    s.storage = { ...(s.storage || {}), disk_full: true, free_bytes: 0 };
    await route.fulfill({ response: r, body: JSON.stringify(s) });
  });
  await page.waitForFunction(() => /UNIT STORAGE FULL/.test(document.getElementById('link-banner').textContent), null, { timeout: 15000 });
  assert.equal(await page.isVisible('#link-banner'), true);
  assert.match(await page.textContent('#link-banner'), /may be out of date/);
  assert.match(await page.textContent('#unit-status'), /storage FULL/);
  await page.unroute('**/v1/status');
  await page.waitForFunction(() => !/UNIT STORAGE FULL/.test(document.getElementById('link-banner').textContent), null, { timeout: 15000 });
  assert.doesNotMatch(await page.textContent('#unit-status'), /storage FULL/);
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
