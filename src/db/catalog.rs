//! The model catalog and its families: reading it for registrations, and managing it.

use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use super::Db;
use crate::domain::{FamilyCode, GENERIC_WORKER_TYPE, ModelNumber};

/// The columns of a `CatalogEntry`, for `concat!` into statements (`c` the catalog, `f` the
/// family).
macro_rules! entry_columns {
    () => {
        "c.worker_type, c.family, f.name AS family_name, c.generation, c.model_number, \
         c.description"
    };
}

/// One entry of the model catalog, with its family's name.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct CatalogEntry {
    pub worker_type: String,
    pub family: String,
    pub family_name: String,
    pub generation: i16,
    pub model_number: String,
    pub description: String,
}

/// A model family and its catalog entries.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FamilyWithEntries {
    pub code: String,
    pub name: String,
    pub description: String,
    pub entries: Vec<CatalogEntry>,
}

/// What `POST /api/workers/models/catalog` stores.
#[derive(Debug, Clone)]
pub struct NewCatalogEntry {
    pub worker_type: String,
    pub model: ModelNumber,
    pub description: String,
    /// Creates the family when it is new; must match its name when it exists.
    pub family: FamilySpec,
}

/// The family an entry names, with the name and description to create it with if new.
#[derive(Debug, Clone, Default)]
pub struct FamilySpec {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// A change to a catalog entry; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct CatalogPatch {
    pub family: Option<FamilyCode>,
    pub generation: Option<u8>,
    pub description: Option<String>,
    /// Used when `family` is new (or checked against it when it exists).
    pub family_spec: FamilySpec,
}

/// Why a catalog change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("worker type {0:?} is already in the catalog")]
    Exists(String),
    #[error("worker type {0:?} is not in the catalog")]
    NotFound(String),
    #[error("family {0} does not exist yet")]
    FamilyNameRequired(String),
    /// The family exists with another name or description than the one sent.
    #[error("family {code} exists with {field} {existing:?}")]
    FamilyMismatch {
        code: String,
        field: &'static str,
        existing: String,
    },
    /// Live (not deregistered) workers carry this entry's model number.
    #[error("worker type {worker_type:?} is carried by live workers")]
    InUse {
        worker_type: String,
        model_number: String,
        /// How many and one of them, when counted (the schema's own check does not count).
        holders: Option<(i64, String)>,
    },
    /// Another worker type already has this model number.
    #[error("model number {model_number} belongs to another worker type")]
    ModelTaken {
        model_number: String,
        /// That worker type, when known (a racing change may have taken it meanwhile).
        holder: Option<String>,
    },
    /// The `generic` entry cannot be deleted or leave family GN.
    #[error("the generic entry is protected")]
    GenericProtected,
    /// A schema rule refused a value (the domain rules should have caught it first).
    #[error("{field}: {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error(transparent)]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for CatalogError {
    fn from(err: sqlx::Error) -> Self {
        // A rule of the schema names the field it guards, so a race or a missed domain check
        // still answers 4xx, never 500.
        match violated_constraint(&err) {
            Some("model_catalog_worker_type_format") => CatalogError::Invalid {
                field: "worker_type",
                rule: "does not match ^[a-z0-9][a-z0-9._-]{0,63}$".to_string(),
            },
            Some("model_catalog_generation_range") => CatalogError::Invalid {
                field: "generation",
                rule: "must be a number from 1 to 99".to_string(),
            },
            Some("model_families_code_format") => CatalogError::Invalid {
                field: "family",
                rule: "must be two upper-case letters A-Z".to_string(),
            },
            Some("model_families_name_length" | "model_families_name_text") => {
                CatalogError::Invalid {
                    field: "family_name",
                    rule: "must be 1-64 characters on one line".to_string(),
                }
            }
            Some("model_families_description_rule") => CatalogError::Invalid {
                field: "family_description",
                rule: "must be at most 256 characters on one line".to_string(),
            },
            Some("model_catalog_description_rule") => CatalogError::Invalid {
                field: "description",
                rule: "must be at most 256 characters on one line".to_string(),
            },
            Some("model_catalog_generic_is_gn" | "model_catalog_generic_kept") => {
                CatalogError::GenericProtected
            }
            // A registration or a change that committed while this one ran; the checks
            // before the statement normally answer first, with more detail.
            Some("model_catalog_model_unique") => CatalogError::ModelTaken {
                model_number: String::new(),
                holder: None,
            },
            Some("model_catalog_in_use") => CatalogError::InUse {
                worker_type: String::new(),
                model_number: String::new(),
                holders: None,
            },
            _ => CatalogError::Db(err),
        }
    }
}

/// The name of the constraint a statement violated, if it failed on one.
pub(crate) fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

