//! Backups: a directory holding a consistent copy of every data partition, how it is written,
//! verified and restored into the data directories of a new cluster.
//!
//! # Layout (format version 2)
//! ```text
//! DIR/
//!   partition-0000000000000001.snap   the partition's snapshot file (crate::snapshot format)
//!   partition-0000000000000002.snap
//!   ...
//!   manifest.json                     written last: a directory without it is incomplete
//! ```
//! `manifest.json` names the format (`"format": "corum-backup"`, `"version": 2`), the backup's
//! id (`backup_id`, 16 hex digits: a JSON string, so JSON readers that hold numbers as doubles
//! do not round it), when and from which cluster map the backup was taken (its epoch and slot ranges: which partition owns
//! which keys), and per partition its file, length, applied index and term, revision, key
//! count, the crc32c of the whole file, and the crc32c of every [`CHUNK_BYTES`] chunk of it,
//! so a corrupted byte is located to its chunk (`verify` names the file and the offset).
//!
//! # Consistency
//! Each partition's copy is taken by its leader at a linearizable point (`Op::Backup`): it
//! holds every write acknowledged before `corum ctl backup` started and none that was not
//! committed. Partitions are copied one after another, so the backup is consistent per
//! partition, not at one instant across partitions (that needs the cluster-wide revision of
//! issue 16). The meta group (partition 0) is not copied: a restored cluster bootstraps its
//! own map, which must split the slots the same way (same `partitions` count).
//!
//! # Restore
//! [`restore`] writes, into an empty data directory, a snapshot file for every partition the
//! node hosts in the new cluster's bootstrap placement, with that placement's voters as its
//! Raft membership. Every replica gets the same file, so every replica starts from the same
//! state at the same index; the partition elects a leader as after any restart. The node is
//! then started with `corum serve` and the same configuration.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::NodeConfig;
use crate::meta::{initial_placement, MetaMap};
use crate::server::convert;
use crate::snapshot::{self, SnapshotError, SnapshotFileError};
use crate::state_machine::Config as SmConfig;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// `format` of a manifest.
pub const FORMAT: &str = "corum-backup";
/// The manifest format version this build writes. It also reads version 1 (no `backup_id`,
/// or the id as a JSON number: manifests written before version 2).
pub const VERSION: u32 = 2;
/// Bytes covered by one chunk checksum of a partition file.
pub const CHUNK_BYTES: usize = 64 << 10;

/// One partition in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestPartition {
    /// The partition.
    pub partition: u64,
    /// Its file, relative to the backup directory.
    pub file: String,
    /// The file's length.
    pub bytes: u64,
    /// crc32c of the whole file.
    pub crc32c: u32,
    /// crc32c of each [`CHUNK_BYTES`] chunk, in order (the last may be shorter).
    pub chunk_crc32c: Vec<u32>,
    /// Applied index and term of the copy.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The partition's revision in the copy.
    pub revision: u64,
    /// Keys in the copy.
    pub keys: u64,
}

/// A slot range of the backed-up cluster's map: slots `[start, end)` belong to `partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRange {
    /// First slot.
    pub start: u16,
    /// One past the last.
    pub end: u16,
    /// The partition.
    pub partition: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this build; 1 is read too.
    pub version: u32,
    /// The corum version that wrote it.
    pub corum_version: String,
    /// When the backup started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// When its manifest was written, Unix milliseconds.
    pub finished_unix_ms: u64,
    /// The cluster map epoch the backup was taken with.
    pub map_epoch: u64,
    /// The map's slot ranges.
    pub ranges: Vec<ManifestRange>,
    /// Every data partition of the map, ascending.
    pub partitions: Vec<ManifestPartition>,
    /// Names this backup ([`new_backup_id`]); [`restore`] records it in the node's
    /// [`RESTORED`] file and the restored cluster's bootstrap map records it, so a node
    /// restored from another backup is refused (`crate::meta`, "Restored clusters"). 0 in
    /// manifests written before the field.
    #[serde(default)]
    pub backup_id: BackupId,
}

