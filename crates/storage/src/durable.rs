//! Durable writes: an object store whose every completed write is on stable
//! storage.
//!
//! Object stores such as S3 acknowledge a put only once it is durable. A
//! local file system does not: `LocalFileSystem` writes a temporary file and
//! renames (or, for a conditional create, hard-links) it into place, and
//! both the file's bytes and the directory entry that names it stay in the
//! page cache until the kernel gets round to them — a power cut after the
//! client was told `INSERT 0 1` could lose the row, or leave a snapshot that
//! names a data file with no bytes.
//!
//! [`DurableStore`] gives a local disk the object-store contract. It wraps
//! the store that does the writing and a [`Disk`] that knows how to make
//! things durable, and before any mutation returns it
//! - syncs the written file's bytes (`fdatasync`),
//! - syncs the directory that holds its name (`fsync` of the directory), and
//!   every parent directory not yet known durable, up to the root (a
//!   directory made by this write is itself an entry of its parent),
//! - after a delete, syncs the directory the name was removed from (or,
//!   where the store removed emptied directories, the nearest one left).
//!
//! Commits therefore need no sync calls of their own: [`crate::Table`]
//! writes data files, then the manifest, then claims the snapshot, each put
//! returning only once durable, so a snapshot that survives a power loss
//! names only files that survived it too.
//!
//! Small writes would still pay a file sync and a directory sync for each
//! of the data file, manifest and snapshot of every commit. [`log::LogStore`]
//! (the server's default over a local directory) puts a write-ahead log in
//! front: small objects are appended to one log segment and synced together
//! — one `fdatasync` for every commit of a group — held in memory, and
//! written out as files in the background, where one sync round covers many
//! commits. Group commit above it folds concurrent commits into one.
//!
//! [`Disk`] is an interface so the crash model test can run this same code
//! over a simulated disk ([`sim::SimDisk`]) that forgets whatever was not
//! synced when it "loses power".

pub mod log;
pub mod sim;

use std::collections::HashSet;
use std::fmt::{self, Debug, Display};
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, UploadPart,
};

/// The durability primitives of the file system under an object store.
#[async_trait]
pub trait Disk: Send + Sync + Debug + 'static {
    /// Makes the bytes of the file at `location` durable.
    async fn sync_file(&self, location: &Path) -> io::Result<()>;

    /// Makes the entries of directory `dir` durable: the files and
    /// directories created, renamed or removed in it. The root is the empty
    /// path. A directory that does not exist is [`io::ErrorKind::NotFound`].
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// Appends `bytes` to the file at `location`, creating it (and its
    /// directories) if missing. Like any write, durable only once
    /// [`Disk::sync_file`] (and, for a new file, [`Disk::sync_dir`]) returns;
    /// a power loss before that keeps a prefix of the appended bytes.
    async fn append(&self, location: &Path, bytes: Bytes) -> io::Result<()>;
}

/// The parent directory of `location` (the root for a top-level name).
fn parent(location: &Path) -> Path {
    let parts: Vec<_> = location.parts().collect();
    Path::from_iter(parts[..parts.len().saturating_sub(1)].iter().cloned())
}

fn is_root(dir: &Path) -> bool {
    dir.parts().next().is_none()
}

fn store_error(operation: &str, location: &Path, source: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "durable",
        source: format!("cannot make {operation} of {location} durable: {source}").into(),
    }
}

/// What the store and its uploads share: the disk, and the directories whose
/// own entry is known to be durable already (so a write syncs one directory,
/// not its whole path, once the table's directories exist).
#[derive(Debug)]
struct Shared {
    disk: Arc<dyn Disk>,
    durable_dirs: Mutex<HashSet<Path>>,
}

impl Shared {
    fn is_durable_dir(&self, dir: &Path) -> bool {
        self.durable_dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(dir)
    }

    fn set_durable_dir(&self, dir: Path, durable: bool) {
        let mut dirs = self.durable_dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if durable {
            dirs.insert(dir);
        } else {
            dirs.remove(&dir);
        }
    }

