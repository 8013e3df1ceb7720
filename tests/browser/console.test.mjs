// End-to-end tests of the hub's fleet and privacy console (docs/console.md) in headless
// Chromium (Debian's package, driven by playwright-core), against the real stack: `kerbside demo`
// brings up a hub with its admin listener (which serves the console), a unit syncing from it over
// QUIC, and operator tokens for both roles. Each view and action, the refusals (a fleet engineer
// cannot read audit trails; a privacy officer cannot wipe), a token the hub does not accept, and
// an axe-core accessibility check of the console and the kiosk page (no serious or critical
// violations).
//
//   KERBSIDE_BIN, CHROMIUM_BIN, SCREENSHOT_DIR   as for kiosk.test.mjs
//
// Run with `.ci/browser-tests`, or `node --test console.test.mjs` here.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const require = createRequire(import.meta.url);
const AXE = require.resolve('axe-core/axe.min.js');
const BIN = process.env.KERBSIDE_BIN || path.join(root, 'target', 'release', 'kerbside');
const PROVISION = process.env.EDGE_PROVISION_BIN || path.join(root, 'target', 'release', 'edge-provision');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOT_DIR || path.join(root, 'target', 'screenshots');
const UNIT = 'LAS-DEMO-0001';

let demo;
let demoOut = '';
let dir;
let lan; // the unit's LAN API
let admin; // the hub's admin listener
let shiftToken;
let fleetToken;
let privacyToken;
let firstPatient;
let objectedPatient;
let browser;
let page;
const pageProblems = [];

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
    const iv = setInterval(async () => {
      let v;
      try { v = await pred(); } catch { v = false; }
      if (v) {
        clearInterval(iv);
        resolve(v);
      } else if (Date.now() - t0 > ms) {
        clearInterval(iv);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}\n--- demo output ---\n${demoOut.slice(-3000)}`));
      }
    }, 100);
  });
}

async function shot(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: false });
}

async function adminGet(p, token) {
  const r = await fetch(admin + p, { headers: { Authorization: `Bearer ${token}` } });
  return { status: r.status, body: await r.json().catch(() => null) };
}

async function signIn(token) {
  // A fresh tab's state: no token kept from an earlier sign-in.
  await page.goto(`${admin}/console`);
  await page.evaluate(() => sessionStorage.clear());
  await page.goto('about:blank');
  await page.goto(`${admin}/console`);
  await page.waitForSelector('#sign-in:not([hidden])');
  await page.fill('#token', token);
  await page.click('#sign-in-form button[type=submit]');
}

/** axe-core on the page as it is now: no serious or critical violations. */
async function axe(what) {
  // Evaluated through the DevTools protocol: the pages' CSP (rightly) refuses injected scripts.
  await page.evaluate(fs.readFileSync(AXE, 'utf8'));
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }));
  });
  const bad = result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `${what}: axe-core found serious or critical violations: ${JSON.stringify(bad, null, 1)}`);
  return result;
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `no kerbside binary at ${BIN}: build it with cargo build --release -p kerbside`);
  const port = await freePort();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kerbside-console-'));
  lan = `http://127.0.0.1:${port}`;
  demo = spawn(BIN, ['demo', '--patients', '300', '--lan', `127.0.0.1:${port}`, '--dir', dir], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  demo.stdout.on('data', (b) => { demoOut += b.toString(); });
  demo.stderr.on('data', (b) => { demoOut += b.toString(); });
  demo.on('exit', (code, sig) => { demoOut += `\n[demo exited: ${code ?? sig}]\n`; });
  await waitFor(() => (demoOut.match(/OPERATOR_TOKEN=/g) || []).length >= 2 || /demo exited/.test(demoOut), 'the demo to start', 90_000);
  const m = /console \(hub\):\s+(http:\/\/\S+)\/console/.exec(demoOut);
  assert.ok(m, `the demo printed no console address:\n${demoOut}`);
  admin = m[1];
  [fleetToken, privacyToken] = [...demoOut.matchAll(/OPERATOR_TOKEN=(\S+)/g)].map((x) => x[1]);
  shiftToken = /export TOKEN=(\S+)/.exec(demoOut)[1];
  const tried = [...demoOut.split('Patients to try:')[1].matchAll(/^\s+(\d{10})\s/gm)].map((x) => x[1]);
  [firstPatient, objectedPatient] = tried;
  assert.ok(objectedPatient && objectedPatient !== firstPatient, demoOut);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await context.newPage();
  // Console errors other than the refused calls these tests make on purpose (Chromium logs each
  // 401/403 as "Failed to load resource"): CSP violations, script errors.
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !/^Failed to load resource/.test(msg.text())) pageProblems.push(msg.text());
  });
  page.on('pageerror', (e) => pageProblems.push(String(e)));
});