impl Db {
    /// The whole catalog, ordered by worker type.
    pub async fn catalog(&self) -> Result<Vec<CatalogEntry>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM model_catalog c JOIN model_families f ON f.code = c.family
             ORDER BY c.worker_type"
        ))
        .fetch_all(&self.pool)
        .await
    }

    /// One catalog entry.
    pub async fn catalog_entry(
        &self,
        worker_type: &str,
    ) -> Result<Option<CatalogEntry>, sqlx::Error> {
        entry(&mut *self.pool.acquire().await?, worker_type).await
    }

    /// Every family with its entries, ordered by code and worker type; a family without
    /// entries is listed with none.
    pub async fn families(&self) -> Result<Vec<FamilyWithEntries>, sqlx::Error> {
        #[derive(FromRow)]
        struct Row {
            code: String,
            name: String,
            description: String,
            worker_type: Option<String>,
            generation: Option<i16>,
            model_number: Option<String>,
            entry_description: Option<String>,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT f.code, f.name, f.description, c.worker_type, c.generation, c.model_number,
                    c.description AS entry_description
             FROM model_families f LEFT JOIN model_catalog c ON c.family = f.code
             ORDER BY f.code, c.worker_type",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut families: Vec<FamilyWithEntries> = Vec::new();
        for row in rows {
            if families.last().is_none_or(|f| f.code != row.code) {
                families.push(FamilyWithEntries {
                    code: row.code.clone(),
                    name: row.name.clone(),
                    description: row.description,
                    entries: Vec::new(),
                });
            }
            if let (Some(family), Some(worker_type), Some(generation), Some(model_number)) = (
                families.last_mut(),
                row.worker_type,
                row.generation,
                row.model_number,
            ) {
                family.entries.push(CatalogEntry {
                    worker_type,
                    family: row.code,
                    family_name: row.name,
                    generation,
                    model_number,
                    description: row.entry_description.unwrap_or_default(),
                });
            }
        }
        Ok(families)
    }

    /// Adds an entry, creating its family first when it is new, in one transaction.
    pub async fn add_catalog_entry(
        &self,
        new: &NewCatalogEntry,
    ) -> Result<CatalogEntry, CatalogError> {
        let mut tx = self.pool.begin().await?;
        ensure_family(&mut tx, &new.model.family, &new.family).await?;
        refuse_if_model_taken(&mut tx, &new.model, &new.worker_type).await?;
        let inserted = sqlx::query(
            "INSERT INTO model_catalog (worker_type, family, generation, description)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&new.worker_type)
        .bind(new.model.family.as_str())
        .bind(i16::from(new.model.generation))
        .bind(&new.description)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if violated_constraint(&e) == Some("model_catalog_pkey") => {
                return Err(CatalogError::Exists(new.worker_type.clone()));
            }
            other => other?,
        };
        let entry = entry(&mut tx, &new.worker_type)
            .await?
            .ok_or_else(|| CatalogError::NotFound(new.worker_type.clone()))?;
        tx.commit().await?;
        Ok(entry)
    }

    /// Changes an entry. Its model number (family, generation) may change only while no live
    /// worker has the type; the description may always change, since nothing derives from it.
    pub async fn update_catalog_entry(
        &self,
        worker_type: &str,
        patch: &CatalogPatch,
    ) -> Result<CatalogEntry, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let (family, generation) = lock_entry(&mut tx, worker_type).await?;
        let new_family = patch
            .family
            .as_ref()
            .map_or(family.as_str(), FamilyCode::as_str);
        let new_generation = patch.generation.map_or(generation, i16::from);
        if (new_family, new_generation) != (family.as_str(), generation) {
            if worker_type == GENERIC_WORKER_TYPE && new_family != family {
                return Err(CatalogError::GenericProtected);
            }
            refuse_if_in_use(&mut tx, worker_type).await?;
        }
        if let Some(code) = &patch.family {
            ensure_family(&mut tx, code, &patch.family_spec).await?;
        }
        if (new_family, new_generation) != (family.as_str(), generation) {
            let model = new_family
                .parse()
                .and_then(|f| ModelNumber::new(f, new_generation as u8))
                .map_err(|rule| CatalogError::Invalid {
                    field: "generation",
                    rule,
                })?;
            refuse_if_model_taken(&mut tx, &model, worker_type).await?;
        }
        sqlx::query(
            "UPDATE model_catalog
             SET family = $2, generation = $3, description = coalesce($4, description)
             WHERE worker_type = $1",
        )
        .bind(worker_type)
        .bind(new_family)
        .bind(new_generation)
        .bind(&patch.description)
        .execute(&mut *tx)
        .await?;
        let entry = entry(&mut tx, worker_type)
            .await?
            .ok_or_else(|| CatalogError::NotFound(worker_type.to_string()))?;
        tx.commit().await?;
        Ok(entry)
    }

    /// Deletes an entry no live worker has, and returns it. `generic` is never deleted.
    pub async fn delete_catalog_entry(
        &self,
        worker_type: &str,
    ) -> Result<CatalogEntry, CatalogError> {
        let mut tx = self.pool.begin().await?;
        lock_entry(&mut tx, worker_type).await?;
        if worker_type == GENERIC_WORKER_TYPE {
            return Err(CatalogError::GenericProtected);
        }
        refuse_if_in_use(&mut tx, worker_type).await?;
        let entry = entry(&mut tx, worker_type)
            .await?
            .ok_or_else(|| CatalogError::NotFound(worker_type.to_string()))?;
        sqlx::query("DELETE FROM model_catalog WHERE worker_type = $1")
            .bind(worker_type)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(entry)
    }
}

