// Kerbside kiosk / tablet page. Plain JavaScript, no framework, no build step, nothing loaded
// from outside this unit (see docs/kiosk.md).
//
// Rules this file keeps (clinical safety and information governance):
// - The shift token lives in sessionStorage only (this tab, this session) and in memory; it is
//   cleared on sign-out, on any 401 and when the token's own expiry time passes.
// - Clinical content and patient identifiers are never written to any storage, the URL or the
//   history: they live in memory and the DOM only, and sign-out empties both.
// - Everything from the API is put on the page with textContent (never innerHTML).
// - A section's empty state is always said in words from its status; an empty list is never
//   read as "none".
// - What is current, past, stopped, superseded or withheld, and what the resuscitation decision
//   is, come from the unit's answer: nothing is worked out here from codes or free text.
'use strict';

(function () {
  const TOKEN_KEY = 'kerbside.shift-token';
  const POLL_MS = 3000;
  const IDLE_CLOSE_MS = 10 * 60 * 1000; // a record left on screen untouched is closed
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- state (memory only)
  let token = null; // the opaque shift token
  let claims = null; // what the token says about itself (display only; the unit verifies it)
  let expiryTimer = null;
  let record = null; // {nhs, data, receivedAt, breakGlass}
  let problemNhs = null; // the NHS number a refused / restricted lookup was for
  let lastStatus = null;
  let statusFailures = 0;
  let lastActivity = Date.now();
  let busy = false;

  // ---------------------------------------------------------------- small helpers

  /** Create an element: h('li', {class: 'x', text: 'y'}, child, 'text', …). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function pad2(n) {
    return String(n).padStart(2, '0');
  }

  /** 27-Mar-1957 (the NHS Common User Interface date style). */
  function fmtDay(d) {
    return `${pad2(d.getDate())}-${MONTHS[d.getMonth()]}-${d.getFullYear()}`;
  }

  function fmtTime(d) {
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }

  /** A FHIR date or dateTime ("1950", "1950-01", "1950-01-31", "2024-11-02T10:00:00Z"). */
  function fmtFhirDate(s) {
    if (!s || typeof s !== 'string') return null;
    let m = /^(\d{4})$/.exec(s);
    if (m) return m[1];
    m = /^(\d{4})-(\d{2})$/.exec(s);
    if (m) return `${MONTHS[Number(m[2]) - 1] || m[2]}-${m[1]}`;
    m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
    if (m) return `${m[3]}-${MONTHS[Number(m[2]) - 1] || m[2]}-${m[1]}`;
    const d = new Date(s);
    if (!Number.isNaN(d.getTime())) return fmtDay(d);
    return s;
  }

  function fmtMillis(ms) {
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms <= 0) return null;
    return fmtDay(new Date(ms));
  }

  /** "12 minutes ago", "3 hours ago", "2 days ago". */
  function fmtAgo(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return 'less than a minute ago';
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} minute${m === 1 ? '' : 's'} ago`;
    const hr = Math.floor(m / 60);
    if (hr < 48) {
      const rm = m % 60;
      return `${hr} hour${hr === 1 ? '' : 's'}${rm && hr < 6 ? ` ${rm} min` : ''} ago`;
    }
    const d = Math.floor(hr / 24);
    return `${d} days ago`;
  }

  /** "14:02" today, "14:02 yesterday", "14:02 on 25-Nov-2026". */
  function fmtWhen(d) {
    const now = new Date();
    const t = fmtTime(d);
    if (d.toDateString() === now.toDateString()) return t;
    const y = new Date(now);
    y.setDate(now.getDate() - 1);
    if (d.toDateString() === y.toDateString()) return `${t} yesterday`;
    const tm = new Date(now);
    tm.setDate(now.getDate() + 1);
    if (d.toDateString() === tm.toDateString()) return `${t} tomorrow`;
    return `${t} on ${fmtDay(d)}`;
  }

  /** Age in whole years on `on` for a YYYY-MM-DD birth date, or null. */
  function ageYears(birth, on) {
    const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(birth || '');
    if (!m) return null;
    const y = Number(m[1]);
    const mo = Number(m[2]);
    const d = Number(m[3]);
    let age = on.getFullYear() - y;
    if (on.getMonth() + 1 < mo || (on.getMonth() + 1 === mo && on.getDate() < d)) age -= 1;
    return age >= 0 ? age : null;
  }

  function fmtAge(birth) {
    const a = ageYears(birth, new Date());
    if (a === null) return '';
    if (a < 2) {
      const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(birth);
      const now = new Date();
      const months = (now.getFullYear() - Number(m[1])) * 12 + (now.getMonth() + 1 - Number(m[2])) - (now.getDate() < Number(m[3]) ? 1 : 0);
      return `${Math.max(0, months)} month${months === 1 ? '' : 's'}`;
    }
    return `${a} years`;
  }

  function fmtBirth(birth) {
    if (!birth) return 'Date of birth not recorded';
    const age = fmtAge(birth);
    return `${fmtFhirDate(birth)}${age ? ` (${age})` : ''}`;
  }

  function fmtGender(g) {
    const map = { male: 'Male', female: 'Female', other: 'Other', unknown: 'Not known' };
    return map[g] || 'Not known';
  }

  function fmtName(family, given) {
    const f = (family || '').toUpperCase();
    const g = Array.isArray(given) ? given.join(' ') : '';
    if (f && g) return `${f}, ${g}`;
    return f || g || 'Name not recorded';
  }

  function capital(s) {
    return s ? s.charAt(0).toUpperCase() + s.slice(1).replace(/[-_]/g, ' ') : s;
  }

  /** A coded or text concept as words. */
  function conceptText(c) {
    if (!c) return null;
    if (c.text) return c.text;
    if (c.coding && c.coding.display) return c.coding.display;
    if (c.coding && c.coding.code) return `Code ${c.coding.code}`;
    return null;
  }

  // ---------------------------------------------------------------- NHS number

  function nhsDigits(s) {
    return (s || '').replace(/\D/g, '');
  }

  /** "9434765919" → "943 476 5919" (digits beyond ten stay visible, never dropped). */
  function fmtNhs(d) {
    if (d.length <= 3) return d;
    if (d.length <= 6) return `${d.slice(0, 3)} ${d.slice(3)}`;
    return `${d.slice(0, 3)} ${d.slice(3, 6)} ${d.slice(6)}`;
  }

  /** null when valid, otherwise the reason in words. */
  function nhsProblem(d) {
    if (d.length === 0) return 'Enter the NHS number.';
    if (d.length < 10) return `An NHS number has 10 digits; ${d.length} ${d.length === 1 ? 'has' : 'have'} been entered.`;
    if (d.length > 10) return `An NHS number has 10 digits; ${d.length} have been entered. Check the number.`;
    if (/^(\d)\1{9}$/.test(d)) return 'This is not a valid NHS number: all ten digits are the same. Check the number.';
    let sum = 0;
    for (let i = 0; i < 9; i++) sum += Number(d[i]) * (10 - i);
    let c = 11 - (sum % 11);
    if (c === 11) c = 0;
    if (c === 10) return 'This is not a valid NHS number: no NHS number starts with these nine digits. Check each digit.';
    if (c !== Number(d[9])) return 'This is not a valid NHS number: the last digit (the check digit) does not match. Check each digit.';
    return null;
  }

  // ---------------------------------------------------------------- the token (display only)

  function b64urlBytes(s) {
    const b = s.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b + '==='.slice((b.length + 3) % 4));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  /** A minimal CBOR reader for the token's claims (maps, text, integers, simple values). */
  function cborDecode(bytes) {
    let p = 0;
    const need = (n) => {
      if (p + n > bytes.length) throw new Error('truncated');
    };
    const uint = (info) => {
      if (info < 24) return info;
      if (info === 24) { need(1); return bytes[p++]; }
      if (info === 25) { need(2); const v = (bytes[p] << 8) | bytes[p + 1]; p += 2; return v; }
      if (info === 26) { need(4); const v = ((bytes[p] << 24) >>> 0) + (bytes[p + 1] << 16) + (bytes[p + 2] << 8) + bytes[p + 3]; p += 4; return v; }
      if (info === 27) {
        need(8);
        let v = 0;
        for (let i = 0; i < 8; i++) v = v * 256 + bytes[p + i];
        p += 8;
        return v;
      }
      throw new Error('unsupported length');
    };
    const item = (depth) => {
      if (depth > 8) throw new Error('too deep');
      need(1);
      const b = bytes[p++];
      const major = b >> 5;
      const info = b & 31;
      switch (major) {
        case 0: return uint(info);
        case 1: return -1 - uint(info);
        case 2: { const n = uint(info); need(n); p += n; return null; }
        case 3: { const n = uint(info); need(n); const s = new TextDecoder().decode(bytes.subarray(p, p + n)); p += n; return s; }
        case 4: { const n = uint(info); const a = []; for (let i = 0; i < n && i < 64; i++) a.push(item(depth + 1)); return a; }
        case 5: {
          const n = uint(info);
          const o = {};
          for (let i = 0; i < n && i < 64; i++) {
            const k = item(depth + 1);
            o[String(k)] = item(depth + 1);
          }
          return o;
        }
        case 6: uint(info); return item(depth + 1);
        default:
          if (info === 20) return false;
          if (info === 21) return true;
          if (info === 22 || info === 23) return null;
          throw new Error('unsupported simple value');
      }
    };
    return item(0);
  }

  /** Tidy what was pasted or scanned: whitespace, "Bearer ", "export TOKEN=". */
  function cleanToken(raw) {
    let t = (raw || '').trim();
    t = t.replace(/^export\s+TOKEN=/i, '').replace(/^Bearer\s+/i, '').replace(/^["']|["']$/g, '');
    return t.replace(/\s+/g, '');
  }

  /** The claims a token carries, or null if they cannot be read (the unit still decides). */
  function readClaims(t) {
    try {
      const payload = t.split('.')[0];
      const c = cborDecode(b64urlBytes(payload));
      if (!c || typeof c !== 'object') return null;
      return {
        name: typeof c.staff_name === 'string' ? c.staff_name : null,
        role: typeof c.role === 'string' ? c.role : null,
        expires: typeof c.expires_at === 'number' ? c.expires_at : null,
      };
    } catch (e) {
      return null;
    }
  }

  // ---------------------------------------------------------------- views

  const VIEWS = ['signin', 'find', 'candidates', 'problem', 'summary'];

  function show(view) {
    for (const v of VIEWS) $(v).hidden = v !== view;
    document.body.dataset.view = view;
    window.scrollTo(0, 0); // the banners and the top of the record first
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  function focusEl(el) {
    if (!el) return;
    if (!el.hasAttribute('tabindex') && !/^(INPUT|BUTTON|TEXTAREA|SELECT|A)$/.test(el.tagName)) {
      el.setAttribute('tabindex', '-1');
    }
    el.focus({ preventScroll: true });
  }

  function fieldError(fieldId, inputId, errId, text) {
    const err = $(errId);
    const field = fieldId ? $(fieldId) : null;
    const input = inputId ? $(inputId) : null;
    if (text) {
      err.textContent = text;
      err.hidden = false;
      if (field) field.classList.add('has-error');
      if (input) input.setAttribute('aria-invalid', 'true');
    } else {
      err.textContent = '';
      err.hidden = true;
      if (field) field.classList.remove('has-error');
      if (input) input.removeAttribute('aria-invalid');
    }
  }

  // ---------------------------------------------------------------- sign in / out

  function setToken(t) {
    token = t;
    claims = readClaims(t);
    sessionStorage.setItem(TOKEN_KEY, t);
    const who = $('who');
    const parts = [claims && claims.name ? `Signed in: ${claims.name}` : 'Signed in'];
    if (claims && claims.role) parts.push(claims.role);
    if (claims && claims.expires) parts.push(`until ${fmtWhen(new Date(claims.expires))}`);
    $('who-text').textContent = parts.join(' · ');
    who.hidden = false;
    clearTimeout(expiryTimer);
    if (claims && claims.expires) {
      const left = claims.expires - Date.now();
      expiryTimer = setTimeout(() => signOut('Your shift token has expired. Sign in again with a new one.'), Math.min(Math.max(left, 0), 2147483000));
    }
  }

  /** Forget the token and every bit of patient data this page holds. */
  function signOut(message) {
    token = null;
    claims = null;
    clearTimeout(expiryTimer);
    try {
      sessionStorage.removeItem(TOKEN_KEY);
      sessionStorage.clear();
    } catch (e) { /* storage unavailable: nothing stored */ }
    forgetPatient();
    $('who').hidden = true;
    $('who-text').textContent = '';
    $('signin-form').reset();
    fieldError('token-field', 'token', 'token-error', message || null);
    show('signin');
    notice(message ? null : 'Signed out. No patient information is kept on this device.');
    focusEl($('token'));
  }

  /** Remove every patient detail from memory, the page and the forms. */
  function forgetPatient() {
    record = null;
    problemNhs = null;
    for (const id of ['pt-name', 'pt-facts', 'pt-notices', 'decision', 'sections', 'prov-facts', 'prov-sources', 'cand-list', 'cand-note', 'problem-body', 'fresh-banner', 'bg-banner']) {
      clear($(id));
    }
    $('bg-banner').hidden = true;
    $('nhs-form').reset();
    $('search-form').reset();
    $('bg-form').reset();
    $('bg-form').hidden = true;
    $('convey-form').reset();
    $('convey-form').hidden = true;
    $('convey-msg').textContent = '';
    fieldError('convey-field', 'convey-site', 'convey-error', null);
    fieldError('nhs-field', 'nhs', 'nhs-error', null);
    $('nhs-ok').hidden = true;
    fieldError(null, null, 'search-error', null);
    fieldError('bg-field', 'bg-reason', 'bg-error', null);
  }

  function onSignIn(ev) {
    ev.preventDefault();
    const t = cleanToken($('token').value);
    if (!t) {
      fieldError('token-field', 'token', 'token-error', 'Paste or scan your shift token.');
      focusEl($('token'));
      return;
    }
    if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(t)) {
      fieldError('token-field', 'token', 'token-error', 'This is not a shift token: it should be one long code with a single dot in it. Paste it again.');
      focusEl($('token'));
      return;
    }
    const c = readClaims(t);
    if (c && c.expires && c.expires <= Date.now()) {
      fieldError('token-field', 'token', 'token-error', `This shift token expired at ${fmtWhen(new Date(c.expires))}. Ask for a new one.`);
      focusEl($('token'));
      return;
    }
    fieldError('token-field', 'token', 'token-error', null);
    $('token').value = '';
    setToken(t);
    goFind('Signed in. The unit checks your token at your first lookup.');
  }

  function goFind(message) {
    forgetPatient();
    show('find');
    notice(message || null);
    focusEl($('nhs'));
  }

  // ---------------------------------------------------------------- API

  async function api(path, extraHeaders) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    Object.assign(headers, extraHeaders || {});
    const resp = await fetch(path, { headers, cache: 'no-store', credentials: 'omit', redirect: 'error' });
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    return { status: resp.status, body: body || {} };
  }

  /** Common refusals: returns true when handled (401 signs out). */
  function handleAuth(r) {
    if (r.status === 401) {
      const why = {
        expired_token: 'Your shift token has expired. Sign in again with a new one.',
        wrong_unit: 'Your shift token is for a different unit. Sign in with a token for this unit.',
        no_token: 'Sign in with your shift token.',
      }[r.body.error] || `The unit did not accept your shift token${r.body.message ? ` (${r.body.message})` : ''}. Sign in again.`;
      signOut(why);
      return true;
    }
    return false;
  }

  // ---------------------------------------------------------------- find by NHS number

  function onNhsInput() {
    const input = $('nhs');
    const raw = input.value;
    const caret = input.selectionStart === null ? raw.length : input.selectionStart;
    const before = nhsDigits(raw.slice(0, caret)).length;
    const hadOther = /[^\d\s-]/.test(raw);
    const d = nhsDigits(raw);
    const formatted = fmtNhs(d);
    if (formatted !== raw) {
      input.value = formatted;
      let pos = 0;
      let seen = 0;
      while (pos < formatted.length && seen < before) {
        if (/\d/.test(formatted[pos])) seen++;
        pos++;
      }
      try { input.setSelectionRange(pos, pos); } catch (e) { /* not focused */ }
    }
    $('nhs-ok').hidden = true;
    if (hadOther) {
      fieldError('nhs-field', 'nhs', 'nhs-error', 'An NHS number is digits only: letters and symbols were removed. Check the number.');
    } else if (d.length >= 10) {
      const p = nhsProblem(d);
      fieldError('nhs-field', 'nhs', 'nhs-error', p);
      $('nhs-ok').hidden = !!p;
    } else {
      fieldError('nhs-field', 'nhs', 'nhs-error', null);
    }
  }

  function onNhsSubmit(ev) {
    ev.preventDefault();
    const d = nhsDigits($('nhs').value);
    const p = nhsProblem(d);
    if (p) {
      fieldError('nhs-field', 'nhs', 'nhs-error', p);
      $('nhs-ok').hidden = true;
      focusEl($('nhs'));
      return;
    }
    loadRecord(d, null);
  }

  // ---------------------------------------------------------------- find by demographics

  function readDob() {
    const dd = $('dob-day').value.trim();
    const mm = $('dob-month').value.trim();
    const yy = $('dob-year').value.trim();
    if (!dd && !mm && !yy) return { value: null };
    if (!/^\d{1,2}$/.test(dd) || !/^\d{1,2}$/.test(mm) || !/^\d{4}$/.test(yy)) {
      return { error: 'Enter the date of birth as day, month and a four-digit year, for example 27 3 1957.' };
    }
    const d = Number(dd);
    const m = Number(mm);
    const y = Number(yy);
    const date = new Date(y, m - 1, d);
    if (m < 1 || m > 12 || date.getFullYear() !== y || date.getMonth() !== m - 1 || date.getDate() !== d) {
      return { error: 'That date of birth does not exist. Check the day and month.' };
    }
    if (date.getTime() > Date.now()) return { error: 'The date of birth cannot be in the future.' };
    if (y < 1880) return { error: 'Check the year of birth.' };
    return { value: `${yy}-${pad2(m)}-${pad2(d)}` };
  }

  async function onSearchSubmit(ev) {
    ev.preventDefault();
    if (busy) return;
    const family = $('family').value.trim();
    const given = $('given').value.trim();
    const postcode = $('postcode').value.trim().toUpperCase().replace(/\s+/g, ' ');
    const dob = readDob();
    if (dob.error) {
      fieldError(null, null, 'search-error', dob.error);
      focusEl($('dob-day'));
      return;
    }
    const have = [family, dob.value, postcode].filter(Boolean).length;
    if (have < 2) {
      fieldError(null, null, 'search-error', 'Give at least two of: family name, date of birth, postcode.');
      focusEl(family ? (dob.value ? $('postcode') : $('dob-day')) : $('family'));
      return;
    }
    fieldError(null, null, 'search-error', null);
    const q = new URLSearchParams();
    if (family) q.set('family', family);
    if (given) q.set('given', given);
    if (dob.value) q.set('birth_date', dob.value);
    if (postcode) q.set('postcode', postcode);
    busy = true;
    notice('Searching…');
    let r;
    try {
      r = await api(`/v1/search?${q.toString()}`);
    } catch (e) {
      busy = false;
      notice(null);
      fieldError(null, null, 'search-error', 'Cannot reach this unit. Check the connection to the vehicle or kiosk unit and try again.');
      return;
    }
    busy = false;
    notice(null);
    if (handleAuth(r)) return;
    if (r.status !== 200) {
      fieldError(null, null, 'search-error', r.body.message || `The search failed (${r.status}).`);
      return;
    }
    showCandidates(r.body, { family, given, dob: dob.value, postcode });
  }

  function showCandidates(body, asked) {
    const list = $('cand-list');
    clear(list);
    const cands = Array.isArray(body.candidates) ? body.candidates : [];
    const matched = typeof body.matched === 'number' ? body.matched : cands.length;
    const note = $('cand-note');
    const askedText = [
      asked.family && `family name “${asked.family}”`,
      asked.given && `given name “${asked.given}”`,
      asked.dob && `born ${fmtFhirDate(asked.dob)}`,
      asked.postcode && `postcode ${asked.postcode}`,
    ].filter(Boolean).join(', ');
    if (cands.length === 0) {
      $('cand-h').textContent = 'No matching patient on this unit';
      note.textContent = `No one held on this unit matches ${askedText}. Check the spelling and the date, or search by NHS number: the unit can fetch a record it does not hold from the hub while the link is up.`;
    } else {
      $('cand-h').textContent = cands.length === 1 ? 'One possible match — check it is the right person' : `${cands.length} possible matches — choose the right person`;
      let t = `Matching ${askedText}. Check the full name, date of birth, gender and postcode with the patient before you choose.`;
      if (matched > cands.length) t += ` Showing the closest ${cands.length} of ${matched}: add the given name or the full postcode to narrow the search.`;
      note.textContent = t;
      cands.forEach((c, i) => {
        const name = fmtName(c.family, c.given);
        const nhs = String(c.nhs || '');
        const nameId = `cand-${i}-name`;
        const li = h('li', { class: 'cand' },
          h('h2', { class: 'cand-name', id: nameId, text: name }),
          h('dl', { class: 'facts' },
            fact('Born', fmtBirth(c.birth_date)),
            fact('Gender', fmtGender(c.gender)),
            fact('Postcode', c.postcode || 'Not recorded'),
            fact('NHS number', fmtNhs(nhs))),
          h('button', {
            type: 'button',
            class: 'btn primary select',
            'data-nhs': nhs,
            'aria-label': `Select this patient: ${name}, born ${fmtBirth(c.birth_date)}, NHS number ${fmtNhs(nhs)}`,
          }, 'Select this patient'));
        list.append(li);
      });
    }
    show('candidates');
    focusEl($('cand-h'));
  }

  function fact(label, value, cls) {
    return h('div', { class: cls ? `fact ${cls}` : 'fact' }, h('dt', { text: label }), h('dd', { text: value }));
  }

  // ---------------------------------------------------------------- load a record

  async function loadRecord(nhs, breakGlassReason) {
    if (busy) return;
    busy = true;
    notice('Loading the summary…');
    const headers = {};
    if (breakGlassReason) {
      headers['X-Purpose-Of-Use'] = 'ETREAT';
      headers['X-Break-Glass-Reason'] = encodeURIComponent(breakGlassReason); // any language: browsers refuse non-ASCII header values
    }
    let r;
    try {
      r = await api(`/v1/patients/${encodeURIComponent(nhs)}`, headers);
    } catch (e) {
      busy = false;
      notice(null);
      showProblem(nhs, 'Cannot reach this unit', ['The page could not reach the unit. Check the connection to the vehicle or kiosk unit and try again.']);
      return;
    }
    busy = false;
    notice(null);
    if (handleAuth(r)) return;
    const b = r.body;
    if (r.status === 200) {
      record = { nhs, data: b, receivedAt: Date.now(), breakGlass: !!breakGlassReason };
      renderSummary();
      return;
    }
    if (r.status === 403 && b.error === 'restricted') {
      showProblem(nhs, 'This record is restricted', [
        'The sources marked this patient’s record as restricted. It can be opened only for emergency treatment, with a reason.',
      ], true);
      return;
    }
    if (r.status === 403 && b.error === 'role') {
      showProblem(nhs, 'Your sign-in cannot show clinical records', [
        'Your role may search and see demographics, not clinical content. Sign in with a clinical shift token to see the summary.',
      ]);
      return;
    }
    if (r.status === 404 && b.error === 'not_cached') {
      const down = b.link === 'down' || b.reason === 'link_down';
      const lines = [];
      if (down) {
        lines.push('This unit holds no record for this patient, and the link to the hub is DOWN, so it cannot fetch one now.');
        lines.push('Check the NHS number. Try again when the link is back, or use another source (ask the patient, their carers, or the GP record).');
      } else if (b.reason === 'not_at_hub') {
        lines.push('This unit holds no record for this patient, and the hub has none to share (the link is up).');
        lines.push('Check the NHS number. The patient may have no shared record, or may have asked not to share it.');
      } else if (b.reason === 'fetch_refused') {
        lines.push('This unit holds no record for this patient, and the hub refused to share one with this unit (your sign-in, or the unit\'s limit on records from outside its area).');
        lines.push('Trying again will not help. Ask control for the patient\'s details, or sign in again if your shift token may have been withdrawn.');
      } else {
        lines.push('This unit holds no record for this patient and could not fetch one from the hub in time (the link is up).');
        lines.push('Try again in a moment.');
      }
      showProblem(nhs, 'No record for this patient on this unit', lines, false, down ? 'down' : 'up');
      return;
    }
    if (r.status === 400 && b.error === 'break_glass_reason_required') {
      showProblem(nhs, 'A reason is needed', ['Emergency access needs a reason.'], true);
      return;
    }
    if (r.status === 503) {
      showProblem(nhs, 'The unit cannot answer right now', [b.message || 'The unit cannot record this access, so it will not answer it. Tell the fleet team.']);
      return;
    }
    showProblem(nhs, 'No record shown', [b.message || `The unit answered ${r.status}.`]);
  }

  /** A page in place of the summary; `backToRecord`: offer the same record again without break glass. */
  function showProblem(nhs, title, lines, breakGlass, link, backToRecord) {
    problemNhs = nhs;
    record = null;
    const body = $('problem-body');
    clear(body);
    $('problem-h').textContent = title;
    body.append(h('p', { class: 'problem-nhs' }, 'NHS number ', h('strong', { text: fmtNhs(nhs) })));
    const box = h('div', { class: `problem-box${link === 'down' ? ' offline' : ''}` });
    for (const l of lines) box.append(h('p', { text: l }));
    body.append(box);
    const form = $('bg-form');
    form.reset();
    fieldError('bg-field', 'bg-reason', 'bg-error', null);
    form.hidden = !breakGlass;
    $('problem-record').hidden = !backToRecord;
    show('problem');
    focusEl($('problem-h'));
  }

  function onBreakGlass(ev) {
    ev.preventDefault();
    const reason = $('bg-reason').value.trim().replace(/\s+/g, ' ');
    if (reason.length < 10) {
      fieldError('bg-field', 'bg-reason', 'bg-error', 'Give the reason in a few words (at least 10 characters).');
      focusEl($('bg-reason'));
      return;
    }
    if (!problemNhs) return;
    loadRecord(problemNhs, reason);
  }

  // ---------------------------------------------------------------- the summary
  //
  // The unit's answer already says what is current, past, stopped, superseded, withheld and
  // what the resuscitation decision is (`resuscitation.decision`). The page shows those words
  // and groups as they are: it never works a decision out from codes or free text itself.

  /** What a section says when it has no current entries: from its `status`, never its list. */
  const EMPTY = {
    allergies: {
      withheld: 'Allergies withheld',
      no_information_note: 'This does not mean the patient has no allergies. Ask the patient or their carers.',
      withheld_note: 'A source holds allergy information but withheld it. Ask the patient or their carers.',
    },
    resuscitation: {
      withheld: 'Resuscitation decision withheld',
      no_information_note: 'This does not mean there is no decision: look for a paper ReSPECT or DNACPR form.',
      withheld_note: 'A source holds a resuscitation decision but withheld it.',
    },
    care_plans: {
      withheld: 'Care plans withheld',
      no_information_note: 'This does not mean there is no plan: ask the patient or their carers.',
      withheld_note: 'A source holds a care plan but withheld it.',
    },
    medications: {
      withheld: 'Medicines withheld',
      no_information_note: 'This does not mean the patient takes no medicines.',
      withheld_note: 'A source holds medicines information but withheld it.',
    },
    conditions: {
      withheld: 'Conditions withheld',
      no_information_note: 'This does not mean the patient has no conditions.',
      withheld_note: 'A source holds conditions but withheld them.',
    },
    alerts: {
      withheld: 'Alerts withheld',
      no_information_note: 'This does not mean there are no alerts (safeguarding, communication needs, risk to crew).',
      withheld_note: 'A source holds alerts but withheld them.',
    },
  };

  /**
   * The sections in order. `groups`: the lists the unit keeps apart from the current entries
   * (past, stopped, superseded, history), each under its own heading; `fold` ones start closed.
   */
  const SECTIONS = [
    {
      key: 'allergies', title: 'Allergies and adverse reactions', item: allergyItem, sort: sortAllergies,
      groups: [{ key: 'past', title: 'Past (resolved / inactive)', item: pastAllergyItem }],
      hideRefuted: true, // a refuted allergy is not an allergy: never shown, not even as past
    },
    {
      key: 'resuscitation', title: 'Resuscitation decision', item: resusItem,
      groups: [{ key: 'history', title: 'History: decisions no longer current (superseded, rescinded or withdrawn)', item: resusItem, fold: true }],
    },
    {
      key: 'care_plans', title: 'Care plans (ReSPECT, end of life, crisis)', item: carePlanItem,
      groups: [{ key: 'superseded', title: 'replaced by a newer plan', item: carePlanItem, fold: true }],
    },
    {
      key: 'medications', title: 'Current medicines', item: medicationItem, sort: sortMedications,
      groups: [{ key: 'stopped', title: 'Recently stopped', item: stoppedMedicationItem }],
    },
    {
      key: 'conditions', title: 'Conditions', item: conditionItem, sort: sortConditions,
      groups: [{ key: 'past', title: 'Not current (resolved, inactive or refuted)', item: conditionItem, fold: true }],
    },
    {
      key: 'alerts', title: 'Alerts', item: alertItem,
      groups: [{ key: 'past', title: 'Past alerts', item: pastAlertItem }],
    },
  ];

  function sourceName(p) {
    if (!p) return 'an unknown source';
    return p.source_name ? `${p.source_name} (${p.source_ods})` : (p.source_ods || 'an unknown source');
  }

  function sourceLine(p) {
    if (!p) return h('p', { class: 'src', text: 'Source not recorded' });
    const upd = fmtMillis(p.last_updated);
    return joined('src', [`Source: ${sourceName(p)}`, upd && `updated ${upd}`]);
  }

  /** How the item was received, when something about it is incomplete, then its source. */
  function itemTail(p) {
    const out = [];
    for (const c of (p && Array.isArray(p.caveats) ? p.caveats : [])) {
      const text = c.kind === 'truncated' ? `Text truncated — full record at ${sourceName(p)}`
        : c.kind === 'unresolved' ? 'Reference could not be resolved: only the name as sent was kept'
          : `Received incomplete — check with ${sourceName(p)}`;
      out.push(h('p', { class: `caveat caveat-${c.kind}`, text }));
    }
    out.push(sourceLine(p));
    return out;
  }

  /** A "Restricted" badge on an item shown only because the glass was broken. */
  function restrictedBadge(p) {
    return p && p.restricted ? badge('Restricted', 'restricted-badge') : null;
  }

  function badge(text, cls) {
    return h('span', { class: `badge ${cls || ''}`.trim(), text });
  }

  /** "a · b · c", each part kept on one line. */
  function joined(cls, parts) {
    const kept = parts.filter(Boolean);
    if (!kept.length) return null;
    const p = h('p', { class: cls });
    kept.forEach((t, i) => {
      if (i) p.append(' · ');
      p.append(h('span', { class: 'part', text: t }));
    });
    return p;
  }

  function detail(parts) {
    return joined('detail', parts);
  }

  function statusBadge(s, okValues) {
    if (!s || okValues.includes(s)) return null;
    return badge(capital(s), 'muted-badge');
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  // ----- allergies

  const CRIT_ORDER = { high: 0, 'unable-to-assess': 1, low: 2 };

  function sortAllergies(a, b) {
    const act = (x) => (x.clinical_status && x.clinical_status !== 'active' ? 1 : 0);
    const cr = (x) => (x.criticality in CRIT_ORDER ? CRIT_ORDER[x.criticality] : 1.5);
    return act(a) - act(b) || cr(a) - cr(b);
  }

  function reactionsText(a) {
    return Array.isArray(a.reactions) && a.reactions.length
      ? a.reactions.map((r) => `${conceptText(r.manifestation) || 'unnamed reaction'}${r.severity ? ` (${r.severity})` : ' (severity not recorded)'}`).join('; ')
      : 'not recorded';
  }

  function allergyItem(a) {
    const crit = a.criticality;
    const critBadge = crit === 'high' ? badge('HIGH criticality', 'crit-high')
      : crit === 'low' ? badge('Low criticality', 'crit-low')
        : crit === 'unable-to-assess' ? badge('Criticality: unable to assess', 'crit-unknown')
          : badge('Criticality not recorded', 'crit-unknown');
    return h('li', { class: `item allergy${crit === 'high' ? ' is-high' : ''}` },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(a.concept) || 'Unnamed allergy' }),
        critBadge,
        restrictedBadge(a.provenance),
        statusBadge(a.clinical_status, ['active']),
        a.verification_status && a.verification_status !== 'confirmed' ? badge(capital(a.verification_status), 'muted-badge') : null),
      h('p', { class: 'reaction' }, h('strong', { text: 'Reaction: ' }), reactionsText(a)),
      detail([
        a.category && `Type: ${a.category}`,
        a.onset && `onset ${fmtFhirDate(a.onset)}`,
        a.recorded && `recorded ${fmtFhirDate(a.recorded)}`,
      ]),
      ...itemTail(a.provenance));
  }

  /** A resolved or inactive allergy: no criticality badge or red styling (it is not current). */
  function pastAllergyItem(a) {
    return h('li', { class: 'item allergy-past' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(a.concept) || 'Unnamed allergy' }),
        badge(capital(a.clinical_status || 'not current'), 'muted-badge'),
        restrictedBadge(a.provenance)),
      h('p', { class: 'detail', text: `Reaction: ${reactionsText(a)}` }),
      detail([a.recorded && `recorded ${fmtFhirDate(a.recorded)}`]),
      ...itemTail(a.provenance));
  }

  // ----- resuscitation

  /** The unit's `cpr` value in words (what the decision means for CPR; never worked out here). */
  const CPR_WORDS = { not_for_cpr: 'NOT for CPR', for_cpr: 'For CPR', respect_plan: 'ReSPECT plan' };
  const FORM_CPR = { not_for_cpr: 'not for CPR', for_cpr: 'for CPR' };

  function resusItem(r) {
    const current = !r.state || r.state === 'current';
    const name = CPR_WORDS[r.cpr] || conceptText(r.decision) || 'Decision not named';
    const reviewPassed = current && r.review && /^\d{4}-\d{2}-\d{2}/.test(r.review) && new Date(r.review.slice(0, 10)).getTime() < Date.now();
    return h('li', { class: `item resus cpr-${r.cpr || 'unknown'}${current ? '' : ' not-current'}`, 'data-cpr': r.cpr || 'unknown' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: name }),
        current ? null : badge(capital(r.state), 'state-badge'),
        restrictedBadge(r.provenance)),
      // The recorded concept is shown only as a plan's name (or as the name when `cpr` is
      // unknown): for a Consent it may just say "Cardiopulmonary resuscitation", whatever the
      // decision was.
      r.cpr === 'respect_plan' ? h('p', { class: 'detail', text: conceptText(r.decision) }) : null,
      r.form_cpr ? h('p', { class: 'form-cpr', text: `The form records: ${FORM_CPR[r.form_cpr] || r.form_cpr}` }) : null,
      detail([
        r.decided ? `Decided ${fmtFhirDate(r.decided)}` : 'Decision date not recorded',
        r.review ? `review by ${fmtFhirDate(r.review)}` : 'no review date recorded',
        r.decision_maker && `by ${r.decision_maker}`,
      ]),
      reviewPassed ? h('p', { class: 'warn-line', text: 'The review date has passed: confirm the decision is still current.' }) : null,
      ...itemTail(r.provenance));
  }

  /** The decision banner: the unit's `decision.headline`, word for word, coloured by its state. */
  function renderDecision(res) {
    const el = $('decision');
    clear(el);
    const dec = res && res.decision && typeof res.decision === 'object' ? res.decision : null;
    const state = dec && dec.state ? dec.state : 'unknown';
    el.className = `decision decision-${state}`;
    el.dataset.state = state;
    // Only if the unit sent no headline (it always does): the state's own name, nothing inferred.
    const fallback = {
      not_for_cpr: 'NOT FOR CPR',
      for_cpr: 'FOR CPR',
      respect_plan: 'ReSPECT PLAN — read the form',
      conflict: 'CONFLICTING RESUSCITATION DECISIONS',
      unclear: 'RESUSCITATION DECISION RECORDED — read it',
      no_decision: 'No resuscitation decision recorded',
      withheld: 'Resuscitation decision withheld — restricted record: break-glass to see',
    }[state] || 'Resuscitation decision: read the resuscitation section';
    el.append(state === 'conflict'
      ? h('p', { class: 'decision-label' }, h('span', { class: 'conflict-tag', text: 'CONFLICT' }), ' Resuscitation decisions disagree')
      : h('p', { class: 'decision-label', text: 'Resuscitation decision' }));
    el.append(h('h2', { class: 'decision-headline', id: 'decision-h', text: (dec && dec.headline) || fallback }));
    const entries = res && Array.isArray(res.entries) ? res.entries : [];
    if (state === 'conflict') {
      const ul = h('ul', { class: 'conflict-list' });
      for (const e of entries.filter((x) => !x.state || x.state === 'current')) {
        const when = e.decided ? `decided ${fmtFhirDate(e.decided)}` : 'date not recorded';
        ul.append(h('li', null,
          h('strong', { text: CPR_WORDS[e.cpr] || conceptText(e.decision) || 'Decision not named' }),
          ` — ${sourceName(e.provenance)}, ${when}${e.decision_maker ? `, ${e.decision_maker}` : ''}`));
      }
      el.append(ul, h('p', { class: 'decision-note', text: 'These current decisions disagree. Confirm which one applies (paper form, the patient’s own documents, a senior clinician) before acting on either.' }));
    }
    if (state === 'no_decision') {
      el.append(h('p', { class: 'decision-note', text: 'No current decision is held on this record. Look for a paper ReSPECT or DNACPR form.' }));
      const past = res && Array.isArray(res.history) ? res.history.length : 0;
      if (past) el.append(h('p', { class: 'decision-note', text: `${plural(past, 'earlier decision is', 'earlier decisions are')} no longer current: see History in the resuscitation section.` }));
    }
    if (state === 'withheld') {
      el.append(h('p', { class: 'decision-action' }, h('button', { type: 'button', class: 'btn bg-open' }, 'Break glass to see the decision…')));
    } else if (res && Number(res.withheld) > 0) {
      el.append(breakGlassLine(Number(res.withheld)));
    }
  }

  // ----- care plans

  function carePlanItem(c) {
    return h('li', { class: 'item careplan' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(c.plan_type) || 'Care plan' }),
        statusBadge(c.status, ['current', 'active']),
        restrictedBadge(c.provenance)),
      ...extractOf(c.extract),
      detail([
        c.date && `Dated ${fmtFhirDate(c.date)}`,
        c.custodian && `held by ${c.custodian}`,
      ]),
      c.url ? h('p', { class: 'detail url' }, 'Full plan: ', h('span', { class: 'mono', text: c.url })) : null,
      ...itemTail(c.provenance));
  }

  const EXTRACT_SHOWN = 400;

  /** A care plan's extract; a long one opens to its start, the rest one tap away. */
  function extractOf(text) {
    if (!text) return [];
    if (text.length <= EXTRACT_SHOWN + 100) return [h('p', { class: 'extract', text })];
    const cut = text.lastIndexOf(' ', EXTRACT_SHOWN);
    const head = text.slice(0, cut > EXTRACT_SHOWN / 2 ? cut : EXTRACT_SHOWN);
    return [
      h('p', { class: 'extract', text: `${head} …` }),
      h('details', { class: 'extract-more' },
        h('summary', { text: `Show all the text received (${text.length.toLocaleString('en-GB')} characters)` }),
        h('p', { class: 'extract-full', text })),
    ];
  }

  // ----- medicines

  const HIGH_RISK = {
    anticoagulant: 'anticoagulant',
    antiplatelet: 'antiplatelet',
    insulin: 'insulin',
    opioid: 'opioid',
    steroid: 'steroid (adrenal crisis risk)',
    immunosuppressant: 'immunosuppressant',
    antiepileptic: 'antiepileptic',
    chemotherapy: 'chemotherapy',
    lithium: 'lithium',
    methotrexate: 'methotrexate',
    digoxin: 'digoxin',
    other: 'specific hazard',
  };

  function sortMedications(a, b) {
    const act = (x) => (x.status && x.status !== 'active' ? 1 : 0);
    const hr = (x) => (x.high_risk ? 0 : 1);
    return act(a) - act(b) || hr(a) - hr(b);
  }

  const RECORD_KINDS = [['statement', 'statements'], ['request', 'requests'], ['order', 'orders']];

  /** "statement + 2 orders, Barts Health NHS Trust; statement, Bow Common Practice". */
  function recordsText(records) {
    if (!Array.isArray(records) || records.length < 2) return null;
    const bySource = new Map();
    for (const r of records) {
      const who = r.source_name || r.source_ods || 'unknown source';
      if (!bySource.has(who)) bySource.set(who, new Map());
      const kinds = bySource.get(who);
      kinds.set(r.kind, (kinds.get(r.kind) || 0) + 1);
    }
    const rank = (k) => { const i = RECORD_KINDS.findIndex(([one]) => one === k); return i < 0 ? 9 : i; };
    const parts = [];
    for (const [who, kinds] of bySource) {
      const words = [...kinds].sort((x, y) => rank(x[0]) - rank(y[0])).map(([k, n]) => {
        const w = RECORD_KINDS.find(([one]) => one === k) || [String(k || 'record'), `${k || 'record'}s`];
        return n === 1 ? w[0] : `${n} ${w[1]}`;
      });
      parts.push(`${words.join(' + ')}, ${who}`);
    }
    return parts.join('; ');
  }

  function medicationItem(m) {
    const hr = m.high_risk ? HIGH_RISK[m.high_risk] || String(m.high_risk).replace(/_/g, ' ') : null;
    const recs = recordsText(m.records);
    return h('li', { class: `item med${hr ? ' is-high-risk' : ''}` },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(m.concept) || 'Unnamed medicine' }),
        hr ? badge(`HIGH-RISK: ${hr}`, 'high-risk') : null,
        statusBadge(m.status, ['active']),
        restrictedBadge(m.provenance)),
      m.dosage ? h('p', { class: 'dose', text: m.dosage }) : null,
      detail([
        m.form && conceptText(m.form),
        m.route && conceptText(m.route),
        m.last_issued && `last issued ${fmtFhirDate(m.last_issued)}`,
        m.started && `started ${fmtFhirDate(m.started)}`,
      ]),
      recs ? h('p', { class: 'records', text: `Recorded as: ${recs}` }) : null,
      ...itemTail(m.provenance));
  }

  /** A medicine stopped recently: its status and end date, and no high-risk badge (not taken now). */
  function stoppedMedicationItem(m) {
    const recs = recordsText(m.records);
    return h('li', { class: 'item med-stopped' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(m.concept) || 'Unnamed medicine' }),
        badge(capital(m.status || 'stopped'), 'muted-badge'),
        restrictedBadge(m.provenance)),
      h('p', { class: 'ended', text: m.ended ? `Ended ${fmtFhirDate(m.ended)}` : 'End date not recorded' }),
      detail([
        m.dosage && `was: ${m.dosage}`,
        m.started && `started ${fmtFhirDate(m.started)}`,
      ]),
      recs ? h('p', { class: 'records', text: `Recorded as: ${recs}` }) : null,
      ...itemTail(m.provenance));
  }

  // ----- conditions

  function sortConditions(a, b) {
    const act = (x) => (x.clinical_status && x.clinical_status !== 'active' ? 1 : 0);
    const maj = (x) => (x.significance === 'major' ? 0 : 1);
    return act(a) - act(b) || maj(a) - maj(b);
  }

  function conditionItem(c) {
    return h('li', { class: 'item condition' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(c.concept) || 'Unnamed condition' }),
        c.significance === 'major' ? badge('Major', 'major') : null,
        statusBadge(c.clinical_status, ['active']),
        c.verification_status && c.verification_status !== 'confirmed' ? badge(capital(c.verification_status), 'muted-badge') : null,
        restrictedBadge(c.provenance)),
      detail([
        c.onset && `onset ${fmtFhirDate(c.onset)}`,
        c.recorded && `recorded ${fmtFhirDate(c.recorded)}`,
      ]),
      ...itemTail(c.provenance));
  }

  // ----- alerts

  function alertItem(a) {
    const period = a.start || a.end
      ? `${a.start ? `from ${fmtFhirDate(a.start)}` : ''}${a.end ? ` until ${fmtFhirDate(a.end)}` : ''}`.trim()
      : null;
    return h('li', { class: 'item alert-item' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(a.flag) || 'Alert' }),
        a.category ? badge(conceptText(a.category), 'muted-badge') : null,
        statusBadge(a.status, ['active']),
        restrictedBadge(a.provenance)),
      detail([period]),
      ...itemTail(a.provenance));
  }

  /** An alert that is inactive or whose period has ended. */
  function pastAlertItem(a) {
    return h('li', { class: 'item alert-past' },
      h('div', { class: 'item-head' },
        h('span', { class: 'item-name', text: conceptText(a.flag) || 'Alert' }),
        badge(a.end ? 'Ended' : capital(a.status && a.status !== 'active' ? a.status : 'not current'), 'muted-badge'),
        restrictedBadge(a.provenance)),
      detail([
        a.category && conceptText(a.category),
        a.start && `from ${fmtFhirDate(a.start)}`,
        a.end && `ended ${fmtFhirDate(a.end)}`,
      ]),
      ...itemTail(a.provenance));
  }

  // ----- sections

  /** "N restricted items withheld — break-glass to see", with the button that starts it. */
  function breakGlassLine(n) {
    return h('div', { class: 'withheld-line' },
      h('p', { class: 'withheld-text', text: `${plural(n, 'restricted item', 'restricted items')} withheld — break-glass to see` }),
      h('button', { type: 'button', class: 'btn bg-open' }, 'Break glass…'));
  }

  /** "None known — Barts Health NHS Trust, 01-Nov-2026", from the first marker's provenance. */
  function noneKnownText(section) {
    const m = (section.basis || []).find((x) => x.status === 'none_known') || (section.basis || [])[0];
    const p = m && m.provenance;
    if (!p) return 'None known — source not recorded';
    const when = fmtMillis(p.last_updated);
    return `None known — ${p.source_name || p.source_ods || 'source not recorded'}${when ? `, ${when}` : ''}`;
  }

  function renderSection(def, section) {
    const s = section && typeof section === 'object' ? section : { status: 'no_information', entries: [] };
    const shown = (e) => !(def.hideRefuted && e.verification_status === 'refuted');
    const entries = (Array.isArray(s.entries) ? s.entries : []).filter(shown);
    let status = s.status;
    if (entries.length && status !== 'entries') status = 'entries';
    if (!entries.length && !['none_known', 'withheld'].includes(status)) status = 'no_information';
    const withheld = Number(s.withheld) || 0;
    const words = EMPTY[def.key];
    const hid = `sec-${def.key}-h`;
    const sec = h('section', { class: `sec sec-${def.key} status-${status}`, 'aria-labelledby': hid, 'data-status': status });
    const count = entries.length ? ` (${entries.length})` : '';
    sec.append(h('h2', { id: hid }, def.title, h('span', { class: 'count', text: count })));
    if (entries.length) {
      if (def.sort) entries.sort(def.sort);
      const ul = h('ul', { class: 'items' });
      for (const e of entries) ul.append(def.item(e));
      sec.append(ul);
    } else {
      const main = status === 'none_known' ? noneKnownText(s)
        : status === 'withheld' ? words.withheld
          : 'No information';
      const box = h('div', { class: `empty empty-${status}` }, h('p', { class: 'empty-main', text: main }));
      const note = status === 'withheld' && withheld > 0 ? null : words[`${status}_note`];
      if (note) box.append(h('p', { class: 'empty-note', text: note }));
      const marker = (s.basis || []).find((m) => m.status === status && conceptText(m.concept));
      if (marker) box.append(h('p', { class: 'src', text: `Recorded as “${conceptText(marker.concept)}”` }));
      // A section withheld because of restricted items: the way to see them goes in its box.
      if (status === 'withheld' && withheld > 0) box.append(breakGlassLine(withheld));
      sec.append(box);
    }
    if (withheld > 0 && status !== 'withheld') sec.append(breakGlassLine(withheld));
    for (const g of def.groups || []) {
      const list = (Array.isArray(s[g.key]) ? s[g.key] : []).filter(shown);
      if (!list.length) continue;
      const ul = h('ul', { class: 'items' });
      for (const e of list) ul.append(g.item(e));
      if (g.fold) {
        const label = g.key === 'superseded'
          ? `${plural(list.length, 'earlier plan', 'earlier plans')} ${g.title} (show)`
          : `${g.title} (${list.length})`;
        sec.append(h('details', { class: `past past-${g.key}` }, h('summary', { text: label }), ul));
      } else {
        sec.append(h('div', { class: `past past-${g.key}` }, h('h3', { text: `${g.title} (${list.length})` }), ul));
      }
    }
    const earlier = Number(s.stopped_earlier) || 0;
    if (earlier > 0) {
      sec.append(h('p', { class: 'empty-note', text: `${plural(earlier, 'medicine', 'medicines')} stopped more than a year ago ${earlier === 1 ? 'is' : 'are'} not listed.` }));
    }
    return sec;
  }

  /** Deceased, redirected from a former number, restricted demographics: before anything else. */
  function renderNotices(d, p, nhs) {
    const box = $('pt-notices');
    clear(box);
    if (p.deceased) {
      box.append(h('p', { class: 'pt-notice deceased', text: `Recorded as deceased — ${p.deceased_at ? fmtFhirDate(p.deceased_at) : 'date not recorded'}` }));
    }
    if (d.redirected_from) {
      box.append(h('p', { class: 'pt-notice redirected', text: `You asked for ${fmtNhs(String(d.redirected_from))} — this record now lives under ${fmtNhs(nhs)}: the old number was superseded or merged. Check it is the right person.` }));
    }
    if (p.restricted) {
      box.append(h('p', { class: 'pt-notice restricted', text: 'Address withheld (restricted record)' }));
    }
    box.hidden = !box.firstChild;
  }

  function renderSummary() {
    const d = record.data;
    const p = d.patient || {};
    const nhs = String(d.nhs_number || record.nhs);
    const noNameParts = !p.family && !(Array.isArray(p.given) && p.given.length);
    $('pt-name').textContent = noNameParts && p.name_text ? p.name_text : fmtName(p.family, p.given);
    const facts = $('pt-facts');
    clear(facts);
    const verified = p.nhs_verification === '01' ? ' (verified)' : p.nhs_verification ? ' (not verified)' : '';
    facts.append(
      fact('Born', fmtBirth(p.birth_date)),
      fact('Gender', fmtGender(p.gender)),
      fact('NHS number', `${fmtNhs(nhs)}${verified}`, 'nhs-fact'),
      fact('Postcode', p.restricted ? 'Withheld (restricted record)' : p.postcode || 'Not recorded'),
      fact('GP practice', p.gp_practice ? (p.gp_name ? `${p.gp_name} (${p.gp_practice})` : p.gp_practice) : 'Not recorded'));
    if (Array.isArray(p.former_nhs_numbers) && p.former_nhs_numbers.length) {
      facts.append(fact('Former NHS numbers', p.former_nhs_numbers.map((x) => fmtNhs(String(x))).join(', ')));
    }
    renderNotices(d, p, nhs);

    const secs = $('sections');
    clear(secs);
    if (d.objection) {
      secs.append(h('div', { class: 'empty empty-withheld' },
        h('p', { class: 'empty-main', text: 'The patient has objected to sharing their record' }),
        h('p', { class: 'empty-note', text: 'No clinical content is available here. Ask the patient or their carers.' })));
    }
    renderDecision(d.resuscitation);
    for (const def of SECTIONS) secs.append(renderSection(def, d[def.key]));

    const bg = $('bg-banner');
    // Only when the glass was broken: a record with restricted items answered without it has
    // them withheld (each section says so), and must not claim they were opened.
    if (record.breakGlass) {
      bg.textContent = 'RESTRICTED information opened for emergency treatment. Your reason was recorded and an alert was raised for review.';
      bg.hidden = false;
    } else {
      bg.textContent = '';
      bg.hidden = true;
    }

    const pf = $('prov-facts');
    clear(pf);
    const asOf = d.as_of ? new Date(d.as_of) : null;
    const synced = d.synced_at ? new Date(d.synced_at) : null;
    pf.append(
      fact('Hub assembled this version', asOf && !Number.isNaN(asOf.getTime()) ? `${fmtDay(asOf)} ${fmtTime(asOf)}` : 'Not known'),
      fact('This unit received it', synced && !Number.isNaN(synced.getTime()) ? `${fmtDay(synced)} ${fmtTime(synced)}` : 'Not known'),
      fact('Held', d.origin === 'on_demand' ? 'Fetched from the hub on demand (not in this unit’s cache)' : 'In this unit’s cache'),
      fact('Version', String(d.version ?? 'not known')),
      fact('Confidentiality', d.confidentiality === 'restricted' ? 'Restricted' : 'Normal'));
    const ps = $('prov-sources');
    clear(ps);
    const sources = Array.isArray(d.sources) ? d.sources : [];
    if (!sources.length) ps.append(h('li', { text: 'No sources listed' }));
    for (const s of sources) {
      const upd = fmtMillis(s.retrieved_at);
      ps.append(h('li', { text: `${s.name ? `${s.name} (${s.ods})` : s.ods}${upd ? ` — latest item updated ${upd}` : ''}` }));
    }
    renderFreshness();
    show('summary');
    focusEl($('pt-name'));
  }

  /** From the summary: ask for a reason and fetch the same record again with ETREAT. */
  function openBreakGlass() {
    if (!record) return;
    const nhs = String(record.data.nhs_number || record.nhs);
    showProblem(nhs, 'Restricted items in this record', [
      'Some items in this patient’s record are restricted by their source. They can be shown only for emergency treatment, with a reason.',
    ], true, null, true);
  }

  /** "Record as of 14:02 — 12 minutes ago", amber when the unit says the record is stale. */
  function renderFreshness() {
    if (!record) return;
    const d = record.data;
    const ageAtReceipt = typeof d.age_seconds === 'number' ? d.age_seconds : 0;
    const asOf = new Date(record.receivedAt - ageAtReceipt * 1000);
    const age = (Date.now() - asOf.getTime()) / 1000;
    const stale = d.stale === true;
    const offline = lastStatus ? lastStatus.link === 'down' : d.link === 'down';
    const b = $('fresh-banner');
    let text = `${stale ? 'OLD DATA — ' : ''}Record as of ${fmtWhen(asOf)} — ${fmtAgo(age)}.`;
    if (stale) text += ' It may not show recent changes: confirm with the patient or another source.';
    else if (offline) text += ' Shown from this unit’s cache while the link to the hub is down.';
    if (b.textContent !== text) b.textContent = text;
    b.className = `banner ${stale ? 'stale' : 'fresh'}`;
    b.dataset.stale = String(stale);
  }

  // ---------------------------------------------------------------- conveying to an ED

  function openConvey() {
    $('convey-form').hidden = false;
    $('convey-msg').textContent = '';
    focusEl($('convey-site'));
  }

  async function onConveySubmit(ev) {
    ev.preventDefault();
    if (!record) return;
    const site = $('convey-site').value.trim().toUpperCase();
    if (!/^[A-Z0-9]{3,8}$/.test(site)) {
      fieldError('convey-field', 'convey-site', 'convey-error', 'Type the emergency department\'s ODS code: 3 to 8 letters and digits, e.g. RJ122.');
      return;
    }
    fieldError('convey-field', 'convey-site', 'convey-error', null);
    const msg = $('convey-msg');
    let r;
    try {
      const resp = await fetch(`/v1/patients/${record.nhs}/conveying`, {
        method: 'POST',
        headers: { Accept: 'application/json', 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
        body: JSON.stringify({ site }),
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
      });
      let body = null;
      try {
        body = await resp.json();
      } catch (e) {
        body = null;
      }
      r = { status: resp.status, body: body || {} };
    } catch (e) {
      msg.textContent = 'Not sent: cannot reach this unit. Tell the ED by radio as usual.';
      return;
    }
    if (handleAuth(r)) return;
    if (r.status === 202) {
      $('convey-form').hidden = true;
      msg.textContent = `Sent: ${r.body.message || `${site} will be sent this record`}. Hand over by radio as usual.`;
      focusEl($('convey-open'));
    } else {
      msg.textContent = `Not sent: ${r.body.message || `the unit answered ${r.status}`}. Tell the ED by radio as usual.`;
    }
  }

  // ---------------------------------------------------------------- unit status

  function renderStatus(s, unreachable) {
    const lb = $('link-banner');
    const foot = $('unit-status');
    let text = '';
    let cls = '';
    if (unreachable) {
      text = 'CANNOT REACH THIS UNIT — check the connection to the vehicle or kiosk unit. Nothing can be looked up until it is back.';
      cls = 'offline';
      foot.textContent = 'Unit status: not reachable';
    } else if (s) {
      const last = s.last_sync_at ? new Date(s.last_sync_at) : null;
      const lastText = last && !Number.isNaN(last.getTime()) ? `${fmtWhen(last)} (${fmtAgo((Date.now() - last.getTime()) / 1000)})` : 'never';
      if (s.shredded) {
        text = 'THIS UNIT’S RECORDS HAVE BEEN WIPED (tamper protection). It cannot show any patient record. Tell the fleet team.';
        cls = 'offline';
      } else if (s.supervisor && s.supervisor.power_fail) {
        text = 'POWER FAILING — the unit is saving its data and may stop answering shortly.';
        cls = 'offline';
      } else if (s.link === 'down') {
        text = `OFFLINE — no link to the hub. Showing records held on this unit only; last synced ${lastText}. Records not held here cannot be fetched.`;
        cls = 'offline';
      } else if (s.caught_up === false || s.rebaselining) {
        text = `Syncing with the hub (${Number(s.records || 0).toLocaleString('en-GB')} records so far): some records may not be on this unit yet.`;
        cls = 'info';
      }
      // A full disk stops updates from the hub while lookups go on: say so beside anything else
      // (the records shown may be older than the last sync time suggests).
      if (!s.shredded && s.storage && s.storage.disk_full) {
        const full = 'UNIT STORAGE FULL — updates from the hub cannot be saved, so records shown may be out of date: check the “as of” time on each record. Tell the fleet team.';
        text = text ? `${text} ${full}` : full;
        cls = 'offline';
      }
      const parts = [`Unit ${s.device_id || ''}${s.role ? ` (${s.role})` : ''}`.trim(), `link ${s.link === 'down' ? 'DOWN' : 'up'}`];
      if (typeof s.records === 'number') parts.push(`${s.records.toLocaleString('en-GB')} records`);
      parts.push(`last sync ${lastText}`);
      if (s.storage && s.storage.disk_full) parts.push('storage FULL');
      foot.textContent = parts.join(' · ');
      // Only an ambulance's unit conveys patients.
      $('convey-open').hidden = s.role !== 'vehicle';
      if (s.device_id) $('unit-name').textContent = `Critical summary · unit ${s.device_id}`;
    }
    if (lb.textContent !== text) lb.textContent = text;
    lb.className = `banner ${cls}`;
    lb.hidden = !text;
    document.body.dataset.link = unreachable ? 'unreachable' : s && s.link === 'down' ? 'down' : 'up';
  }

  async function pollStatus() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 2500);
    try {
      const resp = await fetch('/v1/status', { cache: 'no-store', credentials: 'omit', signal: ctl.signal });
      const s = await resp.json();
      lastStatus = s;
      statusFailures = 0;
      renderStatus(s, false);
    } catch (e) {
      statusFailures += 1;
      if (statusFailures >= 2) {
        lastStatus = null;
        renderStatus(null, true);
      }
    } finally {
      clearTimeout(timer);
    }
    tick();
    setTimeout(pollStatus, POLL_MS);
  }

  /** Housekeeping on every poll: freshness text, idle close. */
  function tick() {
    if (record) renderFreshness();
    const viewing = !$('summary').hidden || !$('candidates').hidden || !$('problem').hidden;
    if (viewing && Date.now() - lastActivity > IDLE_CLOSE_MS) {
      goFind('The record was closed after 10 minutes without use.');
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $('signin-form').addEventListener('submit', onSignIn);
    $('signout').addEventListener('click', () => signOut(null));
    $('nhs').addEventListener('input', onNhsInput);
    $('nhs-form').addEventListener('submit', onNhsSubmit);
    $('search-form').addEventListener('submit', onSearchSubmit);
    $('cand-back').addEventListener('click', () => {
      goFind(null);
      focusEl($('family'));
    });
    $('cand-list').addEventListener('click', (ev) => {
      const btn = ev.target.closest('button.select');
      if (btn && btn.dataset.nhs) loadRecord(btn.dataset.nhs, null);
    });
    $('problem-back').addEventListener('click', () => goFind(null));
    $('problem-record').addEventListener('click', () => {
      if (problemNhs) loadRecord(problemNhs, null);
    });
    $('summary').addEventListener('click', (ev) => {
      if (ev.target.closest('button.bg-open')) openBreakGlass();
    });
    $('bg-form').addEventListener('submit', onBreakGlass);
    $('close-record').addEventListener('click', () => goFind(null));
    $('convey-open').addEventListener('click', openConvey);
    $('convey-cancel').addEventListener('click', () => {
      $('convey-form').hidden = true;
      focusEl($('convey-open'));
    });
    $('convey-form').addEventListener('submit', onConveySubmit);
    $('refresh-record').addEventListener('click', () => {
      if (record) loadRecord(record.nhs, null);
    });
    for (const evName of ['keydown', 'pointerdown', 'wheel', 'touchstart']) {
      document.addEventListener(evName, () => { lastActivity = Date.now(); }, { passive: true, capture: true });
    }
    // Clinical content must not survive into the back/forward cache or another visit.
    window.addEventListener('pagehide', () => forgetPatient());

    let saved = null;
    try {
      saved = sessionStorage.getItem(TOKEN_KEY);
    } catch (e) {
      saved = null;
    }
    const c = saved ? readClaims(saved) : null;
    if (saved && !(c && c.expires && c.expires <= Date.now())) {
      setToken(saved);
      goFind(null);
    } else {
      signOut(saved ? 'Your shift token has expired. Sign in again with a new one.' : null);
      notice(null);
    }
    pollStatus();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
}());
