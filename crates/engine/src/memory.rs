//! Memory for query execution: each query of a session with a
//! `memory_limit` runs in a [`QueryPool`] of that size, which also draws
//! every byte from the engine-wide pool (`execution.memory_limit`), so one
//! query cannot take more than its session allows and all queries together
//! stay within the server's limit. Spilling operators (sorts, grouped
//! aggregates) share the query's pool fairly and spill inside it; anything
//! else that does not fit fails the query with SQLSTATE 53200.

use std::num::NonZeroUsize;
use std::sync::Arc;

use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};

/// A query's pool: `limit` bytes, each also reserved from the engine's pool.
#[derive(Debug)]
pub struct QueryPool {
    inner: Arc<dyn MemoryPool>,
    /// What this query holds of the engine's pool.
    parent: MemoryReservation,
    /// `None`: only the engine's limit.
    limit: Option<usize>,
    /// The most this query has held.
    peak: std::sync::atomic::AtomicUsize,
}

impl QueryPool {
    /// A pool of `limit` bytes (`None`: as much as the engine has) drawing from `engine`.
    pub fn new(limit: Option<usize>, engine: &Arc<dyn MemoryPool>) -> Self {
        let top = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner: Arc::new(TrackConsumersPool::new(FairSpillPool::new(limit.unwrap_or(usize::MAX)), top)),
            parent: MemoryConsumer::new("query").register(engine),
            limit,
            peak: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The most memory the query has held, in bytes.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_peak(&self) {
        self.peak.fetch_max(self.inner.reserved(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.limit {
            Some(limit) => write!(f, "query pool of {limit} bytes ({} reserved)", self.inner.reserved()),
            None => write!(f, "query pool ({} reserved)", self.inner.reserved()),
        }
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.parent.grow(additional);
        self.inner.grow(reservation, additional);
        self.note_peak();
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.parent.shrink(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> datafusion::error::Result<()> {
        self.parent.try_grow(additional)?;
        if let Err(e) = self.inner.try_grow(reservation, additional) {
            self.parent.shrink(additional);
            return Err(e);
        }
        self.note_peak();
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.limit.map_or(MemoryLimit::Infinite, MemoryLimit::Finite)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    use super::*;

    #[test]
    fn queries_stay_within_their_limit_and_the_engines() {
        let engine: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(100));
        let first: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(Some(80), &engine));
        let second: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(Some(80), &engine));
        let a = MemoryConsumer::new("a").register(&first);
        assert!(a.try_grow(90).is_err(), "past the query's own limit");
        a.try_grow(60).unwrap();
        assert_eq!(engine.reserved(), 60);
        let b = MemoryConsumer::new("b").register(&second);
        assert!(b.try_grow(60).is_err(), "within its limit, but past what the engine has left");
        assert_eq!((engine.reserved(), second.reserved()), (60, 0), "a refused grow holds nothing");
        b.try_grow(40).unwrap();
        drop(a);
        assert_eq!(engine.reserved(), 40, "a query's memory returns to the engine");
        b.try_grow(40).unwrap();
        drop(b);
        assert_eq!(engine.reserved(), 0);
        let second = second.downcast_ref::<QueryPool>().map(QueryPool::peak);
        assert_eq!(second, Some(80), "the peak is what the query held at most");
    }
}
