//! Assembling services into one process: every service contributes its
//! routes and its background tasks; the process serves the routes on one
//! listener, with the cross-cutting layers added once here, and stops
//! everything in order.

use crate::{Readiness, ServerArgs, body_deadline, errors, health, metrics, server};
use alleycat_storage::StorageArgs;
use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// What one service contributes to a process.
pub struct Service {
    /// For logs: which service a failure came from.
    pub name: &'static str,
    /// Its HTTP routes (empty for a service that only works in the background).
    pub router: Router,
    /// Its background work, stopped in order at shutdown.
    pub tasks: Vec<Task>,
}

impl Service {
    /// A service with routes and no background work yet.
    #[must_use]
    pub fn new(name: &'static str, router: Router) -> Service {
        Service {
            name,
            router,
            tasks: Vec::new(),
        }
    }

    /// Adds a background task.
    #[must_use]
    pub fn with_task(mut self, task: Task) -> Service {
        self.tasks.push(task);
        self
    }
}

/// A background task: asked to stop through its token, then awaited so that
/// it can finish its work (deliver what it buffers, store what it holds).
pub struct Task {
    name: &'static str,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Task {
    /// Spawns `work`, which must end soon after `stop` is cancelled.
    pub fn spawn<F>(name: &'static str, stop: CancellationToken, work: F) -> Task
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Task::from_handle(name, stop, tokio::spawn(work))
    }

    /// Wraps work already spawned, stopped through `stop`.
    #[must_use]
    pub fn from_handle(
        name: &'static str,
        stop: CancellationToken,
        handle: JoinHandle<anyhow::Result<()>>,
    ) -> Task {
        Task { name, stop, handle }
    }
}

/// A service's own settings, which build it: both `alleycat <service>` and
/// the all-in-one construct every service through this one constructor.
pub trait ServiceArgs: clap::Args {
    /// Opens what the service needs (through `storage`, which hands every
    /// service of a process the same stream and stores) and starts its
    /// background work.
    fn service(
        &self,
        context: &Context,
        storage: &StorageArgs,
    ) -> impl Future<Output = anyhow::Result<Service>> + Send;
}

/// What a service's constructor may need to know of its process.
#[derive(Clone, Debug)]
pub struct Context {
    /// Cancelled when the process stops taking requests: long-lived
    /// connections (WebSockets) close on it so that the server can stop.
    pub closing: CancellationToken,
    /// The port the process listens on (names per-process stream consumers).
    pub port: u16,
    /// Where the services report whether they can work (`/readyz`).
    pub readiness: Readiness,
    /// Longest a WebSocket may stay silent before it is closed.
    pub ws_idle_timeout: std::time::Duration,
    /// How high a record's cadence and resistance may be: one setting for
    /// every service that checks records.
    pub sensor_limits: alleycat_core::validate::SensorLimits,
}

/// A process being assembled: its listener and shutdown settings.
pub struct Process {
    listener: TcpListener,
    context: Context,
    server: ServerArgs,
}

impl Process {
    /// Binds the address `server` names.
    pub async fn bind(server: &ServerArgs) -> anyhow::Result<Process> {
        let listener = TcpListener::bind(server.listen)
            .await
            .with_context(|| format!("binding {}", server.listen))?;
        Process::on(listener, server)
    }

    /// Uses a listener bound already (tests bind port 0 themselves).
    pub fn on(listener: TcpListener, server: &ServerArgs) -> anyhow::Result<Process> {
        // Before any service is built: handles made earlier would record
        // into nothing.
        metrics::install();
        let port = listener.local_addr()?.port();
        Ok(Process {
            listener,
            context: Context {
                closing: CancellationToken::new(),
                port,
                readiness: Readiness::default(),
                ws_idle_timeout: server.ws_idle_timeout,
                sensor_limits: server.sensor_limits.limits()?,
            },
            server: server.clone(),
        })
    }

