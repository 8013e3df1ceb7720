// Kerbside fleet and privacy console (docs/console.md). Framework-free; every figure comes
// from the hub's admin API with the operator's token, which the hub checks (and the role) on
// every call. The token lives in this tab's sessionStorage only.
'use strict';

const KEY = 'kerbside-operator-token';
const REFRESH_MS = 10000;
const VIEWS = ['fleet', 'unit', 'feeds', 'privacy'];
const SVG = 'http://www.w3.org/2000/svg';
const CERT_WARN_MS = 48 * 3600 * 1000;

const $ = (id) => document.getElementById(id);
let me = null; // whoami
let devices = [];
let sortKey = 'device_id';
let sortDir = 1;
let refreshTimer = null;
let fleetHistoryAt = 0; // when the fleet's history was last read (ms)
let fleetHistoryEvery = 10; // its sampling period (s), as the hub said

// ------------------------------------------------------------------ helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function say(text, isError) {
  const s = $('status');
  s.textContent = text || '';
  s.className = isError ? 'error' : '';
}

function ago(iso) {
  if (!iso) return 'never';
  const ms = Date.now() - Date.parse(iso);
  if (!Number.isFinite(ms)) return iso;
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString('en-GB', { timeZone: 'Europe/London' });
}

/// NHS number check as typed: 10 digits, modulus 11 check digit.
function nhsProblem(text) {
  const d = text.replace(/\s+/g, '');
  if (!/^\d{10}$/.test(d)) return 'An NHS number is 10 digits.';
  let sum = 0;
  for (let i = 0; i < 9; i++) sum += Number(d[i]) * (10 - i);
  let check = 11 - (sum % 11);
  if (check === 11) check = 0;
  if (check === 10 || check !== Number(d[9])) return 'This is not a valid NHS number (the check digit does not match).';
  return null;
}

async function api(method, path, body) {
  const token = sessionStorage.getItem(KEY);
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    return { ok: false, status: 0, body: { message: `The hub cannot be reached: ${e.message}` } };
  }
  const type = resp.headers.get('content-type') || '';
  let data = null;
  if (type.includes('json')) {
    try { data = await resp.json(); } catch { data = null; }
  } else {
    data = { text: await resp.text() };
  }
  if (resp.status === 401) {
    signOut(`Signed out: ${(data && data.message) || 'the hub no longer accepts this token'}`);
  }
  return { ok: resp.ok, status: resp.status, body: data || {} };
}

function refusalText(r) {
  const m = (r.body && (r.body.message || r.body.error)) || `HTTP ${r.status}`;
  return r.status === 403 ? `Refused: ${m}` : m;
}

// ------------------------------------------------------------------ sign-in and views

function signOut(message) {
  sessionStorage.removeItem(KEY);
  me = null;
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
  $('who').hidden = true;
  $('tabs').hidden = true;
  for (const id of VIEWS) $(id).hidden = true;
  $('sign-in').hidden = false;
  const err = $('sign-in-error');
  err.hidden = !message;
  err.textContent = message || '';
  say('');
}

async function signIn() {
  const r = await api('GET', '/admin/whoami');
  if (!r.ok) {
    if (r.status !== 401) signOut(refusalText(r));
    return;
  }
  me = r.body;
  $('sign-in').hidden = true;
  $('sign-in-error').hidden = true;
  $('who').hidden = false;
  $('who-text').textContent = `${me.operator_name} (${me.operator_id}) · role ${me.role} · token expires ${when(me.expires_at)}`;
  $('tabs').hidden = false;
  for (const a of document.querySelectorAll('#tabs a')) a.hidden = a.dataset.role !== me.role;
  if (!location.hash || location.hash === '#') location.hash = `#${me.role}`;
  route();
}

function route() {
  if (!me) return;
  let hash;
  try { hash = decodeURIComponent((location.hash || '').slice(1)) || me.role; } catch { hash = me.role; }
  let [view, arg] = hash.startsWith('unit/') && hash.length > 5 ? ['unit', hash.slice(5)] : [hash, null];
  if (!VIEWS.includes(view) || (view === 'unit' && !arg)) view = me.role;
  for (const id of VIEWS) {
    $(id).hidden = id !== view;
    const tab = $(`tab-${id}`);
    if (!tab) continue;
    if (id === view || (view === 'unit' && id === 'fleet')) tab.setAttribute('aria-current', 'page'); else tab.removeAttribute('aria-current');
  }
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
  say('');
  if (view === 'fleet') {
    loadFleet();
    refreshTimer = setInterval(loadFleet, REFRESH_MS);
  } else if (view === 'unit') {
    loadUnit(arg);
    refreshTimer = setInterval(() => loadUnit(arg), REFRESH_MS);
  } else if (view === 'feeds') {
    loadFeeds();
  } else if (view === 'privacy') {
    loadPrivacy();
  }
}

