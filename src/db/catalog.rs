use serde::Serialize;

use super::Db;
use crate::domain::ModelNumber;

/// One entry of the model catalog.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CatalogEntry {
    pub worker_type: String,
    pub family: String,
    pub generation: i16,
    pub model_number: String,
    pub description: String,
}

impl Db {
    /// The whole catalog, ordered by worker type.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, sqlx::Error> {
        sqlx::query_as(
            "SELECT worker_type, family, generation, model_number, description
             FROM model_catalog ORDER BY worker_type",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The model number a worker type maps to, if the catalog has it.
    pub async fn model_for(&self, worker_type: &str) -> Result<Option<ModelNumber>, sqlx::Error> {
        let row: Option<(String, i16)> =
            sqlx::query_as("SELECT family, generation FROM model_catalog WHERE worker_type = $1")
                .bind(worker_type)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(family, generation)| {
            family
                .parse()
                .and_then(|f| ModelNumber::new(f, generation as u8))
                .map_err(|e| sqlx::Error::Decode(e.into()))
        })
        .transpose()
    }
}
