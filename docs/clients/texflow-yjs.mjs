// texflow-yjs.mjs: a Yjs client for texflow-websocket's server-side documents (docs/yjs.md).
// Depends on `yjs` and `y-protocols/awareness` only; pass a WebSocket class or use the global.
import * as Y from 'yjs';
import * as awarenessProtocol from 'y-protocols/awareness';

/** The origin of every change applied from the server: never sent back. */
export const REMOTE = Symbol('texflow-remote');
// Reconnecting cannot help after these: token expired, access revoked, policy violation.
const FINAL_CLOSE_CODES = new Set([1008, 4001, 4003]);
// One update of ours was refused: no acknowledgement will come for it.
const REFUSED = new Set(['invalid_update', 'document_too_large', 'document_deleted',
  'store_unavailable']);
// Worth running the sync step again later: the server could not load or store just now.
const RETRY = new Set(['document_unavailable', 'store_unavailable']);
// A message was dropped without saying which: start over, the sync step restores everything.
const UNCERTAIN = new Set(['rate_limited', 'internal_error']);
const OPEN = 1;

export const toBase64 = (bytes) => {
  let binary = '';
  // In slices: String.fromCharCode takes one argument per byte.
  for (let at = 0; at < bytes.length; at += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(at, at + 0x8000));
  }
  return btoa(binary);
};
export const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
const utf8Length = (text) => new TextEncoder().encode(text).length;

export class TexflowYjs {
  /**
   * url: the `/ws/{project}?token=...` URL, or a function (possibly async) giving a fresh one
   * for every connection, so a reconnect carries an unexpired token.
   * maxMessageSize: the server's MAX_MESSAGE_SIZE less a margin; larger updates go in parts.
   * interval: at most one update and one awareness message per document this often (ms).
   */
  constructor({ url, WebSocket = globalThis.WebSocket, maxMessageSize = 512 * 1024 - 1024,
    interval = 50, minDelay = 250, maxDelay = 10_000 }) {
    Object.assign(this, { url, WebSocket, maxMessageSize, interval, minDelay, maxDelay });
    this.documents = new Map();
    this.listeners = new Map();
    this.status = 'connecting'; // then 'connected', 'disconnected' (reconnecting), 'closed'
    this.saved = false;
    // Updates sent on this connection, and how many of them were acknowledged or refused.
    this.sent = this.acked = 0;
    this.lost = false; // an update was refused for good: the server lacks part of a document
    this.attempts = 0; // reconnects since the last that worked
    this.retries = 0; // sync steps retried on this connection (the delay grows with them)
    this.ws = this.timer = this.retryTimer = null;
    this.stopped = false;
    this.connect();
  }

