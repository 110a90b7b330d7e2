// The texflow-websocket demo: one WebSocket per tab, speaking the protocol in README.md.
// Plain JavaScript, no build step, no dependencies.
(() => {
  'use strict';

  const DOCUMENT_ID = 'demo';
  const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;
  const PROJECT_PATTERN = /^[A-Za-z0-9_.-]{1,128}$/;
  // Stop announcing typing this long after the last keystroke.
  const TYPING_IDLE_MS = 1500;
  // Forget someone's typing flag if their "stopped" message never comes (a closed tab).
  const REMOTE_TYPING_TIMEOUT_MS = 5000;
  // The whole text travels in each message; stay well under MAX_MESSAGE_SIZE (512 KiB).
  const MAX_TEXT_LENGTH = 100000;
  const MAX_LOG_ENTRIES = 200;
  const CLOSE_MEANINGS = {
    1000: 'normal close',
    1001: 'going away',
    1006: 'no close frame: the upgrade was refused (bad token or project?) or the server is gone',
    1007: 'a text frame was not valid UTF-8',
    1008: 'too many refused messages',
    1009: 'a message was too big',
    1011: 'no answer to the server\'s ping, or a server fault',
    1012: 'the instance is restarting',
    1013: 'this tab could not keep up',
    4001: 'the token expired',
    4003: 'access revoked',
  };

  const byId = (id) => document.getElementById(id);
  const ui = {
    form: byId('connect-form'),
    project: byId('project'),
    user: byId('user'),
    token: byId('token'),
    connect: byId('connect'),
    disconnect: byId('disconnect'),
    status: byId('status'),
    closeCode: byId('close-code'),
    closeReason: byId('close-reason'),
    presence: byId('presence'),
    typing: byId('typing'),
    text: byId('text'),
    mirror: byId('mirror'),
    docStatus: byId('doc-status'),
    myCursor: byId('my-cursor'),
    cursors: byId('cursors'),
    log: byId('log'),
  };

  let socket = null;
  let session = null; // {user, project, minted, userId, clientId}
  let users = new Map(); // user_id -> {username, connections}
  const cursors = new Map(); // client_id -> {userId, username, line, column, selection}
  const typing = new Map(); // user_id -> timer that forgets the flag
  let version = 0;
  let edited = false; // this tab has text worth sending to a newcomer
  let typingTimer = null;
  let announcedTyping = false;
  let lastCursorKey = '';

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

  function colorOf(userId) {
    let hash = 0;
    for (const char of userId) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
    return `hsl(${hash % 360} 65% 42%)`;
  }

  function isOpen() {
    return socket !== null && socket.readyState === WebSocket.OPEN;
  }

  function send(type, payload) {
    if (isOpen()) socket.send(JSON.stringify({ type, payload }));
  }

  // Line and column (both from 0, in UTF-16 code units) of a character offset, and back.
  function positionOf(text, offset) {
    const before = text.slice(0, offset);
    const lineStart = before.lastIndexOf('\n') + 1;
    return { line: before.split('\n').length - 1, column: offset - lineStart };
  }

  function offsetOf(text, line, column) {
    let start = 0;
    for (let i = 0; i < line; i += 1) {
      const newline = text.indexOf('\n', start);
      if (newline < 0) return text.length;
      start = newline + 1;
    }
    const end = text.indexOf('\n', start);
    return Math.min(start + column, end < 0 ? text.length : end);
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
    return body.token;
  }

  async function connect(event) {
    event.preventDefault();
    if (socket !== null) return;
    const project = ui.project.value.trim();
    const user = ui.user.value.trim();
    const pasted = ui.token.value.trim();
    if (!PROJECT_PATTERN.test(project)) {
      log('error', 'project: 1-128 characters from A-Z a-z 0-9 _ . -');
      return;
    }
    if (!pasted && !NAME_PATTERN.test(user)) {
      log('error', 'name: 1-64 characters from A-Z a-z 0-9 _ . -');
      return;
    }
    ui.connect.disabled = true;
    setStatus('connecting', 'Getting a token…');
    let token = pasted;
    try {
      if (!token) token = await mintToken(user, project);
    } catch (error) {
      log('error', error.message);
      setStatus('disconnected', 'Not connected');
      ui.connect.disabled = false;
      return;
    }
    open(project, user, token, !pasted);
  }

  function open(project, user, token, minted) {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const url = `${scheme}://${location.host}/ws/${encodeURIComponent(project)}`;
    let ws;
    try {
      // The token rides in the subprotocol list, so it never appears in a URL or a log.
      ws = new WebSocket(url, ['bearer', token]);
    } catch (error) {
      log('error', `cannot open the WebSocket: ${error.message}`);
      setStatus('disconnected', 'Not connected');
      ui.connect.disabled = false;
      return;
    }
    socket = ws;
    session = { user, project, minted, userId: null, clientId: null };
    resetRoom();
    setStatus('connecting', `Connecting to ${project}…`);
    ws.addEventListener('open', () => {
      if (ws !== socket) return;
      setStatus('connected', `Connected to ${project}`);
      ui.disconnect.disabled = false;
      ui.text.disabled = false;
    });
    ws.addEventListener('message', (event) => {
      if (ws !== socket) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        log('error', 'the server sent something that is not JSON');
        return;
      }
      handle(message);
    });
    ws.addEventListener('error', () => {
      if (ws === socket) log('error', 'WebSocket error (the close code follows)');
    });
    ws.addEventListener('close', (event) => {
      if (ws !== socket) return;
      closed(event.code, event.reason);
    });
  }

  function disconnect() {
    if (socket === null) return;
    stopTyping();
    socket.close(1000, 'left the demo');
  }

  function closed(code, reason) {
    const meaning = CLOSE_MEANINGS[code] || 'see the close codes in README.md';
    socket = null;
    session = null;
    clearTimeout(typingTimer);
    announcedTyping = false;
    ui.closeCode.textContent = String(code);
    ui.closeReason.textContent = reason ? `“${reason}” (${meaning})` : `(${meaning})`;
    setStatus('closed', `Disconnected: close code ${code}`);
    log(code === 1000 ? 'info' : 'error', `closed with ${code}${reason ? ` “${reason}”` : ''}: ${meaning}`);
    ui.connect.disabled = false;
    ui.disconnect.disabled = true;
    ui.text.disabled = true;
    users = new Map();
    cursors.clear();
    for (const timer of typing.values()) clearTimeout(timer);
    typing.clear();
    render();
  }

  function resetRoom() {
    users = new Map();
    cursors.clear();
    for (const timer of typing.values()) clearTimeout(timer);
    typing.clear();
    version = 0;
    edited = false;
    lastCursorKey = '';
    ui.text.value = '';
    ui.docStatus.textContent = 'No edits yet';
    render();
  }

  // --- incoming messages ---------------------------------------------------------------------

  function handle(message) {
    const payload = message.payload || {};
    switch (message.type) {
      case 'presence_state':
        // Always first; its envelope carries this connection's own identity.
        session.userId = message.user_id;
        session.clientId = message.client_id;
        users = new Map(payload.users.map((u) => [u.user_id, u]));
        log('info', `joined ${session.project} as ${message.username}`);
        // Ask whoever is here for the current text (and cursors): they answer only if they have some.
        send('document_update', { document_id: DOCUMENT_ID, sync_request: true });
        sendCursor(true);
        break;
      case 'user_joined':
        users.set(payload.user_id, { ...payload, connections: 1 });
        log('info', `${payload.username} joined`);
        break;
      case 'user_left':
        users.delete(payload.user_id);
        for (const [clientId, cursor] of cursors) {
          if (cursor.userId === payload.user_id) cursors.delete(clientId);
        }
        clearTimeout(typing.get(payload.user_id));
        typing.delete(payload.user_id);
        log('info', `${payload.username} left`);
        break;
      case 'document_update':
        if ((payload.document_id || DOCUMENT_ID) !== DOCUMENT_ID) return;
        if (payload.sync_request === true) {
          if (edited) sendDocument();
          sendCursor(true);
          return;
        }
        if (typeof payload.text === 'string') applyRemoteText(payload.text, payload.version, message.username);
        break;
      case 'cursor_update':
      case 'selection': {
        if ((payload.document_id || DOCUMENT_ID) !== DOCUMENT_ID) return;
        const cursor = cursors.get(message.client_id)
          || { userId: message.user_id, username: message.username, line: 0, column: 0, selection: null };
        if (message.type === 'cursor_update') {
          cursor.line = payload.line;
          cursor.column = payload.column;
          cursor.selection = null;
        } else {
          cursor.selection = { start: payload.start, end: payload.end };
        }
        cursors.set(message.client_id, cursor);
        break;
      }
      case 'user_typing':
        setTyping(message.user_id, payload.is_typing !== false);
        break;
      case 'auth_refreshed':
        log('info', 'token refreshed');
        break;
      case 'error':
        log('error', `${payload.code}: ${payload.message}`);
        if (payload.code === 'token_expiring') refreshToken();
        return;
      case 'pong':
        return;
      default:
        log('info', `${message.type} from ${message.username}`);
        return;
    }
    render();
  }

  function applyRemoteText(text, remoteVersion, username) {
    // Last writer wins: the whole text is replaced, and this tab's caret keeps its offset.
    const { selectionStart, selectionEnd, selectionDirection } = ui.text;
    ui.text.value = text;
    ui.text.setSelectionRange(
      Math.min(selectionStart, text.length),
      Math.min(selectionEnd, text.length),
      selectionDirection,
    );
    version = Math.max(version, Number.isInteger(remoteVersion) ? remoteVersion : 0);
    edited = true;
    ui.docStatus.textContent = `Version ${version}, by ${username} (last writer wins)`;
    sendCursor();
  }

  function setTyping(userId, isTyping) {
    clearTimeout(typing.get(userId));
    typing.delete(userId);
    if (isTyping) {
      typing.set(userId, setTimeout(() => {
        typing.delete(userId);
        render();
      }, REMOTE_TYPING_TIMEOUT_MS));
    }
  }

  async function refreshToken() {
    if (!session || !session.minted) {
      log('info', 'paste a fresh token and reconnect before this one expires');
      return;
    }
    try {
      send('auth_refresh', { token: await mintToken(session.user, session.project) });
    } catch (error) {
      log('error', error.message);
    }
  }

  // --- outgoing messages ---------------------------------------------------------------------

  function sendDocument() {
    const text = ui.text.value;
    if (text.length > MAX_TEXT_LENGTH) {
      log('error', `the demo shares at most ${MAX_TEXT_LENGTH} characters; this edit was not sent`);
      return;
    }
    send('document_update', { document_id: DOCUMENT_ID, text, version });
  }

  function onInput() {
    version += 1;
    edited = true;
    sendDocument();
    ui.docStatus.textContent = `Version ${version}, by you`;
    if (!announcedTyping) {
      announcedTyping = true;
      send('user_typing', { is_typing: true, document_id: DOCUMENT_ID });
    }
    clearTimeout(typingTimer);
    typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
    sendCursor();
    renderCursors();
  }

  function stopTyping() {
    clearTimeout(typingTimer);
    if (announcedTyping) {
      announcedTyping = false;
      send('user_typing', { is_typing: false, document_id: DOCUMENT_ID });
    }
  }

  function sendCursor(force = false) {
    const { value, selectionStart, selectionEnd, selectionDirection } = ui.text;
    const caret = selectionDirection === 'backward' ? selectionStart : selectionEnd;
    const at = positionOf(value, caret);
    ui.myCursor.textContent = `line ${at.line + 1}, column ${at.column + 1}`;
    ui.myCursor.dataset.line = String(at.line);
    ui.myCursor.dataset.column = String(at.column);
    const key = `${selectionStart}:${selectionEnd}:${at.line}:${at.column}`;
    if (!isOpen() || (!force && key === lastCursorKey)) return;
    lastCursorKey = key;
    send('cursor_update', { line: at.line, column: at.column, document_id: DOCUMENT_ID });
    if (selectionStart !== selectionEnd) {
      send('selection', {
        start: positionOf(value, selectionStart),
        end: positionOf(value, selectionEnd),
        document_id: DOCUMENT_ID,
      });
    }
  }

  // --- rendering -----------------------------------------------------------------------------

  function render() {
    renderPresence();
    renderTyping();
    renderCursors();
  }

  function renderPresence() {
    const items = [...users.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([userId, user]) => {
        const item = document.createElement('li');
        item.dataset.testid = 'presence-user';
        item.dataset.userId = userId;
        item.dataset.self = String(session !== null && userId === session.userId);
        item.dataset.typing = String(typing.has(userId));
        item.style.setProperty('--user-color', colorOf(userId));
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        const name = document.createElement('span');
        name.className = 'name';
        name.textContent = user.username;
        const state = document.createElement('span');
        state.className = 'state';
        item.append(swatch, name, state);
        return item;
      });
    ui.presence.replaceChildren(...items);
  }

  function renderTyping() {
    const names = [...typing.keys()].map((userId) => (users.get(userId) || { username: userId }).username);
    ui.typing.textContent = names.length === 0 ? ''
      : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
  }

  function renderCursors() {
    const text = ui.text.value;
    const entries = [...cursors.entries()].sort(([, a], [, b]) => a.username.localeCompare(b.username));
    ui.cursors.replaceChildren(...entries.map(([clientId, cursor]) => {
      const item = document.createElement('li');
      item.dataset.testid = 'cursor';
      item.dataset.clientId = clientId;
      item.dataset.userId = cursor.userId;
      item.dataset.line = String(cursor.line);
      item.dataset.column = String(cursor.column);
      item.style.setProperty('--user-color', colorOf(cursor.userId));
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      const name = document.createElement('span');
      name.textContent = cursor.username;
      const where = document.createElement('span');
      where.className = 'where';
      where.textContent = `line ${cursor.line + 1}, column ${cursor.column + 1}`;
      if (cursor.selection) {
        const { start, end } = cursor.selection;
        where.textContent += ` · selected ${start.line + 1}:${start.column + 1}–${end.line + 1}:${end.column + 1}`;
      }
      item.append(swatch, name, where);
      return item;
    }));

    // Draw each remote caret in the mirror: the same text, transparent, with a marker at the
    // caret's offset, so the marker lands where that character sits in the textarea.
    const marks = entries
      .map(([, cursor]) => ({ cursor, offset: offsetOf(text, cursor.line, cursor.column) }))
      .sort((a, b) => a.offset - b.offset);
    const parts = [];
    let from = 0;
    for (const { cursor, offset } of marks) {
      parts.push(document.createTextNode(text.slice(from, offset)));
      const caret = document.createElement('span');
      caret.className = 'caret';
      caret.style.setProperty('--user-color', colorOf(cursor.userId));
      const label = document.createElement('span');
      label.className = 'caret-label';
      label.textContent = cursor.username;
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
  ui.user.value = params.get('user') || `guest-${Math.random().toString(36).slice(2, 6)}`;

  ui.form.addEventListener('submit', connect);
  ui.disconnect.addEventListener('click', disconnect);
  ui.text.addEventListener('input', onInput);
  ui.text.addEventListener('scroll', () => { ui.mirror.scrollTop = ui.text.scrollTop; });
  for (const name of ['keyup', 'mouseup', 'select', 'focus']) {
    ui.text.addEventListener(name, () => sendCursor());
  }
  document.addEventListener('selectionchange', () => {
    if (document.activeElement === ui.text) sendCursor();
  });
  new ResizeObserver(() => renderCursors()).observe(ui.text);
})();