/// A backup's id: 64 random bits, never 0 for a backup ([`new_backup_id`]); 0 means "no
/// backup" (a manifest or restore record from before ids). Shown and written as 16 hex
/// digits; JSON holds it as a string, since readers such as jq and JavaScript keep numbers as
/// doubles and would round it. Read from either a string or a number (version-1 manifests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(pub u64);

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for BackupId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("backup id {s:?} is not 1 to 16 hexadecimal digits"));
        }
        u64::from_str_radix(s, 16)
            .map(BackupId)
            .map_err(|e| format!("backup id {s:?}: {e}"))
    }
}

impl Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(BackupId(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A new backup's id: 64 bits from the standard library's randomly seeded hasher (the OS's
/// entropy, without another crate), mixed with the time; never 0.
pub fn new_backup_id() -> BackupId {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    BackupId(h.finish().max(1))
}

/// The file [`restore`] leaves in a restored node's data directory: which backup the node
/// came from (JSON: `backup_id`, the backup's `started_unix_ms` and `map_epoch`, and the
/// directory restored from). `corum serve` logs it at start.
pub const RESTORED: &str = "RESTORED";

/// [`RESTORED`]'s content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredFrom {
    /// The manifest's `backup_id` (0: a backup from before backup ids).
    pub backup_id: BackupId,
    /// When the backup started, Unix milliseconds.
    pub started_unix_ms: u64,
    /// The backed-up cluster's map epoch.
    pub map_epoch: u64,
    /// The backup directory restored from.
    pub from: PathBuf,
}

/// The backup `data_dir` was restored from, if it was ([`RESTORED`]).
pub fn restored_from(data_dir: &Path) -> Result<Option<RestoredFrom>, String> {
    let path = data_dir.join(RESTORED);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Why a backup cannot be written, verified or restored. Every variant names the file, and
/// corruption names the byte offset.
#[derive(Debug, Error)]
pub enum BackupError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not a valid manifest of a version this build reads.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A partition file's bytes differ from what the manifest recorded.
    #[error("{path}: {reason} (at byte {offset})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the first bad chunk (or where the file ends).
        offset: u64,
        /// What differs.
        reason: String,
    },
    /// A partition file is not a valid snapshot, or not the one the manifest describes.
    #[error("{path}: {source}")]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset.
        #[source]
        source: SnapshotError,
    },
    /// The file checks out but does not match its manifest entry.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The target cannot take this backup.
    #[error("cannot restore: {0}")]
    Refused(String),
    /// Writing a restored snapshot file failed.
    #[error(transparent)]
    SnapshotFile(#[from] SnapshotFileError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes `dir`'s entries (files created, renamed or removed in it) durable.
fn fsync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// A cluster map's slot ranges as the manifest records them.
pub fn manifest_ranges(ranges: &[wire::SlotRange]) -> Vec<ManifestRange> {
    ranges
        .iter()
        .map(|r| ManifestRange {
            start: r.start,
            end: r.end,
            partition: r.partition,
        })
        .collect()
}

/// The file name of partition `p` in a backup.
pub fn partition_file(p: u64) -> String {
    format!("partition-{p:016x}.snap")
}

/// crc32c of each [`CHUNK_BYTES`] chunk of `data`.
pub fn chunk_checksums(data: &[u8]) -> Vec<u32> {
    data.chunks(CHUNK_BYTES).map(crc32c::crc32c).collect()
}

/// A partition's copy as the client fetched it.
#[derive(Debug, Clone)]
pub struct Copy {
    /// The partition.
    pub partition: u64,
    /// The snapshot file's bytes.
    pub data: Bytes,
}

/// Limits generous enough to decode any snapshot a node wrote (the target's own limits apply
/// at restore): decoding allocates no more than the input justifies whatever they are.
fn verify_config(partition: u64) -> SmConfig {
    SmConfig {
        partition_id: partition,
        sessions_max: usize::MAX,
        session_results_max: usize::MAX,
        history_revisions: u64::MAX,
        history_bytes_max: u64::MAX,
    }
}

/// Writes the partition file of one copy into `dir` (fsynced) and returns its manifest entry.
/// The copy is decoded first: a copy that is not a valid snapshot of `partition` is refused.
pub fn write_partition(dir: &Path, copy: &Copy) -> Result<ManifestPartition, BackupError> {
    let file = partition_file(copy.partition);
    let path = dir.join(&file);
    let decoded =
        snapshot::decode(&copy.data, &verify_config(copy.partition)).map_err(|source| {
            BackupError::Snapshot {
                path: path.clone(),
                source,
            }
        })?;
    if decoded.meta.partition_id != copy.partition {
        return Err(BackupError::Mismatch {
            path,
            reason: format!(
                "the copy asked for partition {} holds partition {}",
                copy.partition, decoded.meta.partition_id
            ),
        });
    }
    let mut f = File::create_new(&path).map_err(io_err("create", &path))?;
    f.write_all(&copy.data).map_err(io_err("write", &path))?;
    f.sync_all().map_err(io_err("fsync", &path))?;
    Ok(ManifestPartition {
        partition: copy.partition,
        file,
        bytes: copy.data.len() as u64,
        crc32c: crc32c::crc32c(&copy.data),
        chunk_crc32c: chunk_checksums(&copy.data),
        index: decoded.meta.applied_index,
        term: decoded.meta.applied_term,
        revision: decoded.meta.revision,
        keys: decoded.state.len() as u64,
    })
}

/// Creates `dir` for a new backup: it must not exist, or be an empty directory.
pub fn create_dir(dir: &Path) -> Result<(), BackupError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "{} is not empty; back up into a new directory",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            // The new directory's entry must survive a crash, like the files in it.
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            fsync_dir(parent)
        }
        Err(e) => Err(io_err("open", dir)(e)),
    }
}

