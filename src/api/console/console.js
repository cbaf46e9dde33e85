// herald console: reads the node's /v1 endpoints and draws what it holds.
//
// Everything shown comes from the network and may be hostile (payloads are
// whatever a publisher sent): it is only ever put into the page as text
// nodes (`text()`, `textContent`) or attribute values set one by one, never
// parsed as markup. The Content-Security-Policy the node sends with this
// file forbids inline script as a second line of defence.
'use strict';

(function () {
  // Limits: every list the page draws is bounded.
  const REFRESH_MS = 2000; // how often everything is read again
  const EVENTS_PER_FEED = 20; // newest events read from each feed
  const EVENTS_SHOWN = 30; // newest events shown, all feeds merged
  const FEEDS_READ_MAX = 32; // feeds whose events are read (newest heads first)
  const SAGAS_SHOWN = 8; // newest sagas drawn
  const PAYLOAD_CHARS_MAX = 2000; // longer payload text is cut (in the tooltip)
  const PAYLOAD_CHARS_SHOWN = 120; // longer payload text is cut (in the table)
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // Histories of sagas that had ended when they were read: they no longer
  // change, so they are not read again (each read scans the saga events).
  const endedHistories = new Map();
  let refreshes = 0;

  // ---- DOM helpers: text only ------------------------------------------

  function text(value) {
    return document.createTextNode(value === undefined || value === null ? '' : String(value));
  }

  // el('td', {class: 'num'}, 'a', node, ...): attributes are set one by one
  // (never a style attribute or an event handler), children are nodes or
  // text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttributes(node, attrs);
    for (const child of children) {
      node.append(child instanceof Node ? child : text(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttributes(node, attrs);
    for (const child of children) {
      node.append(child instanceof Node ? child : text(child));
    }
    return node;
  }

  function setAttributes(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null && value !== false) {
        node.setAttribute(name, String(value));
      }
    }
  }

  function fill(tbody, rows, columns, empty) {
    if (rows.length === 0) {
      tbody.replaceChildren(el('tr', {}, el('td', { colspan: columns, class: 'muted' }, empty)));
    } else {
      tbody.replaceChildren(...rows);
    }
  }

  // ---- reading the node --------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, { headers: { accept: 'application/json' }, cache: 'no-store' });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      throw new Error(`GET ${path}: ${response.status}, the answer is not JSON`);
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : JSON.stringify(body);
      throw new Error(`GET ${path}: ${response.status} ${message}`);
    }
    return body;
  }

  function seg(value) {
    return encodeURIComponent(String(value));
  }

  // ---- formatting ----------------------------------------------------------

  // "2026-12-04T04:51:33.223571Z" -> "2026-12-04 04:51:33.223 UTC"
  function shortTime(iso) {
    if (typeof iso !== 'string' || iso.length < 23) return iso || '';
    return `${iso.slice(0, 10)} ${iso.slice(11, 23)} UTC`;
  }

  function timeOfDay(iso) {
    if (typeof iso !== 'string' || iso.length < 23) return iso || '';
    return iso.slice(11, 23);
  }

  function usToIso(us) {
    if (typeof us !== 'number' || us <= 0) return '';
    return new Date(Math.floor(us / 1000)).toISOString();
  }

  function ago(us) {
    if (typeof us !== 'number' || us <= 0) return 'never';
    const seconds = Math.max(0, Date.now() / 1000 - us / 1e6);
    if (seconds < 1) return 'just now';
    if (seconds < 120) return `${seconds.toFixed(0)} s ago`;
    if (seconds < 7200) return `${(seconds / 60).toFixed(0)} min ago`;
    return `${(seconds / 3600).toFixed(1)} h ago`;
  }

  function cut(s, max) {
    return s.length > max ? `${s.slice(0, max)}… (${s.length} characters)` : s;
  }

  function payloadText(event) {
    switch (event.payload) {
      case 'json':
        return JSON.stringify(event.data);
      case 'binary': {
        const b64 = event.data_base64 || '';
        const bytes = Math.floor((b64.length * 3) / 4) - (b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0);
        return `binary, ${bytes} bytes`;
      }
      case 'encrypted':
        return `encrypted (channel ${event.channel}: this node holds no key)`;
      case 'pruned':
        return 'pruned (the payload was removed; its hash stays in the chain)';
      case 'damaged':
        return 'damaged: does not decrypt (run herald verify)';
      default:
        return String(event.payload);
    }
  }

  function signatureText(sig) {
    if (!sig) return 'unknown';
    const parts = [sig.status];
    if (sig.scheme === 'checkpoint') {
      if (sig.checkpoint) {
        parts.push(`checkpoint of ${sig.checkpoint.size}`);
        if (sig.checkpoint.cosigners && sig.checkpoint.cosigners.length > 0) {
          parts.push(`cosigned by ${sig.checkpoint.cosigners.join(', ')}`);
        }
      } else {
        parts.push('awaiting its checkpoint');
      }
    } else if (sig.scheme === 'event') {
      parts.push('signed event');
    }
    return parts.join(' · ');
  }

  // ---- sections ------------------------------------------------------------

  function drawHeader(status, peers) {
    document.getElementById('node-name').textContent = status.service;
    const health = document.getElementById('node-health');
    const connected = peers.filter((p) => p.connected).length;
    let state = status.healthy ? 'healthy' : 'problems: ' + (status.problems || []).map((p) => `${p.task}: ${p.reason}`).join('; ');
    if (status.recovering) state += ' · recovering its own feed';
    health.textContent = `${state} · ${connected}/${peers.length} peers connected`;
    health.className = status.healthy ? 'ok' : 'bad';
  }

  function drawFeeds(feeds, checkpoints) {
    const byFeed = new Map((checkpoints || []).map((c) => [c.feed, c]));
    const rows = feeds.map((f) => {
      const events = f.seq + 1; // sequence numbers count from 0
      const cp = byFeed.get(f.feed);
      let verification;
      let cls;
      if (f.status === 'forked') {
        verification = 'FORKED: conflicting histories seen, evidence recorded';
        cls = 'bad';
      } else if (cp) {
        const cosigned = cp.cosigners.length > 0 ? ` · cosigned by ${cp.cosigners.join(', ')}` : '';
        if (cp.size >= events) {
          verification = `verified · checkpoint covers all ${cp.size} events${cosigned}`;
          cls = 'ok';
        } else {
          verification = `verified · checkpoint covers ${cp.size} of ${events} events${cosigned}`;
          cls = 'warn';
        }
      } else {
        verification = 'verified · events signed one by one';
        cls = 'ok';
      }
      return el('tr', { 'data-feed': f.feed },
        el('td', { class: 'feed' }, f.feed),
        el('td', { class: 'num head' }, f.seq),
        el('td', {}, shortTime(usToIso(f.last_timestamp_us))),
        el('td', { class: 'mono', title: f.hash }, (f.hash || '').slice(0, 16)),
        el('td', { class: cls }, verification));
    });
    fill(document.querySelector('#feeds tbody'), rows, 5, 'no feeds');
  }

  function drawPeers(peers) {
    const rows = peers.map((p) => {
      let lag;
      if (!p.connected) lag = `unknown (last acknowledgement ${ago(p.last_ack_at_us)})`;
      else if (p.backlog === 0) lag = 'none: caught up';
      else lag = `${p.backlog} events behind, last acknowledgement ${ago(p.last_ack_at_us)}`;
      return el('tr', { 'data-peer': p.name },
        el('td', { class: 'peer' }, p.name),
        el('td', { class: 'mono' }, p.address),
        el('td', { class: p.connected ? 'ok' : 'bad' }, p.connected ? 'connected' : `disconnected (${p.retries} retries)`),
        el('td', { class: 'num backlog' }, p.backlog),
        el('td', { class: 'lag' }, lag),
        el('td', { class: 'muted' }, p.last_error || ''));
    });
    fill(document.querySelector('#peers tbody'), rows, 6, 'no peers configured');
  }

  async function readRecentEvents(feeds) {
    const newest = feeds.slice().sort((a, b) => b.last_timestamp_us - a.last_timestamp_us).slice(0, FEEDS_READ_MAX);
    const pages = await Promise.all(newest.map((f) => {
      const from = Math.max(0, f.seq - EVENTS_PER_FEED + 1);
      return getJson(`/v1/feeds/${seg(f.feed)}/events?from_seq=${from}&limit=${EVENTS_PER_FEED}`);
    }));
    const events = pages.flatMap((p) => p.events);
    events.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : b.position - a.position));
    return events.slice(0, EVENTS_SHOWN);
  }

  function drawEvents(events) {
    const rows = events.map((e) => {
      const payload = payloadText(e);
      return el('tr', { 'data-event': e.id },
        el('td', { class: 'mono nowrap', title: e.time }, timeOfDay(e.time)),
        el('td', { class: 'feed' }, e.feed),
        el('td', { class: 'num' }, e.seq),
        el('td', { class: 'type' }, e.type),
        el('td', { class: 'signature ok' }, signatureText(e.signature)),
        el('td', { class: `payload mono${e.payload === 'json' ? '' : ' muted'}`, title: cut(payload, PAYLOAD_CHARS_MAX) },
          cut(payload, PAYLOAD_CHARS_SHOWN)));
    });
    fill(document.querySelector('#events tbody'), rows, 6, 'no events yet');
  }

  // ---- sagas -----------------------------------------------------------------

  async function readSagas() {
    const list = await getJson(`/v1/sagas?limit=${SAGAS_SHOWN}`);
    return Promise.all(list.sagas.map(async (summary) => {
      const id = summary.saga_id;
      const state = await getJson(`/v1/sagas/${seg(id)}`);
      let history = endedHistories.get(id);
      if (!history) {
        history = await getJson(`/v1/sagas/${seg(id)}/history`);
        if (summary.ended) endedHistories.set(id, history);
      }
      return { summary, state, history };
    }));
  }

  function stepName(definition, index) {
    const step = definition && definition.steps && definition.steps[Number(index)];
    return step ? step.name : `#${index}`;
  }

  // What one history event means: its label, its kind (for colour), and the
  // lane an arrow goes to (commands) or comes from (replies).
  function describe(event, saga) {
    const meta = event.meta || {};
    const what = String(event.type).replace(/^herald\.saga\./, '');
    const name = meta.step !== undefined ? stepName(saga.definition, meta.step) : '';
    const step = meta.step !== undefined ? `step ${meta.step} ${name}` : '';
    const compensating = meta.kind === 'compensate';
    const data = event.data || {};
    switch (what) {
      case 'started':
        return { label: `started ${saga.saga_type}`, kind: 'info' };
      case 'command':
        return {
          label: `${compensating ? 'compensate' : 'command'} ${step} → ${meta.service}: ${meta.command} (attempt ${meta.attempt})`,
          kind: compensating ? 'compensate' : 'do',
          to: meta.service,
        };
      case 'reply': {
        const outcome = data.outcome || {};
        let detail = '';
        if (outcome.Failed) detail = `: ${outcome.Failed.reason}`;
        const failed = meta.outcome === 'failed' || Boolean(outcome.Failed);
        return {
          label: `${compensating ? 'compensation ' : ''}reply ${step} ← ${event.feed}: ${meta.outcome || '?'}${detail}`,
          kind: failed ? 'failed' : compensating ? 'compensate' : 'ok',
          from: event.feed,
        };
      }
      case 'step_failed': {
        const reason = data.StepFailed && data.StepFailed.reason ? `: ${data.StepFailed.reason}` : '';
        return { label: `step failed ${step}${reason}`, kind: 'failed' };
      }
      case 'step_timed_out':
        return { label: `step timed out ${step}`, kind: 'failed' };
      case 'step_completed':
        return { label: `step completed ${step}`, kind: 'ok' };
      case 'step_compensated':
        return { label: `step compensated ${step}`, kind: 'compensate' };
      case 'compensation_failed':
        return { label: `compensation failed ${step}`, kind: 'failed' };
      case 'compensation_retry':
        return { label: `compensation retry scheduled ${step}`, kind: 'compensate' };
      case 'late_completion':
        return { label: `late completion ${step}`, kind: 'compensate' };
      case 'completed':
        return { label: 'saga completed', kind: 'ok' };
      case 'compensated':
        return { label: 'saga compensated: every completed step undone', kind: 'compensate' };
      case 'failed':
        return { label: 'saga FAILED: a compensation ran out of attempts', kind: 'failed' };
      case 'alert':
        return { label: `alert ${step}`, kind: 'failed' };
      default:
        return { label: `${what} ${step}`, kind: 'info' };
    }
  }

  // A sequence diagram: one lane per node (the orchestrator first, then the
  // services in step order), one row per signed event, a dot in the lane of
  // the node that signed it, arrows for commands and replies.
  function diagram(saga, events) {
    const lanes = [saga.initiator];
    for (const s of (saga.definition && saga.definition.steps) || []) {
      if (!lanes.includes(s.service)) lanes.push(s.service);
    }
    for (const e of events) {
      if (!lanes.includes(e.feed)) lanes.push(e.feed);
    }
    const TIME_W = 110;
    const LANE_W = 120;
    const LABEL_X = TIME_W + lanes.length * LANE_W + 10;
    const ROW_H = 24;
    const TOP = 34;
    const width = LABEL_X + 620;
    const height = TOP + events.length * ROW_H + 12;
    const laneX = (name) => TIME_W + (Math.max(0, lanes.indexOf(name)) + 0.5) * LANE_W;
    const id = `saga-${saga.id}`;

    const root = svg('svg', {
      width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': `timeline of saga ${saga.saga_type} ${saga.id}`, class: 'saga-diagram',
    });
    const defs = svg('defs', {});
    for (const kind of ['do', 'compensate', 'failed', 'ok']) {
      defs.append(svg('marker', {
        id: `${id}-${kind}`, class: kind, viewBox: '0 0 10 10', refX: 9, refY: 5,
        markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
      }, svg('path', { d: 'M0,0 L10,5 L0,10 z' })));
    }
    root.append(defs);
    root.append(svg('text', { x: 4, y: 18, class: 'lane' }, 'time (UTC)'));
    lanes.forEach((name) => {
      const x = laneX(name);
      root.append(svg('text', { x, y: 18, 'text-anchor': 'middle', class: 'lane' },
        name === saga.initiator ? `${name} (orchestrator)` : name));
      root.append(svg('line', { x1: x, y1: TOP - 8, x2: x, y2: height - 4, class: 'lane' }));
    });
    root.append(svg('text', { x: LABEL_X, y: 18, class: 'lane' }, 'what · signed by (feed#seq)'));

    events.forEach((e, i) => {
      const y = TOP + i * ROW_H + ROW_H / 2;
      const d = describe(e, saga);
      const g = svg('g', { class: `step-event ${d.kind}`, 'data-type': e.type });
      g.append(svg('line', { x1: 0, y1: y + ROW_H / 2, x2: width, y2: y + ROW_H / 2, class: 'grid' }));
      g.append(svg('text', { x: 4, y: y + 4, class: 'time' }, timeOfDay(e.time)));
      const x = laneX(e.feed);
      const target = d.to !== undefined ? d.to : d.from !== undefined ? saga.initiator : undefined;
      if (target !== undefined && target !== e.feed) {
        const x2 = laneX(target);
        const dir = x2 > x ? 1 : -1;
        g.append(svg('line', {
          x1: x, y1: y, x2: x2 - dir * 6, y2: y, class: `arrow ${d.kind}`,
          'marker-end': `url(#${id}-${d.kind === 'info' ? 'do' : d.kind})`,
        }));
      }
      g.append(svg('circle', { cx: x, cy: y, r: 6, class: d.kind },
        svg('title', {}, `${e.type} signed by ${e.feed} (seq ${e.seq}) at ${e.time}`)));
      g.append(svg('text', { x: LABEL_X, y: y + 4, class: `label ${d.kind}` }, d.label));
      g.append(svg('text', { x: width - 8, y: y + 4, 'text-anchor': 'end', class: 'signer' }, `${e.feed}#${e.seq}`));
      root.append(g);
    });
    return root;
  }

  function drawSagas(sagas) {
    const container = document.getElementById('sagas');
    if (sagas.length === 0) {
      container.replaceChildren(el('p', { class: 'muted' }, 'no sagas orchestrated by this node'));
      return;
    }
    container.replaceChildren(...sagas.map(({ summary, state, history }) => {
      const steps = (state.definition && state.definition.steps) || [];
      const stepRows = steps.map((s, i) => {
        const st = (state.steps && state.steps[i]) || {};
        const status = String(st.status || 'pending');
        return el('tr', { 'data-step': s.name },
          el('td', { class: 'num' }, i),
          el('td', {}, s.name),
          el('td', {}, s.service),
          el('td', { class: 'mono' }, s.command),
          el('td', { class: 'mono' }, s.compensation),
          el('td', { class: `step-status status-${status}` }, status),
          el('td', { class: 'muted' }, st.reason || ''));
      });
      const ended = summary.ended ? ` · ended ${shortTime(summary.ended)}` : '';
      return el('div', { class: 'saga', 'data-saga': summary.saga_id },
        el('h3', {},
          `${summary.saga_type} `,
          el('span', { class: `saga-status status-${summary.status}` }, summary.status),
          el('span', { class: 'muted mono' }, ` ${summary.saga_id} · started ${shortTime(summary.started)}${ended}`)),
        el('table', {},
          el('thead', {}, el('tr', {}, ...['#', 'step', 'service', 'command', 'compensation', 'status', 'reason'].map((h) => el('th', {}, h)))),
          el('tbody', {}, ...stepRows)),
        el('div', { class: 'diagram' }, diagram(state, history.events || [])));
    }));
  }

  // ---- the loop ----------------------------------------------------------------

  // Draws what could be read; throws (after drawing the rest) if a part
  // could not be read, so the banner says what is missing.
  async function refresh() {
    const [status, feeds, peers] = await Promise.all([
      getJson('/v1/status'), getJson('/v1/feeds'), getJson('/v1/peers'),
    ]);
    drawHeader(status, peers.peers);
    drawFeeds(feeds.feeds, status.checkpoints);
    drawPeers(peers.peers);
    const [events, sagas] = await Promise.allSettled([readRecentEvents(feeds.feeds), readSagas()]);
    const failures = [];
    if (events.status === 'fulfilled') drawEvents(events.value);
    else failures.push(`recent events: ${events.reason.message}`);
    if (sagas.status === 'fulfilled') drawSagas(sagas.value);
    else failures.push(`sagas: ${sagas.reason.message}`);
    if (failures.length > 0) throw new Error(failures.join('; '));
  }

  async function loop() {
    const error = document.getElementById('error');
    try {
      await refresh();
      error.hidden = true;
      error.textContent = '';
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      document.getElementById('refreshed').textContent =
        `read ${new Date().toISOString().slice(11, 19)} UTC · every ${REFRESH_MS / 1000} s`;
    } catch (e) {
      error.textContent = `could not read the node: ${e.message}`;
      error.hidden = false;
    }
    setTimeout(loop, REFRESH_MS);
  }

  loop();
})();
