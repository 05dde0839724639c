//! The producer table: for each agent spool `(agent_id, epoch)`, the next spool sequence number
//! the log expects. It is what makes a resent batch an append-at-most-once.
//!
//! [`Producers::admit`] is the pure core the writer asks for every batch: which of its chunks
//! are new. [`Producers::advance`] is called only once the append succeeded, and
//! [`Producers::note`] while recovery scans the log, so the table never claims a chunk that is
//! not in the log.
//!
//! An agent ships several batches in flight, in order; when the append of one fails
//! ([`Producers::stall`]) the ones behind it must not be appended before it is sent again, or
//! its chunks would later look like duplicates and be lost. So a spool whose append failed at
//! sequence `s` is held: batches that start past `s` are answered `Unavailable` until a batch
//! that covers `s` is appended. The hold lives in memory only: after a restart the agent
//! resends from its cursor, in order, on a new connection.

use std::collections::HashMap;

/// The next expected sequence number of each agent spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producers {
    next: HashMap<(String, u64), u64>,
    /// Spools whose append failed, and the first sequence number that must come again.
    held: HashMap<(String, u64), u64>,
}

/// What the log does with a batch of chunks `first_seq .. first_seq + chunks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Every chunk is in the log already: answer `Duplicate`.
    Duplicate {
        /// Chunks it holds (all of them).
        chunks: usize,
    },
    /// Append the chunks after the first `skip` (which the log has).
    Append {
        /// Leading chunks already in the log.
        skip: usize,
        /// The batch starts past the expected sequence number (`(expected, got)`): chunks in
        /// between never arrived (spool damage at the agent). Appended anyway, and counted.
        gap: Option<(u64, u64)>,
    },
    /// An earlier batch of this spool failed to append: answer `Unavailable` and append
    /// nothing until a batch from `resume_at` comes.
    Hold {
        /// The first sequence number the spool must send again.
        resume_at: u64,
    },
}

