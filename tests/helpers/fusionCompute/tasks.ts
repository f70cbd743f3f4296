// Tasks. eSDK TaskResourceImpl.queryTask: GET {taskUri} -> TaskInfo {urn, uri, type,
// entityUrn, entityName, startTime, finishTime, user, status waiting|running|success|failed|
// cancelling, progress 0..100, reason, reasonDes, cancelable, cancelled}. nova taskops
// .wait_task_done polls until success, or failed and reads reasonDes; the Go SDK task.Task
// has the same fields.
import { ERR, fail, type Reply } from './http.ts';
import type { FcState } from './state.ts';

export function query(st: FcState, id: string): Reply {
  const t = st.tasks.get(id) ?? fail(404, ERR.taskNotFound, `The task ${id} does not exist.`);
  const { status, progress } = st.pollTask(t);
  const done = status === 'success' || status === 'failed';
  return {
    body: {
      urn: t.urn,
      uri: t.uri,
      type: t.type,
      entityUrn: t.entityUrn,
      entityName: '',
      startTime: t.startTime,
      ...(done ? { finishTime: String(st.now()) } : {}),
      user: 'admin',
      status,
      progress,
      ...(status === 'failed' ? { reason: t.fail!.reason, reasonDes: t.fail!.reasonDes } : {}),
      cancelable: false,
      cancelled: false,
    },
  };
}