// ------------------------------------------------------------------ fleet

function derive(d) {
  const h = d.health || {};
  const lag = (d.head != null && d.cursor != null) ? Math.max(0, d.head - d.cursor) : null;
  let state = 'active';
  if (d.revoked) state = 'revoked';
  else if (d.wipe_sent) state = 'wiped';
  else if (d.wipe_requested) state = 'wipe ordered';
  const certMs = d.cert_not_after ? Date.parse(d.cert_not_after) - Date.now() : null;
  let supervisor = 'no report';
  if (d.health) {
    if (h.supervisor_mode === 'none') supervisor = 'none fitted';
    else if (!h.supervisor_connected) supervisor = 'not answering';
    else if (h.supervisor_faults) supervisor = `faults 0x${h.supervisor_faults.toString(16)}`;
    else supervisor = 'ok';
    if (h.disk_full) supervisor += '; DISK FULL';
  }
  return {
    ...d,
    lag,
    records: d.health ? h.records : null,
    backlog: d.audit_backlog != null ? d.audit_backlog : d.health ? h.audit_backlog : null,
    state,
    certMs,
    supervisor,
  };
}

function cmp(a, b) {
  const x = a[sortKey];
  const y = b[sortKey];
  if (x == null && y == null) return 0;
  if (x == null) return 1;
  if (y == null) return -1;
  return (typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))) * sortDir;
}

async function loadFleet() {
  const r = await api('GET', '/admin/devices');
  if (!r.ok) {
    if (r.status !== 401) say(refusalText(r), true);
    return;
  }
  devices = (r.body.devices || r.body || []).map(derive);
  $('fleet-updated').textContent = `Updated ${new Date().toLocaleTimeString('en-GB')}`;
  renderFleet();
  // The fleet's history changes once a sampling period: ask again only when one has passed.
  if (Date.now() - fleetHistoryAt < fleetHistoryEvery * 1000) return;
  const h = await api('GET', '/admin/history');
  if (h.ok) {
    fleetHistoryAt = Date.now();
    fleetHistoryEvery = Math.max(10, h.body.every_s || 10);
    $('backlog-every').textContent = everyText(h.body.every_s);
    const pts = h.body.points || [];
    $('fleet-backlog').replaceChildren(lineChart(pts.map((p) => ({ t: Date.parse(p.at), v: p.audit_backlog })), {
      id: 'fleet-backlog-chart',
      what: 'Audit backlog across the fleet',
      unit: 'events',
      since: Date.parse(h.body.since),
    }));
  }
}

function everyText(s) {
  if (s == null) return '';
  return s % 60 === 0 ? `${s / 60} min` : `${s} s`;
}