    /// What the services' constructors need.
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Serves every service's routes until `shutdown` resolves or any part
    /// stops by itself (a failure: the rest is shut down rather than keep
    /// accepting records nobody processes). Then stops in order: the HTTP
    /// server first (no new records, WebSockets closed), then each
    /// service's tasks in the order the services are given, so that each
    /// stage can hand its last work to the next. The whole shutdown takes
    /// at most the configured timeout.
    pub async fn run(
        self,
        services: Vec<Service>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Process {
            listener,
            context,
            server,
        } = self;
        let mut router = Router::new();
        let mut tasks = Vec::new();
        for service in services {
            tracing::debug!(service = service.name, "assembled");
            router = router.merge(service.router);
            tasks.extend(service.tasks);
        }
        let http = Task::from_handle(
            "http",
            context.closing.clone(),
            tokio::spawn(server::serve(
                listener,
                layers(router, &context, &server),
                server::Limits {
                    header_timeout: server.header_timeout,
                    max_connections: server.max_connections.get(),
                },
                context.closing.clone(),
            )),
        );
        tasks.insert(0, http);

        let failure = tokio::select! {
            () = shutdown => None,
            (result, index) = first_to_end(&mut tasks) => Some((index, result)),
        };
        if let Some((index, result)) = &failure {
            tracing::error!(task = tasks[*index].name, result = ?result, "stopped unexpectedly; shutting down");
        }

        let deadline = Instant::now() + server.shutdown_timeout;
        for (index, task) in tasks.iter_mut().enumerate() {
            task.stop.cancel();
            if failure.as_ref().is_some_and(|(failed, _)| *failed == index) {
                continue; // ended already; its result is taken above
            }
            let budget = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(budget, &mut task.handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::error!(
                        task = task.name,
                        error = format!("{e:#}"),
                        "failed while stopping"
                    );
                }
                Ok(Err(e)) => tracing::error!(task = task.name, error = %e, "panicked"),
                Err(_) => {
                    tracing::warn!(task = task.name, timeout = ?server.shutdown_timeout, "shutdown timed out")
                }
            }
        }
        match failure {
            Some((index, result)) => Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("{} stopped", tasks[index].name))),
            None => Ok(()),
        }
    }
}

/// The layers every service's routes get, in one place. `Router::layer`
/// wraps each route (and the fallback) after routing, so every layer sees
/// the route that matched (`MatchedPath`).
fn layers(router: Router, context: &Context, server: &ServerArgs) -> Router {
    router
        .merge(health::routes(context.readiness.clone()))
        .merge(metrics::routes())
        .layer(axum::middleware::from_fn(errors::json_errors))
        .layer(axum::middleware::from_fn({
            let limit = server.body_timeout;
            let closing = context.closing.clone();
            move |request, next| body_deadline::limit_body(limit, closing.clone(), request, next)
        }))
        // Outside the layers that answer errors: counts the final status.
        .layer(axum::middleware::from_fn(metrics::track))
        // Failures are answered (and counted) where they happen; at error
        // level, a 503 per request of every bike would flood the log
        // during an outage.
        .layer(
            TraceLayer::new_for_http()
                // The span names the matched route and the path, not the
                // URI: a bike's token may be in the query
                // (`/v1/telemetry/ws?token=`), and logs must not hold it.
                // At info, as the default level: what a request logs
                // (a warning, an error) carries its route. The request and
                // response lines themselves stay at debug, one per request
                // of every bike being too many to keep.
                .make_span_with(|request: &axum::extract::Request| {
                    let route = metrics::route_of(request);
                    let path = request.uri().path();
                    tracing::info_span!("request", method = %request.method(), route, path = %path, version = ?request.version())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// Resolves when the first task ends, with its result and index.
async fn first_to_end(tasks: &mut [Task]) -> (anyhow::Result<()>, usize) {
    let (joined, index, _) =
        futures_util::future::select_all(tasks.iter_mut().map(|t| &mut t.handle)).await;
    let result = joined.context("task panicked").and_then(|r| r);
    (result, index)
}
