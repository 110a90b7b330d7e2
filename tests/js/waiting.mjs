// What both drivers wait with: conditions re-checked on each event (never a sleep standing in
// for one), and a seeded random source, so a scenario is the same on every run.

// `until(what, check)` resolves once `check()` holds, re-checked whenever `poke()` is called
// (on every event the driver sees); it fails after `timeoutMs`.
export function waiting(timeoutMs) {
  const waiters = new Set();
  function poke() {
    for (const waiter of [...waiters]) {
      if (waiter.check()) {
        waiters.delete(waiter);
        clearTimeout(waiter.timer);
        waiter.resolve();
      }
    }
  }
  function until(what, check, ms = timeoutMs) {
    return new Promise((resolve, reject) => {
      if (check()) return resolve();
      const waiter = { check, resolve };
      waiter.timer = setTimeout(() => {
        waiters.delete(waiter);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      waiters.add(waiter);
    });
  }
  return { poke, until };
}

// Lets the event loop deliver what arrived: edits interleave with remote updates in flight.
export const yieldToEvents = () => new Promise(setImmediate);

export function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