/// A small line chart of `points` ({t: ms, v: number or null}) from `since` to now: an image
/// with a text alternative (its title: the latest value, the highest and when; the figures are
/// also in a table where it matters). A null value is a gap (not known then).
function lineChart(points, { id, what, unit, since }) {
  const W = 560; const H = 170; const L = 52; const R = 12; const T = 12; const B = 30;
  const now = Date.now();
  const t0 = points.reduce((m, p) => Math.min(m, p.t), since);
  const known = points.filter((p) => p.v != null);
  const max = known.reduce((m, p) => Math.max(m, p.v), 1);
  const x = (t) => L + ((t - t0) / Math.max(1, now - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const latest = known.length ? known[known.length - 1] : null;
  const peak = known.reduce((a, p) => (a && a.v >= p.v ? a : p), null);
  const alt = !known.length
    ? `${what}: no samples yet.`
    : `${what}: now ${latest.v} ${unit} (at ${new Date(latest.t).toLocaleTimeString('en-GB')}); highest ${peak.v} ${unit} at ${new Date(peak.t).toLocaleString('en-GB')}; ${known.length} samples.`;
  const chart = svg('svg', { role: 'img', viewBox: `0 0 ${W} ${H}`, width: W, height: H, 'aria-labelledby': `${id}-title`, id },
    svg('title', { id: `${id}-title` }, alt),
    svg('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#505a5f' }),
    svg('line', { x1: L, y1: T, x2: L, y2: H - B, stroke: '#505a5f' }),
    svg('text', { x: L - 6, y: T + 10, 'font-size': 12, 'text-anchor': 'end', fill: '#0b0c0c' }, String(max)),
    svg('text', { x: L - 6, y: H - B, 'font-size': 12, 'text-anchor': 'end', fill: '#0b0c0c' }, '0'));
  // Hour ticks: every 6 hours over a day, every hour over a shorter span.
  const span = now - t0;
  const step = span > 8 * 3600e3 ? 6 * 3600e3 : span > 2 * 3600e3 ? 3600e3 : 15 * 60e3;
  for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
    chart.append(
      svg('line', { x1: x(t), y1: H - B, x2: x(t), y2: H - B + 4, stroke: '#505a5f' }),
      svg('text', { x: x(t), y: H - B + 17, 'font-size': 12, 'text-anchor': 'middle', fill: '#0b0c0c' },
        new Date(t).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', timeZone: 'Europe/London' })));
  }
  let d = '';
  let pen = false;
  for (const p of points) {
    if (p.v == null) { pen = false; continue; }
    d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)} `;
    pen = true;
  }
  if (d) chart.append(svg('path', { d, fill: 'none', stroke: '#1d70b8', 'stroke-width': 2 }));
  for (const p of known.length <= 60 ? known : [latest]) {
    chart.append(svg('circle', { cx: x(p.t), cy: y(p.v), r: 3, fill: '#1d70b8' }));
  }
  if (!known.length) {
    chart.append(svg('text', { x: (L + W) / 2, y: H / 2, 'font-size': 14, 'text-anchor': 'middle', fill: '#505a5f' }, 'No samples yet'));
  }
  return chart;
}

// ------------------------------------------------------------------ one unit

async function loadUnit(id) {
  $('unit-h').textContent = `Unit ${id}`;
  const [r, h] = await Promise.all([api('GET', '/admin/devices'), api('GET', `/admin/history?device=${encodeURIComponent(id)}`)]);
  if (!r.ok || !h.ok) {
    const bad = r.ok ? h : r;
    if (bad.status !== 401) say(refusalText(bad), true);
    return;
  }
  devices = (r.body.devices || r.body || []).map(derive);
  const d = devices.find((x) => x.device_id === id);
  if (!d) {
    $('unit-facts').replaceChildren(el('dt', {}, 'Unit'), el('dd', { class: 'error' }, `${id} is not in the fleet inventory and has never connected to this hub.`));
    return;
  }
  const facts = [
    ['Role', d.role || '—'],
    ['Callsign / site', [d.callsign, d.site].filter(Boolean).join(' / ') || '—'],
    ['Cohort', d.cohort || '—'],
    ['Link', d.connected ? (d.live ? 'connected, live' : 'connected, syncing') : `offline, last seen ${ago(d.last_seen)}`],
    ['Changes behind', d.lag == null ? 'unknown (no cursor acknowledged yet)' : d.lag > 0 ? `${d.lag}${d.oldest_missing_at ? `, the oldest written ${ago(d.oldest_missing_at)}` : ''}` : 'none'],
    ['Records held', d.records == null ? 'not reported' : `${d.records} when it last connected (${ago(d.health && d.health.at)})`],
    ['Audit backlog', d.backlog == null ? 'not reported' : `${d.backlog} events`],
    ['Certificate', d.cert_not_after ? `until ${when(d.cert_not_after)}` : '—'],
    ['State', d.state],
    ['Supervisor', d.supervisor],
    ['Software', [d.software_version, d.firmware_version && `firmware ${d.firmware_version}`].filter(Boolean).join(', ') || '—'],
  ];
  $('unit-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
  const samples = h.body.samples || [];
  const since = Date.parse(h.body.since);
  $('unit-lag').replaceChildren(lineChart(samples.map((s) => ({ t: Date.parse(s.at), v: s.lag })), { id: 'unit-lag-chart', what: `Changes behind for ${id}`, unit: 'changes', since }));
  $('unit-backlog').replaceChildren(lineChart(samples.map((s) => ({ t: Date.parse(s.at), v: s.audit_backlog })), { id: 'unit-backlog-chart', what: `Audit backlog for ${id}`, unit: 'events', since }));
  const shown = samples.slice(-288).reverse();
  $('unit-samples').replaceChildren(!shown.length ? el('p', {}, `No samples yet: the hub samples every ${everyText(h.body.every_s)}.`) : el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', {}, `Sampled every ${everyText(h.body.every_s)}, newest first${samples.length > shown.length ? ` (the latest ${shown.length} of ${samples.length})` : ''}.`),
    el('thead', {}, el('tr', {}, ...['Time', 'Link', 'Changes behind', 'Oldest missing change', 'Audit backlog', 'Records'].map((x) => el('th', { scope: 'col' }, x)))),
    el('tbody', {}, ...shown.map((s) => el('tr', {},
      el('td', {}, when(s.at)),
      el('td', {}, s.connected ? 'connected' : 'offline'),
      el('td', {}, s.lag == null ? '—' : String(s.lag)),
      el('td', {}, s.behind_s == null ? '—' : s.behind_s < 90 ? `${s.behind_s} s` : ageText(s.behind_s)),
      el('td', {}, s.audit_backlog == null ? '—' : String(s.audit_backlog)),
      el('td', {}, s.records == null ? '—' : String(s.records))))))));
}

/// Seconds since the unit's copy was last brought up to date: 0 while connected and live.
function copyAge(d) {
  if (d.connected && d.live) return 0;
  if (!d.last_seen) return null;
  return Math.max(0, (Date.now() - Date.parse(d.last_seen)) / 1000);
}

function ageText(s) {
  if (s === null) return 'never synced';
  if (s === 0) return 'live';
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

function svg(tagName, attrs, ...children) {
  const e = document.createElementNS(SVG, tagName);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

/// The fleet's freshness as horizontal bars (an image with a text alternative: the table has
/// the same figures).
function renderFreshness() {
  const list = devices
    .filter((d) => d.state === 'active')
    .map((d) => ({ id: d.device_id, age: copyAge(d) }))
    .sort((a, b) => (b.age ?? Infinity) - (a.age ?? Infinity))
    .slice(0, 20);
  const max = Math.max(3600, ...list.map((x) => x.age ?? 0));
  const rowH = 22;
  const width = 640;
  const labelW = 150;
  const chart = svg('svg', { role: 'img', viewBox: `0 0 ${width} ${Math.max(1, list.length) * rowH + 4}`, width, height: Math.max(1, list.length) * rowH + 4, 'aria-labelledby': 'freshness-title' },
    svg('title', { id: 'freshness-title' }, `Copy age per unit: ${list.map((x) => `${x.id} ${ageText(x.age)}`).join('; ') || 'no units'}`));
  list.forEach((x, i) => {
    const y = i * rowH + 2;
    const w = x.age === null ? width - labelW - 90 : Math.max(2, ((x.age) / max) * (width - labelW - 90));
    const fill = x.age === null || x.age > 86400 ? '#b10e1e' : x.age > 3600 ? '#7a4a00' : '#00703c';
    chart.append(
      svg('text', { x: 0, y: y + 15, 'font-size': 13, fill: '#0b0c0c' }, x.id),
      svg('rect', { x: labelW, y: y + 3, width: w, height: rowH - 8, fill }),
      svg('text', { x: labelW + w + 6, y: y + 15, 'font-size': 13, fill: '#0b0c0c' }, ageText(x.age)));
  });
  $('freshness').replaceChildren(chart);
}

function tag(text, kind) {
  return el('span', { class: `tag ${kind}` }, text);
}

function renderFleet() {
  const f = $('fleet-filter').value.trim().toLowerCase();
  const rows = devices
    .filter((d) => !f || [d.device_id, d.role, d.callsign, d.site, d.cohort, d.state, d.software_version, d.supervisor]
      .some((v) => v && String(v).toLowerCase().includes(f)))
    .sort(cmp);
  const connected = devices.filter((d) => d.connected).length;
  const behind = devices.filter((d) => d.lag > 0).length;
  const certSoon = devices.filter((d) => d.certMs !== null && d.certMs < CERT_WARN_MS && d.state === 'active').length;
  $('fleet-summary').replaceChildren(
    el('span', {}, el('strong', {}, String(devices.length)), ' units'),
    el('span', {}, el('strong', {}, String(connected)), ' connected'),
    el('span', {}, el('strong', {}, String(behind)), ' behind the feed'),
    el('span', {}, el('strong', {}, String(certSoon)), ' certificates expiring within 48 h'),
  );
  for (const th of document.querySelectorAll('#fleet-table th')) {
    const b = th.querySelector('button');
    if (b && b.dataset.sort === sortKey) th.setAttribute('aria-sort', sortDir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
  renderFreshness();
  const body = document.querySelector('#fleet-table tbody');
  body.replaceChildren(...rows.map((d) => {
    const link = d.connected
      ? tag(d.live ? 'connected, live' : 'connected, syncing', 'ok')
      : el('span', {}, tag('offline', 'off'), ` last seen ${ago(d.last_seen)}`);
    let cert = '';
    if (d.cert_not_after) {
      const kind = d.certMs < 0 ? 'bad' : d.certMs < CERT_WARN_MS ? 'warn' : 'ok';
      const text = d.certMs < 0 ? 'EXPIRED' : d.certMs < CERT_WARN_MS ? 'expires < 48 h' : 'valid';
      cert = el('span', {}, tag(text, kind), ` ${when(d.cert_not_after)}`);
    }
    const stateKind = d.state === 'active' ? 'ok' : 'bad';
    const actions = el('td', { class: 'actions' });
    if (d.state === 'active') {
      actions.append(
        el('button', { type: 'button', onclick: () => setCohort(d), 'aria-label': `Set cohort of ${d.device_id}` }, 'Set cohort…'),
        el('button', { type: 'button', class: 'danger', onclick: () => wipe(d), 'aria-label': `Wipe ${d.device_id}` }, 'Wipe…'),
      );
    }
    actions.append(el('details', {},
      el('summary', {}, 'Revoke / renew'),
      el('p', {}, 'Run by the CA\'s custodian on the fleet directory:'),
      el('pre', {}, `edge-provision revoke --fleet FLEET --device-id ${d.device_id}\nedge-provision renew --fleet FLEET --device-id ${d.device_id}`)));
    return el('tr', {},
      el('th', { scope: 'row' }, el('a', { href: `#unit/${encodeURIComponent(d.device_id)}` }, d.device_id)),
      el('td', {}, d.role || '—'),
      el('td', {}, [d.callsign, d.site].filter(Boolean).join(' / ') || '—'),
      el('td', {}, d.cohort || '—'),
      el('td', {}, link),
      el('td', {}, d.lag === null ? '—' : d.lag > 0
        ? el('span', {}, tag(String(d.lag), 'warn'), d.oldest_missing_at ? el('span', { class: 'muted' }, ` oldest from ${ago(d.oldest_missing_at)}`) : null)
        : '0'),
      el('td', {}, d.records == null ? '—' : el('span', {}, String(d.records), el('br'), el('span', { class: 'muted' }, `at connection, ${ago(d.health && d.health.at)}`))),
      el('td', {}, d.backlog == null ? '—' : d.backlog > 0 ? tag(String(d.backlog), 'warn') : '0'),
      el('td', {}, cert || '—'),
      el('td', {}, tag(d.state, stateKind)),
      el('td', {}, d.supervisor),
      el('td', {}, d.software_version || '—'),
      actions);
  }));
}

