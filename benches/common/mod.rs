//! What the benchmarks share: a fresh database on `DATABASE_URL`'s server, and a seeded fleet.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The fleet size: `DALS_BENCH_WORKERS`, default 100,000.
pub fn fleet_size() -> i64 {
    std::env::var("DALS_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A fresh, migrated database; `drop` it when done.
pub struct BenchDb {
    pub pool: PgPool,
    /// Its URL, for a registry of the benchmark's own (not every benchmark starts one).
    #[allow(dead_code)]
    pub url: String,
    admin: PgPool,
    name: String,
}

impl BenchDb {
    pub async fn create() -> anyhow::Result<BenchDb> {
        let server = std::env::var("DATABASE_URL")
            .map_err(|_| anyhow::anyhow!("set DATABASE_URL to a PostgreSQL server"))?;
        let name = format!("dals_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&admin)
            .await?;
        let mut url = url::Url::parse(&server)?;
        url.set_path(&name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(url.as_str())
            .await?;
        dals_registry::db::Db::from_pool(pool.clone())
            .migrate()
            .await?;
        Ok(BenchDb {
            pool,
            url: url.to_string(),
            admin,
            name,
        })
    }

    /// Seeds `count` active TrueMark workers `w-1` ... `w-<count>`, deployed two hours ago,
    /// that last beat an hour ago.
    pub async fn seed_workers(&self, count: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO deployments (serial_number, worker_name, worker_type, family, generation,
                                      model_number, api_url, user_id, deployed_at)
             SELECT 'DMN-TM-01-' || lpad(upper(to_hex(i)), 8, '0') || '-00000', 'w-' || i,
                    'truemark', 'TM', 1, 'DMN-TM-01', 'http://h', 'u', now() - interval '2 hours'
             FROM generate_series(1, $1) AS i",
        )
        .bind(count)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO workers (worker_name, serial_number, worker_type, family, generation,
                                  model_number, api_url, user_id, status, deployed_at,
                                  status_changed_at, last_heartbeat_at, heartbeat_count)
             SELECT worker_name, serial_number, worker_type, family, generation, model_number,
                    api_url, user_id, 'active', deployed_at, deployed_at,
                    now() - interval '1 hour', 1
             FROM deployments",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query("ANALYZE workers").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        self.pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE "{}" WITH (FORCE)"#,
            self.name
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }
}
