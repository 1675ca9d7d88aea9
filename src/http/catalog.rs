//! `/api/workers/models/...`: the model catalog (read by workers and scripts, managed by
//! operators) and the model families.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ApiPath, AppState, JsonBody};
use crate::db::{
    CatalogEntry, CatalogError, CatalogPatch, FamilySpec, FamilyWithEntries, NewCatalogEntry,
};
use crate::domain::{
    FamilyCode, GENERIC_WORKER_TYPE, ModelNumber, parse_generation, validate_catalog_worker_type,
    validate_description, validate_family_name,
};
use crate::error::{ApiError, ErrorBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/workers/models/catalog", get(catalog).post(add))
        .route(
            "/api/workers/models/catalog/{worker_type}",
            get(entry).patch(update).delete(remove),
        )
        .route("/api/workers/models/families", get(families))
}

/// `{worker_type: model_number}`, as the design document shows it; this shape is binding.
/// `{worker_type: model_number}`, as the design document shows it.
#[utoipa::path(
    get,
    path = "/api/workers/models/catalog",
    tag = "catalog",
    responses(
        (status = 200, description = "worker_type -> model number", body = std::collections::BTreeMap<String, String>,
         example = json!({"truemark": "DMN-TM-01", "regent": "DMN-RG-01"})),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn catalog(
    State(state): State<AppState>,
) -> Result<Json<Map<String, Value>>, ApiError> {
    let entries = state.db.catalog().await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| (e.worker_type, Value::String(e.model_number)))
            .collect(),
    ))
}

/// The body of `POST /api/workers/models/catalog`. Unknown fields are refused, so a
/// misspelt optional field is not silently dropped.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEntryRequest {
    #[schema(required = true, example = "new-worker-type")]
    pub worker_type: Option<String>,
    #[schema(required = true, example = "NW")]
    pub family: Option<String>,
    /// A wide integer, so that 0 or 300 get the 1-99 rule rather than a type error.
    #[schema(required = true, example = 1)]
    pub generation: Option<i64>,
    pub description: Option<String>,
    /// Required when `family` is new.
    pub family_name: Option<String>,
    pub family_description: Option<String>,
}

/// The body of `PATCH /api/workers/models/catalog/{worker_type}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEntryRequest {
    pub description: Option<String>,
    pub family: Option<String>,
    pub generation: Option<i64>,
    /// Required when `family` is new.
    pub family_name: Option<String>,
    pub family_description: Option<String>,
}

fn check(
    value: Option<String>,
    field: &str,
    rule: fn(&str) -> Result<(), String>,
) -> Result<Option<String>, ApiError> {
    if let Some(v) = &value {
        rule(v).map_err(|r| ApiError::validation(field, r))?;
    }
    Ok(value)
}

fn family_code(value: Option<String>) -> Result<Option<FamilyCode>, ApiError> {
    value
        .map(|f| f.parse::<FamilyCode>())
        .transpose()
        .map_err(|r| ApiError::validation("family", r))
}

fn generation(value: Option<i64>) -> Result<Option<u8>, ApiError> {
    value
        .map(parse_generation)
        .transpose()
        .map_err(|r| ApiError::validation("generation", r))
}

fn family_spec(name: Option<String>, description: Option<String>) -> Result<FamilySpec, ApiError> {
    Ok(FamilySpec {
        name: check(name, "family_name", validate_family_name)?,
        description: check(description, "family_description", validate_description)?,
    })
}