after(async () => {
  if (browser) await browser.close();
  if (demo && demo.exitCode === null) {
    demo.kill('SIGINT');
    await new Promise((r) => { demo.once('exit', r); setTimeout(r, 5000); });
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('the console is served with a strict CSP and refuses a token the hub does not accept', async () => {
  const r = await fetch(`${admin}/console`);
  assert.equal(r.status, 200);
  const csp = r.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.match(csp, /frame-ancestors 'none'/);
  await signIn('not-a-real-token');
  await page.waitForSelector('#sign-in-error:not([hidden])');
  const err = await page.textContent('#sign-in-error');
  assert.match(err, /Signed out: .+/, err);
  assert.equal(await page.isVisible('#fleet'), false);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
});

test('a fleet engineer sees every unit, sorts and filters, and cannot read audit trails', async () => {
  await signIn(fleetToken);
  await page.waitForSelector('#fleet:not([hidden])');
  await page.waitForFunction((u) => document.querySelector('#fleet-table tbody')?.textContent.includes(u), UNIT);
  const who = await page.textContent('#who-text');
  assert.match(who, /DEMO, Fleet engineer \(OPS-DEMO\) · role fleet/);
  assert.equal(await page.isVisible('#tab-privacy'), false, 'the privacy view is not offered');
  // The unit, connected, with its callsign, cohort, certificate and software version.
  await waitFor(async () => /connected/.test(await page.textContent('#fleet-table tbody')), 'the unit to show connected', 30_000);
  const cells = await page.$$eval('#fleet-table tbody tr:first-child > *', (cs) => cs.map((c) => c.textContent.trim()));
  assert.equal(cells[0], UNIT);
  assert.equal(cells[2], 'DEMO 1');
  assert.equal(cells[3], 'all', `cohort in ${cells}`);
  assert.match(cells[4], /^connected/);
  assert.match(cells[8], /^valid /);
  assert.equal(cells[9], 'active');
  assert.match(cells[11], /^\d+\.\d+\.\d+/, `software version in ${cells}`);
  // Sorted by unit to begin with; a click reverses it, another restores it; another column.
  assert.equal(await page.getAttribute('#fleet-table thead th:first-child', 'aria-sort'), 'ascending');
  await page.click('#fleet-table th button[data-sort=device_id]');
  assert.equal(await page.getAttribute('#fleet-table thead th:first-child', 'aria-sort'), 'descending');
  await page.click('#fleet-table th button[data-sort=lag]');
  assert.equal(await page.getAttribute('#fleet-table thead th:first-child', 'aria-sort'), null);
  assert.equal(await page.getAttribute('#fleet-table thead th:nth-child(6)', 'aria-sort'), 'ascending');
  await page.fill('#fleet-filter', 'no-such-unit');
  assert.equal(await page.locator('#fleet-table tbody tr').count(), 0);
  await page.fill('#fleet-filter', 'demo');
  assert.equal(await page.locator('#fleet-table tbody tr').count(), 1);
  // The fleet's freshness chart: the live unit's copy is current.
  await page.waitForFunction((u) => (document.querySelector('#freshness svg title')?.textContent || '').includes(`${u} live`), UNIT);
  await shot('console-fleet');
  await axe('console, fleet view');
  // The privacy view, asked for directly: the hub refuses and the page says so.
  await page.goto(`${admin}/console#privacy`);
  await page.waitForFunction(() => /Refused: .*privacy operator role/.test(document.getElementById('status').textContent));
  const r = await adminGet(`/admin/audit?patient=${firstPatient}`, fleetToken);
  assert.equal(r.status, 403);
});

test("a unit's page charts its lag and audit backlog as the hub sampled them", async () => {
  await signIn(fleetToken);
  await page.waitForSelector('#fleet:not([hidden])');
  // The fleet's audit backlog over time, from the hub's samples (every 10 s in the demo).
  await page.waitForSelector('#fleet-backlog-chart title', { state: 'attached' });
  const fleetHist = await adminGet('/admin/history', fleetToken);
  assert.equal(fleetHist.status, 200);
  assert.ok(fleetHist.body.points.length >= 1 && fleetHist.body.points.every((p) => p.units >= 1), JSON.stringify(fleetHist.body));
  assert.equal(fleetHist.body.every_s, 10);
  await page.click(`#fleet-table a[href="#unit/${UNIT}"]`);
  await page.waitForSelector('#unit:not([hidden])');
  assert.equal(await page.textContent('#unit-h'), `Unit ${UNIT}`);
  await page.waitForFunction(() => /connected/.test(document.getElementById('unit-facts').textContent));
  // A sample taken while the unit was connected (the demo's unit connects after the hub's first
  // sample), shown in the table and the charts.
  await page.click('#unit-samples-wrap summary');
  await waitFor(async () => (await page.$$eval('#unit-samples tbody tr', (trs) => trs.map((t) => t.textContent))).some((t) => /connected/.test(t)),
    'a sample of the connected unit', 40_000);
  const lagTitle = await page.textContent('#unit-lag-chart title');
  assert.match(lagTitle, new RegExp(`Changes behind for ${UNIT}: now \\d+ changes`), lagTitle);
  assert.match(await page.textContent('#unit-backlog-chart title'), /Audit backlog for .*: now \d+ events/);
  const h = await adminGet(`/admin/history?device=${UNIT}`, fleetToken);
  assert.equal(h.status, 200);
  const connected = h.body.samples.filter((x) => x.connected);
  assert.ok(connected.length >= 1, JSON.stringify(h.body));
  assert.ok(connected.every((x) => Number.isInteger(x.lag) && Number.isInteger(x.audit_backlog) && Number.isInteger(x.records)), JSON.stringify(connected));
  await shot('console-unit');
  await axe('console, unit page');
  // Bad questions get clear errors; a privacy officer is refused the fleet's history.
  assert.equal((await adminGet('/admin/history?hours=0', fleetToken)).status, 400);
  assert.equal((await adminGet('/admin/history?device=no%20such', fleetToken)).status, 400);
  assert.equal((await adminGet('/admin/history', privacyToken)).status, 403);
});

test('an expired operator token is refused at sign-in and signs a session out', async () => {
  assert.ok(fs.existsSync(PROVISION), `no edge-provision binary at ${PROVISION}: build it with cargo build --release -p edge-provision`);
  // A token that expired an hour ago, minted by the real tool on the demo's fleet.
  const issued = new Date(Date.now() - 2 * 3600e3).toISOString().replace(/\.\d+Z$/, 'Z');
  const expired = execFileSync(PROVISION, ['operator', '--fleet', path.join(dir, 'fleet'), '--operator-id', 'OPS-OLD',
    '--name', 'OLD, Token', '--role', 'fleet', '--hours', '1', '--issued-at', issued], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    .trim().split('\n').pop();
  assert.equal((await adminGet('/admin/devices', expired)).status, 401);
  await signIn(expired);
  await page.waitForSelector('#sign-in-error:not([hidden])');
  assert.match(await page.textContent('#sign-in-error'), /Signed out: .*expired/i);
  assert.equal(await page.isVisible('#fleet'), false);
  // Signed in, then the token in the tab is past its expiry: the next call signs the tab out.
  await signIn(fleetToken);
  await page.waitForSelector('#fleet:not([hidden])');
  await page.evaluate((t) => sessionStorage.setItem('kerbside-operator-token', t), expired);
  await page.click('#tab-feeds');
  await page.waitForSelector('#sign-in:not([hidden])');
  assert.match(await page.textContent('#sign-in-error'), /Signed out: .*expired/i);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'the expired token is not kept');
});

test('the feeds view shows each ingest with its rejected lines and why', async () => {
  const good = fs.readFileSync(path.join(here, 'cases.ndjson'), 'utf8').split('\n').find((l) => l.trim());
  const body = [good, '{"resourceType": "Bundle", "type": "collection", "entry": []}', 'this is not JSON'].join('\n');
  const r = await fetch(`${admin}/admin/ingest?source=RJ1`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${fleetToken}`, 'Content-Type': 'application/x-ndjson' },
    body,
  });
  const report = await r.json();
  assert.equal(r.status, 200, JSON.stringify(report));
  assert.equal(report.accepted, 1, JSON.stringify(report));
  await signIn(fleetToken);
  await page.waitForSelector('#tab-feeds');
  await page.click('#tab-feeds');
  await page.waitForFunction(() => /source RJ1/.test(document.querySelector('#feeds-list article')?.textContent || ''));
  // The newest first: this ingest, by the fleet engineer over the admin API.
  const text = await page.textContent('#feeds-list article:first-child');
  assert.match(text, /1 accepted/);
  assert.match(text, /admin API, by OPS-DEMO/);
  assert.match(text, /source RJ1/);
  assert.match(text, /2 rejected/);
  const rows = await page.$$eval('#feeds-list article:first-child details table tbody tr', (trs) => trs.map((tr) => tr.textContent));
  assert.ok(rows.some((t) => t.startsWith('2')), JSON.stringify(rows));
  assert.ok(rows.some((t) => t.startsWith('3')), JSON.stringify(rows));
  // The demo's own loads, made offline before the hub served, are there too.
  assert.match(await page.textContent('#feeds-list'), /offline \(edge-hub ingest synthetic Londoners/);
  await shot('console-feeds');
  await axe('console, feeds view');
  // A privacy officer is refused the feeds.
  const p = await adminGet('/admin/feeds', privacyToken);
  assert.equal(p.status, 403);
});

test('setting a cohort needs the unit id typed, and is recorded in the operator log', async () => {
  await signIn(fleetToken);
  await page.waitForFunction((u) => document.querySelector('#fleet-table tbody')?.textContent.includes(u), UNIT);
  await page.click(`button[aria-label="Set cohort of ${UNIT}"]`);
  await page.waitForSelector('#confirm[open]');
  await page.fill('#cohort-specs', 'all');
  assert.equal(await page.isDisabled('#confirm-ok'), true);
  await page.fill('#confirm-typed', 'LAS-DEMO-0002');
  assert.equal(await page.isDisabled('#confirm-ok'), true, 'the wrong unit id does not confirm');
  await page.fill('#confirm-typed', UNIT);
  assert.equal(await page.isDisabled('#confirm-ok'), false);
  await page.click('#confirm-ok');
  await page.waitForFunction((u) => document.getElementById('status').textContent.includes(`Cohort of ${u} set to all`), UNIT);
  const log = await adminGet('/admin/operator-log?limit=20', privacyToken);
  assert.equal(log.status, 200);
  assert.ok(log.body.entries.some((e) => e.route === '/admin/cohort' && e.operator_id === 'OPS-DEMO' && e.status === 200),
    JSON.stringify(log.body.entries));
});

test('a privacy officer finds who accessed a patient, checks a chain, and cannot wipe', async () => {
  // A clinician reads a patient on the unit; the event reaches the hub with the unit's upload.
  const r = await fetch(`${lan}/v1/patients/${firstPatient}`, { headers: { Authorization: `Bearer ${shiftToken}` } });
  assert.equal(r.status, 200);
  await waitFor(async () => {
    const q = await adminGet(`/admin/audit?patient=${firstPatient}`, privacyToken);
    return q.status === 200 && q.body.events.some((e) => e.staff_name === 'DEMO, Paramedic');
  }, 'the read to reach the hub', 60_000);

  await signIn(privacyToken);
  await page.waitForSelector('#privacy:not([hidden])');
  assert.equal(await page.isVisible('#tab-fleet'), false, 'the fleet view is not offered');
  // The NHS number is checked as typed.
  await page.fill('#q-patient-nhs', '1234567890');
  assert.equal(await page.getAttribute('#q-patient-nhs', 'aria-invalid'), 'true');
  assert.match(await page.textContent('#q-patient-hint'), /not a valid NHS number/);
  await page.fill('#q-patient-nhs', firstPatient);
  assert.equal(await page.getAttribute('#q-patient-nhs', 'aria-invalid'), 'false');
  await page.click('#q-patient button[type=submit]');
  await page.waitForFunction(() => /DEMO, Paramedic/.test(document.getElementById('privacy-result').textContent));
  const result = await page.textContent('#privacy-result');
  assert.match(result, new RegExp(`Accesses to patient ${firstPatient}`));
  assert.match(result, /TREAT/);
  assert.match(result, new RegExp(UNIT));
  // The unit's audit chain.
  await page.fill('#q-verify-id', UNIT);
  await page.click('#q-verify button[type=submit]');
  await page.waitForFunction(() => /chain intact/.test(document.getElementById('privacy-result').textContent));
  assert.match(await page.textContent('#privacy-result'), /No gaps/);
  // A break-glass read on the unit reaches the review list; the officer marks it reviewed with
  // a note, once.
  const bg = await fetch(`${lan}/v1/patients/${firstPatient}`, {
    headers: { Authorization: `Bearer ${shiftToken}`, 'X-Purpose-Of-Use': 'ETREAT', 'X-Break-Glass-Reason': 'console test: unconscious, no other source' },
  });
  assert.equal(bg.status, 200);
  await waitFor(async () => {
    const q = await adminGet('/admin/alerts', privacyToken);
    return q.status === 200 && q.body.alerts.some((e) => e.break_glass_reason && e.break_glass_reason.startsWith('console test'));
  }, 'the break-glass access to reach the hub', 60_000);
  await page.reload();
  await page.waitForSelector('#alerts button');
  const before = await page.textContent('#alerts');
  assert.match(before, /console test: unconscious/);
  const pendingBefore = Number(/(\d+) awaiting review/.exec(before)[1]);
  assert.ok(pendingBefore >= 1, before);
  await page.click('#alerts button');
  await page.waitForSelector('#confirm[open]');
  assert.equal(await page.isDisabled('#confirm-ok'), true, 'a review needs a note');
  await page.fill('#review-note', 'Checked with the crew lead: patient unconscious, appropriate.');
  assert.equal(await page.isDisabled('#confirm-ok'), false);
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /reviewed by DEMO, Privacy officer/.test(document.getElementById('alerts').textContent));
  assert.match(await page.textContent('#alerts'), /Checked with the crew lead/);
  const reviewed = (await adminGet('/admin/alerts', privacyToken)).body.alerts.find((e) => e.review);
  assert.equal(reviewed.review.operator_id, 'IG-DEMO');
  const again = await fetch(`${admin}/admin/alerts/review`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${privacyToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ device_id: reviewed.device_id, seq: reviewed.seq, note: 'again' }),
  });
  assert.equal(again.status, 409, 'one review per alert');
  const empty = await fetch(`${admin}/admin/alerts/review`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${privacyToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ device_id: reviewed.device_id, seq: reviewed.seq, note: '  ' }),
  });
  assert.equal(empty.status, 400, 'a review needs a note');
  const byFleet = await fetch(`${admin}/admin/alerts/review`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${fleetToken}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ device_id: reviewed.device_id, seq: reviewed.seq, note: 'not mine to review' }),
  });
  assert.equal(byFleet.status, 403, 'a fleet engineer cannot review');
  // An export of today's events downloads as NDJSON of FHIR AuditEvents.
  const today = new Date().toISOString().slice(0, 10);
  await page.fill('#q-export-since', today);
  await page.fill('#q-export-until', today);
  await page.click('#q-export button[type=submit]');
  await page.waitForSelector('#privacy-result a[download]');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#privacy-result a[download]')]);
  const text = fs.readFileSync(await download.path(), 'utf8');
  const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.ok(lines.length >= 1 && lines.every((e) => e.resourceType === 'AuditEvent'), text.slice(0, 500));
  assert.ok(lines.some((e) => JSON.stringify(e).includes(firstPatient)), 'the read is in the export');
  // An objection, typed twice over: the record goes from the unit, and the page says when.
  const held = await fetch(`${lan}/v1/patients/${objectedPatient}`, { headers: { Authorization: `Bearer ${shiftToken}` } });
  assert.equal(held.status, 200, 'the unit holds the record before the objection');
  await page.fill('#q-objection-nhs', objectedPatient);
  await page.click('#q-objection button[type=submit]');
  await page.waitForSelector('#confirm[open]');
  await page.fill('#confirm-typed', objectedPatient.slice(0, 9));
  assert.equal(await page.isDisabled('#confirm-ok'), true);
  await page.fill('#confirm-typed', objectedPatient);
  await page.click('#confirm-ok');
  await page.waitForFunction((n) => document.getElementById('privacy-result').textContent.includes(`Every unit has dropped the record of ${n}`), objectedPatient, { timeout: 60_000 });
  const gone = await fetch(`${lan}/v1/patients/${objectedPatient}`, { headers: { Authorization: `Bearer ${shiftToken}` } });
  assert.notEqual(gone.status, 200, 'the unit no longer answers the record');
  // The operator log shows the fleet engineer's cohort change.
  await page.waitForFunction(() => /POST \/admin\/cohort/.test(document.getElementById('oplog').textContent));
  await shot('console-privacy');
  await axe('console, privacy view');
  // The fleet view, asked for directly, is refused; so is a wipe.
  await page.goto(`${admin}/console#fleet`);
  await page.waitForFunction(() => /Refused: .*fleet operator role/.test(document.getElementById('status').textContent));
  const w = await page.evaluate(async ([u, t]) => {
    const resp = await fetch('/admin/wipe', { method: 'POST', headers: { Authorization: `Bearer ${t}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ device_id: u }) });
    return resp.status;
  }, [UNIT, privacyToken]);
  assert.equal(w, 403);
});

test('the kiosk page passes the same accessibility check', async () => {
  await page.goto(`${lan}/`);
  await page.waitForSelector('#token');
  await axe('kiosk page, sign-in');
});

test('a wipe needs the unit id typed, and the unit shows as wiped', async () => {
  await signIn(fleetToken);
  await page.waitForFunction((u) => document.querySelector('#fleet-table tbody')?.textContent.includes(u), UNIT);
  await page.click(`button[aria-label="Wipe ${UNIT}"]`);
  await page.waitForSelector('#confirm[open]');
  assert.equal(await page.isDisabled('#confirm-ok'), true);
  await page.click('#confirm-cancel');
  assert.equal(await page.isVisible('#confirm'), false);
  await page.click(`button[aria-label="Wipe ${UNIT}"]`);
  await page.fill('#confirm-typed', UNIT);
  await page.click('#confirm-ok');
  await page.waitForFunction((u) => document.getElementById('status').textContent.includes(`Wipe of ${u} ordered`), UNIT);
  await page.waitForFunction(() => /wipe ordered|wiped/.test(document.querySelector('#fleet-table tbody').textContent));
  const log = await adminGet('/admin/operator-log?limit=20', privacyToken);
  assert.ok(log.body.entries.some((e) => e.route === '/admin/wipe' && e.operator_id === 'OPS-DEMO' && e.status === 200));
});

test('no console errors or CSP violations on the pages', () => {
  assert.deepEqual(pageProblems, []);
});
