// What an operator monitors: the alert rules and the dashboard under deploy/ checked by
// promtool (Debian package prometheus), their metric names against what hamal declares,
// and a live /metrics of a real `hamal serve` (standalone, one task file) linted by
// promtool, with the per-VM time of the last success surviving a restart.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { Metrics } from '../src/service/Metrics.ts';
import { freePort, serveProcess, until } from './helpers/serveProcess.ts';
import { MiB, pattern, tempDir } from './helpers/disks.ts';
import { REPO_ROOT } from './helpers/repoRoot.ts';

const deploy = join(REPO_ROOT, 'deploy');

function promtool(args: string[], o: { cwd?: string; input?: string } = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile('promtool', args, { cwd: o.cwd }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
    );
    if (o.input !== undefined) child.stdin!.end(o.input);
  });
}

test.before(() => {
  // scripts/test installs it; a missing promtool is a broken CI machine, not a reason to skip.
  assert.ok(['/usr/bin/promtool', '/usr/local/bin/promtool'].some((p) => existsSync(p)), 'promtool (Debian package prometheus) is not installed');
});

test('the alert rules pass promtool check and their unit tests (each alert fires when it should, not before)', async () => {
  const check = await promtool(['check', 'rules', join(deploy, 'prometheus', 'hamal-alerts.yml')]);
  assert.is(check.code, 0, check.out);
  const unit = await promtool(['test', 'rules', 'hamal-alerts.test.yml'], { cwd: join(deploy, 'prometheus') });
  assert.is(unit.code, 0, unit.out);
  assert.match(unit.out, 'SUCCESS');
});

test('every hamal_* series the rules and the dashboard use is one hamal declares', async () => {
  const declared = new Set(new Metrics().names().flatMap((n) => [n, `${n}_bucket`, `${n}_sum`, `${n}_count`]));
  const rules = parseYaml(await fsp.readFile(join(deploy, 'prometheus', 'hamal-alerts.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ expr: string }> }> };
  const dashboard = JSON.parse(await fsp.readFile(join(deploy, 'grafana', 'hamal-dashboard.json'), 'utf8')) as {
    panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
    templating: { list: Array<{ definition: string }> };
  };
  const exprs = [
    ...rules.groups.flatMap((g) => g.rules.map((r) => r.expr)),
    ...dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)),
    ...dashboard.templating.list.map((v) => v.definition),
  ];
  const used = new Set(exprs.flatMap((e) => e.match(/\bhamal_[a-z_]+/g) ?? []));
  assert.ok(used.size >= 10, [...used].join());
  for (const name of used) assert.ok(declared.has(name), `${name} is not a series hamal exports`);
  // What the issue asks an operator can alert on is there.
  for (const name of ['hamal_vm_last_success_timestamp_seconds', 'hamal_outbox_results', 'hamal_heartbeat_last_success_timestamp_seconds', 'hamal_task_duration_seconds_bucket']) {
    assert.ok(used.has(name), `${name} is neither alerted on nor graphed`);
  }
  // Each dashboard expression parses as PromQL: promtool checks them as a rule file.
  const asRules = { groups: [{ name: 'dashboard', rules: dashboard.panels.flatMap((p, i) => p.targets.map((t, j) => ({ record: `dashboard:panel${i}:${j}`, expr: t.expr.replace(/\$instance/g, '.*') }))) }] };
  const dir = await tempDir();
  try {
    await fsp.writeFile(join(dir, 'dashboard-rules.yml'), JSON.stringify(asRules));
    const check = await promtool(['check', 'rules', join(dir, 'dashboard-rules.yml')]);
    assert.is(check.code, 0, check.out);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test('a live /metrics passes promtool check metrics; the last success of a VM and the task histogram are there, and the last success survives a restart', async () => {
  const dir = await tempDir('hamal-monitoring-');
  try {
    const disk = join(dir, 'web.img');
    await fsp.writeFile(disk, pattern(2 * MiB, 21));
    await fsp.mkdir(join(dir, 'tasks.d'));
    await fsp.writeFile(
      join(dir, 'tasks.d', 'web.json'),
      JSON.stringify({ version: 1, source: { platform: 'local', vm: 'web', disks: [{ id: 'root', path: disk }] }, target: join(dir, 'repo') }),
    );
    const port = await freePort();
    const conf = join(dir, 'hamal.conf');
    await fsp.writeFile(
      conf,
      `[DEFAULT]\nhamal_lib_dir = ${dir}/lib\nhamal_info_path = ${dir}/lib/hamal_info\n[period]\ninterval = 1\n[hamal]\nlog_dir = ${dir}/log\ntasks_dir = ${dir}/tasks.d\nhealth_listen = 127.0.0.1:${port}\n`,
    );
    const metrics = () => fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
    const lastSuccess = (text: string) => /^hamal_vm_last_success_timestamp_seconds\{vm="web"\} (\S+)$/m.exec(text)?.[1];

    const s = serveProcess(conf);
    let first: string;
    try {
      const text = await until('a success of web in /metrics', async () => {
        const t = await metrics().catch(() => '');
        return lastSuccess(t) ? t : undefined;
      });
      first = lastSuccess(text)!;
      assert.ok(Math.abs(Number(first) - Date.now() / 1000) < 120, first);
      assert.match(text, /^hamal_task_duration_seconds_bucket\{outcome="succeeded",le="60"\} 1$/m);
      assert.match(text, /^hamal_task_duration_seconds_count\{outcome="succeeded"\} 1$/m);
      assert.match(text, /^hamal_outbox_results 0$/m);
      assert.match(text, /^hamal_tasks_total\{outcome="failed"\} 0$/m, 'every outcome from 0: the first failure is an increase');
      assert.not.match(text, /^hamal_heartbeat_last_success_timestamp_seconds /m, 'standalone: no heartbeats, no heartbeat gauge to alert on');
      assert.match(text, /^hamal_proxy_info\{mode="standalone",proxy="[^"]+",version="[^"]+"\} 1$/m);
      const lint = await promtool(['check', 'metrics'], { input: text });
      assert.is(lint.code, 0, lint.out);
    } catch (err) {
      s.child.kill('SIGTERM');
      await s.exited;
      throw new Error(`${(err as Error).message}\n${s.output().slice(-3000)}`);
    }
    s.child.kill('SIGTERM');
    assert.is(await s.exited, 0);

    // The task file has no schedule and ran: the next start runs nothing, yet keeps the time.
    const again = serveProcess(conf);
    try {
      const text = await until('/metrics after the restart', () => metrics().catch(() => undefined));
      assert.is(lastSuccess(text), first, 'the last success of web survives the restart');
      assert.match(text, /^hamal_tasks_total\{outcome="succeeded"\} 0$/m);
    } catch (err) {
      again.child.kill('SIGTERM');
      await again.exited;
      throw new Error(`${(err as Error).message}\n${again.output().slice(-3000)}`);
    }
    again.child.kill('SIGTERM');
    assert.is(await again.exited, 0);
    assert.is(((await fsp.stat(join(dir, 'lib', 'service', 'last_success.json'))).mode & 0o777).toString(8), '600');
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test.run();
