//! # query: Arrow Flight and Flight SQL
//!
//! On `flight_addr` (default `127.0.0.1:8712`): the aggregates, recent events and the side
//! topics as Arrow record batches, for pyarrow, ADBC, JDBC and any other Flight or Flight SQL
//! client.
//!
//! May call: [`crate::log`] (the `events` table), [`crate::topics`] (side topics),
//! [`crate::pipeline`] (the aggregates' rows and list), [`crate::plugins`] (final rows). It
//! reaches them through the [`crate::admin::Admin`] handle the admin API also holds.
//!
//! ## Tables
//! - every running aggregate, by name: `window_start`, `window_end` (timestamps, ms, UTC),
//!   `is_final`, the dimensions (text), the measures (`count` as Int64, the others as Float64,
//!   `quantiles` as three Float64 columns `m_p50`, `m_p90`, `m_p99`). The schema's metadata
//!   carries `runnel.watermark` (RFC 3339, empty before the first event), `runnel.window` and
//!   `runnel.allowed_lateness_ms`, so a client knows how complete the data is;
//! - `events`: in SQL the whole history, archive and log ([`history`]); in plain Flight the
//!   most recent events of the log (at most `flight_rows_max`). Every envelope
//!   field, `properties` as JSON text. Blocks of 65,536 durable offsets are kept as Arrow
//!   (`flight_event_cache_bytes_max`), so a repeated read builds only the newest block;
//! - `dead_letters` and `late_events`: `offset`, `source_offset` and the entry as JSON text.
//!
//! ## Descriptors and tickets
//! A path descriptor names a table (`["events_per_type"]`). A command descriptor is a small
//! JSON query: `{"table": "events_per_type", "from": "2026-11-21T10:00:00Z", "to": "…",
//! "where": {"platform": "ios"}, "limit": 1000}`. `from`/`to` bound `window_start` (aggregates),
//! `timestamp` (events) or `offset` (side topics, as numbers); `where` is equality on text
//! columns. The ticket of a `FlightInfo` is the query itself.
//!
//! ## Result cache
//! `DoGet` results are cached by the query's canonical JSON for `flight_cache_ttl_ms` (60 s),
//! or `flight_cache_final_ttl_ms` (1 h) when every row is final, within
//! `flight_cache_bytes_max`. Hits and misses are counted in `/metrics`
//! (`runnel_flight_cache_hits_total`, `runnel_flight_cache_misses_total`). The result cache
//! and the `events` blocks are the same byte-bounded LRU (`query/lru.rs`) with their own budgets.
//!
//! ## Security
//! Every call needs `authorization: Bearer TOKEN` with an API token of any role ([`crate::auth`])
//! or one of `flight_tokens`;
//! `Handshake` with basic auth (user `runnel`, password a token) answers with that bearer
//! token. A missing or wrong token is `Unauthenticated`, naming what is wrong. One token runs
//! at most `flight_token_concurrency_max` calls at once; the others wait their turn. TLS is on
//! when `flight_tls_cert` and `flight_tls_key` are set.
//!
//! ## Flight SQL
//! A command descriptor or ticket that holds a Flight SQL command (a protobuf `Any` of
//! `arrow.flight.protocol.sql.*`) goes to [`sql`]: SQL over the same tables, in catalog
//! `runnel`, schema `public`. JSON queries and path descriptors stay plain Flight.

mod aggregate_rows;
mod history;
mod lru;
mod sql;
mod tables;

