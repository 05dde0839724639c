//! # runnel-client: a typed client of the Runnel broker
//!
//! - [`api`]: the types of the broker's admin API (`/v1/log/*`, `/v1/plugins`,
//!   `/v1/aggregates`), which the broker serves and this crate reads. Always built: the broker
//!   depends on this crate for them with `default-features = false`.
//! - [`admin`] (feature `http`): [`admin::Admin`], one method per admin call, the errors the
//!   broker gave as [`Error`]s.
//! - [`flight`] (feature `flight`): [`flight::FlightSql`], a Flight SQL client that runs a
//!   statement and returns its Arrow batches.
//!
//! The `runnel` CLI and the end-to-end tests talk to the broker through this crate only, so a
//! change of the API is a change here that both see.

pub mod api;

#[cfg(feature = "http")]
pub mod admin;

#[cfg(feature = "flight")]
pub mod flight;

/// Why a call to the broker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker could not be reached (not running, wrong address): retrying later may help.
    #[error(
        "cannot reach the broker at {addr} (is it running? --admin-addr / --flight-addr): {message}"
    )]
    Unreachable {
        /// The address tried.
        addr: String,
        /// What the transport said.
        message: String,
    },
    /// The broker refused the request: the message is the broker's (`error` of its answer).
    #[error("{url}: {status}: {message}")]
    Refused {
        /// The call.
        url: String,
        /// The HTTP status (or gRPC code).
        status: String,
        /// The broker's reason.
        message: String,
    },
    /// The answer was not what the API says (a bug on one side).
    #[error("{url}: unexpected answer: {message}")]
    Protocol {
        /// The call.
        url: String,
        /// What was wrong with it.
        message: String,
    },
    /// A local input was unusable (a token file, a CA file).
    #[error("{0}")]
    Input(String),
}
