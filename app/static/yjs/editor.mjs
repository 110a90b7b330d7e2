// The collaborative /demo page: a <textarea> bound to the Y.Text `content` of one server-side
// document, synced by the stock y-websocket provider over /yjs/{project}/{document}.
// config/build_demo.py bundles this file with its pinned packages into one same-origin script.
import * as Y from 'yjs';
import { WebsocketProvider, messageAuth } from 'y-websocket';
import { readAuthMessage } from 'y-protocols/auth';

// The Y.Text the server reads as the document's text (DOCUMENT_TEXT_NAME's default).
const TEXT_NAME = 'content';
const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
const PROJECT_PATTERN = /^[A-Za-z0-9_.-]{1,128}$/;
// 1-256 characters; `/` separates folders (chapters/intro.tex).
const DOCUMENT_PATTERN = /^[^\u0000-\u001f?#%\\]{1,256}$/;
// One y-websocket message carries one edit; at most 3 UTF-8 bytes a UTF-16 unit keeps it well
// under the server's MAX_MESSAGE_SIZE (512 KiB), past which it would close the connection.
const MAX_INSERT_LENGTH = 100000;
// A minted token is replaced this long before it expires, so a reconnect never uses a dead one.
const TOKEN_RENEW_MARGIN_MS = 60000;
const MAX_LOG_ENTRIES = 200;
// Marks transactions made from this tab's textarea, so the observer skips them.
const LOCAL = Symbol('textarea');
const CLOSE_MEANINGS = {
  1000: 'normal close',
  1006: 'no close frame: the upgrade was refused (bad token or project?) or the server is gone',
  1008: 'too many refused messages',
  1009: 'a message was too big',
  1011: 'no answer to the server\'s ping, or a server fault',
  1012: 'the instance is restarting',
  1013: 'this tab could not keep up',
  4001: 'the token expired',
  4003: 'access revoked',
  4401: 'the token was refused, or expired',
  4403: 'access revoked, or a token for another project',
  4410: 'the document was deleted',
};

const byId = (id) => document.getElementById(id);
const ui = {
  form: byId('connect-form'),
  project: byId('project'),
  document: byId('document'),
  user: byId('user'),
  token: byId('token'),
  connect: byId('connect'),
  disconnect: byId('disconnect'),
  status: byId('status'),
  synced: byId('synced'),
  closeCode: byId('close-code'),
  closeReason: byId('close-reason'),
  presence: byId('presence'),
  text: byId('text'),
  mirror: byId('mirror'),
  myCursor: byId('my-cursor'),
  cursors: byId('cursors'),
  log: byId('log'),
};

let session = null; // {provider, doc, text, user, project, minted, renewTimer}
// What the textarea showed after the last change applied either way: the base of each diff.
let shown = '';
let composing = false;

// --- small helpers -------------------------------------------------------------------------

function log(kind, text) {
  const item = document.createElement('li');
  item.dataset.kind = kind;
  const time = document.createElement('time');
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, text);
  ui.log.prepend(item);
  while (ui.log.children.length > MAX_LOG_ENTRIES) ui.log.lastElementChild.remove();
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function setSynced(synced) {
  ui.synced.dataset.synced = String(synced);
  ui.synced.textContent = synced ? 'in sync with the server' : 'not synced';
}

function colorOf(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 65% 42%)`;
}

function positionOf(text, offset) {
  const before = text.slice(0, offset);
  return { line: before.split('\n').length - 1, column: offset - (before.lastIndexOf('\n') + 1) };
}

const isHighSurrogate = (code) => code >= 0xd800 && code <= 0xdbff;
const isLowSurrogate = (code) => code >= 0xdc00 && code <= 0xdfff;

// The one change that turns `before` into `after`, an edit that left the caret at `caret`: the
// common prefix and suffix stay, the middle is replaced. The suffix never reaches left of the
// caret, since an edit ends there: typing `[` before another `[` inserts it there, not after
// that one, or the caret would sit before the character just typed and the next keystroke
// would land on the wrong side of it. Never splits a surrogate pair, which Yjs would store as
// two broken halves.
function diff(before, after, caret) {
  const limit = Math.min(before.length, after.length);
  let end = 0;
  const maxEnd = Math.min(limit, after.length - Math.min(caret, after.length));
  while (
    end < maxEnd
    && before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)
  ) end += 1;
  if (end > 0 && isLowSurrogate(before.charCodeAt(before.length - end))) end -= 1;
  let start = 0;
  while (start < limit - end && before.charCodeAt(start) === after.charCodeAt(start)) start += 1;
  if (start > 0 && isHighSurrogate(before.charCodeAt(start - 1))) start -= 1;
  return {
    index: start,
    removed: before.length - start - end,
    inserted: after.slice(start, after.length - end),
  };
}

// Where an offset moves through a Yjs delta: text inserted before it pushes it right, text
// deleted before it pulls it left. Text inserted exactly at it stays after it, so two people
// typing at one spot each keep their own run of characters together.
function moveThrough(delta, offset) {
  let index = 0;
  let moved = offset;
  for (const op of delta) {
    if (op.retain !== undefined) {
      index += op.retain;
    } else if (op.insert !== undefined) {
      if (index < moved) moved += op.insert.length;
      index += op.insert.length;
    } else if (op.delete !== undefined) {
      if (index < moved) moved -= Math.min(op.delete, moved - index);
    }
    if (index >= moved) break;
  }
  return moved;
}

// --- the binding ---------------------------------------------------------------------------

function onInput() {
  if (session === null || composing) return;
  const value = ui.text.value;
  const change = diff(shown, value, ui.text.selectionEnd);
  if (change.removed === 0 && change.inserted.length === 0) return;
  if (change.inserted.length > MAX_INSERT_LENGTH) {
    // Put the textarea back: the edit never reached the document.
    const { index } = change;
    ui.text.value = shown;
    ui.text.setSelectionRange(index, index);
    log('error', `the demo sends at most ${MAX_INSERT_LENGTH} characters at once; this paste was not sent`);
    return;
  }
  // One transaction, so one update: the others never see the deletion without the insertion.
  session.doc.transact(() => {
    if (change.removed > 0) session.text.delete(change.index, change.removed);
    if (change.inserted.length > 0) session.text.insert(change.index, change.inserted);
  }, LOCAL);
  shown = value;
  publishCursor();
  renderCursors();
}

function onRemoteChange(event, transaction) {
  if (transaction.origin === LOCAL || composing) return;
  const { selectionStart, selectionEnd, selectionDirection } = ui.text;
  const delta = event.delta;
  const scroll = ui.text.scrollTop;
  shown = session.text.toString();
  ui.text.value = shown;
  ui.text.setSelectionRange(
    moveThrough(delta, selectionStart),
    moveThrough(delta, selectionEnd),
    selectionDirection,
  );
  ui.text.scrollTop = scroll;
  renderCursors();
}

function onCompositionEnd() {
  // An input method's intermediate text never went out and remote changes waited: send the
  // composed text now, then show what arrived meanwhile.
  composing = false;
  onInput();
  if (session !== null && session.text.toString() !== shown) {
    const { selectionStart, selectionEnd } = ui.text;
    shown = session.text.toString();
    ui.text.value = shown;
    ui.text.setSelectionRange(Math.min(selectionStart, shown.length), Math.min(selectionEnd, shown.length));
  }
}

// The caret travels in awareness as Yjs relative positions (as y-codemirror and y-prosemirror
// do), so it stays on its character while others edit before it.
function publishCursor() {
  const { value, selectionStart, selectionEnd, selectionDirection } = ui.text;
  const head = selectionDirection === 'backward' ? selectionStart : selectionEnd;
  const at = positionOf(value, head);
  ui.myCursor.textContent = `line ${at.line + 1}, column ${at.column + 1}`;
  ui.myCursor.dataset.offset = String(head);
  if (session === null) return;
  const anchor = selectionDirection === 'backward' ? selectionEnd : selectionStart;
  const cursor = {
    anchor: Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(session.text, anchor)),
    head: Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(session.text, head)),
  };
  const previous = session.provider.awareness.getLocalState()?.cursor;
  if (JSON.stringify(previous) !== JSON.stringify(cursor)) {
    session.provider.awareness.setLocalStateField('cursor', cursor);
  }
}

function absolute(relative) {
  if (!relative) return null;
  const position = Y.createAbsolutePositionFromRelativePosition(
    Y.createRelativePositionFromJSON(relative),
    session.doc,
  );
  return position !== null && position.type === session.text ? position.index : null;
}

// --- joining -------------------------------------------------------------------------------

async function mintToken(user, project) {
  const response = await fetch('/demo/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ user, project }),
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 404) {
    throw new Error(
      'this server does not mint demo tokens (production, or no JWT_SECRET): '
      + 'paste a token from the web app into the Token field',
    );
  }
  if (!response.ok || typeof body.token !== 'string') {
    throw new Error(`token refused: ${body.error || response.status}: ${body.message || ''}`);
  }
  return body;
}

async function connect(event) {
  event.preventDefault();
  if (session !== null) return;
  const project = ui.project.value.trim();
  const documentId = ui.document.value.trim();
  const user = ui.user.value.trim();
  const pasted = ui.token.value.trim();
  if (!PROJECT_PATTERN.test(project)) {
    log('error', 'project: 1-128 characters from A-Z a-z 0-9 _ . -');
    return;
  }
  if (!DOCUMENT_PATTERN.test(documentId)) {
    log('error', 'document: 1-256 characters, no control characters, ?, #, % or \\');
    return;
  }
  if (!NAME_PATTERN.test(user)) {
    log('error', 'name: 1-64 characters from A-Z a-z 0-9 _ . -');
    return;
  }
  ui.connect.disabled = true;
  setStatus('connecting', 'Getting a token…');
  let minted = null;
  try {
    if (!pasted) minted = await mintToken(user, project);
  } catch (error) {
    log('error', error.message);
    setStatus('disconnected', 'Not connected');
    ui.connect.disabled = false;
    return;
  }
  open(project, documentId, user, minted ? minted.token : pasted, minted);
}

function open(project, documentId, user, token, minted) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const doc = new Y.Doc();
  const text = doc.getText(TEXT_NAME);
  // The provider appends `/{room}` unescaped: escape each segment, keep the folders' slashes.
  const room = documentId.split('/').map(encodeURIComponent).join('/');
  const provider = new WebsocketProvider(
    `${scheme}://${location.host}/yjs/${encodeURIComponent(project)}`,
    room,
    doc,
    {
      // The token as the `bearer` subprotocol, never in the URL: a URL with `?token=` ends up
      // in the browser's console when a connection fails, and in proxies' logs.
      protocols: ['bearer', token],
      // Every tab goes through the server, as tabs in two browsers would: no shortcut through
      // the BroadcastChannel between this browser's tabs.
      disableBc: true,
      // The server ends a session whose token expired with 4401: a minted token was renewed
      // into `protocols` before that, a pasted one cannot be, and would only be refused again.
      // Like y-websocket's default, the rest of 4400-4499 (revoked, another project, the
      // document deleted) is final.
      shouldReconnect: (close) => (close.code === 4401
        ? minted !== null
        : !(close.code >= 4400 && close.code < 4500)),
    },
  );
  // The handlers below keep their own session: a late event of a finished one changes nothing.
  const current = { provider, doc, text, user, project, minted, renewTimer: null, opened: false };
  session = current;
  shown = '';
  ui.text.value = '';
  provider.awareness.setLocalStateField('user', { name: user, color: colorOf(user) });
  text.observe(onRemoteChange);
  // Names by awareness client id: a removed state is gone by the time its removal is told.
  const names = new Map();
  provider.awareness.on('change', ({ added, updated, removed }) => {
    if (session !== current) return;
    for (const clientId of [...added, ...updated]) {
      const name = provider.awareness.getStates().get(clientId)?.user?.name;
      if (clientId === doc.clientID || typeof name !== 'string') continue;
      if (!names.has(clientId)) log('info', `${name} joined`);
      names.set(clientId, name);
    }
    for (const clientId of removed) {
      if (names.has(clientId)) log('info', `${names.get(clientId)} left`);
      names.delete(clientId);
    }
    renderPresence();
  });
  // The server refuses a token inside the WebSocket, with y-protocols' permission-denied
  // message (the stock provider would only warn in the console and retry): say why, and stop,
  // unless the token merely expired and a renewed one is already waiting in `protocols`.
  provider.messageHandlers[messageAuth] = (_encoder, decoder) => {
    readAuthMessage(decoder, doc, (_doc, reason) => {
      if (session !== current) return;
      ui.closeReason.textContent = `permission denied: ${reason}`;
      log('error', `permission denied: ${reason}`);
      if (!(current.minted && reason.startsWith('token_expired'))) finish(`Refused: ${reason}`);
    });
  };
  provider.on('status', ({ status }) => {
    if (session !== current) return;
    if (status === 'connected') {
      current.opened = true;
      setStatus('connected', `Connected to ${project}/${documentId}`);
      log('info', `connected to ${project}/${documentId} as ${user}`);
    } else if (status === 'connecting') {
      setStatus('connecting', `Connecting to ${project}/${documentId}…`);
    } else {
      setStatus('connecting', 'Disconnected: reconnecting…');
    }
  });
  provider.on('sync', (synced) => {
    if (session !== current) return;
    setSynced(synced);
    if (synced) {
      // Until the server's copy arrived the textarea was empty, not the document.
      ui.text.disabled = false;
      log('info', `in sync: ${text.length} characters`);
    }
  });
  provider.on('connection-close', (close) => {
    // null: closed by this tab (Disconnect, or the provider's own silence watchdog).
    if (close === null || session !== current) return;
    const meaning = CLOSE_MEANINGS[close.code] || 'see the close codes in README.md';
    ui.closeCode.textContent = String(close.code);
    ui.closeReason.textContent = close.reason ? `“${close.reason}” (${meaning})` : `(${meaning})`;
    log('error', `closed with ${close.code}${close.reason ? ` “${close.reason}”` : ''}: ${meaning}`);
    // Never connected: the upgrade was refused (a bad token, a wrong project) or nothing
    // answers, and retrying would only say so again every few seconds. Once a connection
    // worked, a close is a restart or a network blip, and the provider reconnects.
    if (!current.opened) finish(`Disconnected: close code ${close.code}`);
  });
  provider.on('closed', ({ code }) => {
    // The provider gave up (shouldReconnect said no): this session is over.
    if (session === current) finish(`Disconnected: close code ${code}`);
  });
  if (minted) scheduleRenewal(minted.expires_at);
  setStatus('connecting', `Connecting to ${project}/${documentId}…`);
  setSynced(false);
  ui.disconnect.disabled = false;
  renderPresence();
}

function scheduleRenewal(expiresAt) {
  // The server closes a connection with 4401 when its token expires; the provider reconnects
  // with whatever `protocols` then holds, so a fresh token must be there first.
  const delay = Math.max(0, expiresAt * 1000 - Date.now() - TOKEN_RENEW_MARGIN_MS);
  const current = session;
  current.renewTimer = setTimeout(async () => {
    try {
      const fresh = await mintToken(current.user, current.project);
      if (session !== current) return;
      current.provider.protocols = ['bearer', fresh.token];
      scheduleRenewal(fresh.expires_at);
    } catch (error) {
      log('error', `could not renew the token: ${error.message}`);
    }
  }, delay);
}

function finish(statusText) {
  if (session === null) return;
  const { provider, doc, renewTimer } = session;
  clearTimeout(renewTimer);
  session = null;
  provider.destroy();
  doc.destroy();
  setStatus('closed', statusText);
  setSynced(false);
  ui.text.disabled = true;
  ui.connect.disabled = false;
  ui.disconnect.disabled = true;
  renderPresence();
  renderCursors();
}

function disconnect() {
  if (session === null) return;
  log('info', 'left the document');
  ui.closeCode.textContent = '1000';
  ui.closeReason.textContent = '(normal close)';
  finish('Disconnected');
}

// --- rendering -----------------------------------------------------------------------------

function others() {
  if (session === null) return [];
  const self = session.doc.clientID;
  return [...session.provider.awareness.getStates()]
    .filter(([clientId, state]) => clientId !== self && state.user);
}

function renderPresence() {
  if (session === null) {
    ui.presence.replaceChildren();
    return;
  }
  const self = session.doc.clientID;
  const states = [...session.provider.awareness.getStates()].filter(([, state]) => state.user);
  states.sort(([a, left], [b, right]) => String(left.user.name).localeCompare(String(right.user.name)) || a - b);
  ui.presence.replaceChildren(...states.map(([clientId, state]) => {
    const name = String(state.user.name);
    const item = document.createElement('li');
    item.dataset.testid = 'presence-user';
    item.dataset.userId = name;
    item.dataset.clientId = String(clientId);
    item.dataset.self = String(clientId === self);
    item.style.setProperty('--user-color', colorOf(name));
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    const label = document.createElement('span');
    label.className = 'name';
    label.textContent = name;
    item.append(swatch, label);
    return item;
  }));
  renderCursors();
}

function renderCursors() {
  const text = ui.text.value;
  const marks = [];
  const items = [];
  for (const [clientId, state] of others()) {
    const head = session === null ? null : absolute(state.cursor?.head);
    if (head === null || head > text.length) continue;
    const name = String(state.user.name);
    const at = positionOf(text, head);
    marks.push({ name, offset: head });
    const item = document.createElement('li');
    item.dataset.testid = 'cursor';
    item.dataset.clientId = String(clientId);
    item.dataset.userId = name;
    item.dataset.offset = String(head);
    item.style.setProperty('--user-color', colorOf(name));
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    const label = document.createElement('span');
    label.textContent = name;
    const where = document.createElement('span');
    where.className = 'where';
    where.textContent = `line ${at.line + 1}, column ${at.column + 1}`;
    item.append(swatch, label, where);
    items.push(item);
  }
  ui.cursors.replaceChildren(...items);

  // Each remote caret drawn in the mirror: the same text, transparent, with a marker at the
  // caret's offset, so the marker lands where that character sits in the textarea.
  marks.sort((a, b) => a.offset - b.offset);
  const parts = [];
  let from = 0;
  for (const { name, offset } of marks) {
    parts.push(document.createTextNode(text.slice(from, offset)));
    const caret = document.createElement('span');
    caret.className = 'caret';
    caret.style.setProperty('--user-color', colorOf(name));
    const label = document.createElement('span');
    label.className = 'caret-label';
    label.textContent = name;
    caret.append(label);
    parts.push(caret);
    from = offset;
  }
  // A trailing newline keeps the mirror as tall as the textarea when the text ends in one.
  parts.push(document.createTextNode(`${text.slice(from)}\n`));
  ui.mirror.replaceChildren(...parts);
  ui.mirror.scrollTop = ui.text.scrollTop;
}

// --- wiring --------------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
if (params.get('project')) ui.project.value = params.get('project');
if (params.get('document')) ui.document.value = params.get('document');
ui.user.value = params.get('user') || `guest-${Math.random().toString(36).slice(2, 6)}`;

ui.form.addEventListener('submit', connect);
ui.disconnect.addEventListener('click', disconnect);
ui.text.addEventListener('input', onInput);
ui.text.addEventListener('compositionstart', () => { composing = true; });
ui.text.addEventListener('compositionend', onCompositionEnd);
ui.text.addEventListener('scroll', () => { ui.mirror.scrollTop = ui.text.scrollTop; });
for (const name of ['keyup', 'mouseup', 'select', 'focus']) {
  ui.text.addEventListener(name, () => publishCursor());
}
document.addEventListener('selectionchange', () => {
  if (document.activeElement === ui.text) publishCursor();
});
// Leaving the page says goodbye at once instead of waiting for the server to notice.
window.addEventListener('pagehide', () => {
  if (session !== null) session.provider.awareness.setLocalState(null);
});
new ResizeObserver(() => renderCursors()).observe(ui.text);