/// A modal confirmation. With `typed`, the button stays disabled until that text is typed
/// exactly; without it, until `valid()` (checked as the extra fields change) holds.
function confirmDialog({ title, text, extra, typed, ok, valid }) {
  return new Promise((resolve) => {
    const dlg = $('confirm');
    $('confirm-h').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-extra').replaceChildren(...(extra ? [extra] : []));
    const input = $('confirm-typed');
    const label = $('confirm-typed-label');
    label.hidden = !typed;
    input.hidden = !typed;
    label.textContent = typed ? `Type ${typed} to confirm` : '';
    const okBtn = $('confirm-ok');
    okBtn.textContent = ok;
    input.value = '';
    const check = () => {
      okBtn.disabled = typed ? input.value.trim() !== typed : !(valid && valid());
    };
    check();
    input.oninput = check;
    if (extra) extra.oninput = check;
    $('confirm-cancel').onclick = () => { dlg.close(); resolve(false); };
    $('confirm-form').onsubmit = (e) => {
      e.preventDefault();
      if (okBtn.disabled) return;
      dlg.close();
      resolve(true);
    };
    dlg.showModal();
    const first = extra && extra.querySelector('input, textarea');
    (first || input).focus();
  });
}

async function setCohort(d) {
  const field = el('input', { id: 'cohort-specs', value: d.cohort || '', 'aria-describedby': 'cohort-hint' });
  const extra = el('div', {},
    el('label', { for: 'cohort-specs' }, 'New cohort'),
    field,
    el('p', { id: 'cohort-hint', class: 'hint' }, 'Space-separated: all, flagged, postcode:SE1,SE5, practice:F84001. The unit re-baselines at once.'));
  const yes = await confirmDialog({ title: `Set the cohort of ${d.device_id}`, text: 'The unit will hold only the records of this cohort.', extra, typed: d.device_id, ok: 'Set cohort' });
  if (!yes) return;
  const cohort = field.value.trim().split(/\s+/).filter(Boolean);
  const r = await api('POST', '/admin/cohort', { device_id: d.device_id, cohort });
  say(r.ok ? `Cohort of ${d.device_id} set to ${cohort.join(' ')} (recorded in the operator log).` : refusalText(r), !r.ok);
  loadFleet();
}

