import { log } from './Logger.ts';
import { oneLine } from './oneLine.ts';

let fileSink: ((line: string) => void) | undefined;

/** Service mode sends child processes' stderr to `hamal-period-subprocess.log`; otherwise it is debug output. */
export function setSubprocessSink(sink: ((line: string) => void) | undefined): void {
  fileSink = sink;
}

/** A child's stderr, line by line, tagged with the child's name and pid; redacted and escaped (a \r, an ESC) like every log line. */
export function subprocessOutput(name: string, pid: number | undefined): (chunk: Buffer | string) => void {
  let rest = '';
  return (chunk) => {
    const text = rest + chunk.toString();
    const lines = text.split('\n');
    rest = lines.pop()!.slice(-4096);
    for (const l of lines) {
      if (!l.trim()) continue;
      const line = `${new Date().toISOString()} [${name}:${pid ?? '?'}] ${l}`;
      if (fileSink) fileSink(oneLine(log.redact(line)));
      else log.child(name).debug(l);
    }
  };
}
