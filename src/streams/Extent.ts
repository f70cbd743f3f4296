/**
 * A byte range of a disk that a source reports as possibly holding data (full sync) or as
 * possibly changed since a ChangeId (incremental). Offsets and lengths are bytes; a
 * source may over-report (a superset is safe, it costs reads) but must never under-report.
 */
export interface Extent {
  readonly offset: number;
  readonly length: number;
}
