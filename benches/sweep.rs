//! Benchmark: one sweep over a large lapsed fleet, and what heartbeats feel meanwhile.
//!
//!     DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench sweep
//!     DALS_BENCH_WORKERS=20000 ...   (default 100000)
//!
//! Seeds N lapsed workers in a fresh database, then sweeps them stale in batches (as the
//! sweeper does) while a client keeps heartbeating 50 live workers. Prints the sweep's total
//! and longest batch (the longest any row lock on `workers` is held by the sweep), and the
//! heartbeat latency during the sweep against a baseline measured just before, in the same
//! run, as a ratio. Figures, not assertions: this machine is noisy.

mod common;

use std::time::{Duration, Instant};

use common::BenchDb;
use dals_registry::db::{Db, Lapse, sweep};
use dals_registry::liveness::SWEEP_BATCH;
use tokio::sync::watch;

const LIVE: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let workers = common::fleet_size();

    let bench = BenchDb::create().await?;
    let pool = bench.pool.clone();
    let db = Db::from_pool(pool.clone());

    // N workers that last beat an hour ago, and LIVE that keep beating.
    let seeded = Instant::now();
    bench.seed_workers(workers + LIVE as i64).await?;
    let live: Vec<String> = (workers + 1..=workers + LIVE as i64)
        .map(|i| format!("w-{i}"))
        .collect();
    for name in &live {
        db.heartbeat(name, None).await?;
    }
    println!(
        "seeded {workers} lapsed + {LIVE} live workers in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    // Baseline: heartbeat latency with no sweep running.
    let baseline = beat_for(&db, &live, Duration::from_secs(3), None).await?;

    // The sweep, batch by batch, with heartbeats going on.
    let (done_tx, done_rx) = watch::channel(false);
    let beating = {
        let db = db.clone();
        let live = live.clone();
        tokio::spawn(
            async move { beat_for(&db, &live, Duration::from_secs(3600), Some(done_rx)).await },
        )
    };
    let mut conn = db.try_lead(5).await?.expect("no other sweeper");
    let started = Instant::now();
    let (mut batches, mut marked, mut longest) = (0, 0, Duration::ZERO);
    loop {
        let t = Instant::now();
        let moved =
            sweep::mark_batch(&mut conn, Lapse::Stale, 90.0, SWEEP_BATCH, "bench", false).await?;
        longest = longest.max(t.elapsed());
        batches += 1;
        marked += moved;
        if moved < SWEEP_BATCH {
            break;
        }
    }
    let total = started.elapsed();
    let _ = done_tx.send(true);
    let during = beating.await??;

    let stale: i64 = sqlx::query_scalar("SELECT count(*) FROM workers WHERE status = 'stale'")
        .fetch_one(&pool)
        .await?;
    println!(
        "sweep: {marked} marked stale ({stale} in the table) in {batches} batches of up to \
         {SWEEP_BATCH}, {:.2} s total, longest batch {:.1} ms",
        total.as_secs_f64(),
        longest.as_secs_f64() * 1e3
    );
    println!(
        "heartbeats: baseline p50 {:.2} ms p99 {:.2} ms ({} beats); during the sweep p50 {:.2} ms \
         p99 {:.2} ms max {:.2} ms ({} beats)",
        baseline.p50, baseline.p99, baseline.n, during.p50, during.p99, during.max, during.n
    );
    println!(
        "ratio during/baseline: p50 {:.2}x, p99 {:.2}x; live workers marked stale: {}",
        during.p50 / baseline.p50,
        during.p99 / baseline.p99,
        live_marked(&pool, workers).await?
    );

    drop(conn);
    bench.drop().await
}

struct Latency {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Heartbeats the live workers round-robin for `limit` or until `stop` turns true.
async fn beat_for(
    db: &Db,
    live: &[String],
    limit: Duration,
    mut stop: Option<watch::Receiver<bool>>,
) -> anyhow::Result<Latency> {
    let start = Instant::now();
    let mut samples = Vec::new();
    'outer: while start.elapsed() < limit {
        for name in live {
            if stop.as_mut().is_some_and(|s| *s.borrow_and_update()) {
                break 'outer;
            }
            let t = Instant::now();
            db.heartbeat(name, None).await?;
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok(Latency {
        n: samples.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: *samples.last().unwrap_or(&0.0),
    })
}

async fn live_marked(pool: &sqlx::PgPool, lapsed: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM workers WHERE status = 'stale'
           AND substr(worker_name, 3)::bigint > $1",
    )
    .bind(lapsed)
    .fetch_one(pool)
    .await?)
}