use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::{ActionCreatePreparedStatementRequest, Any, Command, ProstMessageExt};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_schema::{Schema, SchemaRef};
use datafusion_flight_sql_server::service::FlightSqlService;
use datafusion_flight_sql_server::state::{CommandTicket, QueryHandle};
use futures::stream::{self, BoxStream, StreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::Admin;
use crate::auth::Scope;

pub use aggregate_rows::aggregate_rows;
pub use history::events_between;
pub use sql::{Planned, Provider};
pub use tables::{
    CacheSettings, FIXED_TABLES, TableQuery, Tables, aggregate_schema, events_schema, topic_schema,
};

/// The protobuf type URL prefix of Flight SQL commands.
const SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// Where a descriptor or ticket goes.
enum Route {
    /// A plain Flight table query (JSON) or a path.
    Table,
    /// A Flight SQL command.
    Sql(Command),
}

/// Whether `bytes` is JSON (a table query) rather than protobuf.
fn is_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// The Flight SQL command in `bytes`, if it is one.
fn sql_command(bytes: &[u8]) -> Option<Command> {
    let any = Any::decode(bytes).ok()?;
    if !any.type_url.starts_with(SQL_TYPE_PREFIX) {
        return None;
    }
    Command::try_from(any).ok()
}

/// The SQL of a command whose plan the broker keeps ([`Service::planned`]): a statement
/// outside a transaction, or a prepared statement without parameters (its handle is its SQL,
/// as `datafusion-flight-sql-server` makes it). Anything else goes to that crate, planned each
/// time.
fn kept_plan_sql(cmd: &Command) -> Option<String> {
    match cmd {
        Command::CommandStatementQuery(q) if q.transaction_id.is_none() => Some(q.query.clone()),
        Command::CommandPreparedStatementQuery(p) => {
            let handle = QueryHandle::try_decode(p.prepared_statement_handle.clone()).ok()?;
            handle
                .parameters()
                .is_none()
                .then(|| handle.query().to_string())
        }
        _ => None,
    }
}

/// The Flight SQL metadata commands the broker answers itself rather than
/// `datafusion-flight-sql-server`: `GetSqlInfo` and `GetXdbcTypeInfo`, which it does not
/// implement; `GetDbSchemas` and `GetTables`, where it lists nothing when the client names no
/// catalog (ADBC's `get_objects` and DBeaver do not); `GetCatalogs` with them; and
/// `GetTableTypes`, where it says `BASE TABLE` and JDBC clients expect `TABLE`.
fn is_own_metadata(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::CommandGetSqlInfo(_)
            | Command::CommandGetXdbcTypeInfo(_)
            | Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
            | Command::CommandGetTableTypes(_)
    )
}

fn route(d: &FlightDescriptor) -> Result<Route, Status> {
    if d.r#type() != DescriptorType::Cmd || is_json(&d.cmd) {
        return Ok(Route::Table);
    }
    sql_command(&d.cmd).map(Route::Sql).ok_or_else(|| {
        Status::invalid_argument(
            "descriptor.cmd: neither a JSON table query ({\"table\": NAME, …}) nor a Flight SQL command",
        )
    })
}

fn schema_result(schema: &Schema) -> Result<SchemaResult, Status> {
    let options = arrow_ipc::writer::IpcWriteOptions::default();
    SchemaAsIpc::new(schema, &options)
        .try_into()
        .map_err(|e| Status::internal(format!("schema: {e}")))
}

/// The Flight and Flight SQL service.
pub struct Service {
    tables: Arc<Tables>,
    tokens: Arc<crate::auth::Tokens>,
    quotas: Arc<crate::auth::Quotas>,
    sql: FlightSqlService,
    provider: sql::Provider,
    /// Planned statements by (SQL text, [`sql::catalog_fingerprint`]).
    plans: lru::ByteLru<(String, u64, Scope), Arc<sql::Planned>>,
    sql_info: SqlInfoData,
    xdbc_types: XdbcTypeInfoData,
    limiter: Limiter,
}

/// The Flight settings (`flight_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The API tokens (any role may query; `flight_tokens` are readers among them).
    pub tokens: Arc<crate::auth::Tokens>,
    /// Most rows one call answers.
    pub rows_max: usize,
    /// The result cache.
    pub cache: CacheSettings,
    /// Calls one token may have running at once; more wait.
    pub token_concurrency_max: usize,
    /// Statements kept planned (`flight_sql_plans_max`).
    pub sql_plans_max: usize,
    /// The tenants' quotas (`tenant_query_concurrency_max`).
    pub quotas: Arc<crate::auth::Quotas>,
}

/// At most `per_token` calls of one token run at once; the others wait in line, in order
/// (`flight_token_concurrency_max`). Waiting calls are in `runnel_flight_calls_waiting`,
/// and how long they waited in `runnel_flight_call_wait_seconds`.
struct Limiter {
    per_token: usize,
    slots: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
    waiting: std::sync::atomic::AtomicI64,
}

impl Limiter {
    async fn enter(&self, token: &str) -> tokio::sync::OwnedSemaphorePermit {
        use std::sync::atomic::Ordering;
        let slots = {
            let mut map = self.slots.lock().expect("lock poisoned");
            map.entry(token.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_token)))
                .clone()
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            metrics::counter!("runnel_flight_calls_total").increment(1);
            return permit;
        }
        let started = std::time::Instant::now();
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("runnel_flight_calls_waiting").set(waiting as f64);
        let permit = slots
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let waiting = self.waiting.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("runnel_flight_calls_waiting").set(waiting as f64);
        metrics::counter!("runnel_flight_calls_total").increment(1);
        metrics::counter!("runnel_flight_calls_queued_total").increment(1);
        metrics::histogram!("runnel_flight_call_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        permit
    }
}

