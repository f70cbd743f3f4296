import { LocalSource } from '../sources/local/LocalSource.ts';
import type { KeystoneCredentials } from '../sources/openstack/Keystone.ts';
import type { Source } from '../sources/Source.ts';
import { parseLocalDisk } from '../sources/local/LocalDisk.ts';
import { openStore } from '../sinks/openStore.ts';
import { Repository } from '../repo/Repository.ts';
import type { Lease } from '../repo/Lease.ts';
import type { Compression, Encryption } from '../repo/ChunkCodec.ts';
import { newRepositorySecret, repositorySecret } from '../config/repositorySecret.ts';
import { runVmSync, type VmSyncResult } from '../streams/runVmSync.ts';
import type { SyncEvent } from '../streams/SyncEvent.ts';
import { HamalError, UsageError } from '../errors.ts';
import type { LoadedConfig } from '../config/loadConfig.ts';
import { log } from '../log/Logger.ts';
import { resolveSecret } from './resolveSecret.ts';
import type { Task } from './Task.ts';
import type { Slots } from '../streams/Slots.ts';

/** What a command line may override in a task; the rest comes from the task, then hamal.conf. */
export interface TaskOverrides {
  target?: string;
  readers?: number;
  writers?: number;
  parallelDisks?: number;
  blockSize?: number;
  /** Read every disk in full (`hamal sync --full`), whatever the task says. */
  full?: boolean;
}

export interface ExecuteOptions {
  /** Names the task in errors: its file, or its id at the control plane. */
  label: string;
  overrides?: TaskOverrides;
  onEvent?: (e: SyncEvent) => void;
  /** Aborting stops reading, releases the snapshot and the lock, and rejects. */
  signal?: AbortSignal;
  /** Disk slots shared by every task of the process (serve: `[hamal] max_running_disks`). */
  diskSlots?: Slots;
  /** The control plane's lease of this task: the repository fences older holders off. */
  lease?: Lease;
}


/**
 * Runs one task: builds the source it names and the repository it targets, with the caps
 * of hamal.conf (bounded by their max_* keys), and syncs the VM. Shared by `hamal sync`
 * and the service.
 */
export async function executeTask(task: Task, config: LoadedConfig, options: ExecuteOptions): Promise<VmSyncResult & { target: string }> {
  const o = options.overrides ?? {};
  const c = config.values;
  const { source, disks, releaseCpuMsPerMb } = await taskSource(task, options.label, config);
  const target = o.target ?? task.target ?? (c.hamal.target || undefined);
  if (!target) throw new UsageError('USAGE', `no target for ${options.label}: give --target, a "target" in the task, or [hamal] target in hamal.conf`);
  const readers = o.readers ?? task.options?.readers ?? c.data_sync_v2.pre_disk_readers_count;
  if (readers > c.data_sync_v2.max_pre_disk_readers_count) {
    throw new UsageError('USAGE', `readers ${readers} exceeds max_pre_disk_readers_count (${c.data_sync_v2.max_pre_disk_readers_count})`);
  }
  const parallelDisks = o.parallelDisks ?? task.options?.parallelDisks ?? c.data_sync_v2.parallel_sync_disks_count;
  if (parallelDisks > c.data_sync_v2.max_parallel_sync_disks_count) {
    throw new UsageError('USAGE', `parallel disks ${parallelDisks} exceeds max_parallel_sync_disks_count (${c.data_sync_v2.max_parallel_sync_disks_count})`);
  }
  // FusionCompute tasks take their writers from [fusion_compute] max_writer_num.
  const writers = o.writers ?? task.options?.writers ?? (task.source.platform === 'fusion_compute' ? c.fusion_compute.max_writer_num : c.hamal.writers_per_disk);
  const blockSize = o.blockSize ?? (task.options?.blockSizeMb ?? c.hamal.block_size_mb) * 1024 * 1024;

  const store = await openStore(target, { create: true, config: c });
  try {
    const repo = await Repository.open(store, {
      create: true,
      blockSize,
      encryption: c.hamal.encryption as Encryption,
      compression: c.hamal.compression as Compression,
      secret: () => repositorySecret(c),
      newSecret: () => newRepositorySecret(c),
      requireEncryption: c.hamal.encryption !== 'none',
    });
    log.child('sync').info(`syncing ${source.platform} VM ${task.source.vm} to ${store.location}`, { readers, writers, parallelDisks });
    // A FusionCompute task as a whole is bounded by [fusion_compute] task_timeout.
    const limit = task.source.platform === 'fusion_compute' ? AbortSignal.timeout(c.fusion_compute.task_timeout * 1000) : undefined;
    const signal = limit ? (options.signal ? AbortSignal.any([options.signal, limit]) : limit) : options.signal;
    const result = await runVmSync(
      source,
      task.source.vm,
      repo,
      {
        readers,
        writers,
        parallelDisks,
        full: o.full === true || task.full === true,
        patchBelow: c.hamal.patch_changed_below / 100,
        journalDir: c.DEFAULT.hamal_lib_dir,
        checkpointSeconds: c.data_sync_v2.fsync_period_frequency,
        partialIndexSeconds: c.hamal.partial_index_interval,
        lease: options.lease,
        checkpointTimeoutSeconds: c.data_sync_v2.fsync_timeout,
        releaseCpuMsPerMb,
        disks,
        diskSlots: options.diskSlots,
        lock: { ttlSeconds: c.hamal.lock_ttl, clockSkewSeconds: c.hamal.lock_clock_skew },
        metadata: {
          upload: c.sync.upload_metadata_to_oss,
          localDir: c.sync.save_local_snapshot_metadata ? c.DEFAULT.hamal_lib_dir : undefined,
        },
      },
      options.onEvent ?? (() => {}),
      signal,
    ).catch((err) => {
      if (limit?.aborted && !options.signal?.aborted) {
        throw new HamalError('FC_TASK_TIMEOUT', `${options.label} did not finish within [fusion_compute] task_timeout (${c.fusion_compute.task_timeout} s)`, { subject: 'task_timeout', cause: err });
      }
      throw err;
    });
    return { ...result, target: store.location };
  } finally {
    await store.close();
  }
}

