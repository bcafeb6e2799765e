//! The Arrow Flight SQL door: statement queries, prepared statements and the catalog metadata
//! that ADBC, JDBC and DBeaver browse with. Everything is planned by `tidemark_query` over the
//! injected `SnapshotSource`; this module owns only the protocol mapping.
//!
//! ```text
//!  GetFlightInfo(CommandStatementQuery) ─► plan, answer the schema ─► ticket = the SQL text
//!  DoGet(TicketStatementQuery)          ─► plan again, execute, stream batches
//!  CreatePreparedStatement              ─► plan, answer the schema ─► handle = the SQL text
//!  GetCatalogs / GetDbSchemas / GetTables / GetTableTypes / GetSqlInfo / GetXdbcTypeInfo
//! ```
//!
//! Tickets and prepared statement handles carry the SQL text itself, so the server keeps no
//! per-client state: any node can serve any ticket, handles never expire, and closing one is a
//! no-op. Results go out with dictionaries hydrated and view types as their plain
//! counterparts (`wire_schema`), and every schema a client sees — in a `FlightInfo`, a prepared
//! statement or `GetTables` — is that same wire schema.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{
    GetTablesBuilder, SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData,
    XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionCreatePreparedSubstraitPlanRequest,
    ActionEndSavepointRequest, ActionEndTransactionRequest, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan,
    CommandStatementUpdate, DoPutPreparedStatementResult, Nullable, ProstMessageExt, Searchable,
    SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity, SqlSupportedTransaction,
    TicketStatementQuery, XdbcDataType, XdbcDatetimeSubcode,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::arrow::ipc::{MessageHeader, root_as_message};
use datafusion::dataframe::DataFrame;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message as _;
use tidemark_query::{CATALOG, DATASOURCE_SCHEMA, SYSTEM_SCHEMA};
use tonic::{Request, Response, Status, Streaming};

use tidemark_catalog::access::Principal;
use tidemark_query::scope::Scope;

use crate::answer::Answer;
use crate::flight_auth::{DelayRefusals, FlightAuth, presented_token};
use crate::limits::ResultCap;
use crate::wire::{to_wire, wire_schema};
use crate::{Error, SqlState};

/// Where the binary listens for Flight SQL unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// `GetTables` type of the datasources in `public`.
pub const TABLE_TYPE: &str = "TABLE";
/// `GetTables` type of the system tables in `sys`.
pub const SYSTEM_TABLE_TYPE: &str = "SYSTEM TABLE";

type DoGetStream = <TidemarkFlightSql as FlightService>::DoGetStream;

/// The Flight SQL service over one node's data. Cheap to clone; holds no per-client state.
#[derive(Debug, Clone)]
pub struct TidemarkFlightSql {
    state: SqlState,
}

impl TidemarkFlightSql {
    pub fn new(state: SqlState) -> Self {
        TidemarkFlightSql { state }
    }
}

/// The gRPC service the binary serves with tonic (by default on [`DEFAULT_LISTEN`]), behind
/// the API key check of `flight_auth.rs`.
pub fn flight_service(
    state: SqlState,
    failed_login_delay: std::time::Duration,
) -> DelayRefusals<
    tonic::service::interceptor::InterceptedService<
        FlightServiceServer<TidemarkFlightSql>,
        FlightAuth,
    >,
