//! The `tidemark` binary: CLI, configuration, and the wiring of one node. Domain logic lives
//! in the crates; this file only parses, builds and starts them.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_catalog::{CatalogCommand, DatasourceSpec};
use tidemark_engine::EngineConfig;
use tidemark_engine::command::Command;
use tidemark_ingest::beacons::BeaconLimits;
use tidemark_ingest::{IngestState, Node, NodeConfig};
use tidemark_raft::Member;
use tidemark_sql::SqlState;
use tidemark_storage::snapshot::SnapshotSource;

/// Ingest allocates many small, short-lived values per event (JSON maps, record buffers);
/// glibc's malloc spent about half of the apply thread's time on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod bench;
mod client;
mod cluster;
mod config;
mod demo;
mod descriptors;
mod governance;
mod http_serve;
mod jobs;
mod keys;
mod listeners;
mod segments;
mod tls;

use client::Client;
use config::Config;
use listeners::Reserved;

#[derive(Debug, Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Analytics database for tracking beacons"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node (single node, loopback ports by default).
    Serve(ServeArgs),
    /// Send realistic merchant traffic to a node.
    Demo(demo::DemoArgs),
    /// Load a node and report throughput, ack latency and server CPU per event.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Run one SQL statement on a node and print the result.
    Sql(SqlArgs),
    /// Manage datasources.
    #[command(subcommand)]
    Datasource(DatasourceCmd),
    /// Manage the tag registry: domains, tags, aliases; ask what a key means.
    #[command(subcommand)]
    Governance(governance::GovernanceCmd),
    /// List a node's segments and verify their checksums.
    #[command(subcommand)]
    Segments(segments::SegmentsCmd),
    /// Rebuild an interval of a datasource from the raw log under the current rules and
    /// publish it as a new version (queries switch atomically).
    Reindex(jobs::ReindexArgs),
    /// Merge the shards of each interval into one segment (optionally rolled up to a coarser
    /// granularity), from the segments, as a new version.
    Compact(jobs::CompactArgs),
    /// Delete the beacons a condition matches (e.g. --where "merchant_id = 'm1'") from the raw
    /// log, and rebuild the segment intervals that counted them, as one published job.
    Delete(jobs::DeleteArgs),
    /// Write a datasource's raw events of an interval as Parquet, partitioned by date.
    Export(jobs::ExportArgs),
    /// Take a consistent backup of a running node (catalog, segments, raw log) into a directory.
    Backup(backup::BackupArgs),
    /// Make a new data directory from a backup, to start as a one-node cluster.
    Restore(backup::RestoreArgs),
    /// Long jobs (reindexes): list, show, cancel.
    #[command(subcommand)]
    Jobs(jobs::JobsCmd),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Inspect and change the cluster's membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (see tidemark.example.toml).
    #[arg(long, env = "TIDEMARK_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "TIDEMARK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "TIDEMARK_HTTP_ADDR")]
    http_addr: Option<String>,
    #[arg(long, env = "TIDEMARK_FLIGHT_ADDR")]
    flight_addr: Option<String>,
    /// Kafka protocol listener (default 127.0.0.1:9092).
    #[arg(long, env = "TIDEMARK_KAFKA_ADDR")]
    kafka_addr: Option<String>,
    /// The address Kafka clients are told to connect to (default: the listener's).
    #[arg(long, env = "TIDEMARK_KAFKA_ADVERTISED_ADDR")]
    kafka_advertised_addr: Option<String>,
    /// Do not create the demo `beacons` datasource.
    #[arg(long, env = "TIDEMARK_NO_DEMO_DATASOURCE")]
    no_demo_datasource: bool,
    /// Also run the demo traffic generator against this node.
    #[arg(long, env = "TIDEMARK_DEMO")]
    demo: bool,
    /// This node's Raft id, unique in its cluster (default 1).
    #[arg(long, env = "TIDEMARK_NODE_ID")]
    node_id: Option<u64>,
    /// Raft RPC listener (default 127.0.0.1:9093).
    /// This node's TLS certificate chain (PEM): HTTPS, Flight SQL over TLS and Kafka SSL.
    #[arg(long, env = "TIDEMARK_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TIDEMARK_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA that signs every node's certificate: Raft between nodes becomes mutual TLS.
    #[arg(long, env = "TIDEMARK_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    #[arg(long, env = "TIDEMARK_RAFT_ADDR")]
    raft_addr: Option<String>,
    /// HTTP address of a cluster member to join (e.g. 127.0.0.1:8080). Without it a new node
    /// starts its own one-voter cluster.
    #[arg(long, env = "TIDEMARK_JOIN")]
    join: Option<String>,
    /// Tests only: accept Raft transport fault rules at POST /v1/test/faults.
    #[arg(long, hide = true)]
    test_faults: bool,
    /// How often the writer checks for intervals to persist (ms).
    #[arg(long, env = "TIDEMARK_TICK_INTERVAL_MS")]
    tick_interval_ms: Option<u64>,
    /// Build a Raft snapshot after this many log entries (`[raft] snapshot_every_entries`).
    #[arg(long, env = "TIDEMARK_SNAPSHOT_EVERY_ENTRIES")]
    snapshot_every_entries: Option<u64>,
    /// Raft entries kept below a snapshot (`[raft] entries_kept_after_snapshot`).
    #[arg(long, env = "TIDEMARK_ENTRIES_KEPT_AFTER_SNAPSHOT")]
    entries_kept_after_snapshot: Option<u64>,
    /// Pause between scrubber passes over the data files, 0 = off (`[raft] scrub_interval_ms`).
    #[arg(long, env = "TIDEMARK_SCRUB_INTERVAL_MS")]
    scrub_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
