//! Benchmark: the memory a full `GET /api/workers/list` takes, against a short one.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench list
//!     DALS_BENCH_WORKERS=20000 ...   (default 100000)
//!
//! Seeds N workers in a fresh database, runs the registry in this process on a random port,
//! and reads the list over HTTP, discarding the bytes as they come, while a sampler notes the
//! process's resident memory every 2 ms. The baseline is the same request with `limit=1000`,
//! in the same run. A list that held the fleet in memory would grow with N; a streamed one
//! stays flat. Figures, not assertions: this machine is noisy.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::BenchDb;
use dals_registry::db::Db;
use dals_registry::settings::{Overrides, Settings};
use tokio::net::TcpListener;

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

struct Reading {
    bytes: u64,
    secs: f64,
    /// Peak resident memory while it was read.
    peak: u64,
}

/// Reads `url` to the end, discarding the body, and the peak resident memory meanwhile.
async fn read_list(client: &reqwest::Client, url: &str) -> anyhow::Result<Reading> {
    let start_rss = rss_bytes();
    let peak = Arc::new(AtomicU64::new(start_rss));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let started = Instant::now();
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut bytes = 0;
    while let Some(chunk) = response.chunk().await? {
        bytes += chunk.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.await?;
    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
    Ok(Reading {
        bytes,
        secs,
        peak: peak.load(Ordering::Relaxed),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let workers = common::fleet_size();
    let bench = BenchDb::create().await?;
    let seeded = Instant::now();
    bench.seed_workers(workers).await?;
    println!(
        "seeded {workers} workers in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let mut settings = Settings::load(
        None,
        &Overrides {
            host: Some("127.0.0.1".parse()?),
            port: Some(0),
            database_url: Some(bench.url.clone()),
        },
    )?;
    // Nobody goes stale while the list is read.
    settings.liveness.stale_after_secs = 1e7;
    settings.liveness.offline_after_secs = 2e7;
    settings.liveness.heartbeat_interval_secs = 30.0;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let db = Db::from_pool(bench.pool.clone());
    let server = tokio::spawn(dals_registry::launch_with_db(
        settings,
        db,
        listener,
        async {
            let _ = stop_rx.await;
        },
    ));
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/readyz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Warm up both paths once, then measure each three times and keep the largest growth.
    let short_url = format!("{base}/api/workers/list?limit=1000");
    let full_url = format!("{base}/api/workers/list");
    read_list(&client, &short_url).await?;
    read_list(&client, &full_url).await?;
    let rest = rss_bytes();
    let mut short = Vec::new();
    let mut full = Vec::new();
    for _ in 0..3 {
        short.push(read_list(&client, &short_url).await?);
        full.push(read_list(&client, &full_url).await?);
    }
    let worst = |r: &[Reading]| r.iter().map(|x| x.peak).max().unwrap_or(0);
    let (short_peak, full_peak) = (worst(&short), worst(&full));
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "at rest (registry up, before the measured lists): {:.1} MiB resident",
        mib(rest)
    );
    println!(
        "baseline: list of 1000 workers, {:.2} MiB body in {:.3} s, peak {:.1} MiB resident",
        mib(short[0].bytes),
        short[0].secs,
        mib(short_peak)
    );
    println!(
        "full:     list of {workers} workers, {:.1} MiB body in {:.2} s, peak {:.1} MiB resident",
        mib(full[0].bytes),
        full[0].secs,
        mib(full_peak)
    );
    println!(
        "ratio full/baseline: {:.0}x the workers, {:.0}x the bytes, {:.2}x the peak memory \
         ({:.2}x the memory at rest); the full body is {:.1}x the growth over rest",
        workers as f64 / 1000.0,
        full[0].bytes as f64 / short[0].bytes.max(1) as f64,
        full_peak as f64 / short_peak.max(1) as f64,
        full_peak as f64 / rest.max(1) as f64,
        full[0].bytes as f64 / full_peak.saturating_sub(rest).max(1) as f64,
    );

    let _ = stop_tx.send(());
    server.await??;
    bench.drop().await
}
