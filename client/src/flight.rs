//! A Flight SQL client: connect with a token (and a CA for TLS), run a statement, get its
//! Arrow batches.

use arrow_array::RecordBatch;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_schema::Schema;
use futures::TryStreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Error;

/// A connection to a broker's Flight SQL service.
#[derive(Debug, Clone)]
pub struct FlightSql {
    addr: String,
    client: FlightSqlServiceClient<Channel>,
}

fn refused(e: FlightError) -> Error {
    match e {
        FlightError::Tonic(s) => Error::Refused {
            url: "flight".into(),
            status: format!("{:?}", s.code()),
            message: s.message().to_string(),
        },
        other => Error::Protocol {
            url: "flight".into(),
            message: other.to_string(),
        },
    }
}

impl FlightSql {
    /// Connects to `addr` (`host:port`) with bearer `token`; with `tls_ca_pem`, over TLS
    /// trusting that CA.
    pub async fn connect(
        addr: &str,
        token: &str,
        tls_ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, Error> {
        let scheme = if tls_ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Error::Input(format!("--flight-addr: {addr:?} is not host:port: {e}")))?;
        if let Some(pem) = tls_ca_pem {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| Error::Input(format!("--tls-ca: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| Error::Unreachable {
            addr: addr.to_string(),
            message: format!("{e} (is the broker running with a flight token?)"),
        })?;
        let mut client = FlightSqlServiceClient::new(channel);
        client.set_token(token.to_string());
        Ok(Self {
            addr: addr.to_string(),
            client,
        })
    }

    /// The address it talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `sql` and returns the result's schema and every batch of every endpoint.
    pub async fn query(&mut self, sql: &str) -> Result<(Schema, Vec<RecordBatch>), Error> {
        let info = self
            .client
            .execute(sql.to_string(), None)
            .await
            .map_err(refused)?;
        let schema = info
            .clone()
            .try_decode_schema()
            .map_err(|e| Error::Protocol {
                url: "flight".into(),
                message: format!("the result's schema: {e}"),
            })?;
        let mut batches = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.ok_or_else(|| Error::Protocol {
                url: "flight".into(),
                message: "an endpoint without a ticket".into(),
            })?;
            let mut stream = self.client.do_get(ticket).await.map_err(refused)?;
            while let Some(b) = stream.try_next().await.map_err(refused)? {
                batches.push(b);
            }
        }
        Ok((schema, batches))
    }
}