struct SqlArgs {
    /// The statement, or `-` to read it from standard input.
    query: String,
    #[arg(long, env = "TIDEMARK_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct UrlArg {
    #[arg(long, env = "TIDEMARK_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
}

#[derive(Debug, Subcommand)]
enum DatasourceCmd {
    /// Create a datasource from a JSON spec file (`-` for standard input).
    Create {
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        url: UrlArg,
    },
    /// List datasources.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Show one datasource with every spec version.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Replace a datasource's spec (dimensions and metrics may be added, granularities changed).
    Update {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Delete a datasource; its data is purged after the grace period.
    Delete {
        name: String,
        /// ISO-8601 period, e.g. PT1H.
        #[arg(long, default_value = "PT1H")]
        grace: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Serve(_)) {
        exit_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Cmd::Serve(args) => serve(args),
        Cmd::Demo(args) => demo::run(&args),
        Cmd::Bench(cmd) => bench::run(&cmd),
        Cmd::Sql(args) => sql(args),
        Cmd::Datasource(cmd) => datasource(cmd),
        Cmd::Governance(cmd) => governance::run(cmd),
        Cmd::Keys(cmd) => keys::run(cmd),
        Cmd::Segments(cmd) => segments::run(cmd),
        Cmd::Reindex(args) => jobs::reindex(args),
        Cmd::Compact(args) => jobs::compact(args),
        Cmd::Delete(args) => jobs::delete(args),
        Cmd::Export(args) => jobs::export(args),
        Cmd::Backup(args) => backup::backup(args),
        Cmd::Restore(args) => backup::restore(args),
        Cmd::Jobs(cmd) => jobs::run(cmd),
        Cmd::Cluster(cmd) => cluster::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("tidemark: {e:#}");
        std::process::exit(1);
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_toml(&text, &path.display().to_string())?
        }
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(a) = &args.http_addr {
        cfg.http_addr = a.clone();
    }
    if let Some(a) = &args.flight_addr {
        cfg.flight_addr = a.clone();
    }
    if let Some(a) = &args.kafka_addr {
        cfg.kafka_addr = a.clone();
    }
    if let Some(a) = &args.kafka_advertised_addr {
        cfg.kafka_advertised_addr = Some(a.clone());
    }
    if args.no_demo_datasource {
        cfg.demo_datasource = false;
    }
    if let Some(id) = args.node_id {
        cfg.node_id = id;
    }
    if let Some(a) = &args.raft_addr {
        cfg.raft_addr = a.clone();
    }
    if let Some(p) = &args.tls_cert {
        cfg.tls.cert = Some(p.clone());
    }
    if let Some(p) = &args.tls_key {
        cfg.tls.key = Some(p.clone());
    }
    if let Some(p) = &args.tls_ca {
        cfg.tls.ca = Some(p.clone());
    }
    if let Some(j) = &args.join {
        cfg.join = Some(j.clone());
    }
    if let Some(n) = args.snapshot_every_entries {
        cfg.raft.snapshot_every_entries = n;
    }
    if let Some(n) = args.entries_kept_after_snapshot {
        cfg.raft.entries_kept_after_snapshot = n;
    }
    if let Some(n) = args.scrub_interval_ms {
        cfg.raft.scrub_interval_ms = n;
    }
    if let Some(t) = args.tick_interval_ms {
        cfg.storage.tick_interval_ms = t;
    }
    // From the environment only (a flag would show it to every `ps`).
    if let Ok(secret) = std::env::var("TIDEMARK_CLUSTER_SECRET") {
        cfg.cluster_secret = Some(config::Secret(secret));
    }
    if let Err(problems) = cfg.validate() {
        bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    Ok(cfg)
}

fn node_config(
    cfg: &Config,
    kafka_advertised: std::net::SocketAddr,
    test_faults: bool,
) -> NodeConfig {
    let mut engine = EngineConfig::new(&cfg.data_dir);
    engine.raw_file_bytes_max = cfg.storage.raw_file_bytes_max;
    engine.realtime_bytes_persist = cfg.storage.realtime_bytes_persist;
    engine.realtime_bytes_max = cfg.storage.realtime_bytes_max;
    engine.idempotency_window_ms = cfg.ingest.idempotency_window_ms;
    engine.idempotency_keys_max = cfg.ingest.idempotency_keys_max;
    engine.rejects_max = cfg.storage.rejects_max;
    let mut node = NodeConfig::new(engine);
    node.node_id = cfg.node_id;
    node.me = Member {
        raft: cfg.raft_addr.clone(),
        http: cfg.http_addr.clone(),
        kafka: kafka_advertised.to_string(),
    };
    node.heartbeat_interval_ms = cfg.raft.heartbeat_interval_ms;
    node.election_timeout_min_ms = cfg.raft.election_timeout_min_ms;
    node.election_timeout_max_ms = cfg.raft.election_timeout_max_ms;
    node.checkpoint_every_entries = cfg.raft.snapshot_every_entries;
    node.entries_kept_after_snapshot = cfg.raft.entries_kept_after_snapshot;
    node.scrub = tidemark_raft::scrubber::ScrubConfig {
        interval: Duration::from_millis(cfg.raft.scrub_interval_ms),
        bytes_per_s: cfg.raft.scrub_bytes_per_s,
    };
    node.test_faults = test_faults;
    node.pending_entries_max = cfg.ingest.pending_entries_max;
    node.tick_interval_ms = cfg.storage.tick_interval_ms;
    node.checkpoint_interval_ms = cfg.storage.checkpoint_interval_ms;
    // Checked by `Config::validate`.
    node.cluster_secret = cfg
        .cluster_secret
        .as_ref()
        .and_then(|s| tidemark_raft::ClusterSecret::new(&s.0).ok());
    node
}

/// A client command piped into `head` ends quietly when the pipe closes, as Unix tools do,
/// instead of panicking in `println!`. Rust ignores SIGPIPE so that a server sees EPIPE on a
/// socket as an error; the server keeps that.
fn exit_quietly_on_closed_pipe() {
    // SAFETY: called at start-up, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The log filter when `RUST_LOG` is not set: tidemark's own events at info (every crate's
/// target starts with `tidemark`), dependencies at warn. openraft logs whole Raft states at
/// info, which buried the lines a newcomer needs.
const DEFAULT_LOG_FILTER: &str = "warn,tidemark=info";

fn serve(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = load_config(&args)?;
    owner_only_files();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_node(cfg, args.demo, args.test_faults))
}

/// Data files hold raw beacons, key digests and the node secret: everything this process
/// creates is its owner's only (files 0600, directories 0700), whatever umask it was
/// started with.
pub(crate) fn owner_only_files() {
    // SAFETY: umask only sets the process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

async fn run_node(cfg: Config, demo: bool, test_faults: bool) -> Result<()> {
    let descriptors = descriptors::raise(cfg.limits.descriptors_reserved);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    // A data directory made before the mask was set (or by hand) is closed too.
    std::fs::set_permissions(
        &cfg.data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .with_context(|| format!("cannot make {} its owner's only", cfg.data_dir.display()))?;
    let started = Instant::now();
    // Every port is bound before the node starts, so a port in use fails at once; the client
    // ports listen only once the node can answer (a connection meanwhile is refused, and the
    // client tries another node instead of waiting on one that replays its log).
    tls::install_provider();
    let tls = tls::Loaded::load(&cfg.tls)?;
    let http_tls = tls.as_ref().map(tls::Loaded::http).transpose()?.flatten();
    let kafka_tls = tls.as_ref().map(tls::Loaded::kafka).transpose()?.flatten();
    let flight_tls = tls.as_ref().and_then(tls::Loaded::flight);
    let http = Reserved::bind(&cfg.http_addr, "http_addr").await?;
    let flight = Reserved::bind(&cfg.flight_addr, "flight_addr").await?;
    let flight_addr = flight.local_addr();
    let kafka = Reserved::bind(&cfg.kafka_addr, "kafka_addr").await?;
    let raft = tokio::net::TcpListener::bind(&cfg.raft_addr)
        .await
        .with_context(|| format!("cannot listen on {} (raft_addr)", cfg.raft_addr))?;
    let kafka_advertised: std::net::SocketAddr = match &cfg.kafka_advertised_addr {
        Some(a) => a.parse()?,
        None => kafka.local_addr(),
    };
    let raft_local = raft.local_addr()?;
    let mut node_cfg = node_config(&cfg, kafka_advertised, test_faults);
    node_cfg.peer_tls = tls.as_ref().and_then(tls::Loaded::peers);
    node_cfg.peer_https = tls
        .as_ref()
        .map(tls::Loaded::peer_https)
        .transpose()?
        .flatten();
    node_cfg.raft_connections_max = descriptors.raft_connections();
    let (node, report) = Node::start(node_cfg, raft)
        .await
        .context("cannot start the node")?;
    let keys = node.engine().read().catalog().access().required();
    listeners::check_exposure(
        &[
            ("http_addr", http.local_addr()),
            ("flight_addr", flight_addr),
            ("kafka_addr", kafka.local_addr()),
            ("raft_addr", raft_local),
        ],
        keys,
        tls.as_ref().is_some_and(|t| t.peers().is_some()),
    )?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        node_id = cfg.node_id,
        checkpoint = report.checkpoint_position,
        raw_batches_replayed = report.raw_batches_replayed,
        cut_bytes = report.cut_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "node started"
    );
    if cfg.join.is_none() {
        node.bootstrap().await.context("cannot start the cluster")?;
    }
    let peer_http = cluster::PeerHttp {
        scheme: if http_tls.is_some() { "https" } else { "http" },
        ca: cfg.tls.ca.clone(),
    };
    cluster::announce_in_background(node.clone(), cfg.join.clone(), peer_http);
    if cfg.join.is_none() && cfg.demo_datasource {
        create_demo_datasource(&node).await?;
    }

    let source: Arc<dyn SnapshotSource> = Arc::new(node.engine());
    let barrier: Arc<dyn tidemark_sql::ReadBarrier> = Arc::new(RaftReadBarrier(node.clone()));
    let auth: Arc<dyn tidemark_sql::flight_auth::Authenticator> = Arc::new(KeyCheck(node.clone()));
    // A data directory's `spill` holds only a running query's temporary files: whatever a
    // crash left there is garbage.
    let spill_dir = cfg.data_dir.join("spill");
    let _ = std::fs::remove_dir_all(&spill_dir);
    let gate = tidemark_sql::limits::QueryGate::with_spill(
        cfg.limits.query(),
        spill_dir,
        cfg.limits.query_spill_bytes_max,
    )?;
    let sql_state = SqlState {
        source,
        barrier: Some(barrier),
        auth: Some(auth),
        gate,
    };
    let failed_login_delay = Duration::from_millis(cfg.limits.failed_login_delay_ms);
    let metrics = node.metrics();
    let sql_router =
        tidemark_sql::http::router(sql_state.clone()).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move {
                    let t = Instant::now();
                    let resp = next.run(req).await;
                    metrics.query_seconds.observe(t.elapsed().as_secs_f64());
                    resp
                }
            },
        ));
    let spool = if cfg.ingest.spool {
        let dir = cfg.data_dir.join("spool");
        let spool = tidemark_ingest::spool::Spool::open(&dir, cfg.ingest.spool_bytes_max)
            .with_context(|| format!("cannot open the beacon spool in {}", dir.display()))?;
        Some(Arc::new(spool))
    } else {
        None
    };
    // Unless the operator set the share, keep room for what storage already holds open.
    let descriptors = match (
        cfg.limits.descriptors_reserved,
        descriptors::Budget::in_use(),
    ) {
        (None, Some(in_use)) => descriptors.sparing(in_use),
        _ => descriptors,
    };
    let configured = [
        cfg.kafka.connections_max,
        cfg.http.connections_max,
        cfg.flight.connections_max,
    ];
    let [kafka_max, http_max, flight_max] = descriptors.split(configured);
    let why = descriptors.why();
    if [kafka_max, http_max, flight_max] != configured {
        tracing::warn!(
            kafka = kafka_max,
            http = http_max,
            flight = flight_max,
            "connection limits lowered: {why}; raise the hard limit (ulimit -Hn, LimitNOFILE=) to admit more"
        );
    }
    let kafka_connections = tidemark_ingest::connections::ConnectionGate::lowered(
        "kafka",
        cfg.kafka.connections_max,
        cfg.kafka.connections_per_address_max,
        kafka_max,
        &why,
    );
    let http_bounds = http_serve::Bounds::from_config(&cfg.http, http_max, &why);
    let flight_connections = tidemark_ingest::connections::ConnectionGate::lowered(
        "flight",
        cfg.flight.connections_max,
        cfg.flight.connections_per_address_max,
        flight_max,
        &why,
    );
    let ingest_state = IngestState {
        node: node.clone(),
        limits: BeaconLimits {
            body_bytes_max: cfg.ingest.body_bytes_max,
            future_ms_max: cfg.ingest.future_ms_max,
        },
        spool: spool.clone(),
        failed_login_delay,
        more_metrics: vec![
            Arc::new(QueryGateMetrics(sql_state.gate.clone())),
            kafka_connections.clone(),
            http_bounds.connections.clone(),
            flight_connections.clone(),
        ],
    };
    if let Some(spool) = spool {
        tokio::spawn(tidemark_ingest::beacon_routing::drain(
            ingest_state.clone(),
            spool,
        ));
    }
    // SQL over HTTP sits behind the same key check as the ingest routes.
    let sql_router = sql_router.layer(axum::middleware::from_fn_with_state(
        ingest_state.clone(),
        tidemark_ingest::auth::authenticate,
    ));
    let app = tidemark_ingest::router(ingest_state)
        .merge(sql_router)
        // The beacon handler enforces its own limit with a clear 413; this bound is a backstop.
        .layer(axum::extract::DefaultBodyLimit::max(
            cfg.ingest.body_bytes_max + 1,
        ));

