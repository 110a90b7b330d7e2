// Runs one scenario of tests/integration/test_ywebsocket_node.py with the stock y-websocket
// provider (npm alias y-websocket-2 or y-websocket-3) over the server's /yjs/ endpoint.
// Usage: node provider_driver.mjs '<JSON config>'; prints one JSON object (the report) on stdout.
// Config: {scenario, major, document_id, text_name, seed, timeout_ms,
//          providers: {name: {server: 'ws://host:port/yjs/<project>', token}}, ...} plus what
//          the scenario reads (see each one).
// Nothing sleeps as synchronisation: every wait re-checks its condition on each event and fails
// after timeout_ms. The only timed waits are observation windows (window_ms), where the point is
// what does not happen while time passes.
import { createHash } from 'node:crypto';
import * as decoding from 'lib0/decoding';
import * as encoding from 'lib0/encoding';
import WebSocket from 'ws';
import * as syncProtocol from 'y-protocols/sync';
import * as Y from 'yjs';
import { mulberry32, waiting, yieldToEvents } from './waiting.mjs';

const config = JSON.parse(process.argv[2]);
const { WebsocketProvider } = await import(`y-websocket-${config.major}`);

// y-protocols message types (the first varUint of every frame), and sync's second one.
const MESSAGE_SYNC = 0;
const MESSAGE_AUTH = 2;
const SYNC_STEP1 = 0;
const SYNC_STEP2 = 1;
const KINDS = { 0: 'sync', 1: 'awareness', 2: 'auth', 3: 'query_awareness' };
const SYNC_KINDS = { 0: 'sync_step1', 1: 'sync_step2', 2: 'sync_update' };

const { poke, until } = waiting(config.timeout_ms);

// An observation window: nothing is awaited, the report says what happened meanwhile.
const watch = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const random = mulberry32(config.seed);

// y-websocket reports a permission-denied auth message only this way.
const warnings = [];
const warn = console.warn.bind(console);
console.warn = (...args) => {
  warnings.push(args.map(String).join(' '));
  warn(...args);
  poke();
};

// What one WebSocket of a provider carried: the provider makes a new one per connection.
function frameKind(bytes) {
  const decoder = decoding.createDecoder(bytes);
  const type = decoding.readVarUint(decoder);
  if (type === MESSAGE_SYNC) return { kind: SYNC_KINDS[decoding.readVarUint(decoder)], decoder };
  return { kind: KINDS[type] ?? `unknown_${type}`, decoder };
}

// One provider with its own Y.Doc, and what it saw. `announce`: set an awareness state (a
// provider without one sends nothing by itself, so only the server can keep it alive).
const records = [];

function join(name, { announce = true } = {}) {
  const { server, token } = config.providers[name];
  const record = { name, sockets: [], statuses: [], syncs: [] };
  records.push(record);

  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const socket = {
        server: url.split('?')[0], opened: false, close: null, received: {}, denied: [],
        step1Sent: 0, step2Received: 0,
      };
      record.sockets.push(socket);
      this.recorded = socket;
      // Registered before the provider's own handlers, so counted before they run.
      this.addEventListener('open', () => { socket.opened = true; poke(); });
      this.addEventListener('message', (event) => {
        const { kind, decoder } = frameKind(new Uint8Array(event.data));
        socket.received[kind] = (socket.received[kind] ?? 0) + 1;
        if (kind === 'sync_step2') socket.step2Received += 1;
        if (kind === 'auth') {
          decoding.readVarUint(decoder); // the only auth message: permission denied
          socket.denied.push(decoding.readVarString(decoder));
        }
        poke();
      });
      this.addEventListener('close', (event) => { socket.close = event.code; poke(); });
    }

    send(data) {
      const bytes = new Uint8Array(data);
      if (bytes[0] === MESSAGE_SYNC && bytes[1] === SYNC_STEP1) this.recorded.step1Sent += 1;
      super.send(data);
    }
  }

  const doc = new Y.Doc();
  const provider = new WebsocketProvider(server, config.document_id, doc, {
    connect: false, params: { token }, WebSocketPolyfill: RecordingWebSocket,
    // Providers of one process would otherwise sync through a BroadcastChannel, not the server.
    disableBc: true,
  });
  provider.on('status', ({ status }) => { record.statuses.push(status); poke(); });
  provider.on('sync', (synced) => { record.syncs.push(synced); poke(); });
  provider.awareness.on('change', poke);
  doc.on('update', poke);
  if (announce) provider.awareness.setLocalStateField('user', { name });
  else provider.awareness.setLocalState(null);
  provider.connect();
  return Object.assign(record, { provider, doc, text: doc.getText(config.text_name) });
}