> {
    let auth = FlightAuth(state.auth.clone());
    let catch_up = state.auth.clone().zip(state.barrier.clone());
    let inner = FlightServiceServer::with_interceptor(TidemarkFlightSql::new(state), auth);
    DelayRefusals {
        inner,
        delay: failed_login_delay,
        catch_up,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// User errors (bad SQL, unknown table, writes) are the client's to fix; the rest are ours.
fn status(e: Error) -> Status {
    let class = e.status_class();
    if class == tidemark_catalog::StatusClass::Internal {
        tracing::warn!(error = %e, "flight sql: internal error");
    }
    crate::status::grpc_status(class, e.to_string())
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "flight sql: {what}");
    Status::internal(format!("{what}: {e}"))
}

/// Statement text from a ticket or a prepared statement handle (both are the SQL itself).
fn sql_text(handle: &[u8], what: &str) -> Result<String, Status> {
    String::from_utf8(handle.to_vec()).map_err(|_| {
        Status::invalid_argument(format!(
            "the {what} is not a tidemark statement (not UTF-8 SQL text)"
        ))
    })
}

/// Transactions do not exist here (every query reads its own consistent snapshot), so a
/// request inside one is refused rather than silently run outside it.
fn refuse_transaction(transaction_id: &Option<Bytes>) -> Result<(), Status> {
    match transaction_id {
        Some(id) if !id.is_empty() => Err(Status::invalid_argument(
            "tidemark has no transactions: run the statement without a transaction id",
        )),
        _ => Ok(()),
    }
}

fn schema_ipc(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| internal("cannot encode the result schema", e))?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Planning and streaming

async fn plan(state: &SqlState, text: &str, caller: &Principal) -> Result<DataFrame, Status> {
    crate::plan(state, text, caller).await.map_err(status)
}

/// The wire schema of a statement's result, from its plan (no execution).
async fn result_schema(
    state: &SqlState,
    text: &str,
    caller: &Principal,
) -> Result<SchemaRef, Status> {
    let df = plan(state, text, caller).await?;
    Ok(wire_schema(df.schema().as_arrow()))
}

/// Plans `text` again and streams its result. The schema message goes first even when there
/// are no rows, so clients always learn the columns.
/// The consistency a Flight SQL call asked for in its `tidemark-consistency` metadata.
async fn consistency<T>(state: &SqlState, request: &Request<T>) -> Result<(), Status> {
    let asked = request
        .metadata()
        .get(crate::CONSISTENCY_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    crate::consistency(state, asked)
        .await
        .map_err(|e| crate::status::grpc_status(e.status_class(), e.to_string()))
}

/// Who a call is from (the interceptor put it there): what it may see, and whose query count
/// it adds to. Without an interceptor (no keys anywhere) the caller is anonymous.
fn caller<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous)
}

/// Plans and streams a statement for `caller`, within the query limits: the key's slot is
/// held until the stream ends, the time limit covers planning and every batch, and the
/// answer's rows and bytes are capped (the stream then ends with the cap's error).
async fn execute(
    state: &SqlState,
    text: &str,
    caller: &Principal,
) -> Result<Response<DoGetStream>, Status> {
    tracing::debug!(sql = %text, "flight sql: executing");
    let answer = Answer::start(state, text, caller).await.map_err(status)?;
    let limits = *answer.limits();
    let schema = wire_schema(answer.schema());
    let out_schema = schema.clone();
    let batches = futures::stream::unfold(answer, move |mut answer| {
        let out_schema = out_schema.clone();
        async move {
            let item = match answer.next().await? {
                Ok(batch) => to_wire(&batch, &out_schema).map_err(FlightError::Arrow),
                Err(e) => Err(FlightError::Tonic(Box::new(status(e)))),
            };
            Some((item, answer))
        }
    });
    // The byte cap counts the messages as sent (IPC header and body).
    let mut sent: u64 = 0;
    let mut capped = false;
    let messages = encode(schema, batches).map(move |message| {
        let message = message?;
        sent = sent.saturating_add((message.data_header.len() + message.data_body.len()) as u64);
        if sent > limits.result_bytes_max {
            return Err(status(limits.result_capped(ResultCap::Bytes)));
        }
        Ok(message)
    });
    let messages = messages.take_while(move |m| {
        let go_on = !capped;
        capped |= m.is_err();
        futures::future::ready(go_on)
    });
    Ok(Response::new(Box::pin(messages)))
}

fn encode(
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch, FlightError>> + Send + 'static,
) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

/// A one-batch answer (the metadata calls).
fn encode_batch(
    schema: SchemaRef,
    batch: Result<RecordBatch, FlightError>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| internal("cannot build the metadata result", e))?;
    Ok(Response::new(encode(
        schema,
        futures::stream::iter([Ok(batch)]),
    )))
}

/// A `FlightInfo` whose one endpoint's ticket is `ticket`; the client reuses this connection.
fn flight_info(
    schema: &Schema,
    ticket: Bytes,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| internal("cannot encode the result schema", e))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

