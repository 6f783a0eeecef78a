// `suspicious`: a Sluice stage in JavaScript that flags orders of a user who
// placed more than `max_per_minute` orders within a minute (by the orders'
// own timestamps) with the header `sluice.suspicious`, e.g.
// `4 orders by user u-17 within 60 s`. Every order goes on unchanged
// otherwise; orders without a user are never flagged.
//
// Input: canonical orders (after `normalize`). Config: `max_per_minute`
// (default 3), `window_ms` (default 60000).
//
// The recent timestamps per user live in the instance's memory: they start
// empty when the stage is (re)loaded, and users with nothing recent are
// forgotten, so memory stays bounded by the users active in one window.
import { log } from 'sluice:plugin/host@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

let maxPerMinute = 3;
let windowMs = 60000;
const recent = new Map(); // user id -> timestamps (ms) within the window of the latest
let latest = -Infinity;
let sincePrune = 0;

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

function check(message) {
  let order;
  try {
    order = JSON.parse(decoder.decode(message.value));
  } catch (e) {
    return reject('invalid_json', `suspicious expects a canonical order: ${e.message}`);
  }
  const onward = { key: message.key, value: message.value, headers: message.headers };
  const user = order?.user?.id;
  if (typeof user !== 'string') {
    return { tag: 'emit', val: [[onward], []] };
  }
  const at = Date.parse(order.ts);
  if (Number.isNaN(at)) {
    return reject('invalid_timestamp', `suspicious: order ${order.order_id} has no valid ts: ${JSON.stringify(order.ts)}`);
  }
  latest = Math.max(latest, at);
  const times = (recent.get(user) ?? []).filter((t) => t > latest - windowMs);
  times.push(at);
  recent.set(user, times);
  const count = times.filter((t) => t > at - windowMs && t <= at).length;
  if (++sincePrune >= 1000) {
    prune();
  }
  if (count <= maxPerMinute) {
    return { tag: 'emit', val: [[onward], []] };
  }
  const flag = `${count} orders by user ${user} within ${windowMs / 1000} s`;
  onward.headers = [...message.headers, { name: 'sluice.suspicious', value: encoder.encode(flag) }];
  return { tag: 'emit', val: [[onward], []] };
}

// Forgets users with no order within the window of the latest one.
function prune() {
  sincePrune = 0;
  for (const [user, times] of recent) {
    if (times.every((t) => t <= latest - windowMs)) {
      recent.delete(user);
    }
  }
}

export function process(batch) {
  return batch.map(check);
}