/// Writes `manifest.json` durably (temporary file, fsync, rename, fsync of the directory):
/// the last step of a backup.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<PathBuf, BackupError> {
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!(".{MANIFEST}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&text).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename into place", &path))?;
    fsync_dir(dir)?;
    Ok(path)
}

/// Reads `dir/manifest.json` and checks its own rules (format, version, partitions ascending
/// and distinct, every partition of the ranges present, file names as written).
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST);
    let bad = |reason: String| BackupError::Manifest {
        path: path.clone(),
        reason,
    };
    let text = fs::read(&path).map_err(io_err("read", &path))?;
    // Format and version first, ignoring every other field: a manifest of a later version
    // (with fields this build does not know) is refused by its version, not by a field name.
    #[derive(Deserialize)]
    struct Head {
        format: String,
        version: u32,
    }
    let head: Head = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if head.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT:?}",
            head.format
        )));
    }
    if !(1..=VERSION).contains(&head.version) {
        return Err(bad(format!(
            "version {}; this build reads versions 1 to {VERSION}",
            head.version
        )));
    }
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if !m
        .partitions
        .windows(2)
        .all(|w| w[0].partition < w[1].partition)
    {
        return Err(bad("partitions are not strictly ascending".into()));
    }
    let mut owned: BTreeMap<u64, ()> = BTreeMap::new();
    let mut next_slot = 0u32;
    for r in &m.ranges {
        if u32::from(r.start) != next_slot || r.end <= r.start {
            return Err(bad(format!(
                "slot ranges do not cover the slots in order at {}..{}",
                r.start, r.end
            )));
        }
        next_slot = u32::from(r.end);
        owned.insert(r.partition, ());
    }
    if next_slot != u32::from(wire::SLOT_COUNT) {
        return Err(bad(format!(
            "slot ranges end at {next_slot}, not {}",
            wire::SLOT_COUNT
        )));
    }
    let listed: Vec<u64> = m.partitions.iter().map(|p| p.partition).collect();
    let ranged: Vec<u64> = owned.into_keys().collect();
    if listed != ranged {
        return Err(bad(format!(
            "the ranges name partitions {ranged:?} but the backup holds {listed:?}"
        )));
    }
    for p in &m.partitions {
        if p.file != partition_file(p.partition) {
            return Err(bad(format!(
                "partition {} is in file {:?}, expected {:?}",
                p.partition,
                p.file,
                partition_file(p.partition)
            )));
        }
        let chunks = (p.bytes as usize).div_ceil(CHUNK_BYTES);
        if p.chunk_crc32c.len() != chunks {
            return Err(bad(format!(
                "partition {}: {} chunk checksums for {} bytes (expected {chunks})",
                p.partition,
                p.chunk_crc32c.len(),
                p.bytes
            )));
        }
    }
    Ok(m)
}

