//! Sorted runs, levels and the universal compaction pick: pure decisions
//! over the current manifest's runs, carried out by [`crate::compact`].
//!
//! # Sorted runs and levels
//!
//! Every write adds a level-0 file. Compaction merges runs into one run at a
//! level 1..=[`MAX_LEVEL`]; all files of a level form one run (their key
//! ranges do not overlap). Runs are ordered newest first: level-0 files by
//! sequence number, then levels 1, 2, …. Consecutive level-0 files whose
//! key ranges do not overlap form one run too (unlike Paimon, where each
//! is a run): writes of new keys in key order (time-ordered ids) then add no
//! runs, and reads have nothing to merge.
//!
//! # Picking (Paimon's universal compaction)
//!
//! Below `num-sorted-run.compaction-trigger` runs, a compaction is due only
//! when level-0 files reach [`LEVEL0_FILES_PER_TRIGGER`] times the trigger;
//! it gathers the level-0 runs into a level (files that do not overlap are
//! concatenated, not merged). From the trigger on:
//! 1. *Size amplification*: if the runs above the oldest are together more
//!    than `compaction.max-size-amplification-percent` of the oldest, all
//!    runs are merged (a full compaction).
//! 2. *Size ratio*: starting from the newest run, runs are added while the
//!    next run is no bigger than the picked ones (plus `compaction.size-ratio`
//!    percent); two or more picked runs are merged.
//! 3. *Run count*: otherwise the newest `runs - trigger + 1` runs are merged.
//!

use crate::file::FileMeta;
use crate::options::TableOptions;

/// The highest LSM level (Paimon's default `num-levels` minus one).
pub const MAX_LEVEL: u32 = 5;

/// One sorted run of the current manifest.
#[derive(Debug, Clone)]
pub struct SortedRun {
    /// Its level.
    pub level: u32,
    /// Its files, in key order.
    pub files: Vec<FileMeta>,
}

impl SortedRun {
    pub(crate) fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Level-0 files that make a compaction due even when their sorted runs
/// are fewer than the trigger (files of new keys in key order, such as
/// time-ordered ids, form one run however many there are), per
/// `num-sorted-run.compaction-trigger`.
pub const LEVEL0_FILES_PER_TRIGGER: usize = 4;

/// Whether `runs` call for a compaction (or, at `stop`, a write stall).
pub(crate) fn due(runs: &[SortedRun], options: &TableOptions, stop: bool) -> bool {
    let limit = if stop { options.stop_trigger() } else { options.compaction_trigger };
    let level0_files: usize = runs.iter().filter(|r| r.level == 0).map(|r| r.files.len()).sum();
    runs.len() >= limit || level0_files >= limit * LEVEL0_FILES_PER_TRIGGER
}

/// How many of the newest `runs` to merge, and into which level.
pub fn pick(runs: &[SortedRun], options: &TableOptions) -> Option<(usize, u32)> {
    if !due(runs, options, false) || runs.is_empty() {
        return None;
    }
    if runs.len() < options.compaction_trigger.max(2) {
        // Many level-0 files in few runs: gather the level-0 runs into a level.
        let level0 = runs.iter().take_while(|r| r.level == 0).count();
        return Some(unit(runs, level0.max(1)));
    }
    let sizes: Vec<u64> = runs.iter().map(SortedRun::bytes).collect();
    // 1. Size amplification.
    let (newer, oldest) = (sizes[..sizes.len() - 1].iter().sum::<u64>(), sizes[sizes.len() - 1]);
    if newer.saturating_mul(100) > options.max_size_amplification_percent.saturating_mul(oldest) {
        return Some((runs.len(), MAX_LEVEL));
    }
    // 2. Size ratio.
    if let Some(unit) = pick_by_ratio(runs, &sizes, options, 1, false) {
        return Some(unit);
    }
    // 3. Run count.
    let count = runs.len() - options.compaction_trigger + 1;
    pick_by_ratio(runs, &sizes, options, count.max(2), true)
}

fn pick_by_ratio(
    runs: &[SortedRun],
    sizes: &[u64],
    options: &TableOptions,
    mut count: usize,
    force: bool,
) -> Option<(usize, u32)> {
    let mut candidate: u64 = sizes[..count.min(sizes.len())].iter().sum();
    while count < runs.len() {
        if candidate.saturating_mul(100 + options.size_ratio) / 100 < sizes[count] {
            break;
        }
        candidate += sizes[count];
        count += 1;
    }
    (force || count > 1).then(|| unit(runs, count))
}

/// The output level for merging the newest `count` runs (extending the pick
/// into the next run when no level between is free).
fn unit(runs: &[SortedRun], mut count: usize) -> (usize, u32) {
    if count >= runs.len() {
        return (runs.len(), MAX_LEVEL);
    }
    let mut level = runs[count].level.saturating_sub(1);
    if level == 0 {
        // Merge into the next non-level-0 run.
        while count < runs.len() {
            let next = runs[count].level;
            count += 1;
            if next != 0 {
                level = next;
                break;
            }
        }
        if count >= runs.len() {
            return (runs.len(), MAX_LEVEL);
        }
    }
    (count, level)
}