    let mut kafka_config = tidemark_ingest::kafka::KafkaConfig::new(kafka_advertised);
    kafka_config.node_id = cfg.node_id as i32;
    kafka_config.request_bytes_max = cfg.kafka.request_bytes_max;
    kafka_config.unauthenticated_request_bytes_max = cfg.kafka.unauthenticated_request_bytes_max;
    kafka_config.idle_timeout = Duration::from_millis(cfg.kafka.idle_timeout_ms);
    kafka_config.request_read_timeout = Duration::from_millis(cfg.kafka.request_read_timeout_ms);
    kafka_config.connections = kafka_connections.clone();
    kafka_config.decompressed_batch_bytes_max = cfg.kafka.decompressed_batch_bytes_max;
    kafka_config.future_ms_max = cfg.ingest.future_ms_max;
    kafka_config.failed_login_delay = failed_login_delay;
    kafka_config.tls = kafka_tls.clone().map(tidemark_ingest::kafka::KafkaTls);
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    let flight_scheme = if flight_tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let kafka_security = if kafka_tls.is_some() { " (SSL)" } else { "" };
    tracing::info!(http = %cfg.http_addr, flight = %flight_addr, kafka = %cfg.kafka_addr, raft = %cfg.raft_addr, "serving");
    println!(
        "tidemark is serving: HTTP {http_scheme}://{} , Flight SQL {flight_scheme}://{} , Kafka {}{kafka_security} , Raft {} (node {})",
        cfg.http_addr, flight_addr, cfg.kafka_addr, cfg.raft_addr, cfg.node_id
    );
    if demo {
        println!(
            "{}",
            demo::guide(&cfg, http_scheme, &kafka_advertised.to_string())
        );
    }
    let (http, flight, kafka) = (http.listen()?, flight.listen()?, kafka.listen()?);
    let kafka_task = tokio::spawn(tidemark_ingest::kafka::serve(
        kafka,
        node.clone(),
        kafka_config,
    ));