/// Adds a worker type (and its family, when new): 201 with the full entry.
#[utoipa::path(
    post,
    path = "/api/workers/models/catalog",
    tag = "catalog",
    request_body = NewEntryRequest,
    responses(
        (status = 201, description = "Added", body = CatalogEntry),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "The worker_type exists (`catalog_entry_exists`), the family differs (`family_mismatch`), or another worker type has the model number (`model_number_taken`)", body = ErrorBody),
        (status = 422, description = "A field breaks its rule", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn add(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewEntryRequest>,
) -> Result<(StatusCode, Json<CatalogEntry>), ApiError> {
    let worker_type = check(req.worker_type, "worker_type", validate_catalog_worker_type)?
        .ok_or_else(|| ApiError::validation("worker_type", "is required"))?;
    let family =
        family_code(req.family)?.ok_or_else(|| ApiError::validation("family", "is required"))?;
    let generation = generation(req.generation)?
        .ok_or_else(|| ApiError::validation("generation", "is required"))?;
    let description = check(req.description, "description", validate_description)?;
    let spec = family_spec(req.family_name, req.family_description)?;
    let model =
        ModelNumber::new(family, generation).map_err(|r| ApiError::validation("generation", r))?;
    let entry = state
        .db
        .add_catalog_entry(&NewCatalogEntry {
            worker_type,
            model,
            description: description.unwrap_or_default(),
            family: spec,
        })
        .await?;
    tracing::info!(
        worker_type = %entry.worker_type,
        model = %entry.model_number,
        "catalog entry added"
    );
    Ok((StatusCode::CREATED, Json(entry)))
}

/// One catalog entry in full.
#[utoipa::path(
    get,
    path = "/api/workers/models/catalog/{worker_type}",
    tag = "catalog",
    params(("worker_type" = String, Path, description = "A catalog key")),
    responses(
        (status = 200, description = "The entry", body = CatalogEntry),
        (status = 404, description = "No such entry", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn entry(
    State(state): State<AppState>,
    ApiPath(worker_type): ApiPath<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    state
        .db
        .catalog_entry(&worker_type)
        .await?
        .map(Json)
        .ok_or_else(|| CatalogError::NotFound(worker_type).into())
}

/// Changes an entry's description, family or generation.
#[utoipa::path(
    patch,
    path = "/api/workers/models/catalog/{worker_type}",
    tag = "catalog",
    params(("worker_type" = String, Path, description = "A catalog key")),
    request_body = PatchEntryRequest,
    responses(
        (status = 200, description = "Changed", body = CatalogEntry),
        (status = 404, description = "No such entry", body = ErrorBody),
        (status = 409, description = "A live worker carries its model number (`catalog_entry_in_use`), another worker type has the new one (`model_number_taken`), or it is protected", body = ErrorBody),
        (status = 422, description = "A field breaks its rule", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    ApiPath(worker_type): ApiPath<String>,
    JsonBody(req): JsonBody<PatchEntryRequest>,
) -> Result<Json<CatalogEntry>, ApiError> {
    if req.family.is_none() && (req.family_name.is_some() || req.family_description.is_some()) {
        let field = if req.family_name.is_some() {
            "family_name"
        } else {
            "family_description"
        };
        return Err(ApiError::validation(
            field,
            "only applies together with family (to create a new family)",
        ));
    }
    if req.description.is_none() && req.family.is_none() && req.generation.is_none() {
        return Err(ApiError::validation(
            "body",
            "give at least one of description, family, generation",
        ));
    }
    let patch = CatalogPatch {
        family: family_code(req.family)?,
        generation: generation(req.generation)?,
        description: check(req.description, "description", validate_description)?,
        family_spec: family_spec(req.family_name, req.family_description)?,
    };
    let entry = state.db.update_catalog_entry(&worker_type, &patch).await?;
    tracing::info!(
        worker_type = %entry.worker_type,
        model = %entry.model_number,
        "catalog entry changed"
    );
    Ok(Json(entry))
}

/// Deletes an entry no live worker has; answers with the deleted entry.
#[utoipa::path(
    delete,
    path = "/api/workers/models/catalog/{worker_type}",
    tag = "catalog",
    params(("worker_type" = String, Path, description = "A catalog key")),
    responses(
        (status = 200, description = "Deleted; the entry as it was", body = CatalogEntry),
        (status = 404, description = "No such entry", body = ErrorBody),
        (status = 409, description = "A live worker carries its model number (`catalog_entry_in_use`), or it is `generic` (`catalog_entry_protected`)", body = ErrorBody),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn remove(
    State(state): State<AppState>,
    ApiPath(worker_type): ApiPath<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    let entry = state.db.delete_catalog_entry(&worker_type).await?;
    tracing::info!(worker_type = %entry.worker_type, "catalog entry deleted");
    Ok(Json(entry))
}

/// Every family with its catalog entries.
#[utoipa::path(
    get,
    path = "/api/workers/models/families",
    tag = "catalog",
    responses(
        (status = 200, description = "Families with their entries", body = Vec<FamilyWithEntries>),
        (status = 503, description = "Database unreachable (with Retry-After)", body = ErrorBody),
    )
)]
pub(crate) async fn families(
    State(state): State<AppState>,
) -> Result<Json<Vec<FamilyWithEntries>>, ApiError> {
    Ok(Json(state.db.families().await?))
}

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        let conflict = |code, message| ApiError::Conflict { code, message };
        match err {
            CatalogError::Exists(worker_type) => conflict(
                "catalog_entry_exists",
                format!(
                    "worker type {worker_type:?} is already in the catalog; change it with \
                     PATCH /api/workers/models/catalog/{worker_type}"
                ),
            ),
            CatalogError::NotFound(worker_type) => ApiError::NotFound(format!(
                "worker type {worker_type:?} is not in the model catalog \
                 (GET /api/workers/models/catalog lists the known types)"
            )),
            CatalogError::FamilyNameRequired(code) => ApiError::validation(
                "family_name",
                format!(
                    "is required because family {code} is new \
                     (GET /api/workers/models/families lists the existing ones)"
                ),
            ),
            CatalogError::FamilyMismatch {
                code,
                field,
                existing,
            } => conflict(
                "family_mismatch",
                format!(
                    "family {code} already exists with {field} {existing:?}; leave {field} out \
                     or send the same value"
                ),
            ),
            CatalogError::InUse {
                worker_type,
                model_number,
                holders: Some((live_workers, example)),
            } => conflict(
                "catalog_entry_in_use",
                format!(
                    "worker type {worker_type:?} ({model_number}) is carried by \
                     {live_workers} live worker(s) (such as {example:?}); its model number \
                     cannot change and it cannot be deleted until they deregister (its \
                     description may still change)"
                ),
            ),
            CatalogError::InUse { holders: None, .. } => conflict(
                "catalog_entry_in_use",
                "a live worker registered with this entry meanwhile; its model number cannot \
                 change and it cannot be deleted until such workers deregister"
                    .to_string(),
            ),
            CatalogError::ModelTaken {
                model_number,
                holder,
            } => conflict(
                "model_number_taken",
                match holder {
                    Some(holder) => format!(
                        "model number {model_number} belongs to worker type {holder:?}; a model \
                         number names one worker type, so pick another family or generation"
                    ),
                    None => "that model number was just given to another worker type; pick \
                             another family or generation"
                        .to_string(),
                },
            ),
            CatalogError::GenericProtected => conflict(
                "catalog_entry_protected",
                format!(
                    "{GENERIC_WORKER_TYPE:?} is where unknown worker types register, so it \
                     cannot be deleted and stays in family GN (its generation and description \
                     may change)"
                ),
            ),
            CatalogError::Invalid { field, rule } => ApiError::validation(field, rule),
            CatalogError::Db(e) => e.into(),
        }
    }
}