/// A running call's place in its token's line, and in its tenant's when the tenant has a
/// `query_concurrency_max`.
struct Permit {
    _token: tokio::sync::OwnedSemaphorePermit,
    _tenant: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The call's bearer token and whose it is.
fn principal_of(
    tokens: &crate::auth::Tokens,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<(String, crate::auth::Principal), Status> {
    let Some(h) = metadata.get("authorization") else {
        return Err(Status::unauthenticated(
            "authorization: missing; send 'authorization: Bearer TOKEN' with an API token (runnel token create) or one of the broker's flight_tokens (or Handshake with basic auth, user runnel)",
        ));
    };
    let v = h
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization: not ASCII"))?;
    let Some(token) = v.strip_prefix("Bearer ") else {
        return Err(Status::unauthenticated(
            "authorization: expected 'Bearer TOKEN'",
        ));
    };
    match tokens.check(token.trim()) {
        Some(p) => Ok((token.trim().to_string(), p)),
        None => Err(Status::unauthenticated(
            "authorization: the bearer token is not a token of this broker (an API token or one of its flight_tokens)",
        )),
    }
}

/// Whose rows a call with this metadata sees.
fn scope_of(
    tokens: &crate::auth::Tokens,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Scope, Status> {
    principal_of(tokens, metadata).map(|(_, p)| p.scope())
}

impl Service {
    /// A service reading through `admin`'s handles.
    pub fn new(admin: Arc<Admin>, settings: Settings) -> Self {
        let tables = Arc::new(Tables::new(admin, settings.rows_max, settings.cache));
        let provider = sql::Provider::new(tables.clone());
        Self {
            tables,
            tokens: settings.tokens,
            quotas: settings.quotas,
            limiter: Limiter {
                per_token: settings.token_concurrency_max,
                slots: std::sync::Mutex::new(std::collections::HashMap::new()),
                waiting: std::sync::atomic::AtomicI64::new(0),
            },
            sql: FlightSqlService::new_with_provider(Box::new(provider.clone()))
                .with_sql_options(sql::read_only()),
            provider,
            // One "byte" an entry: the budget is a count of plans.
            plans: lru::ByteLru::new(
                settings.sql_plans_max,
                1,
                lru::CacheMetrics {
                    hits: "runnel_flight_sql_plans_hits_total",
                    misses: "runnel_flight_sql_plans_misses_total",
                    bytes: "runnel_flight_sql_plans",
                },
            ),
            sql_info: sql::sql_info(),
            xdbc_types: sql::xdbc_types(),
        }
    }

    /// Checks the call's token, then waits for its turn among the token's calls; the token's
    /// scope says whose rows and tables the call sees.
    async fn admit<T>(&self, req: &Request<T>) -> Result<(Permit, Scope), Status> {
        let (token, principal) = principal_of(&self.tokens, req.metadata())?;
        let scope = principal.scope();
        let tenant = match scope.tenant() {
            Some(t) => self.quotas.enter_query(t).await,
            None => None,
        };
        let permit = Permit {
            _token: self.limiter.enter(&token).await,
            _tenant: tenant,
        };
        Ok((permit, scope))
    }

    fn query_of(d: &FlightDescriptor) -> Result<TableQuery, Status> {
        match d.r#type() {
            DescriptorType::Path => match d.path.as_slice() {
                [table] => Ok(TableQuery {
                    table: table.clone(),
                    ..TableQuery::default()
                }),
                other => Err(Status::invalid_argument(format!(
                    "descriptor.path: expected one element, the table name; got {other:?}"
                ))),
            },
            DescriptorType::Cmd => serde_json::from_slice(&d.cmd).map_err(|e| {
                Status::invalid_argument(format!(
                    "descriptor.cmd: not a query ({e}); expected {{\"table\": NAME, \"from\"?, \"to\"?, \"where\"?, \"limit\"?}}"
                ))
            }),
            DescriptorType::Unknown => Err(Status::invalid_argument(
                "descriptor.type: must be PATH or CMD",
            )),
        }
    }

    /// The schema of a table, checking that it exists and that the query's filters name its
    /// GetFlightInfo, once admitted.
    async fn flight_info_of(
        &self,
        request: Request<FlightDescriptor>,
        scope: &Scope,
    ) -> Result<Response<FlightInfo>, Status> {
        match route(request.get_ref())? {
            Route::Table => {
                let q = Self::query_of(request.get_ref())?;
                let (schema, _) = self
                    .tables
                    .schema_of(&q, &self.tables.viewer(scope.clone()))
                    .await?;
                tables::time_range_checked(&q)?;
                Ok(Response::new(self.flight_info(&q, &schema)?))
            }
            Route::Sql(cmd) if is_own_metadata(&cmd) => {
                let any = cmd.clone().into_any();
                let batch = self.metadata(cmd, scope).await?;
                self.metadata_info(request.into_inner(), any, &batch.schema())
            }
            Route::Sql(cmd) if let Some(query) = kept_plan_sql(&cmd) => {
                let (_, schema) = self.planned(&query, scope).await?;
                let ticket = CommandTicket::new(cmd)
                    .try_encode()
                    .map_err(|e| Status::internal(format!("ticket: {e}")))?;
                let info = FlightInfo::new()
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket { ticket }))
                    .with_descriptor(request.into_inner())
                    .try_with_schema(&schema)
                    .map_err(|e| Status::internal(format!("schema: {e}")))?;
                Ok(Response::new(info))
            }
            Route::Sql(Command::CommandStatementQuery(q)) => {
                match self.sql.get_flight_info(request).await {
                    Ok(info) => Ok(info),
                    Err(e) => Err(self.provider.explain(&q.query, scope, e).await),
                }
            }
            Route::Sql(_) => self.sql.get_flight_info(request).await,
        }
    }