    let admin_routes = app.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let stopped = async move {
        let _ = http_stop.changed().await;
    };
    let http_task = match http_tls {
        None => tokio::spawn(http_serve::serve(http, app, http_bounds, stopped)),
        Some(acceptor) => {
            let https = tls::TlsListener::new(http, acceptor, http_bounds.connections.clone())?;
            tokio::spawn(http_serve::serve(https, app, http_bounds, stopped))
        }
    };
    let mut flight_stop = stop_rx.clone();
    let mut flight_server = tonic::transport::Server::builder();
    if let Some(t) = flight_tls {
        flight_server = flight_server
            .tls_config(t)
            .context("the Flight SQL port's TLS")?;
    }
    let flight_task = tokio::spawn(
        flight_server
            .add_service(tidemark_sql::flight::flight_service(
                sql_state,
                failed_login_delay,
            ))
            // The admin API's gRPC twin runs the HTTP routes in-process, key check included.
            .add_service(tidemark_ingest::admin_grpc::admin_service(admin_routes))
            .serve_with_incoming_shutdown(
                tidemark_raft::incoming::incoming(flight, "flight", move |peer| {
                    flight_connections.admit(peer.ip()).ok()
                }),
                async move {
                    let _ = flight_stop.changed().await;
                },
            ),
    );
    if demo {
        let args = demo::DemoArgs {
            url: format!("{http_scheme}://{}", cfg.http_addr),
            ca_cert: cfg.tls.ca.clone(),
            datasource: "beacons".into(),
            rate: 2000,
            backfill: 200_000,
            seconds: None,
            merchants: 1000,
            seed: 42,
            batch: 500,
        };
        std::thread::spawn(move || {
            if let Err(e) = demo::run(&args) {
                eprintln!("demo stopped: {e:#}");
            }
        });
    }