impl Producers {
    /// A table from recovered `(agent_id, epoch, next)` entries.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, u64, u64)>) -> Self {
        Self {
            next: entries.into_iter().map(|(a, e, n)| ((a, e), n)).collect(),
            held: HashMap::new(),
        }
    }

    /// The entries, for the checkpoint.
    pub fn entries(&self) -> Vec<(String, u64, u64)> {
        self.next
            .iter()
            .map(|((a, e), n)| (a.clone(), *e, *n))
            .collect()
    }

    /// Agent spools known.
    pub fn len(&self) -> usize {
        self.next.len()
    }

    /// No spool known.
    pub fn is_empty(&self) -> bool {
        self.next.is_empty()
    }

    /// Which of the `chunks` chunks starting at `first_seq` of spool `(agent_id, epoch)` are
    /// new. `chunks` is at least 1 (a checked batch holds chunks).
    pub fn admit(&self, agent_id: &str, epoch: u64, first_seq: u64, chunks: usize) -> Admission {
        debug_assert!(chunks > 0, "a checked batch holds chunks");
        let key = (agent_id.to_string(), epoch);
        if let Some(&resume_at) = self.held.get(&key)
            && first_seq > resume_at
        {
            return Admission::Hold { resume_at };
        }
        let expected = self.next.get(&key).copied().unwrap_or(0);
        let skip = usize::try_from(expected.saturating_sub(first_seq))
            .unwrap_or(usize::MAX)
            .min(chunks);
        if skip == chunks {
            return Admission::Duplicate { chunks };
        }
        let gap = (first_seq > expected && expected > 0).then_some((expected, first_seq));
        Admission::Append { skip, gap }
    }

    /// Records that chunks up to (not including) `end` of the spool are in the log. The
    /// expected sequence number only grows.
    pub fn advance(&mut self, agent_id: &str, epoch: u64, end: u64) {
        let key = (agent_id.to_string(), epoch);
        if self
            .held
            .get(&key)
            .is_some_and(|&resume_at| end > resume_at)
        {
            self.held.remove(&key);
        }
        let next = self.next.entry(key).or_default();
        *next = (*next).max(end);
    }

    /// Records that the chunk at `seq` was refused for good (the agent keeps it aside and goes
    /// on with the next): a hold waiting for `seq` now waits for `seq + 1`.
    pub fn pass(&mut self, agent_id: &str, epoch: u64, seq: u64) {
        if let Some(resume_at) = self.held.get_mut(&(agent_id.to_string(), epoch))
            && *resume_at == seq
        {
            *resume_at = seq.saturating_add(1);
        }
    }

    /// Records that appending the spool's chunks from `seq` failed: batches that start past it
    /// are held until one from `seq` or earlier is appended.
    pub fn stall(&mut self, agent_id: &str, epoch: u64, seq: u64) {
        let resume_at = self
            .held
            .entry((agent_id.to_string(), epoch))
            .or_insert(seq);
        *resume_at = (*resume_at).min(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_spool_takes_everything() {
        let p = Producers::default();
        assert_eq!(
            p.admit("a", 1, 0, 3),
            Admission::Append { skip: 0, gap: None }
        );
    }

    #[test]
    fn a_resend_is_a_duplicate_and_an_overlap_appends_the_new_part() {
        let mut p = Producers::default();
        p.advance("a", 1, 5);
        assert_eq!(p.admit("a", 1, 0, 5), Admission::Duplicate { chunks: 5 });
        assert_eq!(p.admit("a", 1, 2, 3), Admission::Duplicate { chunks: 3 });
        assert_eq!(
            p.admit("a", 1, 3, 4),
            Admission::Append { skip: 2, gap: None }
        );
        assert_eq!(
            p.admit("a", 1, 5, 1),
            Admission::Append { skip: 0, gap: None }
        );
    }

    #[test]
    fn spools_are_apart_by_agent_and_epoch() {
        let mut p = Producers::default();
        p.advance("a", 1, 5);
        assert!(matches!(
            p.admit("a", 2, 0, 1),
            Admission::Append { skip: 0, .. }
        ));
        assert!(matches!(
            p.admit("b", 1, 0, 1),
            Admission::Append { skip: 0, .. }
        ));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_gap_is_reported_and_appended() {
        let mut p = Producers::default();
        p.advance("a", 1, 5);
        assert_eq!(
            p.admit("a", 1, 8, 2),
            Admission::Append {
                skip: 0,
                gap: Some((5, 8))
            }
        );
    }

    #[test]
    fn after_a_failed_append_the_batches_behind_it_wait_for_it() {
        let mut p = Producers::default();
        p.advance("a", 1, 10);
        // Batches 10..20, 20..30 and 30..40 are in flight; 10..20 fails to append.
        p.stall("a", 1, 10);
        assert_eq!(p.admit("a", 1, 20, 10), Admission::Hold { resume_at: 10 });
        assert_eq!(p.admit("a", 1, 30, 10), Admission::Hold { resume_at: 10 });
        // Other spools are not held.
        assert_eq!(
            p.admit("a", 2, 0, 1),
            Admission::Append { skip: 0, gap: None }
        );
        assert_eq!(
            p.admit("b", 1, 0, 1),
            Admission::Append { skip: 0, gap: None }
        );
        // The failed batch comes again (or one that overlaps it) and is admitted ...
        assert_eq!(
            p.admit("a", 1, 10, 10),
            Admission::Append { skip: 0, gap: None }
        );
        assert_eq!(
            p.admit("a", 1, 5, 10),
            Admission::Append { skip: 5, gap: None }
        );
        // ... a failure further on keeps the earliest point ...
        p.stall("a", 1, 25);
        assert_eq!(p.admit("a", 1, 20, 10), Admission::Hold { resume_at: 10 });
        // ... and once it is appended the rest follow in order.
        p.advance("a", 1, 20);
        assert_eq!(
            p.admit("a", 1, 20, 10),
            Admission::Append { skip: 0, gap: None }
        );
        p.advance("a", 1, 30);
        assert_eq!(
            p.admit("a", 1, 30, 10),
            Admission::Append { skip: 0, gap: None }
        );
    }

    #[test]
    fn a_chunk_refused_for_good_moves_the_hold_past_it() {
        let mut p = Producers::default();
        p.stall("a", 1, 10);
        p.pass("a", 1, 9);
        assert_eq!(p.admit("a", 1, 11, 1), Admission::Hold { resume_at: 10 });
        p.pass("a", 1, 10);
        assert!(matches!(
            p.admit("a", 1, 11, 1),
            Admission::Append { skip: 0, .. }
        ));
        assert_eq!(p.admit("a", 1, 12, 1), Admission::Hold { resume_at: 11 });
    }

    #[test]
    fn a_hold_clears_only_when_the_failed_sequence_is_in_the_log() {
        let mut p = Producers::default();
        p.stall("a", 1, 0);
        // A duplicate below the hold changes nothing (nothing was appended).
        assert_eq!(p.admit("a", 1, 1, 1), Admission::Hold { resume_at: 0 });
        p.advance("a", 1, 0);
        assert_eq!(p.admit("a", 1, 1, 1), Admission::Hold { resume_at: 0 });
        p.advance("a", 1, 1);
        assert_eq!(
            p.admit("a", 1, 1, 1),
            Admission::Append { skip: 0, gap: None }
        );
    }

    #[test]
    fn the_expected_number_only_grows() {
        let mut p = Producers::default();
        p.advance("a", 1, 9);
        p.advance("a", 1, 4);
        assert_eq!(p.admit("a", 1, 8, 1), Admission::Duplicate { chunks: 1 });
        let q = Producers::from_entries(p.entries());
        assert_eq!(q, p);
    }

    #[test]
    fn sequence_numbers_near_the_top_do_not_overflow() {
        let mut p = Producers::default();
        p.advance("a", 1, u64::MAX);
        assert_eq!(p.admit("a", 1, 0, 7), Admission::Duplicate { chunks: 7 });
    }
}
