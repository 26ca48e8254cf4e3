//! The baseline's (device, inode, ctime) set, for an in-kernel allow-list
//! (docs/baseline.md, "The identity export"): a file the kernel side can
//! load without parsing JSON.
//!
//! Little-endian: the magic `MTBLID01`, the record count (u64), then one
//! 32-byte record per module file, sorted: dev major (u32), dev minor
//! (u32), inode (u64), ctime seconds (i64), ctime nanoseconds (u32), zero
//! (u32).
use super::Baseline;

pub(super) const MAGIC: &[u8; 8] = b"MTBLID01";
pub(super) const RECORD_LEN: usize = 32;

pub fn export_ids(baseline: &Baseline) -> Vec<u8> {
    let mut ids: Vec<(u32, u32, u64, i64, u32)> = baseline
        .files
        .iter()
        .map(|f| {
            (
                f.dev_major,
                f.dev_minor,
                f.inode,
                f.ctime.sec,
                u32::try_from(f.ctime.nsec).unwrap_or(0),
            )
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::with_capacity(16 + ids.len() * RECORD_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for (major, minor, inode, sec, nsec) in ids {
        out.extend_from_slice(&major.to_le_bytes());
        out.extend_from_slice(&minor.to_le_bytes());
        out.extend_from_slice(&inode.to_le_bytes());
        out.extend_from_slice(&sec.to_le_bytes());
        out.extend_from_slice(&nsec.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out
}