const lines = (record) => new Set(record.text.toString().split('\n'));
const hasLines = (record, wanted) => {
  const have = lines(record);
  return wanted.every((line) => have.has(line));
};
const sameText = (records) => records.every((r) => String(r.text) === String(records[0].text));
// Who a provider sees in awareness, itself excluded.
const seen = (record) => new Set([...record.provider.awareness.getStates()]
  .filter(([id]) => id !== record.doc.clientID).map(([, state]) => state?.user?.name));
const lineName = (name, round, index) => `${name}-${round}-${index}`;

// A whole line at the start of a random line: other lines stay intact, so each one's presence
// says whether that edit arrived.
function insertLine(record, line) {
  const text = record.text.toString();
  const starts = [0];
  for (let at = text.indexOf('\n'); at !== -1; at = text.indexOf('\n', at + 1)) {
    starts.push(at + 1);
  }
  record.text.insert(starts[Math.floor(random() * starts.length)], `${line}\n`);
}

// The stock protocol has no acknowledgements. The server answers a sync step 1 only once every
// earlier update of the connection is stored, so the step 2 answering one sent now means every
// edit made so far is durable. Answers come in order, one per step 1 (the provider's own too).
async function acknowledge(record) {
  const { provider } = record;
  await until(`${record.name} synced`, () => provider.synced);
  const ws = provider.ws;
  const encoder = encoding.createEncoder();
  encoding.writeVarUint(encoder, MESSAGE_SYNC);
  syncProtocol.writeSyncStep1(encoder, record.doc);
  ws.send(encoding.toUint8Array(encoder));
  const socket = ws.recorded;
  const asked = socket.step1Sent;
  await until(`the step 2 answering ${record.name}'s step 1`,
    () => socket.step2Received >= asked);
}

function report(record) {
  const text = record.text.toString();
  return {
    name: record.name, text, length: text.length,
    sha256: createHash('sha256').update(text, 'utf8').digest('hex'),
    synced: record.provider.synced, wsconnected: record.provider.wsconnected,
    statuses: [...record.statuses], syncs: [...record.syncs], connections: record.sockets.length,
    sockets: record.sockets.map((s) => ({
      server: s.server, opened: s.opened, close: s.close, received: { ...s.received },
      denied: [...s.denied],
    })),
    sees: [...seen(record)].sort(),
  };
}

// Where a record's history stood at a moment, to tell what happened after it.
const mark = (record) => ({
  statuses: record.statuses.length, syncs: record.syncs.length, sockets: record.sockets.length,
  warnings: warnings.length,
});
const since = (record, at) => ({
  statuses: record.statuses.slice(at.statuses), syncs: record.syncs.slice(at.syncs),
  sockets: report(record).sockets.slice(at.sockets), warnings: warnings.slice(at.warnings),
});

