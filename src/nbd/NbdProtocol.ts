/**
 * Numbers of the NBD protocol (NetworkBlockDevice/nbd, doc/proto.md) that hamal's client
 * (NbdClient) and its export server (src/export) speak: fixed newstyle negotiation,
 * structured replies, `base:allocation`.
 * All fields go big-endian on the wire.
 */

// ---- handshake
export const NBDMAGIC = Buffer.from('NBDMAGIC');
/** 'IHAVEOPT': the server's second greeting magic and the client's option magic. */
export const IHAVEOPT = Buffer.from('IHAVEOPT');
/** Magic of every option reply (64 bits). */
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;

/** Handshake flags (server, 16 bits). */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
/** Client flags (32 bits): any other bit set means a client we cannot talk to. */
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

/** Options. */
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;

/** Option reply types; errors have bit 31 set. */
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
const ERR = 2 ** 31;
export const REP_ERR_UNSUP = ERR + 1;
export const REP_ERR_POLICY = ERR + 2;
export const REP_ERR_INVALID = ERR + 3;
export const REP_ERR_TLS_REQD = ERR + 5;
export const REP_ERR_UNKNOWN = ERR + 6;
export const REP_ERR_SHUTDOWN = ERR + 7;
export const REP_ERR_TOO_BIG = ERR + 9;

/** NBD_REP_INFO types. */
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

/** Transmission flags (16 bits, sent with the export's size). */
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_CACHE = 1 << 10;

// ---- transmission
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
/** Request header: magic, flags, type, cookie, offset, length. */
export const REQUEST_BYTES = 28;

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

/** Command flags. */
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;

/** Structured reply flags and types. */
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = 2 ** 15 + 1;
export const REPLY_TYPE_ERROR_OFFSET = 2 ** 15 + 2;

/** base:allocation extent flags. */
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;
export const BASE_ALLOCATION = 'base:allocation';

/** Error values of replies. */
export const EPERM = 1;
export const EIO = 5;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ESHUTDOWN = 108;

/** Strings (names, messages) must be no longer than this. */
export const MAX_STRING = 4096;
/** The largest read or write payload the spec asks every server to take: 2^25. */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