    /// A statement's plan, made once and kept while the aggregates' columns stay as they were
    /// (`flight_sql_plans_max`), and the schema of its answer now.
    async fn planned(
        &self,
        query: &str,
        scope: &Scope,
    ) -> Result<(Arc<sql::Planned>, SchemaRef), Status> {
        let aggregates = self
            .tables
            .aggregates_of(&self.tables.viewer(scope.clone()))
            .await?;
        // A plan holds its session, whose tables are the scope's: one plan per scope.
        let key = (
            query.to_string(),
            sql::catalog_fingerprint(&aggregates),
            scope.clone(),
        );
        let planned = match self.plans.get(&key) {
            Some(p) => p,
            None => {
                let p = Arc::new(self.provider.plan(query, scope).await?);
                if p.reusable() {
                    self.plans.put(key, p.clone(), 1, None);
                }
                p
            }
        };
        let schema = planned.schema_now(&aggregates);
        Ok((planned, schema))
    }

    /// The answer to a metadata command the broker answers itself (see [`is_own_metadata`]).
    async fn metadata(
        &self,
        cmd: Command,
        scope: &Scope,
    ) -> Result<arrow_array::RecordBatch, Status> {
        let failed = |what: &str, e: arrow_flight::error::FlightError| {
            Status::internal(format!("{what}: {e}"))
        };
        match cmd {
            Command::CommandGetSqlInfo(q) => q
                .into_builder(&self.sql_info)
                .build()
                .map_err(|e| failed("GetSqlInfo", e)),
            Command::CommandGetXdbcTypeInfo(q) => q
                .into_builder(&self.xdbc_types)
                .build()
                .map_err(|e| failed("GetXdbcTypeInfo", e)),
            Command::CommandGetCatalogs(q) => self.provider.catalogs(q, scope).await,
            Command::CommandGetDbSchemas(q) => self.provider.schemas(q, scope).await,
            Command::CommandGetTables(q) => self.provider.tables(q, scope).await,
            Command::CommandGetTableTypes(_) => Ok(sql::table_types()),
            other => Err(Status::internal(format!(
                "{} is not a metadata command",
                other.type_url()
            ))),
        }
    }

    /// The FlightInfo of a metadata command the broker answers itself: its ticket is the
    /// command.
    fn metadata_info(
        &self,
        descriptor: FlightDescriptor,
        command: Any,
        schema: &Schema,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = Ticket::new(command.encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("schema: {e}")))?
            .with_descriptor(descriptor)
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_total_records(-1);
        Ok(Response::new(info))
    }

    fn flight_info(&self, q: &TableQuery, schema: &Schema) -> Result<FlightInfo, Status> {
        let ticket = serde_json::to_vec(q).expect("serializing to memory");
        let descriptor = FlightDescriptor::new_cmd(ticket.clone());
        FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("schema: {e}")))
            .map(|i| {
                i.with_descriptor(descriptor)
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    .with_total_records(-1)
            })
    }
}