    /// The file at `location` was written (or copied there): its bytes, its
    /// name and the names of its new parent directories become durable.
    async fn written(&self, location: &Path) -> object_store::Result<()> {
        self.disk.sync_file(location).await.map_err(|e| store_error("the write", location, e))?;
        let mut dir = parent(location);
        self.disk.sync_dir(&dir).await.map_err(|e| store_error("the write", location, e))?;
        while !is_root(&dir) && !self.is_durable_dir(&dir) {
            let up = parent(&dir);
            self.disk.sync_dir(&up).await.map_err(|e| store_error("the write", location, e))?;
            self.set_durable_dir(dir, true);
            dir = up;
        }
        Ok(())
    }

    /// The file at `location` was removed: the removal becomes durable. A
    /// directory the store removed because it became empty is no longer
    /// known durable (it may be made again), and its parent is synced.
    async fn removed(&self, location: &Path) -> object_store::Result<()> {
        let mut dir = parent(location);
        loop {
            match self.disk.sync_dir(&dir).await {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !is_root(&dir) => {
                    self.set_durable_dir(dir.clone(), false);
                    dir = parent(&dir);
                }
                Err(e) => return Err(store_error("the delete", location, e)),
            }
        }
    }
}

/// A put marked with this extension (in [`PutOptions::extensions`]; see
/// [`deferred`]) need not be durable when it returns, only once a later
/// put to the same store that is not deferred returns: a commit writes its
/// data files and manifest deferred, then claims the snapshot, whose sync
/// covers them. Only [`log::LogStore`] defers, because its records become
/// durable in the order they were written (a lost tail loses the snapshot
/// claim with whatever it covered); every other store syncs each put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferSync;

/// Options of a plain overwrite put marked [`DeferSync`].
pub fn deferred() -> PutOptions {
    let mut options = PutOptions::default();
    options.extensions.insert(DeferSync);
    options
}

/// An object store whose puts, copies and deletes return only once durable.
#[derive(Debug, Clone)]
pub struct DurableStore {
    inner: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
}

impl DurableStore {
    /// `inner` does the reads and writes, `disk` syncs what it wrote; both
    /// must see the same files.
    pub fn new(inner: Arc<dyn ObjectStore>, disk: Arc<dyn Disk>) -> Self {
        Self { inner, shared: Arc::new(Shared { disk, durable_dirs: Mutex::new(HashSet::new()) }) }
    }

    /// A durable store over the local directory `root`, which must exist.
    /// Directories emptied by deletes are removed.
    ///
    /// # Errors
    /// `root` cannot be opened.
    pub fn local(root: &std::path::Path) -> object_store::Result<Self> {
        let inner = LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true);
        let root = std::fs::canonicalize(root)
            .map_err(|e| object_store::Error::Generic { store: "durable", source: Box::new(e) })?;
        Ok(Self::new(Arc::new(inner), Arc::new(LocalDisk { root })))
    }
}

impl DurableStore {
    /// The store underneath, whose writes are not synced: for callers that
    /// write many files and then make them durable at once with
    /// [`Self::sync_written`].
    pub(crate) fn unsynced(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    pub(crate) fn disk(&self) -> &Arc<dyn Disk> {
        &self.shared.disk
    }

    /// Makes files written through [`Self::unsynced`] durable: each file's
    /// bytes, then each directory holding them once. A file deleted since
    /// is skipped (its removal was made durable by the delete).
    pub(crate) async fn sync_written(&self, locations: &[Path]) -> object_store::Result<()> {
        let mut dirs = Vec::new();
        for location in locations {
            match self.shared.disk.sync_file(location).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(store_error("the write", location, e)),
            }
            let dir = parent(location);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            // The directory's entries, then any parents not yet known durable.
            match self.shared.disk.sync_dir(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(store_error("the write", &dir, e)),
            }
            let mut dir = dir;
            while !is_root(&dir) && !self.shared.is_durable_dir(&dir) {
                let up = parent(&dir);
                self.shared.disk.sync_dir(&up).await.map_err(|e| store_error("the write", &dir, e))?;
                self.shared.set_durable_dir(dir, true);
                dir = up;
            }
        }
        Ok(())
    }
}

