// kubelisten listener in JavaScript: the polyglot reference behaviour (see guests/README.md).
//
// create/update: log, then record `status.handledBy = "js"` through the cluster import;
// delete: log. Annotation `kubelisten.dev/fault`: `error` returns the error side of the result
// (throwing a string), `trap` throws an Error object (a trap). `kubelisten.dev/require-status:
// "true"` turns a failed status write into an error return.
//
// WIT values in JS: enums are kebab-case strings, option<T> is T or undefined, s64 is a BigInt,
// a variant is {tag, val}, an import's err(...) is thrown (its value in `payload`).

import { log } from 'kubelisten:listener/log@0.1.0';
import { patchStatus } from 'kubelisten:listener/cluster@0.1.0';

const LANG = 'js';

function annotation(ev, key) {
  for (const [k, v] of ev.meta.annotations) {
    if (k === key) return v;
  }
  return undefined;
}

function objectName(ev) {
  return ev.meta.namespace !== undefined ? `${ev.meta.namespace}/${ev.meta.name}` : ev.meta.name;
}

function describeApiError(e) {
  const err = e !== null && typeof e === 'object' && 'payload' in e ? e.payload : e;
  if (err !== null && typeof err === 'object' && 'tag' in err) return `${err.tag}: ${err.val}`;
  return `other: ${String(err)}`;
}

// Our own status write comes back as an update: do not patch again for that generation.
function statusUpToDate(ev) {
  if (ev.meta.generation === undefined) return false;
  let status;
  try {
    status = JSON.parse(ev.object).status;
  } catch (_) {
    return false;
  }
  return (
    status !== null && typeof status === 'object' &&
    status.handledBy === LANG &&
    Number.isInteger(status.observedGeneration) &&
    BigInt(status.observedGeneration) === BigInt(ev.meta.generation)
  );
}

function handle(ev) {
  const fault = annotation(ev, 'kubelisten.dev/fault');
  if (fault === 'error') throw `${LANG}: error requested`; // a string: the error side
  if (fault === 'trap') throw new Error(`${LANG}: trap requested`); // an Error: a trap

  log('info', `${LANG}: ${ev.kind} ${ev.meta.kind} ${objectName(ev)} rv=${ev.meta.resourceVersion}`);
  if (ev.kind === 'delete') return;
  if (statusUpToDate(ev)) {
    log('debug', `${LANG}: status already up to date`);
    return;
  }

  const ref = {
    apiVersion: ev.meta.apiVersion,
    kind: ev.meta.kind,
    namespace: ev.meta.namespace,
    name: ev.meta.name,
  };
  let status = `"handledBy":${JSON.stringify(LANG)},"observedResourceVersion":${JSON.stringify(ev.meta.resourceVersion)}`;
  if (ev.meta.generation !== undefined) status += `,"observedGeneration":${ev.meta.generation.toString()}`;
  const patch = `{"status":{${status}}}`;
  try {
    patchStatus(ref, 'merge', patch);
  } catch (e) {
    const message = `${LANG}: patch-status failed: ${describeApiError(e)}`;
    if (annotation(ev, 'kubelisten.dev/require-status') === 'true') throw message;
    log('warn', message);
    return;
  }
  log('info', `${LANG}: status recorded`);
}

export function create(ev) {
  handle(ev);
}

export function update(ev) {
  handle(ev);
}

// `delete` is a reserved word in JavaScript.
function delete_(ev) {
  handle(ev);
}
export { delete_ as delete };

export function error(err) {
  log('warn', `${LANG}: watch error ${err.code} ${err.reason}: ${err.message}`);
}

export function rollback(ev) {
  log('info', `${LANG}: rollback ${ev.meta.kind} ${objectName(ev)}`);
}
