/**
 * Counters, gauges and histograms of the service, rendered in the Prometheus text format
 * (0.0.4) for `/metrics`. Hand-written: a dozen series do not justify a client library.
 * Every name is listed in docs/service.md (Metrics); deploy/prometheus and deploy/grafana
 * use them, and a test checks that each name they use is declared here.
 */
export class Metrics {
  private readonly _series = new Map<string, Series>();

  constructor() {
    this.declare('hamal_proxy_info', 'gauge', 'Always 1; labels: version, proxy, mode.', { labelled: true });
    this.declare('hamal_proxy_start_time_seconds', 'gauge', 'When this serve process started (Unix time).');
    this.declare('hamal_tasks_total', 'counter', 'Tasks ended, by outcome.');
    this.declare('hamal_task_duration_seconds', 'histogram', 'How long tasks ran, by outcome.', { buckets: TASK_SECONDS });
    this.declare('hamal_tasks_running', 'gauge', 'Tasks running now.');
    this.declare('hamal_vm_last_success_timestamp_seconds', 'gauge', 'When a task of each VM last succeeded (Unix time); kept across restarts.', { labelled: true });
    this.declare('hamal_read_bytes_total', 'counter', 'Bytes read from sources, by VM.');
    this.declare('hamal_stored_bytes_total', 'counter', 'Bytes of new chunks stored into repositories, by VM.');
    this.declare('hamal_outbox_results', 'gauge', 'Results waiting for delivery to the control plane.');
    this.declare('hamal_report_retries_total', 'counter', 'Reports to the control plane sent again after a failure.');
    this.declare('hamal_heartbeat_last_success_timestamp_seconds', 'gauge', 'When the control plane last took a heartbeat (Unix time); 0: none yet; absent: heartbeats off.', { labelled: true });
    this.declare('hamal_heartbeat_failures_total', 'counter', 'Heartbeats the control plane did not take.');
    this.declare('hamal_poll_failures_total', 'counter', 'Task polls that failed.');
    this.declare('hamal_leases_lost_total', 'counter', 'Task leases lost to another proxy (refused renewal, or none for a whole ttl); the task stopped here.');
    this.declare('hamal_errors_total', 'counter', 'Errors, by code.');
    // Each outcome from 0, so the first failure after a start is an increase alerts see.
    for (const outcome of ['succeeded', 'failed', 'interrupted', 'rejected']) this.add('hamal_tasks_total', 0, { outcome });
  }

  /**
   * `buckets`: a histogram's upper bounds, ascending (+Inf is added). `labelled`: a series
   * that only exists per label set (nothing is shown before the first value; others show 0).
   */
  declare(name: string, type: Series['type'], help: string, o: { buckets?: readonly number[]; labelled?: boolean } = {}): void {
    this._series.set(name, { help, type, buckets: o.buckets ?? [], labelled: o.labelled ?? type === 'histogram', values: new Map() });
  }

  /** The names declared, for the checks of what deploy/ refers to. */
  names(): string[] {
    return [...this._series.keys()];
  }

  add(name: string, value = 1, labels: Record<string, string> = {}): void {
    const s = this._get(name, 'counter');
    const key = labelText(labels);
    s.values.set(key, ((s.values.get(key) as number | undefined) ?? 0) + value);
  }

  set(name: string, value: number, labels: Record<string, string> = {}): void {
    this._get(name, 'gauge').values.set(labelText(labels), value);
  }

  observe(name: string, value: number, labels: Record<string, string> = {}): void {
    const s = this._get(name, 'histogram');
    const key = labelText(labels);
    let h = s.values.get(key) as Histogram | undefined;
    if (!h) s.values.set(key, (h = { counts: s.buckets.map(() => 0), sum: 0, count: 0 }));
    s.buckets.forEach((le, i) => (h!.counts[i]! += value <= le ? 1 : 0));
    h.sum += value;
    h.count++;
  }

  render(): string {
    let out = '';
    for (const [name, s] of this._series) {
      out += `# HELP ${name} ${s.help}\n# TYPE ${name} ${s.type}\n`;
      if (s.type === 'histogram') out += renderHistogram(name, s);
      else if (!s.values.size) out += s.labelled ? '' : `${name} 0\n`;
      else for (const [labels, v] of s.values) out += `${name}${labels} ${v as number}\n`;
    }
    return out;
  }

  private _get(name: string, type: Series['type']): Series {
    const s = this._series.get(name);
    if (!s) throw new Error(`metric ${name} is not declared`);
    if (s.type !== type) throw new Error(`metric ${name} is a ${s.type}, not a ${type}`);
    return s;
  }
}

interface Histogram {
  counts: number[];
  sum: number;
  count: number;
}

interface Series {
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  buckets: readonly number[];
  labelled: boolean;
  values: Map<string, number | Histogram>;
}

/** Task durations: a minute to a day (a first full sync of a large VM takes hours). */
const TASK_SECONDS = [60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400];

function renderHistogram(name: string, s: Series): string {
  let out = '';
  for (const [labels, v] of s.values) {
    const h = v as Histogram;
    const inner = labels.slice(1, -1);
    const withLe = (le: string) => `{${inner ? `${inner},` : ''}le="${le}"}`;
    s.buckets.forEach((le, i) => (out += `${name}_bucket${withLe(String(le))} ${h.counts[i]}\n`));
    out += `${name}_bucket${withLe('+Inf')} ${h.count}\n${name}_sum${labels} ${h.sum}\n${name}_count${labels} ${h.count}\n`;
  }
  return out;
}

function labelText(labels: Record<string, string>): string {
  const keys = Object.keys(labels).sort();
  if (!keys.length) return '';
  return `{${keys.map((k) => `${k}="${labels[k]!.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
}
