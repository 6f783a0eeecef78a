// `suspicious`: a Sluice stage in JavaScript that flags orders of a user who
// placed more than `max_per_minute` orders within a minute (by the orders'
// own timestamps) with the header `sluice.suspicious`, e.g.
// `4 orders by user u-17 within 60 s`. Every order goes on unchanged
// otherwise; orders without a user are never flagged.
//
// Input: canonical orders (after `normalize`), keyed by user so that a
// user's orders share a partition. Config: `max_per_minute` (default 3),
// `window_ms` (default 60000).
//
// A user's recent order times are the stage's keyed state
// (sluice:plugin/state@0.2.0): kept by the host per input partition, made
// durable with the offsets, so a restart, a rebalance or a replayed batch
// neither forgets them nor counts an order twice. Each user's list is pruned
// to the window of that user's latest order, and expires a day (wall-clock)
// after the user's last order.
import { log } from 'sluice:plugin/host@0.1.0';
import { get, set } from 'sluice:plugin/state@0.2.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });
const DAY_MS = 86400000n;

let maxPerMinute = 3;
let windowMs = 60000;

export function init(configJson) {
  let config;
  try {
    config = JSON.parse(configJson || '{}');
  } catch (e) {
    throw `suspicious config: ${e.message}`;
  }
  for (const key of Object.keys(config)) {
    if (key !== 'max_per_minute' && key !== 'window_ms') {
      throw `suspicious config: unknown setting '${key}', expected 'max_per_minute' or 'window_ms'`;
    }
  }
  maxPerMinute = positive(config, 'max_per_minute', maxPerMinute);
  windowMs = positive(config, 'window_ms', windowMs);
  log('info', `suspicious: more than ${maxPerMinute} orders by one user within ${windowMs} ms get flagged`);
}

function positive(config, key, fallback) {
  const value = config[key] ?? fallback;
  if (!Number.isInteger(value) || value < 1) {
    throw `suspicious config: ${key} must be a positive integer, got ${JSON.stringify(value)}`;
  }
  return value;
}

function reject(reason, message) {
  return { tag: 'reject', val: { reason, message } };
}

// The order of `message`, its user and time, or the outcome that ends it.
function read(message) {
  let order;
  try {
    order = JSON.parse(decoder.decode(message.value));
  } catch (e) {
    return { done: reject('invalid_json', `suspicious expects a canonical order: ${e.message}`) };
  }
  const onward = { key: message.key, value: message.value, headers: message.headers };
  const user = order?.user?.id;
  if (typeof user !== 'string') {
    return { done: { tag: 'emit', val: [[onward], []] } };
  }
  const at = Date.parse(order.ts);
  if (Number.isNaN(at)) {
    return { done: reject('invalid_timestamp', `suspicious: order ${order.order_id} has no valid ts: ${JSON.stringify(order.ts)}`) };
  }
  return { onward, user, at };
}

export function process(batch) {
  const orders = batch.map(read);
  // Every user's recent times in one call: per (partition, user), as of the
  // first order of that user in the batch; later orders see the batch's own
  // updates through `recent`.
  const recent = new Map();
  const keys = [];
  orders.forEach((o, at) => {
    const scope = `${batch[at].partition}\u0000${o.user}`;
    if (o.user !== undefined && !recent.has(scope)) {
      recent.set(scope, null);
      keys.push({ scope, key: { at, key: o.user } });
    }
  });
  const stored = get(keys.map((k) => k.key));
  keys.forEach((k, i) => recent.set(k.scope, stored[i] ? JSON.parse(decoder.decode(stored[i])) : []));
  return orders.map((o, at) => {
    if (o.done) {
      return o.done;
    }
    const scope = `${batch[at].partition}\u0000${o.user}`;
    const times = recent.get(scope);
    times.push(o.at);
    const latest = Math.max(...times);
    const kept = times.filter((t) => t > latest - windowMs);
    recent.set(scope, kept);
    try {
      set(at, o.user, encoder.encode(JSON.stringify(kept)), BigInt(windowMs) + DAY_MS);
    } catch (e) {
      return reject('state_refused', `suspicious: ${e.payload ?? e}`);
    }
    const count = kept.filter((t) => t > o.at - windowMs && t <= o.at).length;
    if (count <= maxPerMinute) {
      return { tag: 'emit', val: [[o.onward], []] };
    }
    const flag = `${count} orders by user ${o.user} within ${windowMs / 1000} s`;
    o.onward.headers = [...o.onward.headers, { name: 'sluice.suspicious', value: encoder.encode(flag) }];
    return { tag: 'emit', val: [[o.onward], []] };
  });
}
