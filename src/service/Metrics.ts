/**
 * Counters and gauges of the service, rendered in the Prometheus text format (0.0.4) for
 * `/metrics`. Hand-written: a dozen series do not justify a client library.
 */
export class Metrics {
  private readonly _series = new Map<string, { help: string; type: 'counter' | 'gauge'; values: Map<string, number> }>();

  constructor() {
    this.declare('hamal_tasks_total', 'counter', 'Tasks ended, by outcome.');
    this.declare('hamal_task_duration_seconds_sum', 'counter', 'Seconds spent in tasks, by outcome.');
    this.declare('hamal_tasks_running', 'gauge', 'Tasks running now.');
    this.declare('hamal_read_bytes_total', 'counter', 'Bytes read from sources, by VM.');
    this.declare('hamal_stored_bytes_total', 'counter', 'Bytes stored into repositories, by VM.');
    this.declare('hamal_report_retries_total', 'counter', 'Reports to the control plane sent again after a failure.');
    this.declare('hamal_heartbeat_failures_total', 'counter', 'Heartbeats the control plane did not take.');
    this.declare('hamal_poll_failures_total', 'counter', 'Task polls that failed.');
    this.declare('hamal_leases_lost_total', 'counter', 'Task leases lost to another proxy (refused renewal, or none for a whole ttl); the task stopped here.');
    this.declare('hamal_errors_total', 'counter', 'Errors, by code.');
  }

  declare(name: string, type: 'counter' | 'gauge', help: string): void {
    this._series.set(name, { help, type, values: new Map() });
  }

  add(name: string, value = 1, labels: Record<string, string> = {}): void {
    const s = this._series.get(name);
    if (!s) throw new Error(`metric ${name} is not declared`);
    const key = labelText(labels);
    s.values.set(key, (s.values.get(key) ?? 0) + value);
  }

  set(name: string, value: number, labels: Record<string, string> = {}): void {
    this._series.get(name)?.values.set(labelText(labels), value);
  }

  render(): string {
    let out = '';
    for (const [name, s] of this._series) {
      out += `# HELP ${name} ${s.help}\n# TYPE ${name} ${s.type}\n`;
      if (!s.values.size) out += `${name} 0\n`;
      for (const [labels, v] of s.values) out += `${name}${labels} ${v}\n`;
    }
    return out;
  }
}

function labelText(labels: Record<string, string>): string {
  const keys = Object.keys(labels).sort();
  if (!keys.length) return '';
  return `{${keys.map((k) => `${k}="${labels[k]!.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
}
