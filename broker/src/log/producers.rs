//! The producer table: for each agent spool `(agent_id, epoch)`, the next spool sequence number
//! the log expects. It is what makes a resent batch an append-at-most-once.
//!
//! [`Producers::admit`] is the pure core the writer asks for every batch: which of its chunks
//! are new. [`Producers::advance`] is called only once the append succeeded, and
//! [`Producers::note`] while recovery scans the log, so the table never claims a chunk that is
//! not in the log.
//!
//! An agent ships several batches in flight, in order, each naming where its previous batch
//! ended (`prev_end`). A batch that starts past the expected number is appended only when the
//! agent declares the gap (`prev_end` at most the expected number: the records in between are
//! gone from its spool); otherwise an earlier batch is missing, because its append failed or
//! it is still on an abandoned stream, and the batch is held ([`Admission::Hold`]). Appending
//! it would make the missing chunks look like duplicates later, and they would be lost. The
//! rule needs no state beyond the expected number. A batch without `prev_end` (a `runnel/1`
//! agent, one batch in flight) is appended across a gap, and the gap is counted.

use std::collections::HashMap;

/// The next expected sequence number of each agent spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Producers {
    next: HashMap<(String, u64), u64>,
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
    /// The batch starts past the expected number and the agent declares no gap there: an
    /// earlier batch is missing. Answer `Unavailable`; append nothing.
    Hold {
        /// The expected number: the agent must send from here.
        resume_at: u64,
    },
}

impl Producers {
    /// A table from recovered `(agent_id, epoch, next)` entries.
    pub fn from_entries(entries: impl IntoIterator<Item = (String, u64, u64)>) -> Self {
        Self {
            next: entries.into_iter().map(|(a, e, n)| ((a, e), n)).collect(),
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
    /// new. `chunks` is at least 1 (a checked batch holds chunks). `prev_end` is where the
    /// agent's previous batch ended (at most `first_seq`), `None` from a `runnel/1` agent.
    pub fn admit(
        &self,
        agent_id: &str,
        epoch: u64,
        first_seq: u64,
        chunks: usize,
        prev_end: Option<u64>,
    ) -> Admission {
        debug_assert!(chunks > 0, "a checked batch holds chunks");
        debug_assert!(prev_end.is_none_or(|p| p <= first_seq));
        let expected = self
            .next
            .get(&(agent_id.to_string(), epoch))
            .copied()
            .unwrap_or(0);
        let skip = usize::try_from(expected.saturating_sub(first_seq))
            .unwrap_or(usize::MAX)
            .min(chunks);
        if skip == chunks {
            return Admission::Duplicate { chunks };
        }
        if first_seq > expected && prev_end.is_some_and(|p| p > expected) {
            return Admission::Hold {
                resume_at: expected,
            };
        }
        let gap = (first_seq > expected && expected > 0).then_some((expected, first_seq));
        Admission::Append { skip, gap }
    }

    /// Records that chunks up to (not including) `end` of the spool are in the log. The
    /// expected sequence number only grows.
    pub fn advance(&mut self, agent_id: &str, epoch: u64, end: u64) {
        let next = self.next.entry((agent_id.to_string(), epoch)).or_default();
        *next = (*next).max(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_spool_takes_everything() {
        let p = Producers::default();
        assert_eq!(
            p.admit("a", 1, 0, 3, None),
            Admission::Append { skip: 0, gap: None }
        );
    }

    #[test]
    fn a_resend_is_a_duplicate_and_an_overlap_appends_the_new_part() {
        let mut p = Producers::default();
        p.advance("a", 1, 5);
        assert_eq!(
            p.admit("a", 1, 0, 5, None),
            Admission::Duplicate { chunks: 5 }
        );
        assert_eq!(
            p.admit("a", 1, 2, 3, None),
            Admission::Duplicate { chunks: 3 }
        );
        assert_eq!(
            p.admit("a", 1, 3, 4, None),
            Admission::Append { skip: 2, gap: None }
        );
        assert_eq!(
            p.admit("a", 1, 5, 1, None),
            Admission::Append { skip: 0, gap: None }
        );
    }

    #[test]
    fn spools_are_apart_by_agent_and_epoch() {
        let mut p = Producers::default();
        p.advance("a", 1, 5);
        assert!(matches!(
            p.admit("a", 2, 0, 1, None),
            Admission::Append { skip: 0, .. }
        ));
        assert!(matches!(
            p.admit("b", 1, 0, 1, None),
            Admission::Append { skip: 0, .. }
        ));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_gap_is_reported_and_appended() {
        let mut p = Producers::default();
        p.advance("a", 1, 5);
        assert_eq!(
            p.admit("a", 1, 8, 2, None),
            Admission::Append {
                skip: 0,
                gap: Some((5, 8))
            }
        );
    }

    #[test]
    fn a_batch_past_a_missing_one_is_held_until_it_comes() {
        let mut p = Producers::default();
        p.advance("a", 1, 10);
        // 10..20 failed (or is on an abandoned stream); 20..30 follows it directly.
        assert_eq!(
            p.admit("a", 1, 20, 10, Some(20)),
            Admission::Hold { resume_at: 10 }
        );
        // However late it comes, and whatever was appended meanwhile.
        assert_eq!(
            p.admit("a", 1, 60, 10, Some(60)),
            Admission::Hold { resume_at: 10 }
        );
        // Other spools are not held.
        assert_eq!(
            p.admit("a", 2, 0, 1, Some(0)),
            Admission::Append { skip: 0, gap: None }
        );
        // The missing batch, then the rest in order.
        assert_eq!(
            p.admit("a", 1, 10, 10, Some(10)),
            Admission::Append { skip: 0, gap: None }
        );
        p.advance("a", 1, 20);
        assert_eq!(
            p.admit("a", 1, 20, 10, Some(20)),
            Admission::Append { skip: 0, gap: None }
        );
        // An overlap is still trimmed.
        assert_eq!(
            p.admit("a", 1, 15, 10, Some(15)),
            Admission::Append { skip: 5, gap: None }
        );
    }

    #[test]
    fn a_declared_gap_is_appended_and_counted() {
        let mut p = Producers::default();
        p.advance("a", 1, 10);
        // Records 10..14 are gone from the agent's spool (quarantined, or a refused chunk
        // kept aside): it says so with prev_end 10.
        assert_eq!(
            p.admit("a", 1, 14, 2, Some(10)),
            Admission::Append {
                skip: 0,
                gap: Some((10, 14))
            }
        );
        // A gap declared from further back covers the same.
        assert_eq!(
            p.admit("a", 1, 14, 2, Some(3)),
            Admission::Append {
                skip: 0,
                gap: Some((10, 14))
            }
        );
        // Declared from past what the log has: something between is missing.
        assert_eq!(
            p.admit("a", 1, 14, 2, Some(12)),
            Admission::Hold { resume_at: 10 }
        );
    }

    #[test]
    fn the_expected_number_only_grows() {
        let mut p = Producers::default();
        p.advance("a", 1, 9);
        p.advance("a", 1, 4);
        assert_eq!(
            p.admit("a", 1, 8, 1, None),
            Admission::Duplicate { chunks: 1 }
        );
        let q = Producers::from_entries(p.entries());
        assert_eq!(q, p);
    }

    #[test]
    fn sequence_numbers_near_the_top_do_not_overflow() {
        let mut p = Producers::default();
        p.advance("a", 1, u64::MAX);
        assert_eq!(
            p.admit("a", 1, 0, 7, None),
            Admission::Duplicate { chunks: 7 }
        );
    }
}
