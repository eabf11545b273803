//! A simulated disk for crash tests: an object store plus [`Disk`] that
//! keeps what was not synced in a volatile layer, and on
//! [`SimDisk::power_loss`] keeps only what a real file system guarantees.
//!
//! It models POSIX the way power-loss bugs need: a file's bytes and the
//! directory entry naming it are made durable separately. A put creates a
//! new file (inode) under its name; [`Disk::sync_file`] makes the bytes of
//! the file now under that name durable, [`Disk::sync_dir`] makes the names
//! in one directory durable (the files and subdirectories created, replaced
//! or removed there). After a power loss a name survives only if its entry
//! and the entries of all its parent directories were synced; its bytes are
//! what was last synced of that file, or — if never synced — a torn prefix
//! of what was written (possibly nothing).
//!
//! [`SimDisk::fail_after`] arms a fuse: after that many more mutations
//! (puts, copies, deletes, syncs) every operation fails, as if the machine
//! had lost power mid-commit; [`SimDisk::power_loss`] then "reboots" it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Display};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use super::{Disk, is_root, parent};

/// A simulated disk; clone the `Arc` to use it as both the store and the
/// disk of a [`super::DurableStore`].
#[derive(Debug, Clone)]
pub struct SimDisk {
    /// Shared by the clones that uploads and delete streams hold.
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// What a reader sees now (bytes only; names are mirrored in `visible`).
    store: Arc<InMemory>,
    /// The file each visible name refers to.
    visible: BTreeMap<Path, u64>,
    /// Durable directory entries: name → file.
    durable: BTreeMap<Path, u64>,
    /// Directories whose entry in their parent is durable.
    durable_dirs: HashSet<Path>,
    /// The durable bytes of each file that was synced.
    synced: HashMap<u64, Bytes>,
    next_file: u64,
    /// Mutations left before the disk fails; `None` is unarmed.
    fuse: Option<u64>,
    failed: bool,
    /// For torn writes: a small deterministic generator.
    seed: u64,
}

fn powered_off() -> object_store::Error {
    object_store::Error::Generic { store: "sim", source: "the simulated disk lost power".into() }
}

impl SimDisk {
    /// An empty disk; `seed` decides how unsynced files tear.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Arc::new(Mutex::new(State {
                store: Arc::new(InMemory::new()),
                visible: BTreeMap::new(),
                durable: BTreeMap::new(),
                durable_dirs: HashSet::new(),
                synced: HashMap::new(),
                next_file: 0,
                fuse: None,
                failed: false,
                seed,
            })),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After `mutations` more puts, copies, deletes or syncs, every
    /// operation fails until [`Self::power_loss`].
    pub fn fail_after(&self, mutations: u64) {
        self.state().fuse = Some(mutations);
    }

    /// Whether the fuse has blown.
    pub fn has_failed(&self) -> bool {
        self.state().failed
    }

    /// Loses power and reboots: only durable names survive, each with its
    /// synced bytes or a torn prefix of its unsynced ones. The fuse is
    /// disarmed.
    pub async fn power_loss(&self) {
        let (old, survivors) = {
            let state = self.state();
            let survivors: Vec<(Path, u64)> = state
                .durable
                .iter()
                .filter(|(name, _)| {
                    let mut dir = parent(name);
                    while !is_root(&dir) {
                        if !state.durable_dirs.contains(&dir) {
                            return false;
                        }
                        dir = parent(&dir);
                    }
                    true
                })
                .map(|(name, file)| (name.clone(), *file))
                .collect();
            (Arc::clone(&state.store), survivors)
        };
        let store = Arc::new(InMemory::new());
        let mut visible = BTreeMap::new();
        let mut synced = HashMap::new();
        for (name, file) in survivors {
            // What was synced survives; of what was written after (the whole
            // file if never synced, appended bytes if it was), a torn prefix.
            let base = self.state().synced.get(&file).cloned().unwrap_or_default();
            let written = match old.get(&name).await {
                Ok(result) if self.state().visible.get(&name) == Some(&file) => {
                    result.bytes().await.unwrap_or_default()
                }
                _ => Bytes::new(),
            };
            let bytes = if written.len() > base.len() && written.starts_with(&base) {
                let mut state = self.state();
                state.seed = state.seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let keep = base.len() + (state.seed >> 33) as usize % (written.len() - base.len());
                written.slice(..keep)
            } else {
                base
            };
            store.put(&name, PutPayload::from(bytes.clone())).await.expect("in-memory put");
            synced.insert(file, bytes);
            visible.insert(name, file);
        }
        let mut state = self.state();
        state.store = store;
        state.durable = visible.clone();
        state.visible = visible;
        state.synced = synced;
        state.durable_dirs = state.visible.keys().flat_map(ancestors).collect();
        state.fuse = None;
        state.failed = false;
    }

    /// Every name a reader sees now, in order.
    pub fn names(&self) -> Vec<Path> {
        self.state().visible.keys().cloned().collect()
    }

    /// Fails if the disk is off; counts a mutation against the fuse.
    fn mutation(&self) -> object_store::Result<Arc<InMemory>> {
        let mut state = self.state();
        if state.failed {
            return Err(powered_off());
        }
        match state.fuse {
            Some(0) => {
                state.failed = true;
                return Err(powered_off());
            }
            Some(n) => state.fuse = Some(n - 1),
            None => {}
        }
        Ok(Arc::clone(&state.store))
    }

    fn read(&self) -> object_store::Result<Arc<InMemory>> {
        let state = self.state();
        if state.failed { Err(powered_off()) } else { Ok(Arc::clone(&state.store)) }
    }

    fn created(&self, location: &Path) {
        let mut state = self.state();
        let file = state.next_file;
        state.next_file += 1;
        state.visible.insert(location.clone(), file);
    }
}

