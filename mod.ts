/**
 * hamal as a library: build and run the stream graph inside another tool.
 *
 * ```ts
 * import { LocalSource, FsStore, Repository, runVmSync, restoreDisk } from 'hamal';
 * const repo = await Repository.open(await FsStore.open('/backup', { create: true }), { create: true });
 * const source = new LocalSource({ vms: { web: [{ id: 'root', path: '/dev/vg0/web' }] } });
 * const result = await runVmSync(source, 'web', repo, { parallelDisks: 2 });
 * ```
 * `syncVm` is the same graph as an Observable of SyncEvents, for progress and cancellation:
 * its `signal` option makes it error once the snapshot and lock are released; after an
 * unsubscription, `releasesSettled()` tells when they are (docs/embedding.md).
 */
export { HamalError, UsageError, IntegrityError, NotFoundError, describeError } from './src/errors.ts';
export type { HamalErrorOptions } from './src/errors.ts';

// The stream graph
export type { Extent } from './src/streams/Extent.ts';
export type { BlockRef } from './src/streams/BlockRef.ts';
export { toBlocks } from './src/streams/toBlocks.ts';
export { Slots } from './src/streams/Slots.ts';
export { syncDisk, type DiskSyncOptions } from './src/streams/syncDisk.ts';
export { syncVm, type VmSyncOptions } from './src/streams/syncVm.ts';
export { runVmSync, type VmSyncResult } from './src/streams/runVmSync.ts';
export { releasesSettled } from './src/streams/usingResource.ts';
export { restoreDisk, type RestoreOptions, type RestoreResult } from './src/streams/restoreDisk.ts';
export type { SyncEvent } from './src/streams/SyncEvent.ts';

// Sources
export type { Source, Snapshot, SnapshotOptions, DiskInfo } from './src/sources/Source.ts';
export type { ChangeId } from './src/sources/ChangeId.ts';
export { LocalSource, type LocalSourceOptions } from './src/sources/local/LocalSource.ts';
export { parseLocalDisk, type LocalDisk } from './src/sources/local/LocalDisk.ts';
export { VmwareSource, type VmwareSourceOptions } from './src/sources/vmware/VmwareSource.ts';
export type { VsphereOptions } from './src/sources/vmware/VsphereClient.ts';
export { OpenStackSource, type OpenStackSourceOptions } from './src/sources/openstack/OpenStackSource.ts';
export type { KeystoneOptions, KeystoneCredentials } from './src/sources/openstack/Keystone.ts';
export type { CephAccess } from './src/ceph/Rbd.ts';
export { FusionComputeSource, type FusionComputeSourceOptions } from './src/sources/fusion_compute/FusionComputeSource.ts';
export type { FcClientOptions } from './src/sources/fusion_compute/FcClient.ts';
export { LibvirtSource, type LibvirtSourceOptions } from './src/sources/libvirt/LibvirtSource.ts';

// Sinks and the repository
export type { ObjectStore, PutOptions, GetOptions } from './src/sinks/ObjectStore.ts';
export { FsStore, type FsStoreOptions } from './src/sinks/fs/FsStore.ts';
export { openStore, type OpenStoreOptions } from './src/sinks/openStore.ts';
export { S3Store, type S3StoreOptions } from './src/sinks/s3/S3Store.ts';
export { parseS3Target, type S3Target, type S3Config } from './src/sinks/s3/S3Target.ts';
export { RawImage, type RawImageOptions } from './src/sinks/raw/RawImage.ts';
export { Repository, DEFAULT_BLOCK_SIZE, type RepositoryOptions, type RepositoryConfig } from './src/repo/Repository.ts';
export type { Encryption, Compression } from './src/repo/ChunkCodec.ts';
export type { RepositorySecret, KeyRecord } from './src/repo/MasterKey.ts';
export { RepositoryLock, type LockOptions } from './src/repo/RepositoryLock.ts';
export { LeaseFence, type Lease } from './src/repo/Lease.ts';
export { pruneRepository, type PruneOptions, type PruneReport } from './src/repo/pruneRepository.ts';
export { verifyRepository, type VerifyOptions, type VerifyProblem, type VerifyReport } from './src/repo/verifyRepository.ts';
export type { Manifest, VersionStats } from './src/repo/Manifest.ts';
export { chunkIdOf, type ChunkId } from './src/repo/ChunkId.ts';
/** Threads that hash and seal chunks, for the whole process: `HashWorkers.configure(n)` before the first sync (0 = one per core, at most 4). */
export { HashWorkers, HASH_THREADS } from './src/repo/HashWorkers.ts';
export type { VersionId } from './src/repo/VersionId.ts';

export { VERSION } from './src/version.ts';
