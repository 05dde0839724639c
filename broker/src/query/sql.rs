//! Flight SQL over the same tables: DataFusion plans and runs the SQL, and
//! `datafusion-flight-sql-server` speaks the protocol (statements, prepared statements, catalog
//! metadata). What that crate leaves out, the broker answers itself: `GetSqlInfo` and
//! `GetXdbcTypeInfo` from [`sql_info`] and [`xdbc_types`], and plain error messages.
//!
//! Every request gets a fresh DataFusion session with catalog `runnel`, schema `public` and one
//! table per Flight table. A table reads its rows only when a query scans it, through
//! [`Tables::cached_batches`], so SQL shares the result cache with plain Flight and `events`
//! reads the log itself, not a copy.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTables, Nullable, Searchable, SqlInfo,
    SqlNullOrdering, SqlSupportedCaseSensitivity, SqlSupportedTransaction, XdbcDataType,
};
use arrow_schema::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_flight_sql_server::session::SessionStateProvider;
use tonic::{Request, Status};

use crate::auth::Scope;
use crate::pipeline::aggregates::AggInfo;

use super::history::History;
pub use super::tables::ENRICHED_TABLE;
use super::tables::{
    FIXED_TABLES, TableQuery, Tables, aggregate_schema, events_schema, topic_schema,
};

/// The catalog every table is in.
pub const CATALOG: &str = "runnel";
/// The schema every table is in.
pub const SCHEMA: &str = "public";

/// What SQL may do: read. No DDL (`CREATE EXTERNAL TABLE` would read the broker's files), no
/// DML (`COPY … TO` would write them), no `SET`.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A statement planned once and run by every `DoGet` of it ([`Provider::plan`]).
pub struct Planned {
    ctx: SessionContext,
    plan: LogicalPlan,
    /// The tables it scans.
    reads: Vec<String>,
}

impl Planned {
    /// Whether a later call may run this plan again: it reads at most one table, so its answer's
    /// schema metadata is that table's as it is then (see [`Planned::schema_now`]). A plan over
    /// several tables carries their metadata merged as of planning, and is planned every time.
    pub fn reusable(&self) -> bool {
        self.reads.len() <= 1
    }

    /// The schema of the answer now: the plan's columns with the metadata of the table it
    /// reads as it is now (an aggregate's `runnel.watermark` moves; a new plan would carry the
    /// new one).
    pub fn schema_now(&self, aggregates: &[AggInfo]) -> SchemaRef {
        let schema = self.plan.schema().as_arrow().clone();
        match self
            .reads
            .first()
            .and_then(|t| aggregates.iter().find(|a| a.name == *t))
        {
            Some(a) if self.reusable() => {
                Arc::new(schema.with_metadata(aggregate_schema(a).metadata().clone()))
            }
            _ => Arc::new(schema),
        }
    }

    /// The tables it scans, by name.
    pub fn reads(&self) -> &[String] {
        &self.reads
    }

    /// Runs the plan.
    pub async fn run(&self) -> DfResult<SendableRecordBatchStream> {
        self.ctx
            .execute_logical_plan(self.plan.clone())
            .await?
            .execute_stream()
            .await
    }
}

/// A fingerprint of the aggregate tables' names and columns (not their metadata): a plan made
/// under another fingerprint may name columns that are no longer there.
pub fn catalog_fingerprint(aggregates: &[AggInfo]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for a in aggregates {
        (&a.name, &a.window, a.allowed_lateness_ms).hash(&mut h);
        (&a.dimensions, &a.measures).hash(&mut h);
    }
    h.finish()
}

/// `sql` planned in `ctx`, and checked to read only.
async fn logical_plan(ctx: &SessionContext, sql: &str) -> DfResult<LogicalPlan> {
    let plan = ctx.state().create_logical_plan(sql).await?;
    read_only().verify_plan(&plan)?;
    Ok(plan)
}

/// A planner error as the client sees it: `InvalidArgument` with the planner's message (which
/// names the unknown table or column).
fn sql_error(e: DataFusionError) -> Status {
    Status::invalid_argument(format!("SQL: {}", e.strip_backtrace()))
}