async function wipe(d) {
  const yes = await confirmDialog({
    title: `Wipe ${d.device_id}`,
    text: 'The unit erases its cached records and keys at its next connection and stops answering. This cannot be undone on the unit.',
    typed: d.device_id,
    ok: 'Wipe unit',
  });
  if (!yes) return;
  const r = await api('POST', '/admin/wipe', { device_id: d.device_id });
  say(r.ok ? `Wipe of ${d.device_id} ordered (recorded in the operator log).` : refusalText(r), !r.ok);
  loadFleet();
}

// ------------------------------------------------------------------ feeds

function lines(items, key, caption) {
  if (!items.length) return null;
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', {}, caption),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Line'), el('th', { scope: 'col' }, 'Item'), el('th', { scope: 'col' }, key === 'error' ? 'Why it was rejected' : 'Warning'))),
    el('tbody', {}, ...items.map((x) => el('tr', {}, el('td', {}, String(x.line)), el('td', {}, x.entry == null ? '' : String(x.entry)), el('td', {}, x[key] || ''))))));
}

async function loadFeeds() {
  const r = await api('GET', '/admin/feeds');
  if (!r.ok) {
    if (r.status !== 401) { say(refusalText(r), true); $('feeds-list').replaceChildren(el('p', { class: 'error' }, refusalText(r))); }
    return;
  }
  const ingests = r.body.ingests || [];
  if (!ingests.length) { $('feeds-list').replaceChildren(el('p', {}, 'No ingests recorded yet.')); return; }
  $('feeds-list').replaceChildren(...ingests.map((g) => {
    const name = [g.feed && `feed ${g.feed}`, g.source && `source ${g.source}`, g.snapshot && 'snapshot'].filter(Boolean).join(', ') || 'no feed named';
    const kind = g.rejected_total > 0 ? 'bad' : g.warnings_total > 0 ? 'warn' : 'ok';
    return el('article', { class: 'card ingest' },
      el('h3', {}, `${when(g.at)} · ${name}`),
      el('p', {}, tag(`${g.accepted} accepted`, 'ok'), ' ', tag(`${g.rejected_total} rejected`, g.rejected_total ? 'bad' : 'off'), ' ',
        tag(`${g.warnings_total} warnings`, g.warnings_total ? 'warn' : 'off'), ` · ${g.changed} summaries changed · `,
        g.via === 'offline' ? `offline (edge-hub ingest${g.file ? ` ${g.file}` : ''})` : `admin API, by ${g.operator_id || '?'}`),
      kind === 'ok' ? null : el('details', { open: g.rejected_total > 0 },
        el('summary', {}, 'Lines'),
        lines(g.rejected || [], 'error', `Rejected lines (${g.rejected.length} of ${g.rejected_total} shown)`),
        lines(g.warnings || [], 'warning', `Warnings (${g.warnings.length} of ${g.warnings_total} shown)`)));
  }));
}