/// Reads one partition file and checks it against its manifest entry: length, every chunk's
/// checksum (the first mismatch names its offset), the whole-file checksum, then the snapshot
/// format itself (its own checksums and every rule, naming the offset) and its header against
/// the entry. Returns the decoded snapshot.
pub fn check_partition(
    dir: &Path,
    entry: &ManifestPartition,
    config: &SmConfig,
) -> Result<snapshot::Snapshot, BackupError> {
    let path = dir.join(&entry.file);
    // Only a regular file of the recorded length is read (not a symlink to /dev/zero, a
    // FIFO, or a file grown since).
    let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
    if !meta.file_type().is_file() {
        return Err(BackupError::Mismatch {
            path,
            reason: "not a regular file".into(),
        });
    }
    if meta.len() != entry.bytes {
        return Err(BackupError::Corrupt {
            path,
            offset: meta.len().min(entry.bytes),
            reason: format!(
                "the file is {} bytes, the manifest says {}",
                meta.len(),
                entry.bytes
            ),
        });
    }
    let data = fs::read(&path).map_err(io_err("read", &path))?;
    for (i, (chunk, want)) in data
        .chunks(CHUNK_BYTES)
        .zip(&entry.chunk_crc32c)
        .enumerate()
    {
        let got = crc32c::crc32c(chunk);
        if got != *want {
            return Err(BackupError::Corrupt {
                path,
                offset: (i * CHUNK_BYTES) as u64,
                reason: format!(
                    "bytes {}..{} have crc32c {got:#010x}, the manifest says {want:#010x}",
                    i * CHUNK_BYTES,
                    i * CHUNK_BYTES + chunk.len()
                ),
            });
        }
    }
    if data.len() as u64 != entry.bytes {
        return Err(BackupError::Corrupt {
            path,
            offset: (data.len() as u64).min(entry.bytes),
            reason: format!(
                "the file is {} bytes, the manifest says {}",
                data.len(),
                entry.bytes
            ),
        });
    }
    let crc = crc32c::crc32c(&data);
    if crc != entry.crc32c {
        return Err(BackupError::Corrupt {
            path,
            offset: 0,
            reason: format!(
                "crc32c {crc:#010x}, the manifest says {:#010x}",
                entry.crc32c
            ),
        });
    }
    let snap = snapshot::decode(&data, config).map_err(|source| BackupError::Snapshot {
        path: path.clone(),
        source,
    })?;
    let m = &snap.meta;
    let found = (m.partition_id, m.applied_index, m.applied_term, m.revision);
    let want = (entry.partition, entry.index, entry.term, entry.revision);
    if found != want || snap.state.len() as u64 != entry.keys {
        return Err(BackupError::Mismatch {
            path,
            reason: format!(
                "the snapshot is (partition, index, term, revision) {found:?} with {} keys, \
                 the manifest says {want:?} with {} keys",
                snap.state.len(),
                entry.keys
            ),
        });
    }
    Ok(snap)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Partitions checked.
    pub partitions: usize,
    /// Keys in all of them.
    pub keys: u64,
    /// Bytes of partition files.
    pub bytes: u64,
}

