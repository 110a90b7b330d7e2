// Runs one scenario of tests/integration/test_yjs_node.py with docs/clients/texflow-yjs.mjs.
// Usage: node yjs_driver.mjs '<JSON config>'; prints one JSON object (the results) on stdout.
// Config: {scenario, document_id, text_name, seed, ops, paste_bytes, timeout_ms,
//          awareness_wait_ms, interval (the client's; null: its default),
//          urls: {name: ws URL with a token, ...}}.
// Nothing sleeps: every wait re-checks its condition on each event and fails after timeout_ms.
import WebSocket from 'ws';
import * as Y from 'yjs';
import { mulberry32, waiting, yieldToEvents } from './waiting.mjs';
import { TexflowYjs } from './texflow-yjs.mjs';

const config = JSON.parse(process.argv[2]);
const { poke, until } = waiting(config.timeout_ms);

const random = mulberry32(config.seed);
const pick = (items) => items[Math.floor(random() * items.length)];
// Non-ASCII letters too: the server counts UTF-8 bytes where Yjs counts UTF-16 units.
const WORDS = ['\\section', '{x}', 'é', 'λ ', 'word ', '\n', '$a^2$', 'zz'];

function randomEdit(text) {
  const length = text.length;
  if (length > 0 && random() < 0.35) {
    const at = Math.floor(random() * length);
    text.delete(at, 1 + Math.floor(random() * Math.min(8, length - at)));
  } else {
    text.insert(Math.floor(random() * (length + 1)), pick(WORDS));
  }
}

// One editor: a TexflowYjs client with the document open, and what it saw.
function join(name) {
  const record = {
    name, closes: [], errors: [], connections: 0, sentTypes: {},
    largestSent: 0, largestReceived: 0, removedClients: new Set(),
  };
  // Counts what goes over the wire, and lets a test cut the connection off.
  class CountingWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      record.connections += 1;
      record.socket = this;
      this.addEventListener('message', (event) => {
        record.largestReceived = Math.max(record.largestReceived, event.data.length);
      });
    }

    send(data) {
      const type = /"type":"(\w+)"/.exec(data.slice(0, 40))[1];
      record.sentTypes[type] = (record.sentTypes[type] ?? 0) + 1;
      record.largestSent = Math.max(record.largestSent, Buffer.byteLength(data));
      super.send(data);
    }
  }
  const client = new TexflowYjs({
    url: config.urls[name], WebSocket: CountingWebSocket, minDelay: 50, maxDelay: 1000,
    interval: config.interval ?? undefined,
  });
  client.on('close', (event) => { record.closes.push(event.code); poke(); });
  client.on('error', (error) => { record.errors.push(error); poke(); });
  for (const event of ['status', 'saved', 'synced']) client.on(event, poke);
  const { doc, awareness } = client.open(config.document_id);
  doc.on('update', poke);
  awareness.on('change', ({ removed }) => {
    for (const id of removed) record.removedClients.add(id);
    poke();
  });
  awareness.setLocalState({ user: name });
  return Object.assign(record, { client, doc, awareness, text: doc.getText(config.text_name) });
}

const seen = (record) => new Set([...record.awareness.getStates().values()].map((s) => s?.user));
const sameText = (records) => records.every((r) => String(r.text) === String(records[0].text));
const vector = (record) => Buffer.from(Y.encodeStateVector(record.doc)).toString('base64');
const allSaved = (records) => records.every((r) => r.client.saved);

function report(record) {
  return {
    name: record.name, text: record.text.toString(), status: record.client.status,
    saved: record.client.saved, sent: record.client.sent, acked: record.client.acked,
    closes: [...record.closes], errors: [...record.errors], connections: record.connections,
    sent_types: { ...record.sentTypes }, largest_sent: record.largestSent,
    largest_received: record.largestReceived,
  };
}

