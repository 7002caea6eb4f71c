//! Small input files (rules, keys, secrets, tokens): regular files only, size-capped, never blocking.
//!
//! A rules directory is written by people, so its files can be anything: a
//! FIFO (opening or reading it would wait forever), a character device like
//! `/dev/zero` (reading it never ends), a directory. Every file the rules
//! load goes through [`read`], which opens without blocking, refuses what
//! is not a regular file, and reads at most a stated number of bytes.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The rules file's cap: room for tens of thousands of VMs.
pub const MAX_RULES_BYTES: u64 = 16 << 20;
/// The cap of a key, secret or token file.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SmallFileError {
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("is a directory, not a file")]
    Directory,
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is larger than {max} bytes")]
    TooLarge { max: u64 },
}

/// What kind of non-regular file this is, in words.
fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Opens a regular file without blocking (a FIFO's open would wait for a
/// writer) and checks its type on the open descriptor, so nothing can be
/// swapped in between. Returns the file and its metadata (for mode checks).
pub fn open(path: &Path) -> Result<(File, Metadata), SmallFileError> {
    let f =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(SmallFileError::Io)?;
    let m = f.metadata().map_err(SmallFileError::Io)?;
    if m.is_dir() {
        return Err(SmallFileError::Directory);
    }
    if !m.is_file() {
        return Err(SmallFileError::NotRegular(kind(&m)));
    }
    Ok((f, m))
}

/// Reads all of an opened regular file, refusing one over `max` bytes (it
/// may grow while read: at most `max + 1` bytes are ever read).
pub fn read_open(f: File, max: u64) -> Result<Vec<u8>, SmallFileError> {
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(SmallFileError::Io)?;
    if buf.len() as u64 > max {
        return Err(SmallFileError::TooLarge { max });
    }
    Ok(buf)
}

/// [`open`] then [`read_open`].
pub fn read(path: &Path, max: u64) -> Result<Vec<u8>, SmallFileError> {
    let (f, _) = open(path)?;
    read_open(f, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("ok");
        std::fs::write(&ok, b"0123456789").unwrap();
        assert_eq!(read(&ok, 10).unwrap(), b"0123456789");
        assert!(matches!(read(&ok, 9), Err(SmallFileError::TooLarge { max: 9 })));
        assert!(matches!(read(d.path(), 10), Err(SmallFileError::Directory)));
        // A character device that never ends, refused before any read.
        assert!(matches!(read(Path::new("/dev/zero"), 10), Err(SmallFileError::NotRegular("character device"))));
        // A FIFO with no writer: refused at once, not waited on.
        let fifo = d.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let t = std::time::Instant::now();
        assert!(matches!(read(&fifo, 10), Err(SmallFileError::NotRegular("FIFO"))));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        assert!(matches!(read(&d.path().join("none"), 10), Err(SmallFileError::Io(_))));
    }
}
