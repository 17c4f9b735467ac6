//! The latest price per token and chain, for the snapshot a `prices`
//! subscriber gets first.
//!
//! Guarantee: for every (token, chain) that had a public `price.updated`
//! event, the cache holds the live frame of the latest one, and nothing
//! else. Remembering a price costs one pointer copy (the live frame is
//! shared, and the token is copied once per token ever seen, not per
//! event); the snapshot frame is built only when someone subscribes. The
//! hub keeps the cache under its lock, so a subscription's snapshot and the
//! live stream after it meet exactly (no gap, no duplicate).

use super::frame::{utf8, Frame, Outbound};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Latest live price frames, by token (as the producer spelled it) and chain.
#[derive(Default)]
pub struct LatestPrices {
    by_token: BTreeMap<String, BTreeMap<u64, Outbound>>,
}

impl LatestPrices {
    /// Remembers `frame` as the latest price of `token` on `chain`.
    pub fn remember(&mut self, token: &str, chain: u64, frame: &Outbound) {
        match self.by_token.get_mut(token) {
            Some(chains) => {
                chains.insert(chain, frame.clone());
            }
            // A new token: the one copy of its name.
            None => {
                self.by_token.insert(token.to_owned(), BTreeMap::from([(chain, frame.clone())]));
            }
        }
    }

    /// The snapshot frames of the tokens `wanted` admits, by token then chain:
    /// each the latest live frame marked as a snapshot, built now.
    pub fn snapshots<'a>(&'a self, wanted: impl Fn(&str) -> bool + 'a) -> impl Iterator<Item = Outbound> + 'a {
        self.by_token
            .iter()
            .filter(move |(token, _)| wanted(token))
            .flat_map(|(_, chains)| chains.values())
            .map(|live| Arc::new(Frame {
                // The snapshot's text differs from the live frame's: its own compressed copy, when needed.
                frame: utf8(super::protocol::snapshot_of(live.frame.as_bytes())),
                deflated: Default::default(),
                ..Frame::clone(live)
            }))
    }

    /// How many (token, chain) prices are held.
    pub fn len(&self) -> usize {
        self.by_token.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::Channel;

    fn live(id: u128, body: &str) -> Outbound {
        let frame = super::super::protocol::event_frame_at(Channel::Prices, body.as_bytes(), None);
        Arc::new(Frame { event_id: id, timestamp_ms: 0, channel: Channel::Prices, offset: -1, frame: utf8(frame), deflated: Default::default() })
    }

    #[test]
    fn the_latest_frame_per_token_and_chain_becomes_a_snapshot_on_demand() {
        let mut cache = LatestPrices::default();
        cache.remember("ETH", 1, &live(1, "{\"n\":1}"));
        cache.remember("ETH", 1, &live(2, "{\"n\":2}"));
        cache.remember("ETH", 56, &live(3, "{\"n\":3}"));
        cache.remember("BTC", 1, &live(4, "{\"n\":4}"));
        assert_eq!(cache.len(), 3, "a newer price replaces the older one of its chain");
        let eth: Vec<Outbound> = cache.snapshots(|t| t == "ETH").collect();
        assert_eq!(eth.iter().map(|f| f.event_id).collect::<Vec<_>>(), vec![2, 3]);
        for f in &eth {
            let v: serde_json::Value = serde_json::from_str(f.frame.as_str()).unwrap();
            assert_eq!(v["snapshot"], true, "{}", f.frame.as_str());
        }
        assert_eq!(cache.snapshots(|_| true).count(), 3);
        assert_eq!(cache.snapshots(|_| false).count(), 0);
    }
}