  /** Events: status, saved (boolean), synced (document id), error (payload), close. */
  on(name, listener) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(listener);
    return () => this.listeners.get(name).delete(listener);
  }

  emit(name, value) {
    for (const listener of this.listeners.get(name) ?? []) listener(value);
  }

  /** Start editing a document: it is synced now if connected, else once connected. */
  open(documentId, doc = new Y.Doc(), awareness = new awarenessProtocol.Awareness(doc)) {
    if (this.documents.has(documentId)) throw new Error(`${documentId} is already open`);
    const d = { id: documentId, doc, awareness, synced: false, queue: [], awarenessDirty: false,
      lastFlush: 0, flushTimer: null };
    d.onUpdate = (update, origin) => {
      // Before the sync step's answer, local changes travel in that answer.
      if (origin !== REMOTE && d.synced) {
        d.queue.push(update);
        this.later(d);
      }
      this.updateSaved();
    };
    d.onAwareness = (_changes, origin) => {
      if (origin !== 'local') return;
      d.awarenessDirty = true;
      this.later(d);
    };
    doc.on('update', d.onUpdate);
    awareness.on('update', d.onAwareness);
    this.documents.set(documentId, d);
    if (this.status === 'connected') this.syncStep(d);
    this.updateSaved();
    return { doc, awareness };
  }

  close(documentId) {
    const d = this.documents.get(documentId);
    if (!d) return;
    awarenessProtocol.removeAwarenessStates(d.awareness, [d.doc.clientID], 'local');
    clearTimeout(d.flushTimer);
    this.flush(d); // what is left to send, and our entry removed
    d.doc.off('update', d.onUpdate);
    d.awareness.off('update', d.onAwareness);
    this.documents.delete(documentId);
    this.updateSaved();
  }

  destroy() {
    for (const documentId of [...this.documents.keys()]) this.close(documentId);
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
    else this.setStatus('closed');
  }

  async connect() {
    this.setStatus('connecting');
    let ws;
    try {
      const url = typeof this.url === 'function' ? await this.url() : this.url;
      if (this.stopped) return this.setStatus('closed');
      ws = this.ws = new this.WebSocket(url);
    } catch (error) {
      this.emit('error', { code: 'connect_failed', message: String(error) });
      return this.closed(null, 1006, '');
    }
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => this.closed(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows; Node's `ws` throws on an unhandled error
  }

  closed(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    // Unacknowledged updates may or may not be stored: the next sync step sends what is not.
    this.sent = this.acked = this.retries = 0;
    this.lost = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    for (const d of this.documents.values()) {
      d.synced = false;
      d.queue = [];
      // Others' cursors are stale now; the server sends the current ones after the sync step.
      const others = [...d.awareness.getStates().keys()].filter((id) => id !== d.doc.clientID);
      awarenessProtocol.removeAwarenessStates(d.awareness, others, REMOTE);
    }
    const reconnecting = !this.stopped && !FINAL_CLOSE_CODES.has(code);
    this.emit('close', { code, reason, reconnecting });
    this.setStatus(reconnecting ? 'disconnected' : 'closed');
    if (reconnecting) this.timer = setTimeout(() => this.connect(), this.delay(this.attempts++));
  }

  delay(attempt) {
    // Exponential with jitter, so clients cut off together do not come back together.
    return Math.min(this.maxDelay, this.minDelay * 2 ** attempt) * (0.5 + Math.random() / 2);
  }

  receive({ type, payload }) {
    if (type === 'presence_state') {
      // The first message of a connection; `resync: true` later means Redis came back.
      if (this.status !== 'connected' || payload?.resync) {
        this.attempts = 0;
        this.setStatus('connected');
        for (const d of this.documents.values()) this.syncStep(d);
      }
    } else if (type === 'yjs_ack') {
      this.acked += 1;
      this.updateSaved();
    } else if (type === 'error') {
      this.refused(payload ?? {});
    }
    const d = this.documents.get(payload?.document_id);
    if (!d) return;
    if (type === 'yjs_update' || type === 'yjs_sync_step2') {
      Y.applyUpdate(d.doc, fromBase64(payload.update), REMOTE);
    } else if (type === 'yjs_sync_step1') {
      // The server's half of the sync step: everything it lacks, then we are in step.
      d.queue = [];
      const missing = Y.encodeStateAsUpdate(d.doc, fromBase64(payload.state_vector));
      this.sendUpdate(d, missing, 'yjs_sync_step2');
      d.synced = true;
      // Re-announced with a new clock (sent by onAwareness): after a reconnect the others hold
      // our entry as removed, and y-protocols ignores a state at a clock it has seen.
      const state = d.awareness.getLocalState();
      if (state !== null) d.awareness.setLocalState(state);
      this.emit('synced', d.id);
      this.updateSaved();
    } else if (type === 'yjs_awareness') {
      awarenessProtocol.applyAwarenessUpdate(d.awareness, fromBase64(payload.update), REMOTE);
    }
  }

  refused(error) {
    this.emit('error', error);
    if (REFUSED.has(error.code)) {
      this.acked += 1;
      if (!RETRY.has(error.code)) this.lost = true;
    }
    if (UNCERTAIN.has(error.code) && this.ws) this.ws.close(4000, error.code);
    if (RETRY.has(error.code) && this.retryTimer === null) {
      for (const d of this.documents.values()) d.synced = false;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        for (const d of this.documents.values()) this.syncStep(d);
      }, this.delay(this.retries++));
    }
    this.updateSaved();
  }

  syncStep(d) {
    d.synced = false;
    d.queue = [];
    const stateVector = toBase64(Y.encodeStateVector(d.doc));
    this.send('yjs_sync_step1', { document_id: d.id, state_vector: stateVector });
  }

  later(d) {
    // Past 100 messages a second the server drops messages, and it closes a connection that
    // keeps trying (1008): send what accumulated, merged, at most once per interval.
    if (d.flushTimer !== null) return;
    const wait = Math.max(0, d.lastFlush + this.interval - Date.now());
    d.flushTimer = setTimeout(() => {
      d.flushTimer = null;
      this.flush(d);
    }, wait);
  }

  flush(d) {
    d.lastFlush = Date.now();
    if (!d.synced) return;
    if (d.queue.length) {
      const update = d.queue.length === 1 ? d.queue[0] : Y.mergeUpdates(d.queue);
      d.queue = [];
      this.sendUpdate(d, update, 'yjs_update');
    }
    if (d.awarenessDirty) {
      d.awarenessDirty = false;
      this.sendAwareness(d);
    }
  }

  sendUpdate(d, update, type) {
    if (this.ws?.readyState !== OPEN) return;
    const payload = { document_id: d.id, update: toBase64(update) };
    if (type === 'yjs_update') payload.origin = 'edit';
    const text = JSON.stringify({ type, payload });
    this.sent += 1;
    this.updateSaved();
    if (text.length * 3 <= this.maxMessageSize || utf8Length(text) <= this.maxMessageSize) {
      return this.ws.send(text);
    }
    // Too large for one message: the server joins the parts into one update, acknowledged once.
    const envelope = utf8Length(JSON.stringify({ type: 'yjs_update_part',
      payload: { document_id: d.id, index: Number.MAX_SAFE_INTEGER, final: false, data: '' } }));
    const step = Math.floor((this.maxMessageSize - envelope) / 4) * 3; // base64: 4 per 3 bytes
    for (let index = 0, at = 0; at < update.length; index += 1, at += step) {
      const data = toBase64(update.subarray(at, at + step));
      const final = at + step >= update.length;
      this.send('yjs_update_part', { document_id: d.id, index, final, data });
    }
  }

  sendAwareness(d) {
    // Our own entry only (a removal too): the server keeps each connection's entries.
    const update = awarenessProtocol.encodeAwarenessUpdate(d.awareness, [d.doc.clientID]);
    this.send('yjs_awareness', { document_id: d.id, update: toBase64(update) });
  }

  send(type, payload) {
    if (this.ws?.readyState === OPEN) this.ws.send(JSON.stringify({ type, payload }));
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.emit('status', status);
    this.updateSaved();
  }

  updateSaved() {
    const saved = this.status === 'connected' && !this.lost && this.acked >= this.sent
      && [...this.documents.values()].every((d) => d.synced && !d.queue.length);
    if (saved !== this.saved) {
      this.saved = saved;
      this.emit('saved', saved);
    }
  }
}
