// `{{name}}`: a Sluice stage in JavaScript.
//
// Each record's value must be a JSON object; the stage adds
// `"tagged_by": <tag>` to it and the header `x-tagged-by`, and sends it on.
// A value that is not JSON, or not an object, goes to the dead-letter topic
// with its reason.
//
// Config (pipeline.toml, `[stages.config]`): `tag`, default `"{{name}}"`.
//
// The host calls `init` once per instance with the config as JSON (throw a
// string to refuse it), then `process` with batches of records; `process`
// returns one outcome per record, in order: `{tag: 'emit', val: [outputs,
// effects]}`, `{tag: 'filtered'}`, `{tag: 'reject', val: {reason, message}}`
// or `{tag: 'retry', val: {reason, message}}`. Keys and values are
// Uint8Arrays; Redis increments are BigInts.
import { log } from 'sluice:plugin/host@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });
let tag = '{{name}}';

export function init(configJson) {
  let config;
  try {
    config = JSON.parse(configJson || '{}');
  } catch (e) {
    throw `stage config: ${e.message}`;
  }
  for (const key of Object.keys(config)) {
    if (key !== 'tag') {
      throw `stage config: unknown setting '${key}', expected 'tag'`;
    }
  }
  tag = String(config.tag ?? tag);
  log('debug', `{{name}} tags records with '${tag}'`);
}

function reject(reason, message) {
  return { tag: 'reject', val: { reason, message } };
}

function tagRecord(message) {
  let value;
  try {
    value = JSON.parse(decoder.decode(message.value));
  } catch (e) {
    return reject('invalid_json', e.message);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return reject('not_an_object', 'the record value is JSON but not an object');
  }
  value.tagged_by = tag;
  const output = {
    // No route: on to the next stage (or the pipeline's output).
    key: message.key,
    value: encoder.encode(JSON.stringify(value)),
    headers: [...message.headers, { name: 'x-tagged-by', value: encoder.encode(tag) }],
  };
  return { tag: 'emit', val: [[output], []] };
}

export function process(batch) {
  return batch.map(tagRecord);
}
