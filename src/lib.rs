//! DALS Registry: the production worker registry on PostgreSQL.

pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod http;
pub mod liveness;
pub mod metrics;
pub mod ops;
pub mod remote;
pub mod settings;
pub mod telemetry;
pub mod verify;
pub mod webhooks;

use std::future::{Future, IntoFuture};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::db::Db;
use crate::events::EventBus;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::settings::{Settings, secs};

/// Connects to the database, applies migrations and serves on `listener` until `shutdown`
/// resolves; in-flight requests then get `shutdown_timeout_secs` to finish.
pub async fn launch(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = Db::connect(&settings.database).await?;
    db.migrate().await?;
    launch_with_db(settings, db, listener, shutdown).await
}

/// Serves with an already connected and migrated database.
pub async fn launch_with_db(
    settings: Settings,
    db: Db,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    webhooks::apply_settings_endpoints(&db, &settings.webhooks).await?;
    let settings = Arc::new(settings);
    let instance = uuid::Uuid::new_v4().to_string();
    let events = EventBus::default();
    let stopping = CancellationToken::new();
    let metrics = Metrics::new();
    let state = AppState {
        db: db.clone(),
        settings: settings.clone(),
        instance: instance.clone().into(),
        events: events.clone(),
        stopping: stopping.clone(),
        metrics: metrics.clone(),
    };

    // Background tasks: aborted with this future (as when a test kills the registry),
    // cancelled on shutdown.
    let cancel = CancellationToken::new();
    let deliverer = webhooks::Deliverer::new(
        db.clone(),
        settings.webhooks.clone(),
        instance.clone(),
        events.subscribe(),
    )?;
    let deliverer = AbortOnDropHandle::new(tokio::spawn(deliverer.run(cancel.clone())));
    let listener_task =
        AbortOnDropHandle::new(tokio::spawn(events.run(db.clone(), cancel.clone())));
    let sweeper = liveness::Sweeper::new(
        db.clone(),
        settings.liveness.clone(),
        settings.retention.clone(),
        instance.clone(),
    )
    .with_remediation(settings.remediation.clone())
    .with_metrics(metrics);
    let sweeper = AbortOnDropHandle::new(tokio::spawn(sweeper.run(cancel.clone())));

    let metrics_listener = match settings.metrics.listen_addr()? {
        Some(metrics_addr) => {
            let metrics_listener = TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {metrics_addr}"))?;
            tracing::info!(addr = %metrics_addr, "metrics listening");
            let app = http::metrics_router(state.clone());
            let stop = cancel.clone();
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                let served = axum::serve(metrics_listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })))
        }
        None => None,
    };

    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, %instance, "DALS registry listening");
    // After the shutdown signal, in-flight requests get shutdown_timeout_secs to finish.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        stopping.cancel();
        let _ = stopping_tx.send(());
    });
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(secs(settings.server.shutdown_timeout_secs)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        served = server.into_future() => served.context("serving HTTP"),
        () = deadline => {
            tracing::warn!("shutdown timeout reached; dropping the connections still open");
            Ok(())
        }
    };
    cancel.cancel();
    let _ = sweeper.await;
    let _ = listener_task.await;
    if let Some(metrics_listener) = metrics_listener {
        let _ = metrics_listener.await;
    }
    let _ = deliverer.await;
    db.close().await;
    served?;
    tracing::info!("DALS registry stopped");
    Ok(())
}

/// Binds the configured address and serves until Ctrl-C or SIGTERM.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let addr = settings.listen_addr();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; set DALS_SERVER__PORT or --port"))?;
    launch(settings, listener, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}
