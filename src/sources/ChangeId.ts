/**
 * A platform's opaque token for "the state of this disk at that snapshot": a VMware CBT
 * changeId, a Ceph RBD snapshot name, a FusionCompute CBT change id. Passing it back to
 * the source asks what changed since then. `null` means the source cannot tell, and every
 * sync of that disk reads all its allocated areas (the local source).
 */
export type ChangeId = string;