const scenarios = {
  // Providers edit concurrently with others (config.others: names of JSON clients, already
  // present with an awareness state): config.rounds rounds of config.lines lines each, a round
  // starting once everyone's previous one arrived. Every line of everyone ends up everywhere.
  async converge() {
    const providers = Object.keys(config.providers).map((name) => join(name));
    const everyone = [...providers.map((p) => p.name), ...config.others];
    await until('every provider synced and seeing everyone else in awareness',
      () => providers.every((p) => p.provider.synced
        && everyone.every((name) => name === p.name || seen(p).has(name))));
    for (let round = 0; round < config.rounds; round += 1) {
      for (let index = 0; index < config.lines; index += 1) {
        for (const p of providers) {
          insertLine(p, lineName(p.name, round, index));
          if (random() < 0.5) await yieldToEvents();
        }
      }
      const wanted = everyone.flatMap(
        (name) => Array.from({ length: config.lines }, (_, index) => lineName(name, round, index)));
      await until(`every line of round ${round} at every provider`,
        () => providers.every((p) => hasLines(p, wanted)));
    }
    await until('identical texts', () => sameText(providers));
    for (const p of providers) await acknowledge(p);
    return { providers: providers.map(report) };
  },

  // One provider joins and syncs: what it got.
  async join() {
    const [name] = Object.keys(config.providers);
    const record = join(name);
    await until(`${name} synced`, () => record.provider.synced);
    return { provider: report(record) };
  },

  // Edits acknowledged, edits in flight, then the instance is killed (SIGKILL to
  // config.kill_pid), edits offline; the same provider is pointed at config.failover_server
  // and syncs there. Every edit must reach the store.
  async failover() {
    const [name] = Object.keys(config.providers);
    const record = join(name);
    await until(`${name} synced`, () => record.provider.synced);
    const edit = (phase) => {
      for (let index = 0; index < config.lines; index += 1) {
        insertLine(record, lineName(name, phase, index));
      }
    };
    edit('acknowledged');
    await acknowledge(record);
    edit('in-flight');
    const before = mark(record);
    process.kill(config.kill_pid, 'SIGKILL');
    await until(`${name} disconnected`,
      () => record.statuses.slice(before.statuses).includes('disconnected'));
    // Before the provider's reconnect timer (100 ms at least) fires: every reconnect from now
    // on goes to the surviving instance.
    record.provider.serverUrl = config.failover_server;
    edit('offline');
    await until(`${name} synced on the surviving instance`, () => record.provider.synced
      && record.provider.ws?.recorded.server.startsWith(config.failover_server));
    await acknowledge(record);
    return { provider: report(record), after_kill: since(record, before) };
  },

  // Access revoked (POST config.revoke.url as a service) while connected: the provider is told
  // and disconnected. It edits offline; 2.x reconnects (a refusal is an accepted connection,
  // held open) and edits over the held connection, 3.1 stops; either is watched for
  // config.window_ms after the revocation.
  async revoked() {
    const [name] = Object.keys(config.providers);
    const record = join(name);
    await until(`${name} synced`, () => record.provider.synced);
    insertLine(record, `${name}-before`);
    await acknowledge(record);
    const before = mark(record);
    const started = performance.now();
    const response = await fetch(config.revoke.url, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${config.revoke.token}`, 'content-type': 'application/json',
      },
      body: JSON.stringify({ user_id: name }),
    });
    const revokedAt = Date.now() / 1000;
    if (!response.ok) {
      throw new Error(`revocation refused: ${response.status} ${await response.text()}`);
    }
    await until(`${name} told and disconnected`, () => warnings.length > before.warnings
      && record.statuses.slice(before.statuses).includes('disconnected'));
    insertLine(record, `${name}-offline`);
    // y-websocket 3.1 stops at a close in 4400-4499 (the server's 4403); 2.x reconnects.
    const stopped = record.provider.shouldConnect === false;
    if (!stopped) {
      await until(`${name} reconnected and refused`, () => {
        const socket = record.sockets.at(-1);
        return record.sockets.length > before.sockets && socket.opened
          && socket.denied.length > 0 && record.provider.wsconnected;
      });
    }
    // Sent as an update over the held connection (2.x), which must not serve it, or kept.
    insertLine(record, `${name}-held`);
    await watch(Math.max(0, config.window_ms - (performance.now() - started)));
    return {
      stopped,
      provider: report(record), after_revocation: since(record, before),
      revocation: { status: response.status, body: await response.json(), revoked_at: revokedAt },
    };
  },

  // A provider alone, with no awareness state of its own, watched for config.window_ms: past
  // y-websocket's own 30 s no-message timeout, which only the server's frames can hold off.
  async lone() {
    const [name] = Object.keys(config.providers);
    const record = join(name, { announce: false });
    await until(`${name} synced`, () => record.provider.synced);
    const before = mark(record);
    const socket = record.provider.ws.recorded;
    const received = { ...socket.received };
    await watch(config.window_ms);
    const during = since(record, before);
    // What the server sent on that connection meanwhile (its keep-alive frames).
    const frames = Object.fromEntries(Object.entries(socket.received)
      .map(([kind, count]) => [kind, count - (received[kind] ?? 0)]).filter(([, n]) => n > 0));
    const still = { synced: record.provider.synced, wsconnected: record.provider.wsconnected };
    insertLine(record, `${name}-after-the-window`);
    await acknowledge(record);
    return { provider: report(record), during, frames_during: frames, after_window: still };
  },
};

const started = performance.now();
try {
  const result = await scenarios[config.scenario]();
  result.elapsed_ms = Math.round(performance.now() - started);
  result.warnings = [...warnings];
  // Exit once written: a pipe takes a large report in several writes.
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
} catch (error) {
  // Where every provider stood, to tell a server's fault from the driver's.
  const state = records.map((record) => {
    const { text, ...rest } = report(record);
    return { ...rest, lines: text.length > 4096 ? '(long)' : text.split('\n').filter(Boolean) };
  });
  process.stderr.write(`${error.stack ?? error}\nproviders: ${JSON.stringify(state)}\n`);
  process.exit(1);
}
