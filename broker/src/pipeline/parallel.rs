//! Aggregators side by side. After the enricher chain the aggregators are independent: each
//! maps the same batch and folds its own rows into its own windows. [`each`] runs such
//! per-aggregator work on up to `pipeline_aggregator_threads` threads, each aggregator wholly
//! on one thread, so every aggregator still sees the batch's events in log order. What the
//! step does with the results (counts, pauses, dead letters, the commit) stays on the pipeline
//! thread, in deploy order, so the outcome is the same as one after another.

/// Applies `f` to every item on up to `threads` threads (the calling one included) and returns
/// the results in the items' order. Items are dealt round-robin; each is handled by one
/// thread. A panic in `f` is passed on to the caller.
pub(super) fn each<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let mut groups: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        groups[i % threads].push((i, item));
    }
    let f = &f;
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let mut groups = groups.into_iter();
        let mine = groups.next().expect("at least two groups");
        let others: Vec<_> = groups
            .map(|group| {
                std::thread::Builder::new()
                    .name("pipeline-agg".into())
                    .spawn_scoped(s, move || {
                        group
                            .into_iter()
                            .map(|(i, t)| (i, f(t)))
                            .collect::<Vec<_>>()
                    })
                    .expect("starting a pipeline aggregator thread")
            })
            .collect();
        for (i, t) in mine {
            results[i] = Some(f(t));
        }
        for h in others {
            match h.join() {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// The threads `pipeline_aggregator_threads` asks for (0: one per core).
pub(super) fn threads(setting: usize) -> usize {
    if setting > 0 {
        return setting;
    }
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_item_order_whatever_the_threads() {
        for threads in [1, 2, 3, 8] {
            let items: Vec<u64> = (0..7).collect();
            let out = each(items, threads, |x| {
                (x * 10, std::thread::current().name().map(str::to_string))
            });
            let values: Vec<u64> = out.iter().map(|(v, _)| *v).collect();
            assert_eq!(values, [0, 10, 20, 30, 40, 50, 60], "{threads} threads");
            let helpers = out
                .iter()
                .filter(|(_, name)| name.as_deref() == Some("pipeline-agg"))
                .count();
            // Round-robin: the calling thread takes items 0, t, 2t, …
            let mine = 7usize.div_ceil(threads.min(7));
            assert_eq!(helpers, 7 - mine, "{threads} threads");
        }
        assert!(each(Vec::<u8>::new(), 4, |x| x).is_empty());
    }

    #[test]
    fn each_item_is_handled_once_with_exclusive_access() {
        let mut state = vec![0u32; 5];
        let refs: Vec<&mut u32> = state.iter_mut().collect();
        each(refs, 2, |s| *s += 1);
        assert_eq!(state, [1; 5]);
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn a_panic_on_a_helper_thread_reaches_the_caller() {
        each(vec![0, 1], 2, |x| assert!(x == 0, "boom"));
    }

    #[test]
    fn zero_means_one_per_core() {
        assert!(threads(0) >= 1);
        assert_eq!(threads(3), 3);
    }
}
