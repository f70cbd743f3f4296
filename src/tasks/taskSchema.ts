/**
 * JSON Schema (draft-07) of a task file: one VM sync for any platform. docs/task.schema.json
 * is generated from it (`npm run docs`); docs/tasks.md explains it.
 */
const secretRef = {
  password: { type: 'string', minLength: 1, description: 'The secret itself. Prefer passwordFile or passwordEnv.' },
  passwordFile: { type: 'string', minLength: 1, description: 'File holding the secret (trailing newline ignored).' },
  passwordEnv: { type: 'string', minLength: 1, description: 'Environment variable holding the secret.' },
} as const;

const oneSecret = {
  oneOf: [{ required: ['password'] }, { required: ['passwordFile'] }, { required: ['passwordEnv'] }],
} as const;

/** The branch of a platform: disks are ids or labels, a connection with one secret is required. */
function platform(name: string, required: string[], connection: Record<string, object>) {
  return {
    if: { properties: { platform: { const: name } } },
    then: {
      required: ['connection'],
      properties: {
        disks: { items: { type: 'string', minLength: 1 } },
        connection: { additionalProperties: false, required, properties: { ...connection, ...secretRef }, ...oneSecret },
      },
    },
  };
}

export const TASK_SCHEMA = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'hamal-task-v1',
  title: 'hamal task',
  type: 'object',
  additionalProperties: false,
  required: ['version', 'source'],
  properties: {
    $schema: { type: 'string' },
    version: { const: 1, description: 'Task format version.' },
    name: { type: 'string', description: 'Shown in logs and progress.' },
    source: {
      type: 'object',
      additionalProperties: false,
      required: ['platform', 'vm'],
      properties: {
        platform: { enum: ['local', 'vmware', 'openstack_ceph', 'fusion_compute', 'libvirt'] },
        vm: { type: 'string', minLength: 1, description: 'VM name, or an id the platform knows (moref, UUID, server id).' },
        disks: {
          type: 'array',
          description: 'local: the disk images. Other platforms: ids or labels of the disks to sync (all when absent).',
        },
        connection: { type: 'object', description: 'How to reach the platform; its fields depend on the platform.' },
      },
      allOf: [
        {
          if: { properties: { platform: { const: 'local' } } },
          then: {
            required: ['disks'],
            not: { required: ['connection'] },
            properties: {
              disks: {
                minItems: 1,
                items: {
                  type: 'object',
                  additionalProperties: false,
                  required: ['path'],
                  properties: {
                    id: { type: 'string', minLength: 1, description: 'Disk id in the repository; the file name when absent.' },
                    path: { type: 'string', minLength: 1, description: 'Raw image file or block device.' },
                  },
                },
              },
            },
          },
        },
        platform('vmware', ['host', 'username'], {
          host: { type: 'string', minLength: 1, description: 'vCenter or ESXi host name or address.' },
          port: { type: 'integer', minimum: 1, maximum: 65535 },
          username: { type: 'string', minLength: 1 },
          thumbprint: { type: 'string', pattern: '^([0-9A-Fa-f]{2}:){19,31}[0-9A-Fa-f]{2}$', description: 'SHA-1 or SHA-256 certificate thumbprint to pin.' },
          caFile: { type: 'string', minLength: 1, description: 'CA bundle (PEM) that signs the server certificate.' },
          transport: { enum: ['nbd', 'https'], description: 'How disk data is read.' },
          quiesce: { type: 'boolean', description: 'Quiesce the guest file systems for the snapshot (needs VMware Tools); default false, a crash-consistent snapshot.' },
        }),
        platform('openstack_ceph', ['authUrl', 'cephConf', 'cephUser', 'keyringFile'], {
          authUrl: { type: 'string', pattern: '^https?://', description: 'Keystone v3, e.g. https://keystone:5000/v3.' },
          username: { type: 'string', description: 'With projectName: password authentication (the secret is the password).' },
          userDomainName: { type: 'string', description: 'Default: Default.' },
          projectName: { type: 'string' },
          projectDomainName: { type: 'string', description: 'Default: Default.' },
          applicationCredentialId: { type: 'string', description: 'Instead of username: an application credential (the secret is its secret).' },
          region: { type: 'string', description: 'Catalog region of Nova and Cinder; the first one when absent.' },
          interface: { enum: ['public', 'internal', 'admin'], description: 'Catalog interface; default public.' },
          caFile: { type: 'string', description: 'CA bundle (PEM) of the OpenStack APIs.' },
          cephConf: { type: 'string', description: 'ceph.conf of the cluster behind Cinder/Nova.' },
          cephUser: { type: 'string', description: 'Ceph client name, e.g. client.hamal.' },
          keyringFile: { type: 'string', description: "That client's keyring (the key never goes on a command line)." },
        }),
        platform('fusion_compute', ['url', 'username'], {
          url: { type: 'string', pattern: '^https?://', description: 'FusionCompute VRM, e.g. https://vrm:7443.' },
          username: { type: 'string', minLength: 1 },
          caFile: { type: 'string', description: 'CA bundle (PEM) of the VRM and the data channels.' },
          thumbprint: { type: 'string', description: 'Not supported for FusionCompute yet: give caFile.' },
          transfer: { enum: ['lanssl', 'lan'], description: 'Data channel: lanssl (TLS, verified; default) or lan (plain).' },
        }),
        {
          if: { properties: { platform: { const: 'libvirt' } } },
          then: {
            required: ['connection'],
            properties: {
              disks: { items: { type: 'string', minLength: 1 } },
              connection: {
                additionalProperties: false,
                required: ['uri'],
                properties: {
                  uri: { type: 'string', pattern: '^[a-z0-9+]+://', description: 'libvirt URI of this host: qemu:///system (remote URIs are refused: the backup is read on the host it runs on).' },
                  username: { type: 'string', minLength: 1, description: 'SASL user (qemu+tls, qemu+tcp), with a password.' },
                  ...secretRef,
                },
                // No secret (a local socket, ssh keys), or one.
                not: { anyOf: [{ required: ['password', 'passwordFile'] }, { required: ['password', 'passwordEnv'] }, { required: ['passwordFile', 'passwordEnv'] }] },
              },
            },
          },
        },
      ],
    },
    target: { type: 'string', minLength: 1, description: 'Repository URL; [hamal] target when absent.' },
    full: {
      type: 'boolean',
      description:
        'Read every disk in full instead of the changes since its last version (as after a change tracking reset; VMware asks for one after some CBT fixes). In a scheduled task, every run is full. Default false.',
    },
    schedule: {
      description: 'Service mode, task files in tasks.d: when the task runs. Without it the file runs once. `hamal sync` ignores it.',
      oneOf: [
        { type: 'object', additionalProperties: false, required: ['every'], properties: { every: { type: 'integer', minimum: 1, description: 'Seconds between two starts.' } } },
        { type: 'object', additionalProperties: false, required: ['cron'], properties: { cron: { type: 'string', minLength: 9, description: 'Cron expression (5 fields, or 6 with seconds first), local time.' } } },
      ],
    },
    options: {
      type: 'object',
      additionalProperties: false,
      properties: {
        readers: { type: 'integer', minimum: 1, maximum: 1024, description: 'Reads per disk at once (pre_disk_readers_count).' },
        writers: { type: 'integer', minimum: 1, maximum: 64, description: 'Chunk writes per disk at once.' },
        parallelDisks: { type: 'integer', minimum: 1, maximum: 1024, description: 'Disks synced at once (parallel_sync_disks_count).' },
        blockSizeMb: { type: 'integer', minimum: 1, maximum: 64, description: 'Block size of a repository created by this task.' },
      },
    },
  },
} as const;