/** The source a task names, with its disk selection and the throttle of its platform. */
async function taskSource(task: Task, label: string, config: LoadedConfig): Promise<{ source: Source; disks?: string[]; releaseCpuMsPerMb: number }> {
  const c = config.values;
  const src = task.source;
  if (src.platform === 'local') {
    const disks = (src.disks ?? []) as Array<{ id?: string; path: string }>;
    const local = disks.map((d) => (d.id ? { id: d.id, path: d.path } : parseLocalDisk(d.path)));
    return { source: new LocalSource({ vms: { [src.vm]: local } }), releaseCpuMsPerMb: c.hamal.local_release_cpu_time };
  }
  if (src.platform === 'vmware') {
    const conn = src.connection as { host: string; port?: number; username: string; thumbprint?: string; caFile?: string; transport?: string; quiesce?: boolean };
    const password = await resolveSecret(src.connection!, label);
    // Platform code (soap, ...) loads only for tasks that need it.
    const { VmwareSource } = await import('../sources/vmware/VmwareSource.ts');
    return {
      source: new VmwareSource({
        connection: { url: `https://${conn.host}${conn.port ? `:${conn.port}` : ''}/sdk`, username: conn.username, password, thumbprint: conn.thumbprint, caFile: conn.caFile, timeoutMs: c.mass.default_request_timeout * 1000 },
        skipDiskFlag: c.vmware.skip_disk_flag,
        diskFlagSizeMb: c.vmware.disk_flag_size,
        maxReadBytes: c.vmware.max_read_blocks * 512,
        transport: conn.transport === 'nbd' ? 'nbd' : 'https',
        quiesce: conn.quiesce === true,
        nbdkitTemplate: c.hamal.vmware_nbdkit_command || undefined,
        workDir: c.DEFAULT.hamal_lib_dir,
      }),
      disks: src.disks as string[] | undefined,
      releaseCpuMsPerMb: c.period.vmware_release_cpu_time,
    };
  }
  if (src.platform === 'openstack_ceph') {
    const conn = src.connection as {
      authUrl: string;
      username?: string;
      userDomainName?: string;
      projectName?: string;
      projectDomainName?: string;
      applicationCredentialId?: string;
      region?: string;
      interface?: 'public' | 'internal' | 'admin';
      caFile?: string;
      cephConf: string;
      cephUser: string;
      keyringFile: string;
    };
    const secret = await resolveSecret(src.connection!, label);
    let credentials: KeystoneCredentials;
    if (conn.applicationCredentialId) credentials = { kind: 'application_credential', id: conn.applicationCredentialId, secret };
    else if (conn.username && conn.projectName) {
      credentials = { kind: 'password', username: conn.username, userDomainName: conn.userDomainName, projectName: conn.projectName, projectDomainName: conn.projectDomainName, password: secret };
    } else {
      throw new UsageError('TASK_INVALID', `${label}: source.connection needs applicationCredentialId, or username and projectName`, { subject: 'source.connection' });
    }
    const { OpenStackSource } = await import('../sources/openstack/OpenStackSource.ts');
    return {
      source: new OpenStackSource({
        keystone: { authUrl: conn.authUrl, credentials, region: conn.region, interface: conn.interface },
        caFile: conn.caFile,
        ceph: { conf: conn.cephConf, user: conn.cephUser, keyring: conn.keyringFile, timeoutMs: c.mass.default_request_timeout * 1000 },
        volumesPool: c.openstack_ceph.volumes_pool,
        vmsPool: c.openstack_ceph.vms_pool,
        skipDiskFlag: c.openstack_ceph.skip_disk_flag,
        diskFlagSizeMb: c.openstack_ceph.disk_flag_size,
        readers: Math.max(task.options?.readers ?? c.data_sync_v2.pre_disk_readers_count, 1),
        workDir: c.DEFAULT.hamal_lib_dir,
        timeoutMs: c.mass.default_request_timeout * 1000,
      }),
      disks: src.disks as string[] | undefined,
      releaseCpuMsPerMb: c.period.openstack_release_cpu_time,
    };
  }
  if (src.platform === 'fusion_compute') {
    const conn = src.connection as { url: string; username: string; caFile?: string; thumbprint?: string; transfer?: 'lanssl' | 'lan' };
    if (conn.thumbprint) {
      throw new UsageError('TASK_INVALID', `${label}: source.connection.thumbprint is not supported for FusionCompute yet; give caFile (the CA or the certificate itself)`, {
        subject: 'source.connection.thumbprint',
      });
    }
    const password = await resolveSecret(src.connection!, label);
    const f = c.fusion_compute;
    const { FusionComputeSource } = await import('../sources/fusion_compute/FusionComputeSource.ts');
    return {
      source: new FusionComputeSource({
        client: { url: conn.url, username: conn.username, password, caFile: conn.caFile, timeoutMs: c.mass.default_request_timeout * 1000 },
        localHostIp: f.local_host_ip || undefined,
        transfer: conn.transfer ?? 'lanssl',
        maxConnectionsPerHost: f.max_socket_connections_per_host,
        createSnapTimeoutMs: f.create_snap_task_timeout * 1000,
        deleteSnapTimeoutMs: f.delete_snap_task_timeout * 1000,
        taskTimeoutMs: f.task_timeout * 1000,
        parallelVolumes: f.parallel_volumes,
        dataChannelCommand: f.data_channel_command || undefined,
        dataCaFile: conn.caFile,
        workDir: c.DEFAULT.hamal_lib_dir,
      }),
      disks: src.disks as string[] | undefined,
      releaseCpuMsPerMb: 0,
    };
  }
  if (src.platform === 'libvirt') {
    const conn = src.connection as { uri: string; username?: string; password?: string; passwordFile?: string; passwordEnv?: string };
    const password = conn.password || conn.passwordFile || conn.passwordEnv ? await resolveSecret(src.connection!, label) : undefined;
    const { LibvirtSource } = await import('../sources/libvirt/LibvirtSource.ts');
    return {
      source: new LibvirtSource({ connection: { uri: conn.uri, username: conn.username, password }, workDir: c.DEFAULT.hamal_lib_dir }),
      disks: src.disks as string[] | undefined,
      releaseCpuMsPerMb: 0,
    };
  }
  throw new HamalError('PLATFORM_UNAVAILABLE', `${label}: platform ${src.platform} is not available in this build of hamal`, {
    subject: 'source.platform',
  });
}