    // Stop on Ctrl-C / SIGTERM, or at once when the node hits a fatal error (fsync).
    let fatal = loop {
        tokio::select! {
            _ = shutdown_signal() => break None,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if let Some(reason) = node.fatal() {
                    break Some(reason);
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    let _ = http_task.await;
    let _ = flight_task.await;
    kafka_task.abort();
    if let Some(reason) = fatal {
        eprintln!("tidemark: stopping: {reason}");
        std::process::exit(70);
    }
    node.shutdown().await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The SQL doors' gauges on `/metrics`.
#[derive(Debug)]
struct QueryGateMetrics(Arc<tidemark_sql::limits::QueryGate>);

impl tidemark_ingest::RenderMetrics for QueryGateMetrics {
    fn render_metrics(&self) -> String {
        self.0.render_metrics()
    }
}

/// Read-your-writes for the SQL doors, through the node's Raft read index.
#[derive(Debug)]
struct RaftReadBarrier(Node);

impl tidemark_sql::ReadBarrier for RaftReadBarrier {
    fn wait(&self) -> futures::future::BoxFuture<'static, std::result::Result<(), String>> {
        let node = self.0.clone();
        Box::pin(async move { node.read_barrier().await.map_err(|e| e.to_string()) })
    }
}

/// Flight SQL callers are checked against the same keys as HTTP callers: the catalog's.
#[derive(Debug)]
struct KeyCheck(Node);

impl tidemark_sql::flight_auth::Authenticator for KeyCheck {
    fn authenticate(
        &self,
        token: Option<&str>,
    ) -> std::result::Result<tidemark_catalog::access::Principal, tidemark_catalog::access::Denied>
    {
        self.0
            .engine()
            .read()
            .catalog()
            .access()
            .authenticate(token, None)
    }

    fn refused(&self) {
        self.0
            .metrics()
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// On the node that starts a cluster: once it leads, the demo datasource exists.
async fn create_demo_datasource(node: &Node) -> Result<()> {
    let leader = node
        .replica()
        .wait_for_leader(Duration::from_secs(30))
        .await?;
    if leader != node.replica().node_id() || node.engine().read().catalog().get("beacons").is_some()
    {
        return Ok(());
    }
    let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC)?;
    node.propose(&Command::catalog(
        CatalogCommand::CreateDatasource { spec },
        tidemark_catalog::audit::ACTOR_SYSTEM,
    ))
    .await?;
    tracing::info!("created the demo datasource `beacons`");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn sql(args: SqlArgs) -> Result<()> {
    let query = if args.query == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        args.query
    };
    let client = Client::new(&args.url);
    let accept = match args.format {
        Format::Table => tidemark_sql::http::ARROW_STREAM,
        Format::Json => "application/json",
        Format::Csv => "text/csv",
    };
    let reply = client
        .send(
            "POST",
            "/v1/sql",
            "text/plain",
            &[("Accept", accept)],
            query.as_bytes(),
        )?
        .ok()?;
    match args.format {
        Format::Table => {
            let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
                std::io::Cursor::new(reply.body),
                None,
            )?;
            let batches: Vec<_> = reader.collect::<Result<_, _>>()?;
            println!(
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
            );
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            eprintln!("({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        Format::Json | Format::Csv => println!("{}", reply.text()),
    }
    Ok(())
}

pub(crate) fn read_spec(file: &PathBuf) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::stdin().read_to_end(&mut v)?;
        return Ok(v);
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

pub(crate) fn print_json(body: &[u8]) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn datasource(cmd: DatasourceCmd) -> Result<()> {
    match cmd {
        DatasourceCmd::Create { file, url } => {
            let reply = Client::new(&url.url).send(
                "POST",
                "/v1/datasources",
                "application/json",
                &[],
                &read_spec(&file)?,
            )?;
            print_json(&reply.ok()?.body)
        }
        DatasourceCmd::Update { name, file, url } => {
            let reply = Client::new(&url.url).send(
                "PUT",
                &format!("/v1/datasources/{name}"),
                "application/json",
                &[],
                &read_spec(&file)?,
            )?;
            print_json(&reply.ok()?.body)
        }
        DatasourceCmd::Delete { name, grace, url } => {
            let reply =
                Client::new(&url.url).delete(&format!("/v1/datasources/{name}?grace={grace}"))?;
            print_json(&reply.ok()?.body)
        }
        DatasourceCmd::Show { name, json, url } => {
            let reply = Client::new(&url.url)
                .get(&format!("/v1/datasources/{name}"))?
                .ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
            let spec = v
                .get("spec")
                .ok_or_else(|| anyhow!("the node's answer has no spec"))?;
            println!("name:        {}", v["name"].as_str().unwrap_or_default());
            println!("id:          {}", v["id"].as_str().unwrap_or_default());
            println!(
                "granularity: query {} segment {}",
                spec["granularity"]["query"], spec["granularity"]["segment"]
            );
            println!("partitions:  {}", spec["partitions"]);
            println!("dimensions:  {}", spec["dimensions"]);
            let metrics: Vec<String> = spec["metrics"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| {
                            format!(
                                "{} ({})",
                                m["name"].as_str().unwrap_or(""),
                                m["type"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!("metrics:     {}", metrics.join(", "));
            println!(
                "versions:    {}",
                v["versions"].as_array().map_or(0, |a| a.len())
            );
            Ok(())
        }
        DatasourceCmd::List { json, url } => {
            let reply = Client::new(&url.url).get("/v1/datasources")?.ok()?;
            if json {
                return print_json(&reply.body);
            }
            let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
            println!(
                "{:<24} {:<10} {:<8} {:<8} {:>10}",
                "NAME", "ID", "QUERY", "SEGMENT", "PARTITIONS"
            );
            for d in v.as_array().into_iter().flatten() {
                let spec = &d["spec"];
                println!(
                    "{:<24} {:<10} {:<8} {:<8} {:>10}",
                    d["name"].as_str().unwrap_or_default(),
                    d["id"].as_str().unwrap_or_default(),
                    spec["granularity"]["query"].as_str().unwrap_or_default(),
                    spec["granularity"]["segment"].as_str().unwrap_or_default(),
                    spec["partitions"]
                );
            }
            Ok(())
        }
    }
}