/// Checks a whole backup: the manifest, then every partition file ([`check_partition`]).
/// Stops at the first problem.
pub fn verify(dir: &Path) -> Result<(Manifest, VerifyReport), BackupError> {
    let m = read_manifest(dir)?;
    let mut report = VerifyReport {
        partitions: 0,
        keys: 0,
        bytes: 0,
    };
    for entry in &m.partitions {
        check_partition(dir, entry, &verify_config(entry.partition))?;
        report.partitions += 1;
        report.keys += entry.keys;
        report.bytes += entry.bytes;
    }
    Ok((m, report))
}

/// Checks that a cluster of `config` places keys as the backed-up cluster did: its bootstrap
/// map splits the slots over the partitions exactly as the backup's map.
pub fn check_placement(m: &Manifest, config: &NodeConfig) -> Result<(), BackupError> {
    let target = manifest_ranges(&MetaMap::initial(config).ranges);
    if target != m.ranges {
        return Err(BackupError::Refused(format!(
            "the backup's map splits the slots over {} partitions; this node's configuration \
             (partitions = {}) splits them differently; use partitions = {}",
            m.partitions.len(),
            config.partitions,
            m.partitions.len()
        )));
    }
    Ok(())
}

/// The file `restore` creates in the data directory before writing anything and removes
/// after the last snapshot file is durable: a node refuses to start while it exists
/// ([`check_no_unfinished_restore`]), since partitions whose files are missing would
/// otherwise start empty.
pub const RESTORE_MARKER: &str = "RESTORE_INCOMPLETE";

/// Refuses a data directory that holds an unfinished restore ([`RESTORE_MARKER`]).
pub fn check_no_unfinished_restore(data_dir: &Path) -> Result<(), String> {
    let marker = data_dir.join(RESTORE_MARKER);
    if marker.exists() {
        return Err(format!(
            "{} exists: a `corum restore` into {} did not finish, and partitions without their \
             snapshot file would start empty; remove the directory and restore again",
            marker.display(),
            data_dir.display()
        ));
    }
    Ok(())
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// (partition, shard, the file written), for every partition this node hosts.
    pub written: Vec<(u64, usize, PathBuf)>,
    /// Keys in them.
    pub keys: u64,
    /// The backup's id (the manifest's `backup_id`), recorded in [`RESTORED`].
    pub backup_id: BackupId,
}