// ------------------------------------------------------------------ privacy

function eventsTable(events, caption, extra) {
  if (!events.length) return el('p', {}, `${caption}: none.`);
  const heads = ['When', 'Unit', 'Staff', 'Role', 'Purpose', 'Action', 'Outcome', 'Patient', 'Break-glass reason'];
  if (extra) heads.push(extra.head);
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', {}, caption),
    el('thead', {}, el('tr', {}, ...heads.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, ...events.map((e) => el('tr', {},
      el('td', {}, when(e.recorded)),
      el('td', {}, e.device_id || ''),
      el('td', {}, [e.staff_name, e.staff_id].filter(Boolean).join(' · ')),
      el('td', {}, e.role || ''),
      el('td', {}, e.purpose || ''),
      el('td', {}, e.action || ''),
      el('td', {}, [e.outcome, e.outcome_reason].filter(Boolean).join(': ')),
      el('td', {}, e.patient || ''),
      el('td', {}, e.break_glass_reason || ''),
      extra ? el('td', {}, extra.cell(e)) : null))),
  ));
}

/// The review cell of an alert: who reviewed it, when and their note; or the button to do so.
function reviewCell(e) {
  if (e.review) {
    return el('span', {}, tag('reviewed', 'ok'), ` by ${e.review.operator_name} (${e.review.operator_id}), ${when(e.review.reviewed_at)}: `, el('q', {}, e.review.note));
  }
  return el('button', { type: 'button', onclick: () => review(e), 'aria-label': `Mark the ${e.action} by ${e.staff_id || 'unknown staff'} on ${e.device_id} (event ${e.seq}) reviewed` }, 'Mark reviewed…');
}