type Boxed<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;
    type DoExchangeStream = Boxed<FlightData>;

    /// Basic auth (user `runnel`, password a token) in, the bearer token out (in the
    /// `authorization` response header).
    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        use base64::Engine as _;
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let token = if let Some(basic) = header.strip_prefix("Basic ") {
            // Padded or not: Go's Flight client leaves the padding out.
            let engine = base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let decoded = engine.decode(basic.trim()).map_err(|_| {
                Status::unauthenticated("authorization: Basic credentials are not base64")
            })?;
            let text = String::from_utf8(decoded).map_err(|_| {
                Status::unauthenticated("authorization: Basic credentials are not UTF-8")
            })?;
            let (user, password) = text.split_once(':').ok_or_else(|| {
                Status::unauthenticated("authorization: Basic credentials need user:password")
            })?;
            if user != "runnel" {
                return Err(Status::unauthenticated(format!(
                    "authorization: user {user:?} is unknown; the user is \"runnel\" and the password a flight token"
                )));
            }
            password.to_string()
        } else if let Some(bearer) = header.strip_prefix("Bearer ") {
            bearer.trim().to_string()
        } else {
            return Err(Status::unauthenticated(
                "authorization: Handshake needs Basic credentials (user runnel, password a flight token)",
            ));
        };
        if self.tokens.check(&token).is_none() {
            return Err(Status::unauthenticated(
                "authorization: the password is not a token of this broker (an API token or one of its flight_tokens)",
            ));
        }
        let out: Self::HandshakeStream = stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        })])
        .boxed();
        let mut resp = Response::new(out);
        resp.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is not a valid header value"))?,
        );
        Ok(resp)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let (_permit, scope) = self.admit(&request).await?;
        let viewer = self.tables.viewer(scope);
        let mut infos = Vec::new();
        for t in FIXED_TABLES {
            let q = TableQuery {
                table: (*t).to_string(),
                ..TableQuery::default()
            };
            let schema = if *t == "events" {
                events_schema()
            } else {
                topic_schema()
            };
            infos.push(Ok(self.flight_info(&q, &schema)?));
        }
        if self
            .tables
            .archive()
            .is_some_and(|a| a.enriched_topic.is_some())
        {
            let q = TableQuery {
                table: tables::ENRICHED_TABLE.to_string(),
                ..TableQuery::default()
            };
            infos.push(Ok(self.flight_info(&q, &events_schema())?));
        }
        for a in self.tables.aggregates_of(&viewer).await? {
            let q = TableQuery {
                table: a.name.clone(),
                ..TableQuery::default()
            };
            infos.push(Ok(self.flight_info(&q, &aggregate_schema(&a))?));
        }
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (_permit, scope) = self.admit(&request).await?;
        self.flight_info_of(request, &scope).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let _permit = self.admit(&request).await?;
        Err(Status::unimplemented(
            "PollFlightInfo: not supported; use GetFlightInfo (answers are immediate)",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let (_permit, scope) = self.admit(&request).await?;
        match route(request.get_ref())? {
            Route::Table => {
                let q = Self::query_of(request.get_ref())?;
                let (schema, _) = self
                    .tables
                    .schema_of(&q, &self.tables.viewer(scope))
                    .await?;
                Ok(Response::new(schema_result(&schema)?))
            }
            // A Flight SQL command's schema is the one its FlightInfo carries.
            Route::Sql(_) => {
                let info = self.flight_info_of(request, &scope).await?.into_inner();
                Ok(Response::new(SchemaResult {
                    schema: info.schema,
                }))
            }
        }
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let (permit, scope) = self.admit(&request).await?;
        let ticket = &request.get_ref().ticket;
        if is_json(ticket) {
            let q: TableQuery = serde_json::from_slice(ticket).map_err(|e| {
                Status::invalid_argument(format!(
                    "ticket: not a query ({e}); use the ticket of a FlightInfo"
                ))
            })?;
            let (schema, batches) = self
                .tables
                .cached_batches(q, &self.tables.viewer(scope))
                .await?;
            return Ok(Response::new(holding(permit, encode(schema, batches))));
        }
        if let Some(query) = CommandTicket::try_decode(bytes::Bytes::copy_from_slice(ticket))
            .ok()
            .and_then(|t| kept_plan_sql(&t.command))
        {
            let (planned, schema) = self.planned(&query, &scope).await?;
            let batches = planned
                .run()
                .await
                .map_err(|e| Status::internal(format!("{e:?}")))?
                .map(|r| r.map_err(|e| arrow_flight::error::FlightError::ExternalError(e.into())));
            return Ok(Response::new(holding(
                permit,
                encode_stream(schema, batches),
            )));
        }
        match sql_command(ticket) {
            Some(cmd) if is_own_metadata(&cmd) => {
                let batch = self.metadata(cmd, &scope).await?;
                Ok(Response::new(holding(
                    permit,
                    encode(batch.schema(), vec![batch]),
                )))
            }
            _ => {
                let r = self.sql.do_get(request).await?;
                Ok(r.map(|s| holding(permit, s)))
            }
        }
    }

    /// Flight SQL only: binding a prepared statement's parameters.
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let _permit = self.admit(&request).await?;
        self.sql.do_put(request).await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let _permit = self.admit(&request).await?;
        Err(Status::unimplemented("DoExchange: not supported"))
    }

    /// Flight SQL's actions: creating and closing prepared statements.
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let (_permit, scope) = self.admit(&request).await?;
        let mut request = request;
        let mut query = None;
        if request.get_ref().r#type == "CreatePreparedStatement"
            && let Some(mut create) = Any::decode(request.get_ref().body.as_ref())
                .ok()
                .and_then(|any| any.unpack::<ActionCreatePreparedStatementRequest>().ok())
                .flatten()
        {
            // JDBC and ODBC write parameters as `?`; DataFusion reads `$1`, `$2`, ….
            create.query = sql::number_placeholders(&create.query);
            request.get_mut().body = create.as_any().encode_to_vec().into();
            query = Some(create.query);
        }
        match self.sql.do_action(request).await {
            Ok(r) => Ok(r),
            Err(e) => match query {
                Some(sql) => Err(self.provider.explain(&sql, &scope, e).await),
                None => Err(e),
            },
        }
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let _permit = self.admit(&request).await?;
        self.sql.list_actions(request).await
    }
}

