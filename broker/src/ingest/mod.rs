//! # ingest: where agents' batches come in
//!
//! Owns the QUIC endpoint ([`quic`]: one bidirectional stream per batch, the answer after the
//! log's fsync; connections admitted by their client certificate) and its TLS identity
//! ([`tls`]: a configured certificate, or a dev CA made on first start). The wire format and the ALPN are `runnel-event` and `runnel-protocol`'s.
//!
//! May call: [`crate::log`] (check a batch, append it), [`crate::auth`] (admit a connection by
//! its certificate), [`crate::state`] (write the dev CA's files). Nothing else of the broker.

pub mod quic;
pub mod tls;