/// Restores the backup in `from` into `config.data_dir` (module docs, "Restore"). Refuses a
/// data directory that holds anything, a backup that does not verify, and a target whose
/// bootstrap map splits the slots differently from the backed-up map.
pub fn restore(from: &Path, config: &NodeConfig) -> Result<RestoreReport, BackupError> {
    let m = read_manifest(from)?;
    if let Ok(mut entries) = fs::read_dir(&config.data_dir) {
        if entries.next().is_some() {
            return Err(BackupError::Refused(format!(
                "data directory {} is not empty: restore builds a new node's data directory",
                config.data_dir.display()
            )));
        }
    }
    check_placement(&m, config)?;
    let entries: BTreeMap<u64, &ManifestPartition> =
        m.partitions.iter().map(|p| (p.partition, p)).collect();
    let hosted: Vec<(usize, u64, Vec<u64>)> = (0..config.shards)
        .flat_map(|shard| {
            initial_placement(config, shard)
                .into_iter()
                .map(move |(p, voters)| (shard, p, voters))
        })
        .collect();
    // Every file this node needs is checked before anything is written.
    for (_, p, _) in &hosted {
        let entry = entries
            .get(p)
            .ok_or_else(|| BackupError::Refused(format!("the backup holds no partition {p}")))?;
        check_partition(
            from,
            entry,
            &crate::server::recover::sm_config(*p, &config.tuning),
        )?;
    }
    fs::create_dir_all(&config.data_dir).map_err(io_err("create", &config.data_dir))?;
    let marker = config.data_dir.join(RESTORE_MARKER);
    File::create(&marker)
        .and_then(|f| f.sync_all())
        .map_err(io_err("create", &marker))?;
    fsync_dir(&config.data_dir)?;
    let mut report = RestoreReport {
        written: Vec::new(),
        keys: 0,
        backup_id: m.backup_id,
    };
    for (shard, p, voters) in hosted {
        let dir = crate::server::shard_dir(config, shard).join("snapshots");
        let entry = entries[&p];
        let sm_config = crate::server::recover::sm_config(p, &config.tuning);
        let snap = check_partition(from, entry, &sm_config)?;
        let conf = raftcore::ConfState::with_voters(&voters);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // Every directory on the way (data_dir/shard-i/snapshots) must be durable too.
        for d in [dir.parent().unwrap_or(&dir), &config.data_dir] {
            fsync_dir(d)?;
        }
        let path = snapshot::write_state(&dir, &snap.state, &convert::encode_conf(&conf))?;
        report.keys += entry.keys;
        report.written.push((p, shard, path));
    }
    // Which backup this node came from, durable before the marker goes.
    let restored = config.data_dir.join(RESTORED);
    let record = RestoredFrom {
        backup_id: m.backup_id,
        started_unix_ms: m.started_unix_ms,
        map_epoch: m.map_epoch,
        from: from.to_owned(),
    };
    let json =
        serde_json::to_vec_pretty(&record).map_err(|e| BackupError::Refused(e.to_string()))?;
    File::create(&restored)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .map_err(io_err("write", &restored))?;
    fs::remove_file(&marker).map_err(io_err("remove", &marker))?;
    fsync_dir(&config.data_dir)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::state_machine::StateMachine;

    /// A partition with `keys` keys of 300-byte values, applied at indexes 1..=keys in term 2.
    fn state(partition: u64, keys: u64) -> StateMachine {
        let mut sm = StateMachine::new(SmConfig::new(partition));
        for i in 1..=keys {
            let value = vec![b'a' + (i % 26) as u8; 300];
            sm.apply(i, 2, &Command::put(format!("k{partition}-{i:05}"), value))
                .expect("apply");
        }
        sm
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("corum-backup-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A backup of partitions 1..=n (partition p holds 100 * p keys) in `dir`.
    fn backup(dir: &Path, n: u64) -> Manifest {
        create_dir(dir).expect("create");
        let infos = (1..=n)
            .map(|id| wire::PartitionInfo {
                id,
                replicas: Vec::new(),
                leader_node: 0,
            })
            .collect();
        let map = wire::ClusterMap::uniform(1, infos);
        let partitions = (1..=n)
            .map(|p| {
                let sm = state(p, 100 * p);
                let conf = raftcore::ConfState::with_voters(&[1, 2, 3]);
                let copy = Copy {
                    partition: p,
                    data: snapshot::encode(&sm, &convert::encode_conf(&conf)),
                };
                write_partition(dir, &copy).expect("write partition")
            })
            .collect();
        let m = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            corum_version: "test".into(),
            started_unix_ms: 1,
            finished_unix_ms: 2,
            map_epoch: 1,
            ranges: manifest_ranges(&map.ranges),
            partitions,
            backup_id: new_backup_id(),
        };
        write_manifest(dir, &m).expect("manifest");
        m
    }

    fn node_config(data_dir: PathBuf, id: u64, partitions: u32) -> NodeConfig {
        let c = NodeConfig::for_tests(3, 2, partitions);
        NodeConfig {
            id,
            data_dir,
            peer_addr: c.peers[&id],
            replicas: 2,
            ..c
        }
    }

    /// Backup ids are 16 hex digits in JSON (a string: jq and JavaScript would round a
    /// number above 2^53), and a version-1 manifest's numeric id still reads.
    #[test]
    fn backup_ids_are_hex_strings_and_old_numeric_ids_still_read() {
        let id = BackupId(u64::MAX - 2);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"fffffffffffffffd\"");
        assert_eq!(serde_json::from_str::<BackupId>(&json).unwrap(), id);
        assert_eq!(
            serde_json::from_str::<BackupId>("18446744073709551613").unwrap(),
            id
        );
        for bad in ["\"\"", "\"xyz\"", "\"10000000000000000\"", "-1", "\"+1\""] {
            assert!(serde_json::from_str::<BackupId>(bad).is_err(), "{bad}");
        }
        let dir = temp("v1-manifest");
        let m = backup(&dir, 2);
        let mpath = dir.join(MANIFEST);
        let text = fs::read_to_string(&mpath).unwrap();
        let number = format!("\"backup_id\": {}", m.backup_id.0);
        let v1 = text
            .replace("\"version\": 2,", "\"version\": 1,")
            .replace(&format!("\"backup_id\": \"{}\"", m.backup_id), &number);
        assert!(
            v1.contains(&number) && v1.contains("\"version\": 1,"),
            "{v1}"
        );
        fs::write(&mpath, v1).unwrap();
        assert_eq!(read_manifest(&dir).unwrap().backup_id, m.backup_id);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_backup_verifies_and_counts_its_keys() {
        let dir = temp("ok");
        backup(&dir, 3);
        let (m, report) = verify(&dir).expect("verify");
        assert_eq!(report.partitions, 3);
        assert_eq!(report.keys, 100 + 200 + 300);
        assert_eq!(
            m.partitions[2].chunk_crc32c.len(),
            m.partitions[2].bytes.div_ceil(CHUNK_BYTES as u64) as usize
        );
        assert!(
            m.partitions[2].chunk_crc32c.len() >= 2,
            "300 keys of 300 bytes span chunks"
        );
        // A second backup into the same directory is refused.
        assert!(matches!(create_dir(&dir), Err(BackupError::Refused(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupted_byte_is_reported_with_its_file_and_chunk_offset() {
        let dir = temp("flip");
        backup(&dir, 3);
        let path = dir.join(partition_file(3));
        let mut data = fs::read(&path).unwrap();
        data[CHUNK_BYTES + 1000] ^= 0x40;
        fs::write(&path, &data).unwrap();
        match verify(&dir) {
            Err(BackupError::Corrupt {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, CHUNK_BYTES as u64);
            }
            other => panic!("{other:?}"),
        }
        let text = verify(&dir).unwrap_err().to_string();
        assert!(text.contains("partition-0000000000000003.snap"), "{text}");
        assert!(text.contains(&format!("at byte {CHUNK_BYTES}")), "{text}");

        // Recomputing the manifest's checksums over the damage does not hide it: the
        // snapshot's own checksum still refuses the file, naming an offset.
        let mut m = read_manifest(&dir).unwrap();
        m.partitions[2].crc32c = crc32c::crc32c(&data);
        m.partitions[2].chunk_crc32c = chunk_checksums(&data);
        write_manifest(&dir, &m).unwrap();
        match verify(&dir) {
            Err(BackupError::Snapshot { path: p, source }) => {
                assert_eq!(p, path);
                assert!(
                    matches!(source, SnapshotError::ChecksumMismatch { .. }),
                    "{source}"
                );
            }
            other => panic!("{other:?}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_truncated_or_missing_file_and_a_bad_manifest_are_refused() {
        let dir = temp("trunc");
        backup(&dir, 2);
        let path = dir.join(partition_file(2));
        let data = fs::read(&path).unwrap();
        let cut = CHUNK_BYTES.min(data.len() - 10);
        fs::write(&path, &data[..cut]).unwrap();
        let e = verify(&dir).unwrap_err();
        assert!(
            matches!(&e, BackupError::Corrupt { offset, .. } if *offset == cut as u64),
            "{e}"
        );
        // A symlink in place of the file is refused without reading through it.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        fs::remove_file(&path).unwrap();
        assert!(matches!(
            verify(&dir),
            Err(BackupError::Io { op: "stat", .. })
        ));

        let mpath = dir.join(MANIFEST);
        let text = fs::read_to_string(&mpath).unwrap();
        // A later version is refused by its version, even with a field this build lacks.
        let later = text.replace("\"version\": 2,", "\"version\": 3, \"later\": true,");
        assert_ne!(later, text);
        fs::write(&mpath, later).unwrap();
        let e = verify(&dir).unwrap_err().to_string();
        assert!(
            e.contains("version 3; this build reads versions 1 to 2"),
            "{e}"
        );
        fs::write(&mpath, &text[..text.len() / 2]).unwrap();
        assert!(matches!(verify(&dir), Err(BackupError::Manifest { .. })));
        fs::remove_file(&mpath).unwrap();
        assert!(matches!(verify(&dir), Err(BackupError::Io { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn restore_writes_each_hosted_partition_with_the_new_voters() {
        let dir = temp("restore-src");
        let m = backup(&dir, 4);
        assert_ne!(m.backup_id, BackupId(0));
        assert_ne!(m.backup_id, new_backup_id(), "another backup, another id");
        let data = temp("restore-dst");
        assert_eq!(restored_from(&data), Ok(None));
        let config = node_config(data.clone(), 2, 4);
        let report = restore(&dir, &config).expect("restore");
        // The node records which backup it came from.
        assert_eq!(report.backup_id, m.backup_id);
        let record = restored_from(&data).unwrap().expect("RESTORED");
        assert_eq!(
            (
                record.backup_id,
                record.started_unix_ms,
                record.from.as_path()
            ),
            (m.backup_id, 1, dir.as_path())
        );
        let hosted: Vec<u64> = (0..2)
            .flat_map(|s| initial_placement(&config, s))
            .map(|(p, _)| p)
            .collect();
        let mut written: Vec<u64> = report.written.iter().map(|w| w.0).collect();
        written.sort_unstable();
        let mut want = hosted.clone();
        want.sort_unstable();
        assert_eq!(written, want);
        assert!(
            !written.is_empty() && written.len() < 4,
            "replicas = 2 of 3 nodes"
        );
        for (p, shard, path) in &report.written {
            assert_eq!(*shard, crate::meta::shard_of_partition(&config, *p));
            let snap = snapshot::read_file(path, &SmConfig::new(*p)).expect("read");
            assert_eq!(snap.state.len() as u64, 100 * p);
            assert_eq!(snap.meta.applied_index, 100 * p);
            let conf = convert::decode_conf(&snap.meta.membership).unwrap();
            assert_eq!(conf.voters, crate::meta::initial_replicas(&config, *p));
        }
        assert!(
            !data.join(RESTORE_MARKER).exists(),
            "the marker is removed once every file is durable"
        );
        check_no_unfinished_restore(&data).expect("a finished restore");
        // Not into a directory that holds anything, and not with another slot split.
        assert!(matches!(
            restore(&dir, &config),
            Err(BackupError::Refused(_))
        ));
        let other = node_config(temp("restore-dst2"), 1, 5);
        let e = restore(&dir, &other).unwrap_err().to_string();
        assert!(e.contains("partitions = 4"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&data).unwrap();
    }

    /// Review finding 1: a restore that fails part-way must not leave a directory a node
    /// would start from with some partitions empty.
    #[test]
    fn a_damaged_backup_writes_nothing_and_an_unfinished_restore_stops_the_node() {
        let dir = temp("partial-src");
        backup(&dir, 4);
        // The last partition this node hosts is damaged: nothing at all is written.
        let data = temp("partial-dst");
        let config = node_config(data.clone(), 1, 4);
        let last = (0..2)
            .flat_map(|s| initial_placement(&config, s))
            .map(|(p, _)| p)
            .max()
            .unwrap();
        let path = dir.join(partition_file(last));
        let mut bytes = fs::read(&path).unwrap();
        bytes[100] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            restore(&dir, &config),
            Err(BackupError::Corrupt { .. })
        ));
        assert!(
            fs::read_dir(&data).map_or(true, |mut d| d.next().is_none()),
            "a refused restore wrote into the data directory"
        );
        // A restore interrupted after its marker: the node refuses to start.
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join(RESTORE_MARKER), b"").unwrap();
        let e = check_no_unfinished_restore(&data).unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        let mut cfg = config.clone();
        cfg.shards = 1;
        match crate::server::start(cfg) {
            Err(e) => assert!(e.to_string().contains("did not finish"), "{e}"),
            Ok(_) => panic!("a node started from an unfinished restore"),
        }
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&data).unwrap();
    }
}