/// Metadata commands are their own tickets: DoGet gets the command back and answers it.
fn metadata_info(
    command: &impl ProstMessageExt,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    flight_info(
        schema,
        command.as_any().encode_to_vec().into(),
        request.into_inner(),
    )
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// Every table the caller can read, with its `GetTables` type. Names only: schemas need a
/// snapshot, which is taken only for tables that pass the client's filters.
fn table_names(state: &SqlState, scope: &Scope) -> Vec<(&'static str, String, &'static str)> {
    let mut tables: Vec<_> = scope
        .table_names(state.source.as_ref())
        .into_iter()
        .map(|name| (DATASOURCE_SCHEMA, name, TABLE_TYPE))
        .collect();
    if scope.sees_system_tables() {
        tables.extend(
            state
                .source
                .system_table_names()
                .into_iter()
                .map(|name| (SYSTEM_SCHEMA, name, SYSTEM_TABLE_TYPE)),
        );
    }
    tables
}

/// A table's wire schema, or `None` if it disappeared since it was listed.
fn table_schema(state: &SqlState, db_schema: &str, name: &str) -> Option<SchemaRef> {
    if db_schema == DATASOURCE_SCHEMA {
        let snapshot = state.source.snapshot(name)?;
        Some(wire_schema(&tidemark_storage::segment::table_schema(
            &snapshot.spec,
        )))
    } else {
        state
            .source
            .system_table(name)
            .map(|batch| wire_schema(batch.schema_ref()))
    }
}

fn get_tables(
    state: &SqlState,
    query: CommandGetTables,
    scope: &Scope,
) -> Result<RecordBatch, FlightError> {
    let tables = table_names(state, scope);
    let mut builder = query.clone().into_builder();
    if !builder.include_schema() {
        for (db_schema, name, table_type) in &tables {
            builder.append(CATALOG, db_schema, name, table_type, &Schema::empty())?;
        }
        return builder.build();
    }
    // Filter by name first (with the builder's own filter semantics), then take snapshots only
    // for the tables that remain.
    let mut names = GetTablesBuilder::new(
        query.catalog.clone(),
        query.db_schema_filter_pattern.clone(),
        query.table_name_filter_pattern.clone(),
        query.table_types.clone(),
        false,
    );
    for (db_schema, name, table_type) in &tables {
        names.append(CATALOG, db_schema, name, table_type, &Schema::empty())?;
    }
    let names = names.build()?;
    let text_column = |i: usize| {
        names
            .column(i)
            .as_string_opt::<i32>()
            .ok_or_else(|| FlightError::protocol(format!("GetTables column {i} is not Utf8")))
    };
    let (db_schemas, table_names, table_types) =
        (text_column(1)?, text_column(2)?, text_column(3)?);
    for row in 0..names.num_rows() {
        let (db_schema, name) = (db_schemas.value(row), table_names.value(row));
        if let Some(schema) = table_schema(state, db_schema, name) {
            builder.append(CATALOG, db_schema, name, table_types.value(row), &schema)?;
        }
    }
    builder.build()
}

/// What `GetSqlInfo` answers. Built once; the builder fails only on a programming error,
/// which then reaches the client as an internal error instead of a panic.
static SQL_INFO: LazyLock<Result<SqlInfoData, String>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "tidemark");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerBulkIngestion, false);
    // Handles are the SQL text itself, so they never time out.
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    // DataFusion folds unquoted identifiers to lower case.
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlAllTablesAreSelectable, true);
    // DataFusion's default ordering treats NULL as the largest value.
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    // The metadata filters use Arrow's LIKE kernel, which escapes with a backslash.
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build().map_err(|e| e.to_string())
});

fn sql_info() -> Result<&'static SqlInfoData, Status> {
    SQL_INFO
        .as_ref()
        .map_err(|e| internal("cannot build SqlInfo", e))
}

