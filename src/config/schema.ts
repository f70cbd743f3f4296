import type { ConfigKey, ConfigSection } from './ConfigKey.ts';

const bool = (value: boolean, status: ConfigKey['status'], doc: string) => ({
  type: { kind: 'bool' } as const,
  default: value ? 'True' : 'False',
  status,
  doc,
});

type IntUnit = Extract<ConfigKey['type'], { kind: 'int' }>['unit'];
const int = (value: number, min: number, max: number, unit: IntUnit, status: ConfigKey['status'], doc: string) => ({
  type: { kind: 'int' as const, min, max, unit },
  default: String(value),
  status,
  doc,
});

/** The seed's sections and keys (never renamed), then hamal's own `[hamal]` section. */
export const SCHEMA = {
  DEFAULT: {
    debug: bool(false, 'used', 'Log at debug level (everything, including each block of a sync) and print stack traces with errors. Wins over `verbose`.'),
    verbose: bool(false, 'used', 'Log at verbose level: one line per disk phase and per version, more than the default info level.'),
    log_rotation_type: {
      type: { kind: 'enum', values: ['size', 'time'] },
      default: 'size',
      status: 'used',
      doc: 'How the log files of `serve` (and per-VM logs) rotate: `size` when a file reaches `max_logfile_size_mb`; `time` daily, and at that size too. Rotated files are `name.1` (newest) to `name.N`.',
    },
    max_logfile_count: int(10, 1, 1000, 'files', 'used', 'Rotated files kept beside each live log file; older ones are deleted.'),
    max_logfile_size_mb: int(64, 1, 10240, 'MB', 'used', 'Size at which a log file is rotated.'),
    hamal_lib_dir: {
      type: { kind: 'path' },
      default: '/var/lib/hamal/',
      status: 'used',
      doc: "hamal's data directory on the proxy: the journals of syncs in progress live under it.",
    },
    hamal_info_path: {
      type: { kind: 'path' },
      default: '/var/lib/hamal/hamal_info',
      status: 'used',
      doc: '`serve` writes its proxy id, version, pid, mode, start time and state (starting, running, stopping, stopped) here as JSON, replaced atomically at each change.',
    },
  },
  period: {
    interval: int(60, 1, 86400, 'seconds', 'used', 'Seconds between two polls for tasks (the control plane, or tasks.d in standalone mode). A poll still running when the next is due is not doubled.'),
    task_update_wait_time: int(1, 1, 3600, 'seconds', 'used', 'Seconds between two progress reports of a running task to the control plane.'),
    openstack_release_cpu_time: int(0, 0, 10000, 'ms per MB', 'used', 'Pause in milliseconds after each MB read from OpenStack/Ceph, to leave CPU to others; 0 = off.'),
    vmware_release_cpu_time: int(0, 0, 10000, 'ms per MB', 'used', 'Pause in milliseconds after each MB read from VMware; 0 = off.'),
  },
  mass: {
    mass_endpoint: {
      type: { kind: 'url', schemes: ['https', 'http'], optional: true },
      default: '',
      status: 'used',
      doc: 'Base URL of the control plane ("Mass", docs/control-plane.md). Empty: standalone mode, `serve` runs the task files of `[hamal] tasks_dir`.',
    },
    auth_key: {
      type: { kind: 'string' },
      default: '',
      secret: true,
      status: 'used',
      doc: 'Key that authenticates the proxy to the control plane (a bearer token on every request). A secret: never printed or logged (`config check` shows it masked). Required with `mass_endpoint`.',
    },
    hyper_exporter_id: {
      type: { kind: 'string' },
      default: '',
      status: 'used',
      doc: "This proxy's id at the control plane; tasks must be addressed to it. Empty: the host name.",
    },
    public_key_path: {
      type: { kind: 'path' },
      default: '/etc/hamal/public_key',
      status: 'used',
      doc: "The control plane's Ed25519 public key (PEM) that verifies every task's signature; a task that does not verify is rejected and reported, never run.",
    },
    default_request_timeout: int(600, 1, 86400, 'seconds', 'used', 'Timeout of one request to the control plane, and of one vSphere call.'),
    enable_get_public_ips: bool(false, 'used', 'Ask the endpoints of `[hamal] public_ip_endpoints` for the public IP of the proxy (every 10 minutes) and report it in heartbeats.'),
    get_public_ip_timeout: int(5, 1, 300, 'seconds', 'used', 'Timeout of one public-IP request.'),
    enable_heartbeat_msg: bool(true, 'used', 'Send heartbeats to the control plane every `[hamal] heartbeat_interval` seconds.'),
  },
  vmware: {
    skip_disk_flag: bool(false, 'used', 'True: sync every disk, skipping the flag-disk check. False: a disk smaller than `disk_flag_size` MB is a marker disk, not data, and is not synced (logged as a warning). Our reading of the seed.'),
    disk_flag_size: int(48, 0, 1048576, 'MB', 'used', 'Disks smaller than this are flag disks (see `skip_disk_flag`).'),
    max_read_blocks: int(1024, 1, 65536, 'blocks', 'used', 'Largest read request to VMware, in 512-byte sectors (1024 = 512 KiB); a block is read in several requests when larger.'),
  },
  openstack_ceph: {
    skip_disk_flag: bool(false, 'used', 'As in `[vmware]`, for OpenStack volumes and ephemeral disks.'),
    disk_flag_size: int(48, 0, 1048576, 'MB', 'used', 'As in `[vmware]`, for OpenStack volumes and ephemeral disks.'),
    volumes_pool: {
      type: { kind: 'string' },
      default: 'volumes',
      status: 'used',
      doc: "hamal's own key: the Ceph pool of Cinder volumes (`volume-<id>`), used when Cinder does not tell the RBD image of a volume (its attachment's connection_info, usually admin-only).",
    },
    vms_pool: {
      type: { kind: 'string' },
      default: 'vms',
      status: 'used',
      doc: "hamal's own key: the Ceph pool of Nova ephemeral disks (`<server id>_disk`), the root disk of a server booted from an image.",
    },
  },
  sync: {
    save_local_snapshot_metadata: bool(false, 'used', "After each VM sync, write the VM's metadata (platform, hardware, NICs and guest IPs where the source knows them, the snapshot, each disk and its new version) to `hamal_lib_dir/metadata/<vm>/<time>.json`."),
    upload_metadata_to_oss: bool(false, 'used', 'After each VM sync, store the same metadata in the repository beside its versions, as `vms/<vm>/metadata/<time>.json`.'),
  },
  data_sync_v2: {
    fsync_period_frequency: int(3, 1, 3600, 'seconds', 'used', 'Seconds between two checkpoints of the journal of a sync in progress (fsync): a killed sync resumes from the last one.'),
    fsync_timeout: int(0, 0, 3600, 'seconds', 'used', 'Longest one checkpoint may take before the sync fails cleanly; 0 = no limit.'),
    parallel_sync_disks_count: int(4, 1, 1024, 'disks', 'used', 'Disks of one VM synced at once. At most `max_parallel_sync_disks_count`.'),
    pre_disk_readers_count: int(2, 1, 1024, 'threads', 'used', 'Reads of one disk at once; each holds one block in memory. At most `max_pre_disk_readers_count`.'),
    max_parallel_sync_disks_count: int(16, 1, 1024, 'disks', 'used', 'Upper bound for `parallel_sync_disks_count`.'),
    max_pre_disk_readers_count: int(16, 1, 1024, 'threads', 'used', 'Upper bound for `pre_disk_readers_count`.'),
  },
  fusion_compute: {
    task_timeout: int(3600, 1, 604800, 'seconds', 'used', 'Longest a whole FusionCompute VM sync may take, and longest wait for one FusionCompute task (data channels); past it the sync stops cleanly and its snapshot is deleted.'),
    create_snap_task_timeout: int(3600, 1, 604800, 'seconds', 'used', 'Longest wait for a FusionCompute snapshot to be created; past it the sync fails and the snapshot is deleted (or swept by the next run).'),
    delete_snap_task_timeout: int(3600, 1, 604800, 'seconds', 'used', 'Longest wait for a FusionCompute snapshot to be deleted.'),
    local_host_ip: {
      type: { kind: 'ip', optional: true },
      default: '',
      status: 'used',
      doc: "The proxy's IP given to FusionCompute when a data channel is opened; empty = the local address of the route to FusionCompute.",
    },
    max_socket_connections_per_host: int(8, 1, 256, 'connections', 'used', 'Connections open to one FusionCompute data-channel host at once, over every disk and task of the proxy.'),
    max_writer_num: int(10, 1, 256, 'threads', 'used', 'Chunk writes per disk of FusionCompute syncs: replaces `[hamal] writers_per_disk` for them (a task\'s own `writers` still wins).'),
    parallel_volumes: int(1, 1, 64, 'disks', 'used', "Volumes of one FusionCompute VM read at once (hamal's key). The disks of a VM share one data channel port in the public evidence, so one at a time; each volume's channel is released when it is done."),
    data_channel_command: {
      type: { kind: 'string' },
      default: '',
      status: 'used',
      doc: "hamal's key. Command that serves one FusionCompute volume snapshot read-only over NBD on {socket} from its data channel, e.g. a program built on Huawei's backup SDK; empty: hamal's built-in HTTP reader (unverified against a real VRM, docs/fusion_compute.md). Placeholders: {socket} {host} {port} {resource_url} {target_file} {transfer} {size} {token_file} (a 0600 file holding the token, never on a command line) {ca_file} (a 0600 file holding the channel's CA, empty for lan).",
    },
  },
  hamal: {
    log_dir: {
      type: { kind: 'path' },
      default: '/var/log/hamal',
      status: 'used',
      doc: "Directory of the log files (the seed's `/var/log/hamal`): `hamal-period.log` (the service), `hamal-period-subprocess.log` (stderr of child processes), `vm-<name>_Agent-<uuid>.log` (one per VM), `ip_mapping.backup` (each VM's NICs and IPs as last reported). `sync` writes the per-VM log here too when the directory is writable.",
    },
    tasks_dir: {
      type: { kind: 'path' },
      default: '/etc/hamal/tasks.d',
      status: 'used',
      doc: 'Standalone mode (no `mass_endpoint`): `serve` runs the task files (`*.json`, docs/tasks.md, with a `schedule`) of this directory, read again at each poll.',
    },
    heartbeat_interval: int(30, 1, 3600, 'seconds', 'used', 'Seconds between two heartbeats to the control plane.'),
    max_running_tasks: int(2, 1, 256, undefined, 'used', 'Tasks (VM syncs) `serve` runs at once; the others wait. Memory: this x parallel_sync_disks_count x (pre_disk_readers_count + writers_per_disk) x block size.'),
    partial_index_interval: int(60, 0, 86400, 'seconds', 'used', 'Seconds between two partial indexes of a version in progress written to the repository (`vms/<vm>/disks/<disk>/partial`): another proxy, or this one after its lib dir was lost, resumes the version from it without re-storing finished blocks; prune keeps their chunks. 0 = none. Cost: one PUT of 36 bytes per block stored so far.'),
    max_running_disks: int(8, 1, 1024, 'disks', 'used', 'Disks `serve` syncs at once over all its tasks; each task also keeps to parallel_sync_disks_count. Bounds memory and the load on the platform.'),
    health_listen: {
      type: { kind: 'string' },
      default: '127.0.0.1:9477',
      status: 'used',
      doc: '`serve` answers `/healthz` and `/metrics` (Prometheus) on this address; empty: off.',
    },
    public_ip_endpoints: {
      type: { kind: 'string' },
      default: 'https://api.ipify.org,https://ifconfig.me/ip',
      status: 'used',
      doc: 'Comma-separated URLs that answer the caller\'s public IP as text (with `enable_get_public_ips`).',
    },
    target: {
      type: { kind: 'string' },
      default: '',
      status: 'used',
      doc: 'Default target repository URL (`file:///path` or a directory) when a command or task gives none.',
    },
    encryption: {
      type: { kind: 'enum', values: ['none', 'aes-256-gcm'] },
      default: 'none',
      status: 'used',
      doc: 'Chunk encryption of a repository a first sync creates (`hamal init --encryption` chooses it explicitly). An existing repository keeps what it was created with. Needs `passphrase_file`, `key_file` or HAMAL_PASSPHRASE.',
    },
    compression: {
      type: { kind: 'enum', values: ['none', 'zstd'] },
      default: 'none',
      status: 'used',
      doc: 'Chunk compression (zstd level 3) of a repository a first sync creates; blocks that do not shrink by 3% are stored as they are.',
    },
    passphrase_file: {
      type: { kind: 'string' },
      default: '',
      status: 'used',
      doc: 'File holding the passphrase of encrypted repositories (first line). The environment variable HAMAL_PASSPHRASE wins over it. Keep the file mode 0600.',
    },
    key_file: {
      type: { kind: 'string' },
      default: '',
      status: 'used',
      doc: 'Key file (its bytes, e.g. 32 random bytes) that opens encrypted repositories instead of a passphrase.',
    },
    hash_threads: int(0, 0, 16, 'threads', 'used', "hamal's key. Threads that hash chunks (SHA-256, HMAC names of encrypted repositories), compress and decompress them (zstd) and seal or open them (AES-256-GCM), beside the one that drives the syncs; 0 = one per core, at most 4. Lower it to leave cores to the platform's own work on a shared host; more threads than cores only queue. A thread that has run zstd keeps about 17 MiB for it (4 MiB blocks) until it ends, 10 s after its last job."),
    writers_per_disk: int(4, 1, 64, 'threads', 'used', 'Chunk writes of one disk at once; each holds one block. Past 4-8 per target the latency of each write grows faster than throughput.'),
    patch_changed_below: int(50, 0, 100, 'percent', 'used', "hamal's key. An incremental sync reads from the source only the changed parts of a block whose changes cover less than this share of it, and writes them over the block's chunk of the previous version, read back (and verified) from the repository; a block whose chunk cannot be read is read whole. Cost: one chunk read from the repository per such block, against the rest of the block not read from the platform: lower it when the repository is far and the platform near. A full sync likewise reads only a block's allocated parts, except one asked for (--full) or forced by a change tracking fault, which reads touched blocks whole. 0 = always read whole blocks."),
    block_size_mb: int(4, 1, 64, 'MB', 'used', 'Block size of a repository created by a sync; an existing repository keeps its own. Memory per block in flight.'),
    local_release_cpu_time: int(0, 0, 10000, 'ms per MB', 'used', 'Pause in milliseconds after each MB read by the local source, as `vmware_release_cpu_time` does for VMware; 0 = off.'),
    restore_concurrency: int(4, 1, 64, 'threads', 'used', 'Chunks fetched and written at once by a restore; each holds one block.'),
    export_cache_mb: int(256, 8, 65536, 'MB', 'used', 'Chunk cache of `hamal export` (docs/export.md), least recently used blocks evicted first; `--cache-mib` wins. Memory: this, plus 4 blocks being fetched and up to 64 MiB of replies per connected client; at least two blocks are cached whatever it says.'),
    vmware_nbdkit_command: {
      type: { kind: 'string' },
      default: '',
      status: 'used',
      doc: 'Command that serves one VMware disk of one snapshot over NBD for the `nbd` transport; empty: `nbdkit vddk` with VDDK in /opt/vmware-vix-disklib-distrib (which the operator installs). Placeholders: {socket} {server} {user} {password_file} (a 0600 file; the password is never on a command line) {thumbprint} {moref} {snapshot} {file} {datastore} {path}.',
    },
    lock_ttl: int(120, 10, 86400, 'seconds', 'used', 'Life of a repository lock (syncs: shared, prune: exclusive) without renewal; holders renew every third of it. A crashed holder blocks prune or syncs at most this long plus `lock_clock_skew`.'),
    lock_clock_skew: int(60, 0, 3600, 'seconds', 'used', 'How far the clocks of proxies sharing a repository may differ; a lock counts as held this much past its expiry.'),
  },
  s3: {
    endpoint: {
      type: { kind: 'url', schemes: ['https', 'http'], optional: true },
      default: '',
      status: 'used',
      doc: 'S3 endpoint of `s3://` targets (Ceph RGW, MinIO, OSS, OBS); empty: AWS, or AWS_ENDPOINT_URL. An `endpoint=` in the target URL wins.',
    },
    region: { type: { kind: 'string' }, default: '', status: 'used', doc: 'Region; empty: AWS_REGION, else us-east-1. A `region=` in the target URL wins.' },
    path_style: {
      type: { kind: 'enum', values: ['auto', 'true', 'false'] },
      default: 'auto',
      status: 'used',
      doc: 'Path-style addressing (`endpoint/bucket/key`); auto: on with a custom endpoint, off for AWS. A `path_style=` in the target URL wins.',
    },
    access_key_id: { type: { kind: 'string' }, default: '', status: 'used', doc: "Access key; empty: the SDK's default chain (AWS_ACCESS_KEY_ID, shared files). Never taken from the target URL." },
    secret_access_key: { type: { kind: 'string' }, default: '', secret: true, status: 'used', doc: 'Secret key, with `access_key_id`. A secret: never printed or logged.' },
    session_token: { type: { kind: 'string' }, default: '', secret: true, status: 'used', doc: 'Session token for temporary credentials. A secret.' },
    max_sockets: int(16, 1, 1024, 'connections', 'used', 'Connections to the endpoint at once (keep-alive).'),
    retry_mode: { type: { kind: 'enum', values: ['standard', 'adaptive'] }, default: 'standard', status: 'used', doc: "The SDK's retry strategy on 5xx, SlowDown and connection resets; adaptive also slows the client down when throttled." },
    max_attempts: int(5, 1, 100, undefined, 'used', 'Attempts per request, the first included.'),
    part_size_mb: int(8, 5, 5120, 'MB', 'used', 'Objects larger than this go up as multipart uploads in parts of this size. Memory: queue_size x part size per large object.'),
    queue_size: int(4, 1, 64, undefined, 'used', 'Parts of one multipart upload in flight.'),
    ca_file: { type: { kind: 'string' }, default: '', status: 'used', doc: 'PEM bundle that signs the endpoint certificate, for private CAs. TLS is always verified.' },
  },
} satisfies Record<string, ConfigSection>;

type ValueOf<K> = K extends { type: { kind: 'bool' } } ? boolean : K extends { type: { kind: 'int' } } ? number : string;

/** The loaded configuration: every section and key of SCHEMA, typed, defaults filled in. */
export type HamalConfig = {
  -readonly [S in keyof typeof SCHEMA]: { -readonly [K in keyof (typeof SCHEMA)[S]]: ValueOf<(typeof SCHEMA)[S][K]> };
};
