//! A worker pool for whole runs: each item runs start to finish on one thread
//! (a simulation never moves between threads, so it stays deterministic), and
//! results come back in item order whatever order they finish in, so the output
//! of a parallel sweep is the same as a sequential one.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// Run `work` over `items` on `jobs` threads.
///
/// `finished` sees each result as it arrives (for progress); `emit` then gets
/// every result in item order, as soon as all earlier ones are in. Once `stop`
/// is set, workers take no new items; those already running finish and are
/// emitted, in order, after the earlier ones.
pub fn ordered<T, R, W, F, E>(
    items: &[T],
    jobs: NonZeroUsize,
    stop: &AtomicBool,
    work: W,
    finished: F,
    emit: E,
) where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    F: FnMut(&R),
    E: FnMut(usize, R),
{
    ordered_by(items.len(), |i| &items[i], jobs, stop, work, finished, emit);
}

/// [`ordered`] over items made on demand: `item(i)` for `i` in `0..count`, so
/// a sweep with no end (a time budget) never holds its items in memory.
pub fn ordered_by<T, R, I, W, F, E>(
    count: usize,
    item: I,
    jobs: NonZeroUsize,
    stop: &AtomicBool,
    work: W,
    mut finished: F,
    mut emit: E,
) where
    R: Send,
    I: Fn(usize) -> T + Sync,
    W: Fn(T) -> R + Sync,
    F: FnMut(&R),
    E: FnMut(usize, R),
{
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, R)>();
    std::thread::scope(|scope| {
        for _ in 0..jobs.get().min(count.max(1)) {
            let (tx, next, work, item) = (tx.clone(), &next, &work, &item);
            scope.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= count {
                        break;
                    }
                    if tx.send((i, work(item(i)))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut cursor = 0;
        for (i, r) in rx {
            finished(&r);
            waiting.insert(i, r);
            while let Some(r) = waiting.remove(&cursor) {
                emit(cursor, r);
                cursor += 1;
            }
        }
        // Only after a stop: results past a gap left by items never started.
        for (i, r) in waiting {
            emit(i, r);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("non-zero")
    }

    #[test]
    fn results_come_out_in_item_order_however_they_finish() {
        // Early items take longest, so they finish last.
        let items: Vec<u64> = (0..12).collect();
        let mut seen = Vec::new();
        let mut count = 0;
        ordered(
            &items,
            jobs(4),
            &AtomicBool::new(false),
            |n| {
                std::thread::sleep(std::time::Duration::from_millis(2 * (12 - n)));
                n * 10
            },
            |_| count += 1,
            |i, r| seen.push((i, r)),
        );
        assert_eq!(count, 12);
        let want: Vec<(usize, u64)> = (0..12).map(|i| (i, i as u64 * 10)).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_stop_starts_no_new_items_and_still_emits_the_finished_ones() {
        let items: Vec<u64> = (0..100).collect();
        let stop = AtomicBool::new(false);
        let mut seen = Vec::new();
        ordered(
            &items,
            jobs(2),
            &stop,
            |n| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                *n
            },
            |r| {
                if *r == 3 {
                    stop.store(true, Ordering::SeqCst);
                }
            },
            |i, _| seen.push(i),
        );
        assert!(seen.contains(&3) && seen.len() < 100, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    }

    #[test]
    fn no_items_no_calls() {
        ordered(
            &[] as &[u8],
            jobs(3),
            &AtomicBool::new(false),
            |_| (),
            |_| panic!("no item"),
            |_, _| panic!("no item"),
        );
    }
}