/// Sessions over the broker's tables.
#[derive(Clone)]
pub struct Provider {
    tables: Arc<Tables>,
}

impl Provider {
    /// Sessions reading `tables`.
    pub fn new(tables: Arc<Tables>) -> Self {
        Self { tables }
    }

    /// A session with every table `scope` sees registered (the aggregates as they are now):
    /// the fixed tables, filtered to the scope's events as they are scanned, and the
    /// aggregates the scope owns. Another tenant's aggregate is in neither the catalog nor
    /// `information_schema`.
    pub async fn context(&self, scope: &Scope) -> Result<SessionContext, Status> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            // The tables are in memory and small; one partition plans and runs fastest.
            .with_target_partitions(1);
        let ctx = SessionContext::new_with_config(config);
        let mut tables: Vec<(String, SchemaRef)> = FIXED_TABLES
            .iter()
            .map(|t| {
                let schema = if *t == "events" {
                    events_schema()
                } else {
                    topic_schema()
                };
                ((*t).to_string(), schema)
            })
            .collect();
        tables.push((ENRICHED_TABLE.to_string(), events_schema()));
        let viewer = self.tables.viewer(scope.clone());
        for a in self.tables.aggregates_of(&viewer).await? {
            let schema = aggregate_schema(&a);
            tables.push((a.name, schema));
        }
        for (name, schema) in tables {
            let table: Arc<dyn TableProvider> = if name == "events" {
                Arc::new(History::new(self.tables.clone(), scope.clone()))
            } else if name == ENRICHED_TABLE {
                Arc::new(History::enriched(self.tables.clone(), scope.clone()))
            } else {
                Arc::new(Table {
                    tables: self.tables.clone(),
                    name: name.clone(),
                    schema,
                    scope: scope.clone(),
                })
            };
            ctx.register_table(name.as_str(), table)
                .map_err(|e| Status::internal(format!("registering table {name}: {e}")))?;
        }
        Ok(ctx)
    }

    /// Plans a statement (read only, as `datafusion-flight-sql-server` would) in a session of
    /// its own, which it keeps: its tables read their rows when the plan runs, so the plan can
    /// run again and again with the data as it is then.
    pub async fn plan(&self, sql: &str, scope: &Scope) -> Result<Planned, Status> {
        let ctx = self.context(scope).await?;
        let plan = logical_plan(&ctx, sql).await.map_err(sql_error)?;
        let mut tables = std::collections::BTreeSet::new();
        plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                tables.insert(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| Status::internal(format!("{e:?}")))?;
        Ok(Planned {
            ctx,
            plan,
            reads: tables.into_iter().collect(),
        })
    }

    /// `GetCatalogs`.
    pub async fn catalogs(
        &self,
        query: CommandGetCatalogs,
        scope: &Scope,
    ) -> Result<RecordBatch, Status> {
        let ctx = self.context(scope).await?;
        let mut builder = query.into_builder();
        for name in ctx.catalog_names() {
            builder.append(name);
        }
        builder
            .build()
            .map_err(|e| Status::internal(format!("GetCatalogs: {e}")))
    }

    /// `GetDbSchemas`: the schemas of every catalog (or of the one asked for), filtered by
    /// the command's pattern.
    pub async fn schemas(
        &self,
        query: CommandGetDbSchemas,
        scope: &Scope,
    ) -> Result<RecordBatch, Status> {
        let ctx = self.context(scope).await?;
        let schemas = schemas_of(&ctx, query.catalog.as_deref());
        let mut builder = query.into_builder();
        for (catalog_name, schema_name, _) in schemas {
            builder.append(catalog_name, schema_name);
        }
        builder
            .build()
            .map_err(|e| Status::internal(format!("GetDbSchemas: {e}")))
    }

    /// `GetTables`: every table of every catalog (or of the one asked for), filtered by the
    /// command's patterns and types.
    pub async fn tables(
        &self,
        query: CommandGetTables,
        scope: &Scope,
    ) -> Result<RecordBatch, Status> {
        let ctx = self.context(scope).await?;
        let schemas = schemas_of(&ctx, query.catalog.as_deref());
        let mut builder = query.into_builder();
        for (catalog_name, schema_name, schema) in schemas {
            for table_name in schema.table_names() {
                let table = schema
                    .table(&table_name)
                    .await
                    .map_err(|e| Status::internal(format!("table {table_name}: {e}")))?;
                if let Some(table) = table {
                    builder
                        .append(
                            &catalog_name,
                            &schema_name,
                            &table_name,
                            table_type_name(table.table_type()),
                            &table.schema(),
                        )
                        .map_err(|e| Status::internal(format!("GetTables: {e}")))?;
                }
            }
        }
        builder
            .build()
            .map_err(|e| Status::internal(format!("GetTables: {e}")))
    }

    /// The error to give for `sql` when running it failed with `failed`: the planner's own
    /// message (which names the unknown table or column) when planning fails, else `failed`.
    pub async fn explain(&self, sql: &str, scope: &Scope, failed: Status) -> Status {
        if failed.code() != tonic::Code::Internal {
            return failed;
        }
        let ctx = match self.context(scope).await {
            Ok(ctx) => ctx,
            Err(_) => return failed,
        };
        match logical_plan(&ctx, sql).await {
            Err(e) => sql_error(e),
            Ok(_) => failed,
        }
    }
}

