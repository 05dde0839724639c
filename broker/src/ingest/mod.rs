//! # ingest: where agents' batches come in
//!
//! Owns the QUIC endpoint ([`quic`]: one bidirectional stream per batch, the answer after the
//! log's fsync) and its TLS identity ([`tls`]: a configured certificate, or a dev CA made on
//! first start). The wire format and the ALPN are `runnel-event` and `runnel-protocol`'s.
//!
//! May call: [`crate::log`] (check a batch, append it). Nothing else of the broker.

pub mod quic;
pub mod tls;
