// Session: POST/DELETE /service/session and the X-Auth-Token every other call carries.
// eSDK RestletClient.login: X-Auth-User, X-Auth-Key = SHA256Utils.encrypt(password)
// (lowercase hex SHA-256 of the UTF-8 password); token read from the X-Auth-Token reply
// header; later calls send X-Auth-Token. KubeOperator FusionComputeGolangSDK auth.go: the
// same, plus X-Auth-UserType: 2; logout is DELETE /service/session with the token; the body
// is read as LoginResponse {validity, rightType, privilegeIds, userId, userName, roleList}.
// nova fcclient._make_headers: the plaintext password with X-ENCRIPT-ALGORITHM: 1 and
// X-Auth-UserType (constant.py user_type '2'); cinder http_client: sha256 key, no
// X-ENCRIPT-ALGORITHM. So: key = plaintext only with X-ENCRIPT-ALGORITHM: 1, else SHA-256.
import { createHash, randomBytes } from 'node:crypto';
import { ERR, fail, type Ctx, type Reply } from './http.ts';
import type { FcState } from './state.ts';

const sha256hex = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

export function login(st: FcState, c: Ctx, user: string, password: string): Reply {
  const h = (n: string) => (c.headers[n] === undefined ? undefined : String(c.headers[n]));
  const key = h('x-auth-key');
  const expected = h('x-encript-algorithm') === '1' ? password : sha256hex(password);
  // X-Auth-UserType: absent in the Java eSDK, '2' in nova, cinder (vrm_usertype) and the Go
  // SDK. GUESSED: other user types are refused (this stand-in's user is an interface user).
  const userType = h('x-auth-usertype');
  if (h('x-auth-user') !== user || key !== expected || (userType !== undefined && userType !== '2')) {
    fail(401, ERR.authFailed, 'The user name or password is incorrect.');
  }
  const token = randomBytes(24).toString('hex');
  st.tokens.add(token);
  // Body fields: Go SDK LoginResponse. Values GUESSED.
  return { body: { validity: 1800, rightType: 1, privilegeIds: [], userId: '1', userName: user, roleList: ['administrator'] }, headers: { 'X-Auth-Token': token } };
}

export function requireToken(st: FcState, c: Ctx): string {
  const t = c.headers['x-auth-token'];
  if (typeof t !== 'string' || !st.tokens.has(t)) fail(401, ERR.notLoggedIn, 'The session is invalid or has expired; log in again.');
  return t as string;
}

export function logout(st: FcState, token: string): Reply {
  st.tokens.delete(token);
  return { body: {} };
}