/// The directories above `name`, not counting the root.
fn ancestors(name: &Path) -> Vec<Path> {
    let mut dirs = Vec::new();
    let mut dir = parent(name);
    while !is_root(&dir) {
        dirs.push(dir.clone());
        dir = parent(&dir);
    }
    dirs
}

fn io_off() -> io::Error {
    io::Error::other("the simulated disk lost power")
}

#[async_trait]
impl Disk for SimDisk {
    async fn sync_file(&self, location: &Path) -> io::Result<()> {
        let store = self.mutation().map_err(|_| io_off())?;
        let bytes = store.get(location).await.map_err(io::Error::other)?.bytes().await.map_err(io::Error::other)?;
        let mut state = self.state();
        let Some(&file) = state.visible.get(location) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{location}")));
        };
        state.synced.insert(file, bytes);
        Ok(())
    }

    async fn append(&self, location: &Path, bytes: Bytes) -> io::Result<()> {
        let store = self.mutation().map_err(|_| io_off())?;
        let existing = self.state().visible.contains_key(location);
        let mut content = Vec::new();
        if existing {
            let old = store.get(location).await.map_err(io::Error::other)?.bytes().await.map_err(io::Error::other)?;
            content.extend_from_slice(&old);
        }
        content.extend_from_slice(&bytes);
        store.put(location, PutPayload::from(content)).await.map_err(io::Error::other)?;
        if !existing {
            self.created(location);
        }
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.mutation().map_err(|_| io_off())?;
        let mut state = self.state();
        let in_dir = |name: &Path| parent(name) == *dir;
        let exists = is_root(dir) || state.visible.keys().any(|name| ancestors(name).contains(dir));
        if !exists {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("directory {dir}")));
        }
        // Files named in `dir`: their entries become what is visible now.
        let now: Vec<(Path, u64)> =
            state.visible.iter().filter(|(name, _)| in_dir(name)).map(|(n, f)| (n.clone(), *f)).collect();
        state.durable.retain(|name, _| !in_dir(name));
        state.durable.extend(now);
        // Subdirectories of `dir`: durable if they exist now, forgotten if not.
        let subdirs: HashSet<Path> = state.visible.keys().flat_map(ancestors).filter(|d| parent(d) == *dir).collect();
        state.durable_dirs.retain(|d| parent(d) != *dir);
        state.durable_dirs.extend(subdirs);
        Ok(())
    }
}

impl Display for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimDisk")
    }
}

#[async_trait]
impl ObjectStore for SimDisk {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let store = self.mutation()?;
        let result = store.put_opts(location, payload, opts).await?;
        self.created(location);
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let store = self.read()?;
        let inner = store.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SimUpload { inner, location: location.clone(), disk: self.clone() }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.read()?.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let disk = self.clone();
        locations
            .and_then(move |location| {
                let disk = disk.clone();
                async move {
                    let store = disk.mutation()?;
                    store.delete(&location).await?;
                    disk.state().visible.remove(&location);
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.read() {
            Ok(store) => store.list(prefix),
            Err(e) => futures::stream::once(async { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.read()?.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let store = self.mutation()?;
        store.copy_opts(from, to, options).await?;
        self.created(to);
        Ok(())
    }
}

/// A multipart upload on the simulated disk: one new file when complete.
#[derive(Debug)]
struct SimUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    disk: SimDisk,
}

#[async_trait]
impl MultipartUpload for SimUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.disk.mutation()?;
        let result = self.inner.complete().await?;
        self.disk.created(&self.location);
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}
