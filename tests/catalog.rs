//! Catalog management over HTTP: adding worker types (and families), reading entries and
//! families, changing and deleting entries no live worker uses, and the protected `generic`.

mod common;

use common::{TestApp, json};
use reqwest::Response;
use serde_json::{Value, json};

const SEED: [(&str, &str); 8] = [
    ("bubble", "DMN-BB-01"),
    ("generic", "DMN-GN-01"),
    ("goat", "DMN-GT-01"),
    ("regent", "DMN-RG-01"),
    ("regent-pro", "DMN-RG-02"),
    ("skg", "DMN-SK-01"),
    ("truemark", "DMN-TM-01"),
    ("truemark-v2", "DMN-TM-02"),
];

const CATALOG: &str = "/api/workers/models/catalog";

async fn patch(app: &TestApp, worker_type: &str, body: &Value) -> Response {
    app.client
        .patch(app.url(&format!("{CATALOG}/{worker_type}")))
        .json(body)
        .send()
        .await
        .expect("PATCH")
}

async fn add_new_worker_type(app: &TestApp) -> Value {
    json(
        app.post(
            CATALOG,
            &json!({
                "worker_type": "new-worker-type",
                "family": "NW",
                "generation": 1,
                "description": "A new kind of worker",
                "family_name": "New Worker",
                "family_description": "Workers of the new kind",
            }),
        )
        .await,
        201,
    )
    .await
}

async fn catalog_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM model_catalog")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn adding_a_type_with_a_new_family_creates_both() {
    let app = TestApp::spawn().await;
    let entry = add_new_worker_type(&app).await;
    assert_eq!(
        entry,
        json!({
            "worker_type": "new-worker-type",
            "family": "NW",
            "family_name": "New Worker",
            "generation": 1,
            "model_number": "DMN-NW-01",
            "description": "A new kind of worker",
        })
    );

    // The family is stored with its name and description.
    let family: (String, String) =
        sqlx::query_as("SELECT name, description FROM model_families WHERE code = 'NW'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        family,
        ("New Worker".into(), "Workers of the new kind".into())
    );

    // GET of the entry answers the same full entry.
    let got = json(app.get(&format!("{CATALOG}/new-worker-type")).await, 200).await;
    assert_eq!(got, entry);

    // The design document's catalog keeps its exact shape, now with the new type.
    let catalog = json(app.get(CATALOG).await, 200).await;
    let mut expected: serde_json::Map<String, Value> = SEED
        .iter()
        .map(|(t, m)| (t.to_string(), json!(m)))
        .collect();
    expected.insert("new-worker-type".into(), json!("DMN-NW-01"));
    assert_eq!(catalog, Value::Object(expected));

    // The families list has it, with its entry.
    let families = json(app.get("/api/workers/models/families").await, 200).await;
    let nw = families
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "NW")
        .expect("NW listed");
    assert_eq!(nw["name"], "New Worker");
    assert_eq!(nw["description"], "Workers of the new kind");
    assert_eq!(nw["entries"], json!([entry]));
}

