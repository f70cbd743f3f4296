import { XMLParser } from 'fast-xml-parser';
import { HamalError } from '../../errors.ts';

/** Elements that are lists even when one is present (so a caller never meets a lone object). */
const ARRAYS = new Set(['objects', 'propSet', 'device', 'returnval', 'changedArea', 'missingSet']);
const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', isArray: (name) => ARRAYS.has(name.replace(/^.*:/, '')) });

/** One vim25 reply: the `returnval` elements of `<method>Response`, or the fault. */
export interface SoapReply {
  returnval: unknown[];
  /** A SOAP fault (or an HTTP error status with an envelope): `kind` names the vim25 fault hamal acts on. */
  fault?: { kind: 'NotAuthenticated' | 'InvalidLogin' | ''; type?: string; message: string };
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const child = (o: Obj, suffix: string): unknown => o[Object.keys(o).find((k) => k === suffix || k.endsWith(`:${suffix}`)) ?? ''];

/** The vim25 fault a detail carries (`<InvalidArgumentFault xsi:type="InvalidArgument">` -> InvalidArgument). */
function faultType(detail: unknown): string | undefined {
  if (!isObj(detail)) return undefined;
  const key = Object.keys(detail).find((k) => !k.startsWith('@') && k !== '#text');
  if (!key) return undefined;
  const el = detail[key];
  const typed = isObj(el) ? Object.keys(el).find((k) => k.startsWith('@') && k.endsWith(':type')) : undefined;
  const name = typed ? String((el as Obj)[typed]) : key.replace(/^.*:/, '').replace(/Fault$/, '');
  return name.replace(/^.*:/, '').slice(0, 80) || undefined;
}

/**
 * Reads the raw XML of a reply from a vSphere server. The server is not trusted to send a
 * well-formed envelope: anything else fails as VSPHERE_BAD_REPLY naming the call and host.
 */
export function parseSoapReply(text: string, method: string, host: string, status = 200): SoapReply {
  const bad = (why: string, cause?: unknown) =>
    new HamalError('VSPHERE_BAD_REPLY', `${method} on ${host}: ${why}`, { subject: host, cause, retryable: status >= 500 });
  let doc: unknown;
  try {
    doc = parser.parse(text);
  } catch (err) {
    throw bad(`the reply is not XML (HTTP ${status})`, err);
  }
  const envelope = isObj(doc) ? child(doc, 'Envelope') : undefined;
  const body = isObj(envelope) ? child(envelope, 'Body') : undefined;
  if (!isObj(body)) throw bad(`the reply is not a SOAP envelope (HTTP ${status})`);
  const fault = child(body, 'Fault');
  if (fault !== undefined || status >= 400) {
    const f = isObj(fault) ? fault : {};
    const detail = JSON.stringify(f.detail ?? {});
    const kind = /NotAuthenticated/.test(detail) ? 'NotAuthenticated' : /InvalidLogin/.test(detail) ? 'InvalidLogin' : '';
    const faultstring = typeof f.faultstring === 'string' ? f.faultstring.slice(0, 500) : '';
    const type = faultType(f.detail);
    return { returnval: [], fault: { kind, type, message: kind || [type, faultstring].filter(Boolean).join(': ') || `HTTP ${status}` } };
  }
  const response = child(body, `${method}Response`);
  if (response === undefined || response === '') return { returnval: [] };
  if (!isObj(response)) throw bad(`${method}Response is not an element`);
  const returnval = response.returnval;
  return { returnval: returnval === undefined ? [] : Array.isArray(returnval) ? returnval : [returnval] };
}
