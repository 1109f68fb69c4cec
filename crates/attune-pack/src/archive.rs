//! Pack archives: a pack directory travels to the server and to the workers as one gzip-compressed
//! tar archive, named by the sha256 of its bytes.
//!
//! [`build`] is deterministic (sorted entries, no times, owners or user names, modes reduced to
//! 0o755/0o644), so the same content always gives the same bytes and therefore the same digest: a
//! digest can serve as the pack's version and as a cache key on workers.
//!
//! [`unpack`] treats the archive as hostile. Every entry is checked before anything is written for
//! it: only relative, plain UTF-8 paths; only files, directories and symlinks whose targets stay
//! inside the pack; nothing written through a symlink; no duplicates; entry count, unpacked size and
//! compressed size within [`Limits`]. A refused archive leaves nothing behind in the destination.
//!
//! Unix only: modes and symlinks are what a pack needs on a worker.

use std::{
    cell::Cell,
    collections::HashMap,
    fs,
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    rc::Rc,
};

use flate2::{read::GzDecoder, Compression, GzBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// The largest compressed archive [`unpack`] accepts by default (64 MiB): packs are scripts and
/// definitions, and the whole archive is held in memory while it travels.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 64 * 1024 * 1024;

/// The default for [`Limits::max_unpacked_bytes`] (512 MiB), so a small archive cannot fill a
/// worker's disk.
const DEFAULT_MAX_UNPACKED_BYTES: u64 = 512 * 1024 * 1024;

/// The default for [`Limits::max_entries`], so an archive cannot exhaust a worker's inodes.
const DEFAULT_MAX_ENTRIES: usize = 20_000;

/// How many bytes of tar headers and padding each entry may bring on top of its contents before the
/// decompressed stream is deemed a bomb. A plain entry needs at most 1023 (header plus padding), one
/// with a long name about 2 KiB more; 4 KiB leaves room without letting an archive that claims
/// little file data expand without bound (tar headers are read before they can be checked).
const HEADER_ALLOWANCE_PER_ENTRY: u64 = 4096;

/// Directories never put into an archive (dependencies and caches built on each worker, VCS data):
/// they are large, machine-specific, and would make equal pack content give different digests.
/// A file or directory with one of these names is skipped at any depth.
pub const EXCLUDED: &[&str] = &[".git", ".hg", ".svn", "node_modules", ".venv", "__pycache__", ".attune"];

/// What [`unpack`] accepts, so that one archive cannot exhaust the memory, disk or inodes of the
/// server or a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest compressed archive, in bytes; checked before anything is decompressed.
    pub max_archive_bytes: u64,
    /// The largest total size of the files written, in bytes (checked from each entry's header
    /// before the file is written, so a decompression bomb is refused early).
    pub max_unpacked_bytes: u64,
    /// The most entries (files, directories and symlinks together).
    pub max_entries: usize,
}