const scenarios = {
  // Three editors type and delete at random at once; all converge, with the server's copy.
  async concurrent() {
    const writers = ['alice', 'bob', 'carol'].map(join);
    await until('every writer synced', () => allSaved(writers));
    await until('every writer to see the others in awareness',
      () => writers.every((w) => seen(w).size === writers.length));
    for (let op = 0; op < config.ops; op += 1) {
      randomEdit(pick(writers).text);
      if (random() < 0.3) await yieldToEvents();
    }
    await until('every update acknowledged and every copy identical', () => allSaved(writers)
      && sameText(writers) && writers.every((w) => vector(w) === vector(writers[0])));
    const fresh = join('fresh');
    await until('the fresh client synced', () => fresh.client.saved);
    return { writers: writers.map(report), fresh: report(fresh) };
  },

  // One editor alone, then gone; a newcomer with nobody online gets the text from the server.
  async alone() {
    const alice = join('alice');
    await until('alice synced', () => alice.client.saved);
    for (let op = 0; op < config.ops; op += 1) randomEdit(alice.text);
    await until('alice saved', () => alice.client.saved);
    const before = report(alice);
    alice.client.destroy();
    await until('alice closed', () => alice.client.status === 'closed');
    const bob = join('bob');
    await until('bob synced', () => bob.client.saved);
    return { alice: before, bob: report(bob), bob_sees: [...seen(bob)].sort() };
  },

  // A paste far larger than one message: sent in parts, relayed whole, and served to a joiner.
  async paste() {
    const [alice, bob] = ['alice', 'bob'].map(join);
    await until('alice and bob synced', () => allSaved([alice, bob]));
    bob.text.insert(0, 'before the paste\n');
    await until('bob\'s line reached alice', () => sameText([alice, bob]) && allSaved([bob]));
    const lines = [];
    for (let size = 0; size < config.paste_bytes;) {
      const word = Math.floor(random() * 1e9).toString(36);
      const line = `${word} ${'x'.repeat(Math.floor(random() * 70))}\n`;
      lines.push(line);
      size += line.length;
    }
    const paste = lines.join('').slice(0, config.paste_bytes);
    alice.text.insert(alice.text.length, paste);
    await until('the paste saved and at bob',
      () => allSaved([alice, bob]) && sameText([alice, bob]));
    const carol = join('carol');
    await until('carol synced', () => carol.client.saved);
    return { paste_length: paste.length, clients: [alice, bob, carol].map(report) };
  },

  // A connection dropped without a close frame: edits on both sides meanwhile, then in step.
  async reconnect() {
    const [alice, bob] = ['alice', 'bob'].map(join);
    await until('alice and bob synced, each seeing the other',
      () => allSaved([alice, bob]) && seen(alice).has('bob') && seen(bob).has('alice'));
    alice.text.insert(0, 'shared start\n');
    await until('the start at bob', () => sameText([alice, bob]) && allSaved([alice, bob]));
    const aliceId = alice.doc.clientID;
    alice.socket.terminate();
    alice.text.insert(alice.text.length, 'typed offline by alice\n');
    alice.text.delete(0, 7); // "shared "
    bob.text.insert(0, 'typed by bob meanwhile\n');
    await until('alice back, both saved and identical', () => alice.connections === 2
      && allSaved([alice, bob]) && sameText([alice, bob]));
    // Reported rather than required: the test decides what it expects of the server here.
    const back = await until('bob to see alice again', () => seen(bob).has('alice'),
      config.awareness_wait_ms).then(() => true, () => false);
    return {
      clients: [alice, bob].map(report), bob_saw_alice_removed: bob.removedClients.has(aliceId),
      bob_sees_alice_again: back,
    };
  },

  // The server closes with 4001 when the token expires: the client stops, it does not retry.
  async expiry() {
    const alice = join('alice');
    await until('alice synced', () => alice.client.saved);
    await until('alice closed for good', () => alice.client.status === 'closed');
    return { alice: report(alice) };
  },
};

const started = performance.now();
try {
  const result = await scenarios[config.scenario]();
  result.elapsed_ms = Math.round(performance.now() - started);
  // Exit once written: a pipe takes a large report in several writes.
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
} catch (error) {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exit(1);
}