#[async_trait]
impl SessionStateProvider for Provider {
    /// The session of the call's token's scope (the service checked the token before it
    /// handed the call on; a call without one sees nothing).
    async fn new_context(&self, request: &Request<()>) -> Result<SessionState, Status> {
        let scope = super::scope_of(&self.tables.admin.tokens, request.metadata())?;
        Ok(self.context(&scope).await?.state())
    }
}

/// One Flight table as a DataFusion table: rows are read when a query scans it.
#[derive(Debug)]
struct Table {
    tables: Arc<Tables>,
    name: String,
    schema: SchemaRef,
    /// Whose rows a scan returns.
    scope: Scope,
}

/// `column = 'text'` on a text column of `schema`, which a table's read can filter on.
pub(super) fn text_equality<'a>(schema: &SchemaRef, e: &'a Expr) -> Option<(&'a str, &'a str)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = e
    else {
        return None;
    };
    let (column, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, v),
        _ => return None,
    };
    let value = match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.as_str(),
        _ => return None,
    };
    let field = schema.field_with_name(&column.name).ok()?;
    (field.data_type() == &DataType::Utf8).then_some((column.name.as_str(), value))
}

#[async_trait]
impl TableProvider for Table {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Text equalities narrow the read; DataFusion still applies every filter itself.
        Ok(filters
            .iter()
            .map(|f| match text_equality(&self.schema, f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut query = TableQuery {
            table: self.name.clone(),
            limit: limit.map(|l| l.min(self.tables.rows_max())),
            ..TableQuery::default()
        };
        for f in filters {
            if let Some((column, value)) = text_equality(&self.schema, f) {
                // Two different values for one column match nothing; the query keeps one and
                // DataFusion's own filter removes the rest.
                query
                    .filters
                    .entry(column.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        let viewer = self.tables.viewer(self.scope.clone());
        let (_, batches) = self
            .tables
            .cached_batches(query, &viewer)
            .await
            .map_err(|s| DataFusionError::External(Box::new(s)))?;
        // The schema's metadata (the watermark) may have moved since the session was made;
        // the rows are given the session's schema.
        let batches = batches
            .into_iter()
            .map(|b| RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        let exec =
            MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}

/// Every schema of every catalog of `ctx`, or of catalog `only`: (catalog, schema name,
/// schema).
fn schemas_of(
    ctx: &SessionContext,
    only: Option<&str>,
) -> Vec<(String, String, Arc<dyn datafusion::catalog::SchemaProvider>)> {
    let mut out = Vec::new();
    for catalog_name in ctx.catalog_names() {
        if only.is_some_and(|c| c != catalog_name) {
            continue;
        }
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            if let Some(schema) = catalog.schema(&schema_name) {
                out.push((catalog_name.clone(), schema_name, schema));
            }
        }
    }
    out
}

/// A table type as JDBC names it.
fn table_type_name(t: TableType) -> &'static str {
    match t {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

/// `GetTableTypes`: the types `GetTables` uses.
pub fn table_types() -> RecordBatch {
    let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "table_type",
        DataType::Utf8,
        false,
    )]));
    let types = [TableType::Base, TableType::View, TableType::Temporary].map(table_type_name);
    RecordBatch::try_new(
        schema,
        vec![Arc::new(arrow_array::StringArray::from(types.to_vec()))],
    )
    .expect("one string column")
}

/// What `GetSqlInfo` answers.
pub fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Runnel");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlBatchUpdatesSupported, false);
    b.append(SqlInfo::SqlSavepointsSupported, false);
    b.append(SqlInfo::SqlNamedParametersSupported, false);
    b.append(SqlInfo::SqlLocatorsUpdateCopy, false);
    b.append(SqlInfo::SqlStoredFunctionsUsingCallSyntaxSupported, false);
    b.build().expect("the SQL info is well formed")
}

/// What `GetXdbcTypeInfo` answers: the column types the tables use.
pub fn xdbc_types() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let ty =
        |name: &str, data_type: XdbcDataType, column_size: i32, radix: Option<i32>| XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size: Some(column_size),
            literal_prefix: matches!(data_type, XdbcDataType::XdbcVarchar).then(|| "'".into()),
            literal_suffix: matches!(data_type, XdbcDataType::XdbcVarchar).then(|| "'".into()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
            searchable: Searchable::Full,
            unsigned_attribute: radix.map(|_| false),
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: radix,
            interval_precision: None,
        };
    // Ordered by data type number, as JDBC's getTypeInfo expects.
    b.append(ty("BIGINT", XdbcDataType::XdbcBigint, 19, Some(10)));
    b.append(ty("BOOLEAN", XdbcDataType::XdbcBit, 1, None));
    b.append(ty("INTEGER", XdbcDataType::XdbcInteger, 10, Some(10)));
    b.append(ty("DOUBLE", XdbcDataType::XdbcDouble, 15, Some(2)));
    b.append(ty("VARCHAR", XdbcDataType::XdbcVarchar, i32::MAX, None));
    b.append(ty("TIMESTAMP", XdbcDataType::XdbcTimestamp, 29, None));
    b.build().expect("the type info is well formed")
}

/// The SQL with its `?` placeholders (JDBC's and ODBC's) numbered as DataFusion's `$1`, `$2`,
/// … in order. A `?` inside a string, a quoted identifier or a comment stays as it is.
pub fn number_placeholders(sql: &str) -> String {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize_with_location() else {
        // The planner reports the syntax error.
        return sql.to_string();
    };
    // Where each `?` is: (line, column), both counted from 1, columns in characters.
    let marks: Vec<(u64, u64)> = tokens
        .iter()
        .filter(|t| matches!(&t.token, Token::Placeholder(p) if p == "?"))
        .map(|t| (t.span.start.line, t.span.start.column))
        .collect();
    if marks.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + marks.len() * 2);
    let mut n = 0;
    for (line_no, line) in sql.split_inclusive('\n').enumerate() {
        for (col_no, c) in line.chars().enumerate() {
            if c == '?' && marks.contains(&(line_no as u64 + 1, col_no as u64 + 1)) {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::number_placeholders;

    #[test]
    fn question_marks_become_numbered_placeholders_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b = ?"),
            "SELECT * FROM t WHERE a = $1 AND b = $2"
        );
        assert_eq!(
            number_placeholders("SELECT '?', \"x?\" FROM t -- why?\nWHERE a = ?"),
            "SELECT '?', \"x?\" FROM t -- why?\nWHERE a = $1"
        );
        assert_eq!(
            number_placeholders("SELECT 'it''s' FROM t WHERE a = ?"),
            "SELECT 'it''s' FROM t WHERE a = $1"
        );
        assert_eq!(number_placeholders("SELECT $1"), "SELECT $1");
        assert_eq!(number_placeholders("SELECT 'unclosed"), "SELECT 'unclosed");
    }
}
