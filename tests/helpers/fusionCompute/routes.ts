// Which handler answers which method and path.
import { ERR, fail, type Ctx, type Reply } from './http.ts';
import { SITE_URI } from './model.ts';
import type { FcState } from './state.ts';
import * as auth from './auth.ts';
import * as inv from './inventory.ts';
import * as snaps from './snapshots.ts';
import * as tasks from './tasks.ts';
import * as br from './backupResources.ts';
import { getCbt } from './cbt.ts';

export interface Config {
  user: string;
  password: string;
  overLimit: inv.OverLimit;
  data: () => br.DataEndpoint;
}

const noRoute = (c: Ctx): never => fail(404, ERR.notFound, `No route ${c.method} ${c.path}`);

export async function route(st: FcState, cfg: Config, c: Ctx): Promise<Reply> {
  const { method: m, path: p } = c;
  if (p === '/service/session' && m === 'POST') return auth.login(st, c, cfg.user, cfg.password);
  const token = auth.requireToken(st, c);
  if (p === '/service/session') return m === 'DELETE' ? auth.logout(st, token) : noRoute(c);
  if (p === '/service/sites' && m === 'GET') return inv.sites();
  if (p === `${SITE_URI}/vms` && m === 'GET') return inv.listVms(st, c, cfg.overLimit);
  const task = new RegExp(`^${SITE_URI}/tasks/([^/]+)$`).exec(p);
  if (task && m === 'GET') return tasks.query(st, task[1]!);
  if (p.startsWith(`${SITE_URI}/vms/`)) return vmRoutes(st, c);
  if (p.startsWith(`${SITE_URI}/volumes/`)) return volumeRoutes(st, cfg, c);
  return noRoute(c);
}

async function vmRoutes(st: FcState, c: Ctx): Promise<Reply> {
  const { method: m, path: p } = c;
  const vm = inv.findVm(st, p);
  if (vm) return m === 'GET' ? { body: inv.vmInfo(st, vm) } : noRoute(c);
  const list = inv.findVm(st, p.replace(/\/snapshots$/, ''));
  if (list && p.endsWith('/snapshots')) {
    if (m === 'GET') return snaps.list(st, list);
    if (m === 'POST') return snaps.create(st, list, c);
    return noRoute(c);
  }
  const s = snaps.find(st, p);
  if (s && m === 'GET') return snaps.detail(s);
  if (s && m === 'DELETE') return snaps.remove(st, s);
  if (/\/snapshots\/[^/]+$/.test(p)) fail(404, ERR.snapshotNotFound, `The snapshot ${p} does not exist.`);
  return fail(404, ERR.vmNotFound, `The VM ${p} does not exist.`);
}

function volumeRoutes(st: FcState, cfg: Config, c: Ctx): Reply {
  const { method: m, path: p } = c;
  const mm = new RegExp(`^(${SITE_URI}/volumes/[^/]+)(/getcbt|/backupresources(?:/([^/]+))?)?$`).exec(p) ?? noRoute(c);
  const v = inv.volumeByUri(st, mm[1]!);
  const [sub, id] = [mm[2], mm[3]];
  if (!sub) return m === 'GET' ? inv.volumeInfo(v) : noRoute(c);
  if (sub === '/getcbt') return m === 'POST' ? getCbt(st, v, c) : noRoute(c);
  if (!id) return m === 'POST' ? br.create(st, v, c, cfg.data()) : noRoute(c);
  if (m === 'GET') return br.query(st, v, id, cfg.data());
  if (m === 'PUT') return br.modify(st, v, id, c);
  if (m === 'DELETE') return br.release(st, v, id);
  return noRoute(c);
}