impl Default for Limits {
    /// 64 MiB compressed, 512 MiB unpacked, 20 000 entries: far above any real pack, far below what
    /// would hurt a machine.
    fn default() -> Self {
        Limits {
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What [`unpack`] wrote, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// Regular files written (directories and symlinks are not counted).
    pub files: usize,
    /// Total size of the files written, in bytes.
    pub bytes: u64,
}

/// Why an archive could not be built or unpacked. When one entry is the problem the message names
/// it, by its path as written in the archive (or relative to the pack directory when building), so
/// the pack's author can find it.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The compressed archive is bigger than [`Limits::max_archive_bytes`].
    #[error("the archive is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The archive's size in bytes.
        size: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The bytes are not a readable gzip-compressed tar archive (garbage, truncated, corrupt).
    #[error("not a gzip-compressed tar archive: {0}")]
    NotAnArchive(String),
    /// The decompressed stream is far bigger than its entries justify: a decompression bomb.
    #[error(
        "the archive expands to more than {limit} bytes of tar data (file contents plus headers); \
         refused as a likely decompression bomb"
    )]
    StreamTooLarge {
        /// How many decompressed bytes were allowed.
        limit: u64,
    },
    /// An entry's path could escape the destination or is otherwise unusable.
    #[error("entry {entry:?}: {reason}")]
    UnsafePath {
        /// The entry's path as written.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry's path is not valid UTF-8 (pack paths must be portable and printable).
    #[error("entry {entry:?}: the path is not valid UTF-8")]
    NotUtf8 {
        /// The entry's path as written, with invalid bytes replaced.
        entry: String,
    },
    /// An entry is neither a regular file, a directory nor a symlink.
    #[error("entry {entry:?}: {kind} is refused (only files, directories and symlinks inside the pack)")]
    UnsupportedType {
        /// The entry's path as written.
        entry: String,
        /// What it is, e.g. "a hard link", "a character device".
        kind: String,
    },
    /// A symlink's target is absolute or resolves outside the pack.
    #[error("entry {entry:?}: symlink to {target:?} leaves the pack")]
    SymlinkEscapes {
        /// The symlink's path as written.
        entry: String,
        /// Its target as written.
        target: String,
    },
    /// A symlink's target is unusable for another reason (empty, not UTF-8, `..` in the middle).
    #[error("entry {entry:?}: symlink to {target:?} is refused: {reason}")]
    SymlinkTarget {
        /// The symlink's path as written.
        entry: String,
        /// Its target as written.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry would be written through a symlink or below a file created earlier in the archive.
    #[error("entry {entry:?}: its parent {parent:?} is {what}")]
    BadParent {
        /// The entry's path as written.
        entry: String,
        /// The parent path that is not a directory.
        parent: String,
        /// What the parent is instead.
        what: &'static str,
    },
    /// The same path appears twice (the second would overwrite or reinterpret the first).
    #[error("entry {entry:?}: the path appears twice in the archive")]
    Duplicate {
        /// The entry's path as written.
        entry: String,
    },
    /// The archive has more entries than [`Limits::max_entries`]; this is the first one too many.
    #[error("entry {entry:?}: the archive has more than {limit} entries")]
    TooManyEntries {
        /// The first entry over the limit.
        entry: String,
        /// The limit.
        limit: usize,
    },
    /// Writing this file would bring the unpacked total past [`Limits::max_unpacked_bytes`].
    #[error("entry {entry:?}: its {size} bytes would bring the unpacked total past the limit of {limit}")]
    UnpackedTooLarge {
        /// The entry's path as written.
        entry: String,
        /// Its size from its header.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The destination of [`unpack`] already holds something; it is left untouched.
    #[error("cannot unpack into {}: it exists and is not an empty directory", path.display())]
    DestinationInUse {
        /// The destination.
        path: PathBuf,
    },
    /// Reading the pack directory or writing the unpacked files failed.
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

/// The content address of an archive: the lowercase hex sha256 of its bytes (64 characters).
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` has the form of a [`digest`]: exactly 64 lowercase hex characters. Use it to vet a
/// digest that arrives from outside (a URL, a request) before using it as a file name or key.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What `build` found at one path of the pack directory.
enum Node {
    Dir,
    File { executable: bool },
    Symlink { target: String },
}

/// One path of the pack directory: relative, `/`-separated.
struct Item {
    rel: String,
    abs: PathBuf,
    node: Node,
}

/// Builds the archive of the pack directory `dir`: a gzip-compressed tar of everything under it
/// except [`EXCLUDED`] names, byte-identical for identical content so that [`digest`] names the
/// content.
///
/// Entries are sorted by path (byte order), relative to `dir`, without times, owners or user
/// names; directories are included (so empty ones survive), with mode 0o755; files get 0o755 when
/// any execute bit is set and 0o644 otherwise; symlinks are stored as symlinks with their target as
/// written. Anything [`unpack`] would refuse is refused here already, naming the path, so that an
/// author learns of it before the pack is uploaded: sockets, fifos and devices, non-UTF-8 names,
/// symlinks that leave the pack.
///
/// Byte-identical output holds for a given build of this crate; a different version of the
/// compressor could compress differently (the content, and so unpacking, is unaffected).
pub fn build(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let mut items = Vec::new();
    walk(dir, "", &mut items)?;
    items.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));

    let gz = GzBuilder::new().mtime(0).write(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    for item in &items {
        let mut h = Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        let written = match &item.node {
            Node::Dir => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                tar.append_data(&mut h, format!("{}/", item.rel), io::empty())
            }
            Node::File { executable } => {
                // Read whole, so the header's size is exactly what follows even if the file changes
                // while we read it.
                let data = fs::read(&item.abs).map_err(io_err(&item.abs))?;
                h.set_entry_type(EntryType::Regular);
                h.set_mode(if *executable { 0o755 } else { 0o644 });
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, &item.rel, data.as_slice())
            }
            Node::Symlink { target } => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(0o777);
                if target.len() <= h.as_old().linkname.len() {
                    // `set_link_name` would normalise the target ("./x" -> "x"); keep it as written.
                    h.set_link_name_literal(target).map_err(io_err(&item.abs))?;
                    tar.append_data(&mut h, &item.rel, io::empty())
                } else {
                    // Too long for the header: the tar crate writes a GNU long-link entry.
                    tar.append_link(&mut h, &item.rel, target)
                }
            }
        };
        written.map_err(io_err(&item.abs))?;
    }
    let gz = tar.into_inner().map_err(io_err(dir))?;
    gz.finish().map_err(io_err(dir))
}

/// Collects every path under `abs` (which is `rel` inside the pack) into `out`, unsorted.
fn walk(abs: &Path, rel: &str, out: &mut Vec<Item>) -> Result<(), ArchiveError> {
    for child in fs::read_dir(abs).map_err(io_err(abs))? {
        let child = child.map_err(io_err(abs))?;
        let child_abs = child.path();
        let name = child.file_name();
        let join = |name: &str| if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
        let Some(name) = name.to_str() else {
            return Err(ArchiveError::NotUtf8 { entry: join(&name.to_string_lossy()) });
        };
        if EXCLUDED.contains(&name) {
            continue;
        }
        let child_rel = join(name);
        clean_path(&child_rel, &child_rel)?;
        let meta = fs::symlink_metadata(&child_abs).map_err(io_err(&child_abs))?;
        let ft = meta.file_type();
        let node = if ft.is_dir() {
            Node::Dir
        } else if ft.is_file() {
            Node::File { executable: meta.permissions().mode() & 0o111 != 0 }
        } else if ft.is_symlink() {
            let target = fs::read_link(&child_abs).map_err(io_err(&child_abs))?;
            let Some(target) = target.to_str() else {
                return Err(ArchiveError::SymlinkTarget {
                    entry: child_rel,
                    target: target.to_string_lossy().into_owned(),
                    reason: "the target is not valid UTF-8",
                });
            };
            check_symlink_target(&child_rel, &child_rel, target)?;
            Node::Symlink { target: target.to_owned() }
        } else {
            let kind = if ft.is_socket() {
                "a socket"
            } else if ft.is_fifo() {
                "a fifo"
            } else if ft.is_char_device() {
                "a character device"
            } else if ft.is_block_device() {
                "a block device"
            } else {
                "a special file"
            };
            return Err(ArchiveError::UnsupportedType { entry: child_rel, kind: kind.to_owned() });
        };
        let is_dir = matches!(node, Node::Dir);
        out.push(Item { rel: child_rel.clone(), abs: child_abs.clone(), node });
        if is_dir {
            walk(&child_abs, &child_rel, out)?;
        }
    }
    Ok(())
}

/// Checks a path as written in an archive (`raw`, shown as `entry` in errors) and returns it without
/// a leading `./` or a trailing `/`. The empty string stands for the pack's root (`./`).
fn clean_path<'p>(entry: &str, raw: &'p str) -> Result<&'p str, ArchiveError> {
    let refuse = |reason| Err(ArchiveError::UnsafePath { entry: entry.to_owned(), reason });
    if raw.starts_with('/') {
        return refuse("an absolute path is refused");
    }
    if raw == "." {
        return Ok("");
    }
    let p = raw.strip_prefix("./").unwrap_or(raw);
    let p = p.strip_suffix('/').unwrap_or(p);
    if p.is_empty() {
        return Ok("");
    }
    for (i, seg) in p.split('/').enumerate() {
        match seg {
            ".." => return refuse("a path may not contain \"..\""),
            "." => return refuse("a path may not contain \".\" segments"),
            "" => return refuse("a path may not contain empty segments (\"//\")"),
            _ if seg.contains('\0') => return refuse("a path may not contain a NUL byte"),
            _ if seg.contains('\\') => return refuse("a path may not contain a backslash"),
            _ if i == 0 && is_drive_prefix(seg) => return refuse("a Windows drive prefix is refused"),
            _ => {}
        }
    }
    Ok(p)
}

/// Whether `seg` starts like a Windows drive (`C:`), which would be absolute on Windows.
fn is_drive_prefix(seg: &str) -> bool {
    let b = seg.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Checks that a symlink at `link` (a clean path inside the pack; shown as `entry`) pointing at
/// `target` stays inside the pack. The target must be relative, and `..` may only lead it: then
/// every `..` climbs a real directory of the pack (entries are never written through symlinks), and
/// what follows only descends, so even chains of such symlinks stay inside. A `..` after a name
/// could climb out of wherever a symlinked name leads, so it is refused.
fn check_symlink_target(entry: &str, link: &str, target: &str) -> Result<(), ArchiveError> {
    let refuse = |reason| {
        Err(ArchiveError::SymlinkTarget { entry: entry.to_owned(), target: target.to_owned(), reason })
    };
    if target.is_empty() {
        return refuse("an empty target is refused");
    }
    if target.contains('\0') {
        return refuse("the target contains a NUL byte");
    }
    let escapes = || Err(ArchiveError::SymlinkEscapes { entry: entry.to_owned(), target: target.to_owned() });
    if target.starts_with('/') {
        return escapes();
    }
    // Directories above the link, inside the pack.
    let mut depth = link.matches('/').count();
    let mut after_name = false;
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." if after_name => return refuse("\"..\" may only lead the target"),
            ".." if depth == 0 => return escapes(),
            ".." => depth -= 1,
            _ => after_name = true,
        }
    }
    Ok(())
}

/// What `unpack` has made at a path, to refuse duplicates and writing through symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// A directory entry of the archive.
    Dir,
    /// A directory created for an entry below it, not (yet) listed itself.
    ImplicitDir,
    File,
    Symlink,
}

/// Unpacks `archive` into `dest`, which must not exist or be an empty directory, after checking
/// every entry (see the module documentation) and the [`Limits`]. On any error whatever was written
/// is removed, so a refused archive leaves `dest` absent (or empty, if it existed). Files get mode
/// 0o755 when any execute bit is set in the archive and 0o644 otherwise; owners and times in the
/// archive are ignored.
pub fn unpack(archive: &[u8], dest: &Path, limits: &Limits) -> Result<Unpacked, ArchiveError> {
    let size = archive.len() as u64;
    if size > limits.max_archive_bytes {
        return Err(ArchiveError::TooLarge { size, limit: limits.max_archive_bytes });
    }
    if !archive.starts_with(&[0x1f, 0x8b]) {
        return Err(ArchiveError::NotAnArchive("it does not start with the gzip signature".into()));
    }
    let created = prepare_dest(dest)?;
    let result = unpack_entries(archive, dest, limits);
    if result.is_err() {
        clear(dest, created);
    }
    result
}

/// Makes sure `dest` can receive the pack: creates it if absent (returns true), accepts an empty
/// directory (returns false), refuses anything else.
fn prepare_dest(dest: &Path) -> Result<bool, ArchiveError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            fs::DirBuilder::new().mode(0o755).create(dest).map_err(io_err(dest))?;
            Ok(true)
        }
        Err(e) => Err(io_err(dest)(e)),
        Ok(meta) if meta.is_dir() => {
            let mut children = fs::read_dir(dest).map_err(io_err(dest))?;
            if children.next().is_some() {
                return Err(ArchiveError::DestinationInUse { path: dest.to_path_buf() });
            }
            Ok(false)
        }
        Ok(_) => Err(ArchiveError::DestinationInUse { path: dest.to_path_buf() }),
    }
}

/// Removes what a failed `unpack` wrote: `dest` itself if it created it, else its contents.
/// Best effort: the original error is what matters to the caller.
fn clear(dest: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dest);
        return;
    }
    let Ok(children) = fs::read_dir(dest) else { return };
    for child in children.flatten() {
        let path = child.path();
        // `file_type` does not follow symlinks, and `remove_dir_all` does not either.
        match child.file_type() {
            Ok(t) if t.is_dir() => {
                let _ = fs::remove_dir_all(&path);
            }
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// A reader that yields at most `left` bytes and then, if the inner reader has more, fails and
/// raises `over`: the tar crate reads extension headers (long names, pax records) into memory
/// before they can be checked, so the decompressed stream as a whole must be bounded.
struct Capped<R> {
    inner: R,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.over.set(true);
                    Err(io::Error::other("the decompressed archive exceeds its limit"))
                }
            };
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The running state of one `unpack`.
struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    made: HashMap<String, Made>,
    entries: usize,
    done: Unpacked,
}

fn unpack_entries(archive: &[u8], dest: &Path, limits: &Limits) -> Result<Unpacked, ArchiveError> {
    let over = Rc::new(Cell::new(false));
    let budget = limits.max_unpacked_bytes.saturating_add(
        (limits.max_entries as u64).saturating_add(16).saturating_mul(HEADER_ALLOWANCE_PER_ENTRY),
    );
    let reader = Capped { inner: GzDecoder::new(archive), left: budget, over: over.clone() };
    let stream_err = |e: io::Error| {
        if over.get() {
            ArchiveError::StreamTooLarge { limit: budget }
        } else {
            ArchiveError::NotAnArchive(e.to_string())
        }
    };
    let mut state = Unpacker { dest, limits, made: HashMap::new(), entries: 0, done: Unpacked::default() };
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(stream_err)? {
        let mut entry = entry.map_err(stream_err)?;
        state.entry(&mut entry, &stream_err)?;
    }
    // Read to the end so that gzip's checksum and length are verified: a corrupt or truncated
    // stream is refused even when the damage lies after the last entry.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(stream_err)?;
    Ok(state.done)
}

/// What an archive entry is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

impl Unpacker<'_> {
    /// Checks one entry entirely, then writes it.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stream_err: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<(), ArchiveError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = match entry.header().entry_type() {
            // Global pax headers describe the archive, not a path; nothing to write.
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            other => {
                return Err(ArchiveError::UnsupportedType { entry: shown, kind: describe(other) });
            }
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries { entry: shown, limit: self.limits.max_entries });
        }
        let Ok(text) = std::str::from_utf8(&raw) else {
            return Err(ArchiveError::NotUtf8 { entry: shown });
        };
        let path = clean_path(&shown, text)?;
        if path.is_empty() {
            return match kind {
                // "./": the pack's root, which is `dest` itself.
                Kind::Dir => Ok(()),
                _ => Err(ArchiveError::UnsafePath { entry: shown, reason: "an empty path is refused" }),
            };
        }
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            let what = match self.made.get(parent) {
                Some(Made::Symlink) => "a symlink; nothing may be written through a symlink",
                Some(Made::File) => "a file",
                _ => continue,
            };
            return Err(ArchiveError::BadParent { entry: shown, parent: parent.to_owned(), what });
        }
        match (self.made.get(path), kind) {
            (None, _) | (Some(Made::ImplicitDir), Kind::Dir) => {}
            _ => return Err(ArchiveError::Duplicate { entry: shown }),
        }
        let target = if kind == Kind::Symlink {
            let bytes = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
            let Ok(target) = String::from_utf8(bytes) else {
                let bytes = entry.link_name_bytes().unwrap_or_default();
                return Err(ArchiveError::SymlinkTarget {
                    entry: shown,
                    target: String::from_utf8_lossy(&bytes).into_owned(),
                    reason: "the target is not valid UTF-8",
                });
            };
            check_symlink_target(&shown, path, &target)?;
            Some(target)
        } else {
            None
        };
        let size = if kind == Kind::File { entry.size() } else { 0 };
        let total = self.done.bytes.saturating_add(size);
        if total > self.limits.max_unpacked_bytes {
            return Err(ArchiveError::UnpackedTooLarge {
                entry: shown,
                size,
                limit: self.limits.max_unpacked_bytes,
            });
        }
        let executable = kind == Kind::File && entry.header().mode().map_err(stream_err)? & 0o111 != 0;

        // Checked: now write.
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            if !self.made.contains_key(parent) {
                self.make_dir(parent)?;
                self.made.insert(parent.to_owned(), Made::ImplicitDir);
            }
        }
        let full = self.dest.join(path);
        match kind {
            Kind::Dir => {
                if self.made.get(path) != Some(&Made::ImplicitDir) {
                    self.make_dir(path)?;
                }
                self.made.insert(path.to_owned(), Made::Dir);
            }
            Kind::Symlink => {
                let target = target.unwrap_or_default();
                std::os::unix::fs::symlink(&target, &full).map_err(io_err(&full))?;
                self.made.insert(path.to_owned(), Made::Symlink);
            }
            Kind::File => {
                let mode = if executable { 0o755 } else { 0o644 };
                // `create_new` never follows or overwrites an existing path.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&full)
                    .map_err(io_err(&full))?;
                self.made.insert(path.to_owned(), Made::File);
                let mut buf = vec![0u8; 64 * 1024];
                let mut written = 0u64;
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(stream_err(e)),
                    };
                    file.write_all(&buf[..n]).map_err(io_err(&full))?;
                    written += n as u64;
                }
                if written != size {
                    return Err(ArchiveError::NotAnArchive(format!(
                        "entry {shown:?} is cut short ({written} of {size} bytes)"
                    )));
                }
                // The umask may have removed bits from the mode given at creation.
                file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(&full))?;
                self.done.files += 1;
                self.done.bytes = total;
            }
        }
        Ok(())
    }

    /// Creates the directory `rel` (whose parent exists) with mode 0o755 whatever the umask.
    fn make_dir(&self, rel: &str) -> Result<(), ArchiveError> {
        let full = self.dest.join(rel);
        fs::DirBuilder::new().mode(0o755).create(&full).map_err(io_err(&full))?;
        fs::set_permissions(&full, fs::Permissions::from_mode(0o755)).map_err(io_err(&full))
    }
}

/// Names a refused entry type for an error message.
fn describe(t: EntryType) -> String {
    match t {
        EntryType::Link => "a hard link".into(),
        EntryType::Char => "a character device".into(),
        EntryType::Block => "a block device".into(),
        EntryType::Fifo => "a fifo".into(),
        EntryType::GNUSparse => "a sparse file".into(),
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
            "an extension header in a non-GNU, non-ustar header".into()
        }
        other => format!("an entry of type {:?}", char::from(other.as_byte())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    // ---- helpers ----

    fn write(root: &Path, rel: &str, content: &str, mode: u32) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A small pack with an executable, a nested file, an empty directory and a symlink.
    fn sample(root: &Path) {
        write(root, "pack.yaml", "ref: demo\n", 0o644);
        write(root, "actions/run.yaml", "name: run\nentry_point: run.sh\n", 0o644);
        write(root, "actions/run.sh", "#!/bin/sh\necho hi\n", 0o755);
        write(root, "actions/lib/helper.py", "print('x')\n", 0o600);
        fs::create_dir_all(root.join("empty/inner")).unwrap();
        symlink("run.sh", root.join("actions/alias.sh")).unwrap();
        symlink("../pack.yaml", root.join("actions/pack.yaml")).unwrap();
    }

    /// Every entry of an archive: path as written, type, link target, mode, uid, mtime.
    fn listing(archive: &[u8]) -> Vec<(String, EntryType, Option<String>, u32, u64, u64)> {
        let mut ar = tar::Archive::new(GzDecoder::new(archive));
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                    h.entry_type(),
                    e.link_name_bytes().map(|l| String::from_utf8(l.into_owned()).unwrap()),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    /// A tree, for comparing: path -> ("dir" | "file <mode> <content>" | "link <target>").
    fn tree(root: &Path) -> Vec<(String, String)> {
        fn go(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                let meta = fs::symlink_metadata(&p).unwrap();
                if meta.file_type().is_symlink() {
                    out.push((rel, format!("link {}", fs::read_link(&p).unwrap().display())));
                } else if meta.is_dir() {
                    out.push((rel, "dir".into()));
                    go(root, &p, out);
                } else {
                    let mode = meta.permissions().mode() & 0o777;
                    out.push((rel, format!("file {mode:o} {}", fs::read_to_string(&p).unwrap())));
                }
            }
        }
        let mut out = Vec::new();
        go(root, root, &mut out);
        out.sort();
        out
    }

    /// One entry of a hand-made archive, with its name and link written as raw bytes so that the
    /// tar crate's own path checks (which refuse "..") are bypassed.
    struct Raw {
        name: Vec<u8>,
        kind: EntryType,
        link: Vec<u8>,
        data: Vec<u8>,
        mode: u32,
    }

    fn raw_file(name: &str, data: &str) -> Raw {
        Raw { name: name.into(), kind: EntryType::Regular, link: vec![], data: data.into(), mode: 0o644 }
    }
    fn raw_dir(name: &str) -> Raw {
        Raw { name: name.into(), kind: EntryType::Directory, link: vec![], data: vec![], mode: 0o755 }
    }
    fn raw_link(name: &str, target: &str) -> Raw {
        Raw { name: name.into(), kind: EntryType::Symlink, link: target.into(), data: vec![], mode: 0o777 }
    }
    fn raw_special(name: &str, kind: EntryType) -> Raw {
        Raw { name: name.into(), kind, link: vec![], data: vec![], mode: 0o644 }
    }

    fn craft(entries: &[Raw]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for r in entries {
            let mut h = Header::new_gnu();
            h.as_old_mut().name[..r.name.len()].copy_from_slice(&r.name);
            h.as_old_mut().linkname[..r.link.len()].copy_from_slice(&r.link);
            h.set_entry_type(r.kind);
            h.set_size(r.data.len() as u64);
            h.set_mode(r.mode);
            h.set_mtime(0);
            h.set_cksum();
            b.append(&h, r.data.as_slice()).unwrap();
        }
        gzip(&b.into_inner().unwrap())
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = GzBuilder::new().write(Vec::new(), Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    /// Unpacks `archive` twice, into an absent directory and into an existing empty one, expecting
    /// the same refusal both times and nothing left behind; returns the message.
    fn refused(archive: &[u8], limits: &Limits) -> String {
        let tmp = tempfile::tempdir().unwrap();
        let absent = tmp.path().join("out");
        let err = unpack(archive, &absent, limits).unwrap_err().to_string();
        assert!(!absent.exists(), "{absent:?} left behind after: {err}");

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err2 = unpack(archive, &empty, limits).unwrap_err().to_string();
        assert_eq!(err, err2);
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "{empty:?} not left empty after: {err}");
        // Nothing escaped next to the destination either.
        let mut beside: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        assert_eq!(beside, ["empty"], "after: {err}");
        err
    }

    // ---- digest ----

    #[test]
    fn archive_digest_is_lowercase_hex_sha256() {
        let d = digest(b"abc");
        assert_eq!(d, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(is_digest(&d));
        assert!(!is_digest(&d.to_uppercase()));
        assert!(!is_digest(&d[..63]));
        assert!(!is_digest(&format!("{d}0")));
        assert!(!is_digest(&d.replace('a', "g")));
        assert!(!is_digest(""));
    }

    // ---- build ----

    #[test]
    fn archive_build_is_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let a = build(tmp.path()).unwrap();
        let b = build(tmp.path()).unwrap();
        assert_eq!(a, b);

        // The same content elsewhere, created in another order, gives the same bytes.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir_all(other.path().join("empty/inner")).unwrap();
        write(other.path(), "actions/lib/helper.py", "print('x')\n", 0o600);
        sample(other.path());
        assert_eq!(build(other.path()).unwrap(), a);

        // Times are not recorded.
        let f = fs::File::options().write(true).open(tmp.path().join("pack.yaml")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345)).unwrap();
        assert_eq!(build(tmp.path()).unwrap(), a);
    }

    #[test]
    fn archive_build_changes_with_content_mode_and_names() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        let base = digest(&build(tmp.path()).unwrap());

        write(tmp.path(), "pack.yaml", "ref: demO\n", 0o644);
        let changed = digest(&build(tmp.path()).unwrap());
        assert_ne!(changed, base);
        write(tmp.path(), "pack.yaml", "ref: demo\n", 0o644);
        assert_eq!(digest(&build(tmp.path()).unwrap()), base);

        // Only the execute bit matters among mode bits.
        let helper = tmp.path().join("actions/lib/helper.py");
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(digest(&build(tmp.path()).unwrap()), base);
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o744)).unwrap();
        assert_ne!(digest(&build(tmp.path()).unwrap()), base);
        fs::set_permissions(&helper, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(digest(&build(tmp.path()).unwrap()), base);

        fs::rename(&helper, tmp.path().join("actions/lib/helper2.py")).unwrap();
        assert_ne!(digest(&build(tmp.path()).unwrap()), base);
    }

    #[test]
    fn archive_build_layout_and_exclusions() {
        let tmp = tempfile::tempdir().unwrap();
        sample(tmp.path());
        write(tmp.path(), ".git/config", "x", 0o644);
        write(tmp.path(), "actions/node_modules/dep/index.js", "x", 0o644);
        write(tmp.path(), "actions/lib/__pycache__/helper.pyc", "x", 0o644);
        write(tmp.path(), ".venv/bin/python", "x", 0o755);
        write(tmp.path(), ".attune", "a file with an excluded name", 0o644);
        write(tmp.path(), "sub/.hg/x", "x", 0o644);
        write(tmp.path(), "sub/.svn/x", "x", 0o644);

        let list = listing(&build(tmp.path()).unwrap());
        let names: Vec<&str> = list.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "actions/",
                "actions/alias.sh",
                "actions/lib/",
                "actions/lib/helper.py",
                "actions/pack.yaml",
                "actions/run.sh",
                "actions/run.yaml",
                "empty/",
                "empty/inner/",
                "pack.yaml",
                "sub/",
            ]
        );
        let get = |n: &str| list.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(get("actions/run.sh").3, 0o755);
        assert_eq!(get("actions/lib/helper.py").3, 0o644);
        assert_eq!(get("empty/").1, EntryType::Directory);
        assert_eq!(get("empty/").3, 0o755);
        let alias = get("actions/alias.sh");
        assert_eq!((alias.1, alias.2.as_deref()), (EntryType::Symlink, Some("run.sh")));
        assert_eq!(get("actions/pack.yaml").2.as_deref(), Some("../pack.yaml"));
        assert!(list.iter().all(|e| e.4 == 0 && e.5 == 0), "uid and mtime are 0");
    }

    #[test]
    fn archive_build_refuses_what_unpack_would() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "pack.yaml", "x", 0o644);
        let _sock = std::os::unix::net::UnixListener::bind(tmp.path().join("sock")).unwrap();
        let err = build(tmp.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "entry \"sock\": a socket is refused (only files, directories and symlinks inside the pack)"
        );

        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("actions")).unwrap();
        symlink("/etc/passwd", tmp.path().join("actions/link")).unwrap();
        let err = build(tmp.path()).unwrap_err().to_string();
        assert_eq!(err, "entry \"actions/link\": symlink to \"/etc/passwd\" leaves the pack");
    }

    // ---- round trip ----

    #[test]
    fn archive_round_trip_keeps_files_modes_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        sample(src.path());
        // Long names and a long link target go through GNU extension entries.
        let long_dir = "d".repeat(90);
        let long_rel = format!("{long_dir}/{}.txt", "f".repeat(120));
        write(src.path(), &long_rel, "long", 0o755);
        symlink(format!("../{long_rel}"), src.path().join("actions/long-link")).unwrap();
        fs::set_permissions(src.path().join("actions/lib/helper.py"), fs::Permissions::from_mode(0o644))
            .unwrap();

        let archive = build(src.path()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a/b/unpacked");
        let done = unpack(&archive, &dest, &Limits::default()).unwrap();
        assert_eq!(tree(&dest), tree(src.path()));
        assert_eq!(done.files, 5);
        assert_eq!(
            done.bytes,
            [
                "ref: demo\n",
                "name: run\nentry_point: run.sh\n",
                "#!/bin/sh\necho hi\n",
                "print('x')\n",
                "long"
            ]
            .iter()
            .map(|s| s.len() as u64)
            .sum::<u64>()
        );
        assert_eq!(fs::read_to_string(dest.join("actions/alias.sh")).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(fs::read_to_string(dest.join("actions/long-link")).unwrap(), "long");

        // What was unpacked builds to the very same archive.
        assert_eq!(build(&dest).unwrap(), archive);

        // An existing empty directory is fine too.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        unpack(&archive, &empty, &Limits::default()).unwrap();
        assert_eq!(tree(&empty), tree(src.path()));
    }

    #[test]
    fn archive_unpack_accepts_other_tools_conventions() {
        // "./" prefixes and a root entry, as `tar -C dir -czf x.tgz .` writes them, a directory
        // listed after a file inside it, and a global pax header.
        let archive = craft(&[
            raw_dir("./"),
            Raw {
                name: b"pax_global_header".to_vec(),
                kind: EntryType::XGlobalHeader,
                link: vec![],
                data: b"20 comment=abcdefgh\n".to_vec(),
                mode: 0o644,
            },
            raw_file("./a/x.sh", "x"),
            raw_dir("./a/"),
            raw_link("./a/y", "./x.sh"),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let done = unpack(&archive, &dest, &Limits::default()).unwrap();
        assert_eq!(done, Unpacked { files: 1, bytes: 1 });
        assert_eq!(fs::read_link(dest.join("a/y")).unwrap(), Path::new("./x.sh"));
        assert_eq!(fs::read_to_string(dest.join("a/y")).unwrap(), "x");
    }

    #[test]
    fn archive_unpack_refuses_a_non_empty_destination_and_leaves_it_alone() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "keep.txt", "mine", 0o644);
        let archive = craft(&[raw_file("a.txt", "x")]);
        let err = unpack(&archive, tmp.path(), &Limits::default()).unwrap_err().to_string();
        assert!(err.contains("it exists and is not an empty directory"), "{err}");
        assert_eq!(fs::read_to_string(tmp.path().join("keep.txt")).unwrap(), "mine");
        assert!(!tmp.path().join("a.txt").exists());
    }

    // ---- refusals ----

    #[test]
    fn archive_refuses_parent_dir_path() {
        let a = craft(&[raw_file("ok.txt", "ok"), raw_file("../evil.sh", "x")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "../evil.sh": a path may not contain "..""#);
        let a = craft(&[raw_file("ok.txt", "ok"), raw_file("a/../../evil.sh", "x")]);
        assert_eq!(
            refused(&a, &Limits::default()),
            r#"entry "a/../../evil.sh": a path may not contain "..""#
        );
    }

    #[test]
    fn archive_refuses_absolute_path() {
        let a = craft(&[raw_file("ok.txt", "ok"), raw_file("/etc/evil", "x")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "/etc/evil": an absolute path is refused"#);
    }

    #[test]
    fn archive_refuses_odd_paths() {
        for (name, reason) in [
            ("a/./b", "a path may not contain \".\" segments"),
            ("a//b", "a path may not contain empty segments (\"//\")"),
            ("a\\b", "a path may not contain a backslash"),
            ("C:/x", "a Windows drive prefix is refused"),
        ] {
            let a = craft(&[raw_file("ok.txt", "ok"), raw_file(name, "x")]);
            assert_eq!(refused(&a, &Limits::default()), format!("entry {name:?}: {reason}"));
        }
        let a = craft(&[raw_file("ok.txt", "ok"), raw_file("./", "x")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "./": an empty path is refused"#);
    }

    #[test]
    fn archive_refuses_non_utf8_names() {
        let mut bad = raw_file("x", "x");
        bad.name = b"caf\xff.txt".to_vec();
        let a = craft(&[raw_file("ok.txt", "ok"), bad]);
        assert_eq!(refused(&a, &Limits::default()), "entry \"caf\u{fffd}.txt\": the path is not valid UTF-8");
    }

    #[test]
    fn archive_refuses_absolute_symlink() {
        let a = craft(&[raw_dir("actions/"), raw_link("actions/link", "/etc/passwd")]);
        assert_eq!(
            refused(&a, &Limits::default()),
            r#"entry "actions/link": symlink to "/etc/passwd" leaves the pack"#
        );
    }

    #[test]
    fn archive_refuses_symlink_climbing_out() {
        let a = craft(&[raw_file("ok.txt", "ok"), raw_link("a", "../../x")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "a": symlink to "../../x" leaves the pack"#);
        let a = craft(&[raw_file("ok.txt", "ok"), raw_link("a/b", "../../x")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "a/b": symlink to "../../x" leaves the pack"#);
        // ".." after a name could climb out of where a symlinked name leads.
        let a = craft(&[raw_link("a/b", ".."), raw_link("c", "a/b/../..")]);
        assert_eq!(
            refused(&a, &Limits::default()),
            r#"entry "c": symlink to "a/b/../.." is refused: ".." may only lead the target"#
        );
        // While these stay inside.
        let ok = craft(&[raw_link("a/b", "../c"), raw_link("a/d", ".."), raw_link("e", "./a/b")]);
        let tmp = tempfile::tempdir().unwrap();
        unpack(&ok, &tmp.path().join("out"), &Limits::default()).unwrap();
    }

    #[test]
    fn archive_refuses_writing_through_a_symlink() {
        let a = craft(&[raw_dir("sub/"), raw_link("d", "sub"), raw_file("d/x", "x")]);
        assert_eq!(
            refused(&a, &Limits::default()),
            r#"entry "d/x": its parent "d" is a symlink; nothing may be written through a symlink"#
        );
        let a = craft(&[raw_file("f", "x"), raw_file("f/x", "x")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "f/x": its parent "f" is a file"#);
    }

    #[test]
    fn archive_refuses_links_and_devices() {
        let mut hard = raw_special("hard", EntryType::Link);
        hard.link = b"ok.txt".to_vec();
        let a = craft(&[raw_file("ok.txt", "ok"), hard]);
        assert_eq!(
            refused(&a, &Limits::default()),
            r#"entry "hard": a hard link is refused (only files, directories and symlinks inside the pack)"#
        );
        for (kind, what) in [
            (EntryType::Char, "a character device"),
            (EntryType::Block, "a block device"),
            (EntryType::Fifo, "a fifo"),
        ] {
            let a = craft(&[raw_file("ok.txt", "ok"), raw_special("dev", kind)]);
            assert_eq!(
                refused(&a, &Limits::default()),
                format!(
                    "entry \"dev\": {what} is refused (only files, directories and symlinks inside the pack)"
                )
            );
        }
    }

    #[test]
    fn archive_refuses_duplicates() {
        let a = craft(&[raw_file("a.txt", "1"), raw_file("a.txt", "2")]);
        assert_eq!(
            refused(&a, &Limits::default()),
            r#"entry "a.txt": the path appears twice in the archive"#
        );
        let a = craft(&[raw_dir("d/"), raw_dir("d")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "d": the path appears twice in the archive"#);
        let a = craft(&[raw_file("x/y", "1"), raw_link("x", "z")]);
        assert_eq!(refused(&a, &Limits::default()), r#"entry "x": the path appears twice in the archive"#);
    }

    #[test]
    fn archive_refuses_too_many_entries() {
        let entries: Vec<Raw> = (0..5).map(|i| raw_file(&format!("f{i}"), "x")).collect();
        let limits = Limits { max_entries: 3, ..Limits::default() };
        assert_eq!(refused(&craft(&entries), &limits), r#"entry "f3": the archive has more than 3 entries"#);
        unpack(&craft(&entries[..3]), &tempfile::tempdir().unwrap().path().join("o"), &limits).unwrap();
    }

    #[test]
    fn archive_refuses_too_much_unpacked_data() {
        let limits = Limits { max_unpacked_bytes: 10, ..Limits::default() };
        let a = craft(&[raw_file("a", "12345"), raw_file("b", "123456")]);
        assert_eq!(
            refused(&a, &limits),
            r#"entry "b": its 6 bytes would bring the unpacked total past the limit of 10"#
        );
        let fits = craft(&[raw_file("a", "12345"), raw_file("b", "12345")]);
        let done = unpack(&fits, &tempfile::tempdir().unwrap().path().join("o"), &limits).unwrap();
        assert_eq!(done, Unpacked { files: 2, bytes: 10 });
    }

    #[test]
    fn archive_refuses_a_decompression_bomb_hidden_in_headers() {
        // A directory entry carrying 1 MiB of data: no file bytes are counted, but the stream is.
        let mut d = raw_dir("d/");
        d.data = vec![0; 1 << 20];
        let limits = Limits { max_unpacked_bytes: 1000, max_entries: 10, ..Limits::default() };
        let err = refused(&craft(&[raw_file("ok.txt", "ok"), d]), &limits);
        let budget = 1000 + (10 + 16) * HEADER_ALLOWANCE_PER_ENTRY;
        assert!(err.starts_with(&format!("the archive expands to more than {budget} bytes")), "{err}");
    }

    #[test]
    fn archive_refuses_a_large_compressed_archive() {
        let a = craft(&[raw_file("ok.txt", "ok")]);
        let limits = Limits { max_archive_bytes: 10, ..Limits::default() };
        assert_eq!(refused(&a, &limits), format!("the archive is {} bytes; the limit is 10", a.len()));
    }

    #[test]
    fn archive_refuses_garbage() {
        let err = refused(b"this is not an archive", &Limits::default());
        assert!(err.starts_with("not a gzip-compressed tar archive: "), "{err}");
        let err = refused(&gzip(b"hello, this is gzip but not tar"), &Limits::default());
        assert!(err.starts_with("not a gzip-compressed tar archive: "), "{err}");
        let err = refused(&[], &Limits::default());
        assert!(err.starts_with("not a gzip-compressed tar archive: "), "{err}");

        // Cut short: the files read so far are removed again.
        let good = craft(&[raw_file("a.txt", &"a".repeat(5000)), raw_file("b.txt", &"b".repeat(5000))]);
        for cut in [good.len() / 2, good.len() - 4] {
            let err = refused(&good[..cut], &Limits::default());
            assert!(err.starts_with("not a gzip-compressed tar archive: "), "{err}");
        }
        // A flipped byte inside the compressed data.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let err = refused(&bad, &Limits::default());
        assert!(err.starts_with("not a gzip-compressed tar archive: "), "{err}");
    }
}