fn xdbc(type_name: &str, data_type: XdbcDataType, column_size: Option<i32>) -> XdbcTypeInfo {
    let text = matches!(data_type, XdbcDataType::XdbcVarchar);
    let numeric = matches!(
        data_type,
        XdbcDataType::XdbcBigint | XdbcDataType::XdbcInteger | XdbcDataType::XdbcDouble
    );
    let timestamp = matches!(data_type, XdbcDataType::XdbcTimestamp);
    XdbcTypeInfo {
        type_name: type_name.into(),
        data_type,
        column_size,
        literal_prefix: if text {
            Some("'".into())
        } else if timestamp {
            Some("TIMESTAMP '".into())
        } else {
            None
        },
        literal_suffix: (text || timestamp).then(|| "'".into()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: text,
        searchable: Searchable::Full,
        unsigned_attribute: numeric.then_some(false),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(type_name.into()),
        minimum_scale: None,
        maximum_scale: None,
        // ODBC puts datetime types under SQL_DATETIME with a subcode.
        sql_data_type: if timestamp {
            XdbcDataType::XdbcDatetime
        } else {
            data_type
        },
        datetime_subcode: timestamp.then_some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        num_prec_radix: numeric.then_some(if matches!(data_type, XdbcDataType::XdbcDouble) {
            2
        } else {
            10
        }),
        interval_precision: None,
    }
}

/// The SQL types tidemark results use (after `wire_type`).
static XDBC_TYPES: LazyLock<Result<XdbcTypeInfoData, String>> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(xdbc("VARCHAR", XdbcDataType::XdbcVarchar, None));
    b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(19)));
    b.append(xdbc("INTEGER", XdbcDataType::XdbcInteger, Some(10)));
    b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(53)));
    b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1)));
    b.append(xdbc("TIMESTAMP", XdbcDataType::XdbcTimestamp, Some(29)));
    b.append(xdbc("VARBINARY", XdbcDataType::XdbcVarbinary, None));
    b.build().map_err(|e| e.to_string())
});

fn xdbc_types() -> Result<&'static XdbcTypeInfoData, Status> {
    XDBC_TYPES
        .as_ref()
        .map_err(|e| internal("cannot build XdbcTypeInfo", e))
}

/// `GetPrimaryKeys` result schema (FlightSql.proto). tidemark tables have no keys, so the
/// answer is always empty, but browsers ask for it on every table and expect a result.
static PRIMARY_KEYS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("key_name", DataType::Utf8, true),
    ]))
});

/// `GetExportedKeys`, `GetImportedKeys` and `GetCrossReference` result schema; always empty.
static FOREIGN_KEYS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
});

fn empty(schema: &SchemaRef) -> Result<Response<DoGetStream>, Status> {
    encode_batch(schema.clone(), Ok(RecordBatch::new_empty(schema.clone())))
}

/// Prepared statement parameters: none can be bound yet (statements with placeholders are
/// refused at prepare time). A binding without columns binds nothing, so it is accepted.
async fn refuse_parameters(request: Request<PeekableFlightDataStream>) -> Result<(), Status> {
    let mut stream = request.into_inner();
    while let Some(data) = stream.next().await {
        let data: FlightData = data?;
        if data.data_header.is_empty() {
            continue;
        }
        let message = root_as_message(&data.data_header).map_err(|e| {
            Status::invalid_argument(format!("the parameter stream is not Arrow IPC: {e}"))
        })?;
        if message.header_type() == MessageHeader::Schema {
            let schema = Schema::try_from(&data).map_err(|e| {
                Status::invalid_argument(format!("cannot read the parameter schema: {e}"))
            })?;
            if !schema.fields().is_empty() {
                return Err(Status::invalid_argument(
                    "tidemark does not support bound parameters yet: write the values into the SQL text",
                ));
            }
        }
    }
    Ok(())
}

/// An update through Flight SQL. Writes fail in `plan` with the planner's read-only message
/// (which says how data does get in); anything that plans is a read and belongs in a query.
async fn refuse_update(state: &SqlState, text: &str, caller: &Principal) -> Result<i64, Status> {
    plan(state, text, caller).await?;
    Err(Status::invalid_argument(
        "this statement returns rows: run it as a query (executeQuery / CommandStatementQuery), not as an update",
    ))
}

// ---------------------------------------------------------------------------------------------
// The service

#[tonic::async_trait]
impl FlightSqlService for TidemarkFlightSql {
    type FlightService = TidemarkFlightSql;

