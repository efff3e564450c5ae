//! Durable file writes: an acknowledged write survives `kill -9` and power loss.
//!
//! The pattern is the classic one: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory so the rename itself is on disk. A crash
//! at any point leaves either the old file or the new one, never half of one.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// fsync a directory so that entries created or renamed in it are durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temporary path beside `target`, unique per call, hidden from directory listings that
/// skip dotfiles.
pub fn temp_path_for(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = crate::random_id128();
    target.with_file_name(format!(".{name}.{}.tmp", &tag[..12]))
}

/// Write `bytes` to `path` atomically and durably, with Unix permission bits `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = create_new_with_mode(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        fsync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Create a new file (failing if it exists) with the given Unix permission bits.
pub fn create_new_with_mode(path: &Path, mode: u32) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path)
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk, without
/// waiting and without dropping them from the page cache. A hint: its failure changes
/// nothing, so it reports none; the caller's fsync still decides durability.
///
/// Why: a file that must be fsync'd soon after it is written (a blob, before its instance
/// is acknowledged) would otherwise have all its writeback done inside that fsync. Why not
/// `posix_fadvise(DONTNEED)`, which also starts writeback: it then drops the pages once
/// clean, and a study is usually viewed minutes after it arrives, so its first read would
/// go to the disk. Through storescu the two were not told apart beyond the test machine's
/// noise (`bench/README.md`, "C-STORE: starting writeback (session 9)").
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is owned
        // by `file`, borrowed for the duration of the call, so it is open and not reused.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Create a directory (and parents) readable by its owner only.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