async function review(e) {
  const note = el('textarea', { id: 'review-note', rows: 4, maxlength: 2000, 'aria-describedby': 'review-hint' });
  const extra = el('div', {},
    el('label', { for: 'review-note' }, 'Note (what was checked, with whom, the outcome)'),
    note,
    el('p', { id: 'review-hint', class: 'hint' }, 'Required. Kept with the review and in the operator log; the audit event itself never changes.'));
  const yes = await confirmDialog({
    title: `Review: ${e.action} on ${e.device_id} by ${e.staff_name || e.staff_id || 'unknown staff'}`,
    text: `${when(e.recorded)} · patient ${e.patient || '—'} · reason given: ${e.break_glass_reason || '(none)'}`,
    extra,
    ok: 'Mark reviewed',
    valid: () => note.value.trim().length > 0,
  });
  if (!yes) return;
  const r = await api('POST', '/admin/alerts/review', { device_id: e.device_id, seq: e.seq, note: note.value.trim() });
  say(r.ok ? `Marked reviewed (recorded in the operator log).` : refusalText(r), !r.ok);
  loadPrivacy();
}

function showResult(node) {
  const r = $('privacy-result');
  r.replaceChildren(node);
  r.focus();
}

async function loadPrivacy() {
  const a = await api('GET', '/admin/alerts?limit=100');
  if (!a.ok) {
    if (a.status !== 401) {
      say(refusalText(a), true);
      $('alerts').replaceChildren(el('p', { class: 'error' }, refusalText(a)));
    }
    return;
  }
  const hubAlerts = (a.body.hub_alerts || []).map((h) => el('p', { class: 'error' }, h.message));
  const alerts = a.body.alerts || [];
  const pending = alerts.filter((x) => !x.review).length;
  $('alerts').replaceChildren(...hubAlerts,
    el('p', {}, el('strong', {}, String(pending)), ` awaiting review of the ${alerts.length} shown`),
    eventsTable(alerts, 'Break-glass accesses and security alerts, newest first', { head: 'Review', cell: reviewCell }));
  const l = await api('GET', '/admin/operator-log?limit=50');
  if (l.ok) {
    const entries = l.body.entries || [];
    $('oplog').replaceChildren(entries.length ? el('div', { class: 'table-wrap' }, el('table', {},
      el('caption', {}, 'Admin calls, newest first (who, what, outcome)'),
      el('thead', {}, el('tr', {}, ...['When', 'Operator', 'Role', 'Call', 'Target', 'Status'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, ...entries.map((e) => el('tr', {},
        el('td', {}, when(e.at)),
        el('td', {}, [e.operator_name, e.operator_id].filter(Boolean).join(' · ') || '(no token)'),
        el('td', {}, e.role || ''),
        el('td', {}, `${e.method} ${e.route}`),
        el('td', {}, e.target || ''),
        el('td', {}, e.refused ? `${e.status} refused (${e.refused})` : String(e.status))))))) : el('p', {}, 'No admin calls yet.'));
  }
}

function wireNhs(inputId) {
  const input = $(inputId);
  const hint = $(`${inputId.replace(/-nhs$/, '')}-hint`);
  const base = hint ? hint.textContent : '';
  input.addEventListener('input', () => {
    const p = input.value.trim() ? nhsProblem(input.value) : null;
    input.setAttribute('aria-invalid', p ? 'true' : 'false');
    if (hint) { hint.textContent = p || base; hint.className = p ? 'hint error' : 'hint'; }
  });
}

async function query(kind, value) {
  const r = await api('GET', `/admin/audit?${kind}=${encodeURIComponent(value)}&limit=200`);
  if (!r.ok) { say(refusalText(r), true); return; }
  const what = kind === 'patient' ? `Accesses to patient ${value}` : `Accesses by staff member ${value}`;
  showResult(eventsTable(r.body.events || [], what));
  say(`${(r.body.events || []).length} events (this query is recorded in the operator log).`);
}

let objectionTimer = null;

/// Which units have dropped a withdrawn record, refreshed until every unit has (or the view
/// changes).
async function watchObjection(nhs, seq) {
  if (objectionTimer) clearTimeout(objectionTimer);
  const r = await api('GET', `/admin/objection/status?seq=${seq}`);
  if (!r.ok) { say(refusalText(r), true); return; }
  const units = r.body.units || [];
  const head = r.body.pending === 0
    ? el('p', {}, tag('done', 'ok'), ` Every unit has dropped the record of ${nhs}.`)
    : el('p', {}, tag(`${r.body.pending} pending`, 'warn'), ` units still hold the record of ${nhs} until they next sync (checked every 5 seconds).`);
  const box = $('privacy-result');
  box.replaceChildren(head, el('div', { class: 'table-wrap' }, el('table', {},
    el('caption', {}, `Objection for ${nhs}: withdrawn at feed position ${seq}`),
    el('thead', {}, el('tr', {}, ...['Unit', 'Record dropped', 'Link'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, ...units.map((u) => el('tr', {},
      el('th', { scope: 'row' }, u.device_id),
      el('td', {}, u.revoked ? tag('revoked (wipe it)', 'bad') : u.dropped ? tag('dropped', 'ok') : tag('not yet', 'warn')),
      el('td', {}, u.connected ? 'connected' : `last seen ${ago(u.last_seen)}`)))))));
  if (r.body.pending > 0 && !$('privacy').hidden) {
    objectionTimer = setTimeout(() => watchObjection(nhs, seq), 5000);
  }
}

function wirePrivacy() {
  wireNhs('q-patient-nhs');
  wireNhs('q-objection-nhs');
  $('q-patient').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('q-patient-nhs').value.replace(/\s+/g, '');
    const p = nhsProblem(v);
    if (p) { say(p, true); return; }
    query('patient', v);
  });
  $('q-staff').addEventListener('submit', (e) => {
    e.preventDefault();
    query('staff', $('q-staff-id').value.trim());
  });
  $('q-verify').addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = $('q-verify-id').value.trim();
    const r = await api('GET', `/admin/audit/verify?device=${encodeURIComponent(id)}`);
    if (!r.ok) { say(refusalText(r), true); return; }
    const v = r.body;
    const gaps = (v.gaps || []).map((g) => Array.isArray(g) ? `${g[0]}–${g[1]}` : JSON.stringify(g));
    showResult(el('div', {},
      el('p', {}, tag(v.chain_ok && !gaps.length ? 'chain intact' : 'PROBLEMS', v.chain_ok && !gaps.length ? 'ok' : 'bad'),
        ` ${id}: ${v.events} events, seq ${v.first_seq ?? '—'} to ${v.last_seq ?? '—'}.`),
      gaps.length ? el('p', { class: 'error' }, `Missing events (gaps): ${gaps.join(', ')}`) : el('p', {}, 'No gaps.'),
      (v.breaks || []).length ? el('p', { class: 'error' }, `Chain breaks at seq ${v.breaks.join(', ')}`) : null));
  });
  $('q-export').addEventListener('submit', async (e) => {
    e.preventDefault();
    const since = $('q-export-since').value;
    const until = $('q-export-until').value;
    const untilNext = new Date(Date.parse(`${until}T00:00:00Z`) + 86400000).toISOString();
    const url = `/admin/audit/export?since=${encodeURIComponent(`${since}T00:00:00Z`)}&until=${encodeURIComponent(untilNext)}`;
    let resp;
    try {
      resp = await fetch(url, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` }, cache: 'no-store' });
    } catch (err) { say(`The hub cannot be reached: ${err.message}`, true); return; }
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 401) { signOut(`Signed out: ${body.message || 'the hub no longer accepts this token'}`); return; }
      say(refusalText({ status: resp.status, body }), true);
      return;
    }
    // NDJSON, one FHIR AuditEvent a line, as the hub streams it.
    const blob = await resp.blob();
    const a = el('a', { href: URL.createObjectURL(blob), download: `audit-events-${since}-to-${until}.ndjson` }, `Download the FHIR AuditEvents recorded ${since} to ${until} (${blob.size} bytes, NDJSON)`);
    showResult(el('p', {}, a));
  });
  $('q-objection').addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = $('q-objection-nhs').value.replace(/\s+/g, '');
    const p = nhsProblem(v);
    if (p) { say(p, true); return; }
    const yes = await confirmDialog({ title: `Record an objection for ${v}`, text: 'The record is withdrawn from the hub\'s feed and from every unit at its next sync.', typed: v, ok: 'Record objection' });
    if (!yes) return;
    const r = await api('POST', '/admin/objection', { nhs_number: v });
    say(r.ok ? `Objection recorded for ${v}; every unit drops the record at its next sync.` : refusalText(r), !r.ok);
    if (r.ok && r.body.seq != null) watchObjection(v, r.body.seq);
    else if (r.ok) showResult(el('p', {}, `${v} was already withdrawn.`));
  });
}

// ------------------------------------------------------------------ start

document.addEventListener('DOMContentLoaded', () => {
  $('sign-in-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    sessionStorage.setItem(KEY, t);
    $('token').value = '';
    signIn();
  });
  $('sign-out').addEventListener('click', () => signOut('Signed out.'));
  $('fleet-filter').addEventListener('input', renderFleet);
  for (const b of document.querySelectorAll('#fleet-table th button')) {
    b.addEventListener('click', () => {
      if (sortKey === b.dataset.sort) sortDir = -sortDir; else { sortKey = b.dataset.sort; sortDir = 1; }
      renderFleet();
    });
  }
  wirePrivacy();
  window.addEventListener('hashchange', route);
  if (sessionStorage.getItem(KEY)) signIn(); else signOut();
});
