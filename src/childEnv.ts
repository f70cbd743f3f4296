/**
 * The environment of a child process (rbd, qemu-img, qemu-nbd, nbdkit, the tool probes of
 * `doctor`): an allow-list, never hamal's whole environment, which holds the repository
 * passphrase (HAMAL_PASSPHRASE, HAMAL_NEW_PASSPHRASE), AWS credentials and whatever the
 * operator's shell exported. What a child gets is what any program needs to run: where
 * programs are (PATH), a home (HOME), the locale (LANG, LANGUAGE, LC_*), the time zone (TZ)
 * and where temporary files go (TMPDIR). The rest travels on the command line or in files:
 * Ceph's conf and keyring are paths in the arguments, so CEPH_CONF and CEPH_ARGS are not
 * passed (they would add to, or override, what hamal chose). Systemd's LISTEN_FDS is not
 * passed either: nbdkit would take it for socket activation.
 */
export interface ChildEnvOptions {
  /**
   * More names passed on from hamal's environment when set: what one program documents it
   * reads (e.g. LD_LIBRARY_PATH for nbdkit's vddk plugin). Never a secret's name. @default []
   */
  pass?: readonly string[];
  /** Values hamal sets for this child alone; they win over the passed ones. @default {} */
  set?: Readonly<Record<string, string>>;
}

const BASE = ['PATH', 'HOME', 'LANG', 'LANGUAGE', 'TZ', 'TMPDIR'];
/** LC_ALL, LC_CTYPE, LC_MESSAGES, ...: upper-case names only, as glibc reads them. */
const LOCALE = /^LC_[A-Z]+$/;

/** The environment for one child; `from` is hamal's own (tests pass another). */
export function childEnv(options: ChildEnvOptions = {}, from: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  const names = new Set([...BASE, ...(options.pass ?? [])]);
  for (const [name, value] of Object.entries(from)) {
    if (value !== undefined && (names.has(name) || LOCALE.test(name))) out[name] = value;
  }
  return { ...out, ...options.set };
}
