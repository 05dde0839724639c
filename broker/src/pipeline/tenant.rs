//! A tenant's aggregator is given its tenant's events only: a batch of just those (when the
//! batch holds others), and its windows observe just those, so no other tenant's events reach
//! its code, its rows, its watermark or its late events. A global aggregator (deployed by an
//! operator) is given every event. An event's tenant is its agent's ([`crate::auth::tenants`]).

use runnel_batch::{BatchView, BatchWriter};
use runnel_host::MapOutput;

use crate::auth::TenantMap;
use crate::log::SourceBatch;

/// Which of a source batch's events are one tenant's, by origin.
#[derive(Debug, Clone)]
pub struct Mask {
    /// For each of the batch's origins, whether it is the tenant's.
    of_origin: Vec<bool>,
    /// Whether every origin is.
    pub all: bool,
}

impl Mask {
    /// The events of `src` that are `tenant`'s.
    pub fn new(src: &SourceBatch, tenants: &TenantMap, tenant: &str) -> Self {
        let of_origin: Vec<bool> = src
            .origins
            .iter()
            .map(|(agent, _)| tenants.tenant_of(agent) == tenant)
            .collect();
        let all = of_origin.iter().all(|m| *m);
        Self { of_origin, all }
    }

    /// Whether the source event `j` (of origin `origin[j]`) is the tenant's.
    pub fn holds(&self, origin: &[u32], j: usize) -> bool {
        self.all || self.of_origin[origin[j] as usize]
    }

    /// `skip` (sorted source indices) with every event that is not the tenant's added.
    pub fn skip(&self, origin: &[u32], skip: &[usize]) -> Vec<usize> {
        if self.all {
            return skip.to_vec();
        }
        let mut out: Vec<usize> = (0..origin.len())
            .filter(|&j| !self.holds(origin, j) || skip.binary_search(&j).is_ok())
            .collect();
        out.dedup();
        out
    }
}

/// A batch of one tenant's events, and each one's position in the batch it was taken from.
pub type Part = (Vec<u8>, Vec<u32>);

/// The tenant's events of `batch` (whose event `i` is source event `index[i]`): the batch of
/// them and each one's position in `batch`. `None` when every event is the tenant's.
pub fn part(
    batch: &[u8],
    index: &[usize],
    origin: &[u32],
    mask: &Mask,
) -> anyhow::Result<Option<Part>> {
    if mask.all {
        return Ok(None);
    }
    let view = BatchView::new(batch)?;
    let mut w = BatchWriter::with_capacity(index.len(), 256);
    let mut positions = Vec::new();
    for (i, ev) in view.iter().enumerate() {
        if mask.holds(origin, index[i]) {
            w.push_ref(&ev);
            positions.push(i as u32);
        }
    }
    Ok(Some((w.finish(), positions)))
}

/// A map of a part, its rows and failures given the positions of the whole batch.
pub fn reindex(out: &mut MapOutput, positions: &[u32]) {
    for r in &mut out.rows {
        r.event = positions[r.event as usize];
    }
    for (i, _) in &mut out.failed {
        *i = positions[*i as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_keeps_the_tenants_origins_and_skips_the_rest() {
        let src = SourceBatch {
            origins: vec![("shop-1".into(), "h".into()), ("ads-1".into(), "h".into())],
            origin: vec![0, 1, 0, 1, 1],
            ..SourceBatch::default()
        };
        let tenants = TenantMap::from_pairs([("shop-1", "shop"), ("ads-1", "ads")]);
        let shop = Mask::new(&src, &tenants, "shop");
        assert!(!shop.all);
        assert_eq!(shop.skip(&src.origin, &[2]), vec![1, 2, 3, 4]);
        let both = Mask::new(
            &SourceBatch {
                origins: vec![("shop-1".into(), "h".into())],
                origin: vec![0, 0],
                ..SourceBatch::default()
            },
            &tenants,
            "shop",
        );
        assert!(both.all);
        assert_eq!(both.skip(&[0, 0], &[1]), vec![1]);
    }
}