#[tokio::test]
async fn a_type_can_join_an_existing_family() {
    let app = TestApp::spawn().await;
    // No family_name is needed for an existing family ...
    let entry = json(
        app.post(
            CATALOG,
            &json!({"worker_type": "truemark-v3", "family": "TM", "generation": 3}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(entry["model_number"], "DMN-TM-03");
    assert_eq!(entry["family_name"], "TrueMark");
    assert_eq!(entry["description"], "");
    // ... the same name is accepted ...
    let same = json(
        app.post(
            CATALOG,
            &json!({"worker_type": "truemark-lite", "family": "TM", "generation": 4,
                    "family_name": "TrueMark"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(same["model_number"], "DMN-TM-04");
    // ... and another name is a conflict that changes nothing.
    let before = catalog_rows(&app).await;
    let err = json(
        app.post(
            CATALOG,
            &json!({"worker_type": "truemark-x", "family": "TM", "generation": 5,
                    "family_name": "FalseMark"}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(err["error"], "family_mismatch");
    assert!(
        err["message"].as_str().unwrap().contains("TrueMark"),
        "{err}"
    );
    assert_eq!(catalog_rows(&app).await, before);
    let name: String = sqlx::query_scalar("SELECT name FROM model_families WHERE code = 'TM'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(name, "TrueMark");

    let families = json(app.get("/api/workers/models/families").await, 200).await;
    let tm = families
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "TM")
        .unwrap();
    let types: Vec<&str> = tm["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["worker_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["truemark", "truemark-lite", "truemark-v2", "truemark-v3"]
    );
}

#[tokio::test]
async fn an_existing_worker_type_is_a_409() {
    let app = TestApp::spawn().await;
    add_new_worker_type(&app).await;
    let err = json(
        app.post(
            CATALOG,
            &json!({"worker_type": "new-worker-type", "family": "NW", "generation": 2}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(err["error"], "catalog_entry_exists");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("\"new-worker-type\"")
    );

    // A seed type cannot be redefined either; it keeps its model number.
    let err = json(
        app.post(
            CATALOG,
            &json!({"worker_type": "truemark", "family": "RG", "generation": 9}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(err["error"], "catalog_entry_exists");
    let catalog = json(app.get(CATALOG).await, 200).await;
    assert_eq!(catalog["truemark"], "DMN-TM-01");
    assert_eq!(catalog["new-worker-type"], "DMN-NW-01");
}

#[tokio::test]
async fn bad_input_is_a_422_naming_the_field_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let before = catalog_rows(&app).await;
    let ok = json!({"worker_type": "fine", "family": "TM", "generation": 1});
    let with = |field: &str, value: Value| {
        let mut body = ok.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = ok.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            with("family", json!("tm")),
            "family",
            "two upper-case letters",
        ),
        (
            with("family", json!("T")),
            "family",
            "two upper-case letters",
        ),
        (
            with("family", json!("TMX")),
            "family",
            "two upper-case letters",
        ),
        (
            with("family", json!("T1")),
            "family",
            "two upper-case letters",
        ),
        (with("family", json!(12)), "family", "must be a string"),
        (without("family"), "family", "is required"),
        (with("generation", json!(0)), "generation", "1 to 99"),
        (with("generation", json!(100)), "generation", "1 to 99"),
        (with("generation", json!(-1)), "generation", "1 to 99"),
        (with("generation", json!(256)), "generation", "1 to 99"),
        (
            with("generation", json!("1")),
            "generation",
            "must be an integer",
        ),
        (
            with("generation", json!(1.5)),
            "generation",
            "must be an integer",
        ),
        (without("generation"), "generation", "is required"),
        (
            with("worker_type", json!("Fine")),
            "worker_type",
            "a-z, 0-9",
        ),
        (with("worker_type", json!("")), "worker_type", "a-z, 0-9"),
        (
            with("worker_type", json!("-lead")),
            "worker_type",
            "a-z, 0-9",
        ),
        (
            with("worker_type", json!("has space")),
            "worker_type",
            "a-z",
        ),
        (
            with("worker_type", json!("x".repeat(65))),
            "worker_type",
            "1-64",
        ),
        (without("worker_type"), "worker_type", "is required"),
        (
            with("description", json!("two\nlines")),
            "description",
            "one line",
        ),
        (
            with("description", json!("d".repeat(257))),
            "description",
            "at most 256",
        ),
        (
            json!({"worker_type": "fine", "family": "NW", "generation": 1}),
            "family_name",
            "family NW is new",
        ),
        (
            json!({"worker_type": "fine", "family": "NW", "generation": 1, "family_name": ""}),
            "family_name",
            "1-64",
        ),
        (
            json!({"worker_type": "fine", "family": "NW", "generation": 1,
                   "family_name": "n".repeat(65)}),
            "family_name",
            "1-64",
        ),
        (
            json!({"worker_type": "fine", "family": "NW", "generation": 1,
                   "family_name": "New", "family_description": "a\tb"}),
            "family_description",
            "one line",
        ),
        (
            with("descripton", json!("typo")),
            "descripton",
            "unknown field",
        ),
    ];
    for (body, field, rule) in cases {
        let err = json(app.post(CATALOG, &body).await, 422).await;
        assert_eq!(err["error"], "validation_failed", "{body}: {err}");
        assert_eq!(err["field"], field, "{body}: {err}");
        assert!(
            err["rule"].as_str().unwrap().contains(rule),
            "{body}: rule {rule:?} not in {err}"
        );
    }
    // Not an object: 400.
    let r = app.post_raw(CATALOG, "[1]").await;
    let err = json(r, 400).await;
    assert_eq!(err["error"], "bad_request");
    assert_eq!(err["message"], "the body must be a JSON object");

    assert_eq!(catalog_rows(&app).await, before);
    let families: i64 = sqlx::query_scalar("SELECT count(*) FROM model_families")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(families, 6, "no family was created");
}

#[tokio::test]
async fn a_worker_of_a_new_type_gets_its_model_number() {
    let app = TestApp::spawn().await;
    // Before the type is in the catalog, it registers as Generic with a warning.
    let before = app.register("early-bird", "new-worker-type").await;
    assert_eq!(before["model_number"], "DMN-GN-01");
    assert_eq!(before["warnings"].as_array().unwrap().len(), 1);

    add_new_worker_type(&app).await;
    let w = app.register("newcomer", "new-worker-type").await;
    assert_eq!(w["model_number"], "DMN-NW-01");
    assert!(
        w["serial_number"]
            .as_str()
            .unwrap()
            .starts_with("DMN-NW-01-"),
        "{w}"
    );
    assert_eq!(w["family"], "NW");
    assert_eq!(w["generation"], 1);
    assert_eq!(w["warnings"], json!([]));
    let status = json(app.get("/api/workers/status").await, 200).await;
    assert!(
        status["model_families"]
            .as_array()
            .unwrap()
            .contains(&json!("NW")),
        "{status}"
    );
    let listed = json(app.get("/api/workers/list?family=NW").await, 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["worker_name"], "newcomer");
}

#[tokio::test]
async fn a_used_entry_keeps_its_model_until_its_workers_deregister() {
    let app = TestApp::spawn().await;
    add_new_worker_type(&app).await;
    app.register("nw-1", "new-worker-type").await;
    app.register("nw-2", "new-worker-type").await;
    // An offline worker may come back, so it counts as using the type.
    sqlx::query("UPDATE workers SET status = 'offline' WHERE worker_name = 'nw-2'")
        .execute(&app.pool)
        .await
        .unwrap();

    for body in [
        json!({"generation": 2}),
        json!({"family": "TM"}),
        json!({"family": "NX", "family_name": "Next"}),
    ] {
        let err = json(patch(&app, "new-worker-type", &body).await, 409).await;
        assert_eq!(err["error"], "catalog_entry_in_use", "{body}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains("2 live worker"),
            "{err}"
        );
    }
    let err = json(app.delete(&format!("{CATALOG}/new-worker-type")).await, 409).await;
    assert_eq!(err["error"], "catalog_entry_in_use");
    // Nothing changed, and no family was created by the refused PATCH.
    let entry = json(app.get(&format!("{CATALOG}/new-worker-type")).await, 200).await;
    assert_eq!(entry["model_number"], "DMN-NW-01");
    let nx: i64 = sqlx::query_scalar("SELECT count(*) FROM model_families WHERE code = 'NX'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(nx, 0);

    // The description may always change, and so may nothing at all (same model).
    let changed = json(
        patch(
            &app,
            "new-worker-type",
            &json!({"description": "Renamed in place", "family": "NW", "generation": 1}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(changed["description"], "Renamed in place");
    assert_eq!(changed["model_number"], "DMN-NW-01");

    // Once every worker of the type has deregistered, the model may change ...
    for name in ["nw-1", "nw-2"] {
        json(app.delete(&format!("/api/workers/{name}")).await, 200).await;
    }
    let moved = json(
        patch(&app, "new-worker-type", &json!({"generation": 2})).await,
        200,
    )
    .await;
    assert_eq!(moved["model_number"], "DMN-NW-02");
    assert_eq!(moved["description"], "Renamed in place");
    let w = app.register("nw-3", "new-worker-type").await;
    assert!(
        w["serial_number"]
            .as_str()
            .unwrap()
            .starts_with("DMN-NW-02-")
    );
    json(app.delete("/api/workers/nw-3").await, 200).await;

    // ... and the entry may go; the answer is the entry deleted.
    let gone = json(app.delete(&format!("{CATALOG}/new-worker-type")).await, 200).await;
    assert_eq!(gone["model_number"], "DMN-NW-02");
    let r = app.get(&format!("{CATALOG}/new-worker-type")).await;
    assert_eq!(json(r, 404).await["error"], "not_found");
    let catalog = json(app.get(CATALOG).await, 200).await;
    assert!(catalog.get("new-worker-type").is_none(), "{catalog}");
    // History keeps the worker type as text, and the type now registers as Generic.
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT model_number FROM deployments WHERE worker_type = 'new-worker-type'
         ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(types, ["DMN-NW-01", "DMN-NW-02"]);
    assert_eq!(
        app.register("nw-4", "new-worker-type").await["model_number"],
        "DMN-GN-01"
    );
}

#[tokio::test]
async fn a_patch_may_move_an_unused_entry_to_a_new_family() {
    let app = TestApp::spawn().await;
    add_new_worker_type(&app).await;
    let err = json(
        patch(&app, "new-worker-type", &json!({"family": "NX"})).await,
        422,
    )
    .await;
    assert_eq!(err["field"], "family_name");
    let moved = json(
        patch(
            &app,
            "new-worker-type",
            &json!({"family": "NX", "generation": 7, "family_name": "Next"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(moved["model_number"], "DMN-NX-07");
    assert_eq!(moved["family_name"], "Next");

    for (body, field) in [
        (json!({}), "body"),
        (json!({"family_name": "Next"}), "family_name"),
        (json!({"family_description": "x"}), "family_description"),
        (json!({"generation": 0}), "generation"),
        (json!({"family": "nx"}), "family"),
        (json!({"description": "a\nb"}), "description"),
        (json!({"worker_type": "renamed"}), "worker_type"),
    ] {
        let err = json(patch(&app, "new-worker-type", &body).await, 422).await;
        assert_eq!(err["field"], field, "{body}: {err}");
    }
    for r in [
        patch(&app, "no-such-type", &json!({"description": "x"})).await,
        app.delete(&format!("{CATALOG}/no-such-type")).await,
        app.get(&format!("{CATALOG}/no-such-type")).await,
    ] {
        let err = json(r, 404).await;
        assert!(err["message"].as_str().unwrap().contains("no-such-type"));
    }
}

#[tokio::test]
async fn generic_cannot_be_deleted_or_leave_its_family() {
    let app = TestApp::spawn().await;
    let err = json(app.delete(&format!("{CATALOG}/generic")).await, 409).await;
    assert_eq!(err["error"], "catalog_entry_protected");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("unknown worker types"),
        "{err}"
    );
    let err = json(patch(&app, "generic", &json!({"family": "TM"})).await, 409).await;
    assert_eq!(err["error"], "catalog_entry_protected");
    assert_eq!(
        json(app.get(CATALOG).await, 200).await["generic"],
        "DMN-GN-01"
    );

    // The schema holds the same rule against any other writer.
    let deleted = sqlx::query("DELETE FROM model_catalog WHERE worker_type = 'generic'")
        .execute(&app.pool)
        .await;
    assert!(deleted.is_err(), "the database let generic be deleted");

    // Its generation may change: unknown types then register under the new model.
    let bumped = json(patch(&app, "generic", &json!({"generation": 2})).await, 200).await;
    assert_eq!(bumped["model_number"], "DMN-GN-02");
    let w = app.register("stranger", "never-heard-of-it").await;
    assert_eq!(w["model_number"], "DMN-GN-02");
}

#[tokio::test]
async fn racing_adds_get_one_201_and_clear_409s() {
    let app = TestApp::spawn().await;
    // The same new type ten times at once.
    let body = json!({"worker_type": "racer", "family": "RC", "generation": 1,
                      "family_name": "Racer"});
    let answers = futures::future::join_all((0..10).map(|_| app.post(CATALOG, &body))).await;
    let mut statuses: Vec<u16> = Vec::new();
    for r in answers {
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 409 {
            assert_eq!(body["error"], "catalog_entry_exists", "{body}");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409, 409, 409]);

    // Different types creating one new family with different names: one name wins.
    let bodies: Vec<Value> = (0..6)
        .map(|i| {
            json!({"worker_type": format!("fam-{i}"), "family": "FM", "generation": i + 1,
                   "family_name": format!("Name {}", i % 2)})
        })
        .collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|body| app.post(CATALOG, body))).await;
    let mut created = 0;
    for r in answers {
        match r.status().as_u16() {
            201 => created += 1,
            409 => assert_eq!(r.json::<Value>().await.unwrap()["error"], "family_mismatch"),
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    let name: String = sqlx::query_scalar("SELECT name FROM model_families WHERE code = 'FM'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(name == "Name 0" || name == "Name 1", "{name}");
    // Three bodies carry each name: the three that agree with the winner are created.
    assert_eq!(created, 3, "family {name}");
}

#[tokio::test]
async fn a_model_number_names_one_worker_type() {
    let app = TestApp::spawn().await;
    let err = json(
        app.post(
            CATALOG,
            &json!({"worker_type": "tm-alias", "family": "TM", "generation": 1}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(err["error"], "model_number_taken", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("\"truemark\""),
        "{err}"
    );
    // A PATCH onto a taken model number is refused the same way, and changes nothing.
    add_new_worker_type(&app).await;
    let err = json(
        patch(
            &app,
            "new-worker-type",
            &json!({"family": "RG", "generation": 2}),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(err["error"], "model_number_taken", "{err}");
    assert!(err["message"].as_str().unwrap().contains("regent-pro"));
    let entry = json(app.get(&format!("{CATALOG}/new-worker-type")).await, 200).await;
    assert_eq!(entry["model_number"], "DMN-NW-01");
    assert_eq!(catalog_rows(&app).await, 9);
}

/// Workers of types the catalog did not know carry the `generic` entry's model number: they
/// hold that entry, not an entry added later under their type's name.
#[tokio::test]
async fn workers_of_unknown_types_hold_the_generic_entry() {
    let app = TestApp::spawn().await;
    let w = app.register("stranger", "never-heard-of").await;
    assert_eq!(w["model_number"], "DMN-GN-01");

    let err = json(patch(&app, "generic", &json!({"generation": 7})).await, 409).await;
    assert_eq!(err["error"], "catalog_entry_in_use", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("stranger"),
        "{err}"
    );

    // The type joins the catalog; the live stranger (DMN-GN-01) does not hold the new entry.
    json(
        app.post(
            CATALOG,
            &json!({"worker_type": "never-heard-of", "family": "NH", "generation": 1,
                    "family_name": "Newly Heard"}),
        )
        .await,
        201,
    )
    .await;
    let moved = json(
        patch(&app, "never-heard-of", &json!({"generation": 2})).await,
        200,
    )
    .await;
    assert_eq!(moved["model_number"], "DMN-NH-02");
    assert_eq!(
        app.register("newcomer", "never-heard-of").await["model_number"],
        "DMN-NH-02"
    );
    let err = json(app.delete(&format!("{CATALOG}/never-heard-of")).await, 409).await;
    assert!(
        err["message"].as_str().unwrap().contains("newcomer"),
        "{err}"
    );

    // Once the stranger leaves, generic may change generation.
    json(app.delete("/api/workers/stranger").await, 200).await;
    let g = json(patch(&app, "generic", &json!({"generation": 7})).await, 200).await;
    assert_eq!(g["model_number"], "DMN-GN-07");
}