    /// The interceptor has checked the credentials; the answer carries the key as the bearer
    /// token for the calls that follow (clients that logged in with basic credentials use it).
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let token = presented_token(&request)?;
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::new(),
        };
        let mut response = Response::new(Box::pin(futures::stream::iter([Ok(response)]))
            as Pin<Box<dyn Stream<Item = _> + Send>>);
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::unauthenticated("the API key is not a valid header value"))?;
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    // -- statements -------------------------------------------------------------------------

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        refuse_transaction(&query.transaction_id)?;
        let schema = result_schema(&self.state, &query.query, &caller(&request)).await?;
        let ticket = TicketStatementQuery {
            statement_handle: Bytes::from(query.query),
        };
        flight_info(
            &schema,
            ticket.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let text = sql_text(&ticket.statement_handle, "ticket")?;
        consistency(&self.state, &request).await?;
        execute(&self.state, &text, &caller(&request)).await
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "tidemark runs SQL text, not Substrait plans",
        ))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        refuse_transaction(&command.transaction_id)?;
        refuse_update(&self.state, &command.query, &caller(&request)).await
    }

    async fn do_put_statement_ingest(
        &self,
        _command: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::unimplemented(format!(
            "Flight SQL bulk ingestion is not supported: {}",
            tidemark_query::table::READ_ONLY_HINT
        )))
    }

    async fn do_put_substrait_plan(
        &self,
        _command: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(Status::unimplemented(
            "tidemark runs SQL text, not Substrait plans",
        ))
    }

    // -- prepared statements ----------------------------------------------------------------

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        refuse_transaction(&query.transaction_id)?;
        let schema = result_schema(&self.state, &query.query, &caller(&request)).await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Bytes::from(query.query),
            dataset_schema: schema_ipc(&schema)?,
            // No parameters: an empty parameter schema tells drivers there is nothing to bind.
            parameter_schema: Bytes::new(),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let text = sql_text(
            &command.prepared_statement_handle,
            "prepared statement handle",
        )?;
        let schema = result_schema(&self.state, &text, &caller(&request)).await?;
        flight_info(
            &schema,
            command.as_any().encode_to_vec().into(),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let text = sql_text(
            &command.prepared_statement_handle,
            "prepared statement handle",
        )?;
        consistency(&self.state, &request).await?;
        execute(&self.state, &text, &caller(&request)).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        sql_text(
            &command.prepared_statement_handle,
            "prepared statement handle",
        )?;
        refuse_parameters(request).await?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(command.prepared_statement_handle),
        })
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let text = sql_text(
            &command.prepared_statement_handle,
            "prepared statement handle",
        )?;
        refuse_update(&self.state, &text, &caller(&request)).await
    }

    /// Handles hold no server state, so there is nothing to free.
    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(Status::unimplemented(
            "tidemark runs SQL text, not Substrait plans",
        ))
    }

    // -- catalog metadata -------------------------------------------------------------------

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        encode_batch(schema, builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        // The builder applies the catalog and schema-pattern filters.
        let mut builder = query.into_builder();
        builder.append(CATALOG, DATASOURCE_SCHEMA);
        if crate::scope_of(&caller(&request)).sees_system_tables() {
            builder.append(CATALOG, SYSTEM_SCHEMA);
        }
        let schema = builder.schema();
        encode_batch(schema, builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let schema = query.clone().into_builder().schema();
        encode_batch(
            schema,
            get_tables(&self.state, query, &crate::scope_of(&caller(&request))),
        )
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(TABLE_TYPE);
        builder.append(SYSTEM_TABLE_TYPE);
        let schema = builder.schema();
        encode_batch(schema, builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(sql_info()?).schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(sql_info()?);
        let schema = builder.schema();
        encode_batch(schema, builder.build())
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(xdbc_types()?).schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(xdbc_types()?);
        let schema = builder.schema();
        encode_batch(schema, builder.build())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &PRIMARY_KEYS_SCHEMA, request)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty(&PRIMARY_KEYS_SCHEMA)
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &FOREIGN_KEYS_SCHEMA, request)
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty(&FOREIGN_KEYS_SCHEMA)
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &FOREIGN_KEYS_SCHEMA, request)
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty(&FOREIGN_KEYS_SCHEMA)
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, &FOREIGN_KEYS_SCHEMA, request)
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        empty(&FOREIGN_KEYS_SCHEMA)
    }

    // -- unsupported ------------------------------------------------------------------------

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(Status::unimplemented(
            "tidemark has no transactions: every query reads its own consistent snapshot",
        ))
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented(
            "tidemark has no transactions: every query reads its own consistent snapshot",
        ))
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(Status::unimplemented(
            "tidemark has no transactions or savepoints",
        ))
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented(
            "tidemark has no transactions or savepoints",
        ))
    }

    async fn do_action_cancel_query(
        &self,
        _query: ActionCancelQueryRequest,
        _request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        Err(Status::unimplemented(
            "CancelQuery is not supported: close the DoGet stream to stop a query",
        ))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