async fn entry(
    conn: &mut PgConnection,
    worker_type: &str,
) -> Result<Option<CatalogEntry>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        entry_columns!(),
        " FROM model_catalog c JOIN model_families f ON f.code = c.family
         WHERE c.worker_type = $1"
    ))
    .bind(worker_type)
    .fetch_optional(conn)
    .await
}

/// Locks an entry for a change and returns its family and generation.
async fn lock_entry(
    conn: &mut PgConnection,
    worker_type: &str,
) -> Result<(String, i16), CatalogError> {
    sqlx::query_as("SELECT family, generation FROM model_catalog WHERE worker_type = $1 FOR UPDATE")
        .bind(worker_type)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| CatalogError::NotFound(worker_type.to_string()))
}

/// Refuses when a live worker carries the entry's model number. A model number belongs to one
/// entry, so those are exactly the workers registered through it (for `generic`, those of
/// types unknown at the time). Deregistered workers do not count: they cannot heartbeat, and
/// registering again looks the catalog up afresh. (Their deployments keep the type and model
/// as text for history; there is no foreign key to the catalog.)
async fn refuse_if_in_use(conn: &mut PgConnection, worker_type: &str) -> Result<(), CatalogError> {
    let (model_number, live_workers, example): (String, i64, Option<String>) = sqlx::query_as(
        "SELECT c.model_number, count(w.worker_name), min(w.worker_name)
         FROM model_catalog c
         LEFT JOIN workers w ON w.model_number = c.model_number AND w.status <> 'deregistered'
         WHERE c.worker_type = $1
         GROUP BY c.model_number",
    )
    .bind(worker_type)
    .fetch_one(conn)
    .await?;
    match example {
        Some(example) if live_workers > 0 => Err(CatalogError::InUse {
            worker_type: worker_type.to_string(),
            model_number,
            holders: Some((live_workers, example)),
        }),
        _ => Ok(()),
    }
}

/// Refuses a model number that another worker type already has.
async fn refuse_if_model_taken(
    conn: &mut PgConnection,
    model: &ModelNumber,
    worker_type: &str,
) -> Result<(), CatalogError> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT worker_type FROM model_catalog
         WHERE family = $1 AND generation = $2 AND worker_type <> $3",
    )
    .bind(model.family.as_str())
    .bind(i16::from(model.generation))
    .bind(worker_type)
    .fetch_optional(conn)
    .await?;
    match holder {
        Some(holder) => Err(CatalogError::ModelTaken {
            model_number: model.to_string(),
            holder: Some(holder),
        }),
        None => Ok(()),
    }
}

/// Makes sure the family exists: creates it when a name is given and it is new (racing
/// creators agree or one gets a mismatch), and checks a given name and description against
/// an existing one.
async fn ensure_family(
    conn: &mut PgConnection,
    code: &FamilyCode,
    spec: &FamilySpec,
) -> Result<(), CatalogError> {
    if let Some(name) = &spec.name {
        let created = sqlx::query(
            "INSERT INTO model_families (code, name, description) VALUES ($1, $2, $3)
             ON CONFLICT (code) DO NOTHING",
        )
        .bind(code.as_str())
        .bind(name)
        .bind(spec.description.as_deref().unwrap_or_default())
        .execute(&mut *conn)
        .await?;
        if created.rows_affected() == 1 {
            return Ok(());
        }
    }
    let existing: Option<(String, String)> =
        sqlx::query_as("SELECT name, description FROM model_families WHERE code = $1 FOR SHARE")
            .bind(code.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let Some((name, description)) = existing else {
        return Err(CatalogError::FamilyNameRequired(code.to_string()));
    };
    let mismatch = |field, existing: String| CatalogError::FamilyMismatch {
        code: code.to_string(),
        field,
        existing,
    };
    if spec.name.as_ref().is_some_and(|n| *n != name) {
        return Err(mismatch("family_name", name));
    }
    if spec.description.as_ref().is_some_and(|d| *d != description) {
        return Err(mismatch("family_description", description));
    }
    Ok(())
}
