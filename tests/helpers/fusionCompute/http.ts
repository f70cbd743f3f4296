// Replies and errors in the vendor's shape. eSDK RestletClient: any status other than 200
// is read as an SDKCommonResp {errorCode, errorDes} body (401/403/404 by status alone);
// nova fcclient._raise_if_not_in_status_ok reads errorCode/errorDes from the body of any
// status outside 200/201/202.
import type http from 'node:http';

export class FcError extends Error {
  constructor(
    readonly status: number,
    readonly errorCode: string,
    readonly errorDes: string,
  ) {
    super(errorDes);
  }
}

/** Error codes. Evidenced ones name their source; the others are GUESSED (marked). */
export const ERR = {
  /** GUESSED: no public client names the login failure code. */
  authFailed: '10000005',
  /** GUESSED. */
  notLoggedIn: '10000006',
  /** nova volumeops.query_vm_snapshot treats 10300109 as "snapshot does not exist". */
  snapshotNotFound: '10300109',
  /** cinder volume_proxy.delete_volume treats 10420004 as "volume does not exist". */
  volumeNotFound: '10420004',
  /** GUESSED below. */
  vmNotFound: '10300001',
  badParam: '10000001',
  taskNotFound: '10000404',
  cbtInvalid: '10420300',
  resourceNotFound: '10420301',
  busy: '10420302',
  notFound: '10000404',
} as const;

export const fail = (status: number, code: string, des: string): never => {
  throw new FcError(status, code, des);
};

export function json(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': 'application/json;charset=UTF-8', ...headers });
  res.end(JSON.stringify(body));
}

export async function readBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  let text = '';
  for await (const c of req) text += c;
  if (!text) return {};
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' ? v : fail(400, ERR.badParam, 'request body is not a JSON object');
  } catch {
    return fail(400, ERR.badParam, 'request body is not JSON');
  }
}

/** What a route handler gets. */
export interface Ctx {
  method: string;
  path: string;
  query: URLSearchParams;
  body: Record<string, unknown>;
  headers: http.IncomingHttpHeaders;
}

export type Reply = { status?: number; body: unknown; headers?: Record<string, string> };
