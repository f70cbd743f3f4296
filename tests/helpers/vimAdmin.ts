// Administrative vSphere calls the tests need and hamal never makes (folders, renames):
// raw envelopes over a session of their own, so hamal's WSDL subset stays what hamal uses.
import https from 'node:https';

export class VimAdmin {
  private _cookie = '';
  private constructor(private readonly _url: string) {}

  static async login(url: string, username: string, password: string): Promise<VimAdmin> {
    const a = new VimAdmin(url);
    await a.call('Login', 'SessionManager', 'SessionManager', `<userName>${username}</userName><password>${password}</password>`);
    return a;
  }

  /** Calls `method` on the object `type:value`; returns the reply's XML. Faults throw. */
  call(method: string, type: string, value: string, body = ''): Promise<string> {
    const envelope =
      '<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">' +
      `<soapenv:Body><${method} xmlns="urn:vim25"><_this type="${type}">${value}</_this>${body}</${method}></soapenv:Body></soapenv:Envelope>`;
    return new Promise((resolve, reject) => {
      const req = https.request(
        this._url,
        { method: 'POST', rejectUnauthorized: false, headers: { 'Content-Type': 'text/xml', SOAPAction: '"urn:vim25/6.5"', Cookie: this._cookie } },
        (res) => {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('end', () => {
            const text = Buffer.concat(parts).toString();
            const set = res.headers['set-cookie']?.[0];
            if (set) this._cookie = set.split(';')[0]!;
            if (res.statusCode !== 200) reject(new Error(`${method}: HTTP ${res.statusCode}: ${text.slice(0, 300)}`));
            else resolve(text);
          });
        },
      );
      req.on('error', reject);
      req.end(envelope);
    });
  }

  /** The text of the first `<returnval>` of a reply. */
  static returnval(reply: string): string {
    return /<returnval[^>]*>([^<]*)<\/returnval>/.exec(reply)?.[1] ?? '';
  }
}