/// `stream`, keeping `permit` (the call's turn) until it ends or is dropped.
fn holding(permit: Permit, stream: Boxed<FlightData>) -> Boxed<FlightData> {
    stream
        .map(move |item| {
            let _turn = &permit;
            item
        })
        .boxed()
}

/// Record batches as a `DoGet` stream.
fn encode(schema: SchemaRef, batches: Vec<arrow_array::RecordBatch>) -> Boxed<FlightData> {
    encode_stream(schema, stream::iter(batches.into_iter().map(Ok)))
}

/// Flight data of `batches` as they come, announced with `schema`.
fn encode_stream(
    schema: SchemaRef,
    batches: impl futures::Stream<
        Item = Result<arrow_array::RecordBatch, arrow_flight::error::FlightError>,
    > + Send
    + 'static,
) -> Boxed<FlightData> {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map(|r| r.map_err(|e| Status::internal(e.to_string())))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_token: usize) -> Limiter {
        Limiter {
            per_token,
            slots: std::sync::Mutex::new(std::collections::HashMap::new()),
            waiting: std::sync::atomic::AtomicI64::new(0),
        }
    }

    #[tokio::test]
    async fn a_token_over_its_limit_waits_for_a_turn_and_others_do_not() {
        let limiter = Arc::new(limiter(2));
        let first = limiter.enter("token-a").await;
        let _second = limiter.enter("token-a").await;
        // The third call of token-a waits.
        let waiting = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.enter("token-a").await })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(
            limiter.waiting.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Another token is not held up.
        let _other =
            tokio::time::timeout(std::time::Duration::from_secs(1), limiter.enter("token-b"))
                .await
                .expect("token-b has its own turns");
        // When a call of token-a ends, the waiting one runs.
        drop(first);
        let _turn = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the waiting call got its turn")
            .unwrap();
        assert_eq!(
            limiter.waiting.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn json_queries_and_flight_sql_commands_are_told_apart() {
        assert!(is_json(br#" {"table": "events"}"#));
        assert!(!is_json(b""));
        let cmd = arrow_flight::sql::CommandStatementQuery {
            query: "SELECT 1".into(),
            transaction_id: None,
        };
        let bytes = cmd.as_any().encode_to_vec();
        assert!(!is_json(&bytes));
        assert!(matches!(
            sql_command(&bytes),
            Some(Command::CommandStatementQuery(_))
        ));
        assert!(sql_command(b"not protobuf at all").is_none());
        let d = FlightDescriptor::new_cmd(b"garbage".to_vec());
        let err = route(&d).err().expect("garbage is refused");
        assert!(err.message().contains("neither a JSON table query"));
    }
}
