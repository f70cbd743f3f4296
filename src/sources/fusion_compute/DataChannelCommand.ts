import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { HamalError } from '../../errors.ts';
import { NbdServerProcess } from '../nbd/NbdServerProcess.ts';
import { expandCommand } from '../nbd/commandTemplate.ts';
import type { ChannelInfo } from './BackupResource.ts';
import type { VolumeReader } from './DataChannel.ts';

const KEY = '[fusion_compute] data_channel_command';

/**
 * A volume snapshot read through an operator's program (`[fusion_compute]
 * data_channel_command`), e.g. one built on Huawei's backup SDK, which serves it read-only
 * over NBD on `{socket}` from the channel's parameters: {host} {port} {resource_url}
 * {target_file} {transfer} {size} (bytes), {token_file} (a 0600 file holding the token: it
 * is never on a command line) and {ca_file} (a 0600 file holding the channel's CA PEM,
 * empty for `lan`). The files live in a private 0700 directory removed when the export stops.
 */
export class DataChannelCommand implements VolumeReader {
  private constructor(private readonly _server: NbdServerProcess) {}

  static async start(template: string, info: ChannelInfo, o: { transfer: string; size: number; ca?: string; workDir: string; maxRequestBytes: number; volume: string }): Promise<DataChannelCommand> {
    const dir = await NbdServerProcess.privateDir(o.workDir, 'fc-channel');
    const socket = join(dir, 'nbd.sock');
    const tokenFile = join(dir, 'token');
    const caFile = join(dir, 'ca.pem');
    try {
      await fsp.writeFile(tokenFile, info.token, { mode: 0o600 });
      await fsp.writeFile(caFile, o.ca ?? '', { mode: 0o600 });
      const argv = expandCommand(
        template,
        {
          socket,
          host: info.hostIP,
          port: String(info.hostPort),
          resource_url: info.resourceUrl,
          target_file: info.targetFile ?? '',
          transfer: o.transfer,
          size: String(o.size),
          token_file: tokenFile,
          ca_file: caFile,
        },
        KEY,
      );
      const server = await NbdServerProcess.start(argv, dir, socket, `volume ${o.volume}`, o.maxRequestBytes);
      // An export of another size is not this volume: reading it would store wrong data.
      if (server.client.size !== o.size) {
        await server.stop();
        throw new HamalError('FC_DATA_CHANNEL', `${KEY} served ${server.client.size} bytes for volume ${o.volume}, whose capacity is ${o.size}`, { subject: o.volume });
      }
      return new DataChannelCommand(server);
    } catch (err) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  read(offset: number, length: number, into: Buffer): Promise<Buffer> {
    return this._server.client.read(offset, length, into);
  }

  close(): Promise<void> {
    return this._server.stop();
  }
}