impl Display for DurableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for DurableStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.shared.written(location).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload { inner, location: location.clone(), shared: Arc::clone(&self.shared) }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let shared = Arc::clone(&self.shared);
        self.inner
            .delete_stream(locations)
            .and_then(move |location| {
                let shared = Arc::clone(&shared);
                async move {
                    shared.removed(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.shared.written(to).await
    }
}

/// A multipart upload (how Parquet files are streamed out) that is durable
/// once complete.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    shared: Arc<Shared>,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        self.shared.written(&self.location).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// A local directory: `fdatasync` of files, `fsync` of directories.
#[derive(Debug)]
pub struct LocalDisk {
    root: std::path::PathBuf,
}

impl LocalDisk {
    fn path(&self, location: &Path) -> std::path::PathBuf {
        let mut path = self.root.clone();
        path.extend(location.parts().map(|part| part.as_ref().to_string()));
        path
    }
}

#[async_trait]
impl Disk for LocalDisk {
    async fn sync_file(&self, location: &Path) -> io::Result<()> {
        let path = self.path(location);
        tokio::task::spawn_blocking(move || std::fs::File::open(path)?.sync_data()).await.map_err(io::Error::other)?
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let path = self.path(dir);
        tokio::task::spawn_blocking(move || std::fs::File::open(path)?.sync_all()).await.map_err(io::Error::other)?
    }

    /// A write of a log record to the page cache: small, so done in place
    /// rather than on the blocking pool (whose hand-off costs more).
    async fn append(&self, location: &Path, bytes: Bytes) -> io::Result<()> {
        use std::io::Write as _;
        let path = self.path(location);
        let open = || std::fs::OpenOptions::new().create(true).append(true).open(&path);
        let mut file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                open()?
            }
            other => other?,
        };
        file.write_all(&bytes)
    }
}

/// Removes the temporary files a crashed `LocalFileSystem` write left under
/// `root` (`<name>#<n>`: staged puts and uploads, never listed by the store),
/// returning how many. Only safe while no other process writes under `root`:
/// call it with the data directory locked.
///
/// # Errors
/// A directory under `root` cannot be read, or a file removed.
pub fn remove_staged_local_files(root: &std::path::Path) -> io::Result<usize> {
    let mut removed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && is_staged_name(&entry.file_name().to_string_lossy()) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            std::fs::File::open(&dir)?.sync_all()?;
        }
    }
    Ok(removed)
}

/// `LocalFileSystem`'s staging names: `<name>#<digits>`.
fn is_staged_name(name: &str) -> bool {
    matches!(name.rsplit_once('#'), Some((_, suffix)) if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[test]
    fn parents_and_staged_names() {
        assert_eq!(parent(&Path::from("a/b/c")), Path::from("a/b"));
        assert!(is_root(&parent(&Path::from("a"))));
        assert!(is_staged_name("snapshot-3#1"));
        assert!(!is_staged_name("snapshot-3"));
        assert!(!is_staged_name("x#y"));
    }

    #[tokio::test]
    async fn local_writes_are_synced_and_staged_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableStore::local(dir.path()).unwrap();
        let location = Path::from("s/t/snapshot/snapshot-1");
        store
            .put_opts(&location, PutPayload::from_static(b"one"), PutOptions::from(object_store::PutMode::Create))
            .await
            .unwrap();
        assert!(store.shared.is_durable_dir(&Path::from("s/t/snapshot")));
        assert!(store.shared.is_durable_dir(&Path::from("s")));
        let again = store
            .put_opts(&location, PutPayload::from_static(b"two"), PutOptions::from(object_store::PutMode::Create))
            .await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        std::fs::write(dir.path().join("s/t/snapshot/snapshot-2#1"), b"torn").unwrap();
        assert_eq!(remove_staged_local_files(dir.path()).unwrap(), 1);
        assert_eq!(store.get(&location).await.unwrap().bytes().await.unwrap().as_ref(), b"one");
        // Deleting the last file removes its directories; they are no longer known durable.
        store.delete(&location).await.unwrap();
        assert!(!store.shared.is_durable_dir(&Path::from("s/t/snapshot")));
    }
}
