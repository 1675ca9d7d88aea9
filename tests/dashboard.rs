//! The dashboard: served from the binary, and driven in a real headless Chromium (Debian's
//! `chromium` through `chromedriver`, both found on PATH; nothing is installed at test time).
//!
//! The browser test leaves `target/dashboard-screenshot.png` behind as its artifact (and
//! `target/dashboard-failure.png` when it fails). `docs/dashboard.png`, the README's picture,
//! is regenerated on demand:
//! `cargo test --test dashboard -- --ignored readme_screenshot`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use common::{TestApp, encode, json};
use dals_registry::settings::Settings;
use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use serde_json::{Value, json};

/// How long the page gets to reflect a change; generous for a loaded 2-core machine (without
/// an event stream the page polls the list every 5 s).
const UI_TIMEOUT: Duration = Duration::from_secs(25);

fn fast(s: &mut Settings) {
    s.liveness.stale_after_secs = 1.5;
    s.liveness.offline_after_secs = 30.0;
    s.liveness.sweep_interval_secs = 0.1;
    s.liveness.brake_min_workers = 1_000_000;
}

// ---------------------------------------------------------------------------------------------
// Serving the page (no browser needed)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let mut pages = Vec::new();
    for path in ["/", "/dashboard"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(header("content-type"), "text/html; charset=utf-8", "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
        assert!(
            header("content-security-policy").contains("default-src 'self'"),
            "{path}"
        );
        let etag = header("etag");
        assert!(etag.starts_with('"') && etag.len() == 18, "etag {etag:?}");
        let body = r.text().await.expect("body");
        assert!(body.contains("<title>DALS Registry</title>"), "{path}");
        assert!(body.contains("id=\"workers-body\""), "{path}");
        // Everything the page needs is in it: no script, style or font from elsewhere.
        for external in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(!body.contains(external), "{path} refers to {external}");
        }
        pages.push((etag, body));
    }
    assert_eq!(pages[0], pages[1], "/ and /dashboard serve the same page");

    // A browser holding this version revalidates to a 304 without a body.
    let etag = &pages[0].0;
    for if_none_match in [etag.clone(), format!("W/{etag}"), format!("\"0\", {etag}")] {
        let r = app
            .client
            .get(app.url("/"))
            .header("if-none-match", &if_none_match)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 304, "If-None-Match: {if_none_match}");
        assert_eq!(r.text().await.expect("body"), "");
    }
    let r = app
        .client
        .get(app.url("/"))
        .header("if-none-match", "\"0000000000000000\"")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200, "another version's ETag gets the page");

    // HEAD works for monitoring probes; other methods are refused as elsewhere in the API.
    let r = app
        .client
        .head(app.url("/dashboard"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 200);
    let r = app.post("/dashboard", &json!({})).await;
    assert_eq!(json(r, 405).await["error"], "method_not_allowed");
    // The API's own 404 is untouched.
    let r = app.get("/dashboard/nope").await;
    assert_eq!(json(r, 404).await["error"], "not_found");
}

// ---------------------------------------------------------------------------------------------
// The page in a real browser
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_dashboard_shows_the_fleet_live_in_a_real_browser() {
    let browser = Browser::launch(1400, 900).await;
    let app = TestApp::spawn_with(fast).await;
    let beater = Beater::start(&app);
    let outcome = fleet_scenario(&app, &browser, &beater).await;
    let shot = if outcome.is_ok() {
        artifact("dashboard-screenshot.png")
    } else {
        artifact("dashboard-failure.png")
    };
    let saved = browser.screenshot(&shot).await;
    browser.close().await;
    if let Err(e) = outcome {
        panic!("{e:#}\n(screenshot of the page: {})", shot.display());
    }
    saved.unwrap_or_else(|e| panic!("saving the screenshot: {e:#}"));
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "{} should hold a real screenshot",
        shot.display()
    );
}

async fn fleet_scenario(app: &TestApp, browser: &Browser, beater: &Beater) -> anyhow::Result<()> {
    // A small fleet of four families; tm-alpha is deployed twice.
    let first_alpha = app.register("tm-alpha", "truemark").await;
    let alpha = app.register("tm-alpha", "truemark").await;
    let bravo = app.register("tm-bravo", "truemark-v2").await;
    app.register("rg-charlie", "regent").await;
    let delta = app.register("bb-delta", "bubble").await;
    app.register("gt-echo", "goat").await;
    let fleet = ["bb-delta", "gt-echo", "rg-charlie", "tm-alpha", "tm-bravo"];
    for name in fleet {
        beater.beat(name);
    }
    wait_api(app, "every worker active", async |app| {
        app.get("/api/workers/status")
            .await
            .json::<Value>()
            .await
            .ok()
            .is_some_and(|s| s["counts"]["active"] == 5)
    })
    .await?;

    let c = &browser.client;
    c.goto(&app.url("/"))
        .await
        .context("opening the dashboard")?;
    let opened = Instant::now();
    let rows = wait_rows(c, "the five workers, active", |rows| {
        names(rows) == fleet && rows.iter().all(|r| r.status == "active")
    })
    .await?;
    for row in &rows {
        ensure!(
            row.badge == "status-badge status-active",
            "{}'s badge is {:?}",
            row.name,
            row.badge
        );
        ensure!(
            row.model.starts_with("DMN-") && row.serial.starts_with(&row.model),
            "{}: model {:?}, serial {:?}",
            row.name,
            row.model,
            row.serial
        );
        ensure!(
            row.user == "user_123",
            "{}'s user is {:?}",
            row.name,
            row.user
        );
    }
    let alpha_row = rows.iter().find(|r| r.name == "tm-alpha").expect("listed");
    ensure!(
        alpha_row.serial == alpha["serial_number"],
        "tm-alpha shows its current serial"
    );
    // The last heartbeat reads as "N s ago".
    wait_rows(c, "heartbeat times as \"N s ago\"", |rows| {
        rows.iter().all(|r| {
            r.heartbeat
                .strip_suffix(" s ago")
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
    })
    .await?;
    wait_js(c, "the active tile to count 5", TILES, |t| {
        t["active"] == "5"
    })
    .await?;
    ensure!(
        !is_shown(c, "#brake-banner").await?,
        "the brake banner is hidden while the brake is not engaged"
    );

    // Everything on the page came from the registry itself: no CDN, no web font.
    let foreign: Vec<String> = serde_json::from_value(
        c.execute(
            "return performance.getEntriesByType('resource').map(e => e.name)\
                .filter(n => !n.startsWith(location.origin + '/'));",
            vec![],
        )
        .await?,
    )?;
    ensure!(foreign.is_empty(), "the page loaded {foreign:?}");

    // bb-delta goes quiet; tm-alpha keeps beating. bb-delta's row turns stale.
    beater.silence("bb-delta");
    let rows = wait_rows(c, "bb-delta to turn stale", |rows| {
        rows.iter()
            .any(|r| r.name == "bb-delta" && r.status == "stale")
    })
    .await?;
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .cloned()
            .expect("listed")
    };
    let (stale, active) = (row("bb-delta"), row("tm-alpha"));
    ensure!(
        stale.badge == "status-badge status-stale",
        "stale badge {:?}",
        stale.badge
    );
    ensure!(
        active.status == "active" && active.badge == "status-badge status-active",
        "tm-alpha, still beating, stays active: {active:?}"
    );
    // The colour is what an operator sees: the badges must actually look different.
    ensure!(
        stale.badge_bg != active.badge_bg,
        "stale and active badges share the background {}",
        stale.badge_bg
    );
    ensure!(
        stale.badge_color != active.badge_color,
        "stale and active badges share the text colour {}",
        stale.badge_color
    );
    for colour in [&stale.badge_bg, &active.badge_bg] {
        ensure!(
            colour.starts_with("rgb(") && colour != "rgba(0, 0, 0, 0)",
            "badge background {colour:?} is not a solid colour"
        );
    }
    wait_js(c, "the stale tile to count 1", TILES, |t| t["stale"] == "1").await?;

    // Filters: status...
    select(c, "#filter-status", "stale").await?;
    wait_rows(c, "only bb-delta under status=stale", |rows| {
        names(rows) == ["bb-delta"]
    })
    .await?;
    ensure!(page_total(c).await? == 1, "the pager counts 1 stale worker");
    select(c, "#filter-status", "active").await?;
    wait_rows(c, "the four active workers", |rows| {
        names(rows) == ["gt-echo", "rg-charlie", "tm-alpha", "tm-bravo"]
    })
    .await?;
    select(c, "#filter-status", "").await?;
    wait_rows(c, "all five again", |rows| names(rows) == fleet).await?;

    // ...family (the options come from the registry's status)...
    wait_js(
        c,
        "the TM family option",
        "return Array.from(document.querySelectorAll('#filter-family option')).map(o => o.value);",
        |options| options.as_array().is_some_and(|o| o.contains(&json!("TM"))),
    )
    .await?;
    select(c, "#filter-family", "TM").await?;
    wait_rows(c, "the TrueMark workers", |rows| {
        names(rows) == ["tm-alpha", "tm-bravo"]
    })
    .await?;
    select(c, "#filter-family", "").await?;
    wait_rows(c, "all five again", |rows| names(rows) == fleet).await?;

    // ...and text, typed as a person would: part of a name, then part of a serial.
    let search = c.find(Locator::Css("#filter-text")).await?;
    search.send_keys("CHARL").await?;
    wait_rows(c, "rg-charlie found by name", |rows| {
        names(rows) == ["rg-charlie"]
    })
    .await?;
    clear_search(c).await?;
    let bravo_serial = bravo["serial_number"].as_str().expect("serial");
    let shard = bravo_serial.split('-').nth(3).expect("serial has a shard");
    search.send_keys(&shard.to_lowercase()).await?;
    wait_rows(c, "tm-bravo found by serial", |rows| {
        names(rows) == ["tm-bravo"]
    })
    .await?;
    clear_search(c).await?;
    search.send_keys("no-such-worker").await?;
    wait_rows(c, "no rows for a search that matches nothing", |rows| {
        rows.is_empty()
    })
    .await?;
    ensure!(
        is_shown(c, "#workers-empty").await?,
        "an empty result says so"
    );
    clear_search(c).await?;
    wait_rows(c, "all five again", |rows| names(rows) == fleet).await?;

    // Sorting: by name descending, then by status (problems first).
    c.find(Locator::Css("th[data-sort=name] button"))
        .await?
        .click()
        .await?;
    let mut reversed = fleet;
    reversed.reverse();
    wait_rows(c, "names descending", |rows| names(rows) == reversed).await?;
    c.find(Locator::Css("th[data-sort=status] button"))
        .await?
        .click()
        .await?;
    wait_rows(c, "the stale worker first", |rows| {
        names(rows).first() == Some(&"bb-delta")
    })
    .await?;

    // Live update: a worker registered while the page is open appears without a reload.
    let foxtrot = app.register("sk-foxtrot", "skg").await;
    beater.beat("sk-foxtrot");
    let rows = wait_rows(c, "sk-foxtrot to appear, active", |rows| {
        rows.iter()
            .any(|r| r.name == "sk-foxtrot" && r.status == "active")
    })
    .await?;
    ensure!(
        rows.iter()
            .any(|r| r.name == "sk-foxtrot" && r.serial == foxtrot["serial_number"]),
        "sk-foxtrot shows its serial"
    );
    wait_js(c, "the live total to count 6", TILES, |t| t["total"] == "6").await?;
    let indicator = attr(c, "#live-indicator", "data-state").await?;
    ensure!(
        indicator == "live" || indicator == "polling",
        "live indicator is {indicator:?}"
    );
    if stream_exists(app).await {
        ensure!(
            indicator == "live",
            "the registry has an event stream, yet the page is {indicator:?}"
        );
    }

    // Detail: bb-delta's timeline holds exactly the registry's events, stale among them.
    click_row(c, "bb-delta").await?;
    let api_events = json(
        app.get(&format!("/api/workers/{}/events", encode("bb-delta")))
            .await,
        200,
    )
    .await;
    let api_ids: BTreeSet<String> = api_events["events"]
        .as_array()
        .context("events")?
        .iter()
        .map(|e| e["id"].to_string())
        .collect();
    let detail = wait_js(c, "bb-delta's timeline", DETAIL, |d| {
        d["title"] == "bb-delta"
            && d["events"]
                .as_array()
                .is_some_and(|e| e.len() == api_ids.len())
    })
    .await?;
    let shown_ids: BTreeSet<String> = detail["events"]
        .as_array()
        .context("events")?
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(
        shown_ids == api_ids,
        "timeline {shown_ids:?} vs API {api_ids:?}"
    );
    let kinds: Vec<&str> = detail["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in ["registered", "first_heartbeat", "stale"] {
        ensure!(
            kinds.contains(&kind),
            "timeline kinds {kinds:?} lack {kind}"
        );
    }
    ensure!(
        detail["deployments"] == json!([[delta["serial_number"], true]]),
        "bb-delta's deployments: {}",
        detail["deployments"]
    );
    ensure!(
        detail["status"] == "stale",
        "detail status {}",
        detail["status"]
    );

    // tm-alpha's detail lists both deployments, the second one current.
    c.find(Locator::Css("#detail-close")).await?.click().await?;
    wait_js(c, "the panel to close", DETAIL, |d| d["open"] == false).await?;
    click_row(c, "tm-alpha").await?;
    wait_js(c, "tm-alpha's two deployments", DETAIL, |d| {
        d["title"] == "tm-alpha" && d["deployments"].as_array().is_some_and(|v| v.len() == 2)
    })
    .await
    .and_then(|d| {
        let mut deployments = d["deployments"].as_array().cloned().unwrap_or_default();
        deployments.sort_by_key(|v| v[1].as_bool());
        let expected = vec![
            json!([first_alpha["serial_number"], false]),
            json!([alpha["serial_number"], true]),
        ];
        ensure!(
            deployments == expected,
            "tm-alpha's deployments: {deployments:?}"
        );
        Ok(())
    })?;

    // Heartbeats make no events; the page re-reads a small fleet often enough that an active
    // worker never looks long silent.
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(opened.elapsed())).await;
    let rows: Vec<Row> = serde_json::from_value(c.execute(ROWS, vec![]).await?)?;
    for r in rows.iter().filter(|r| r.status == "active") {
        let age: u64 = r
            .heartbeat
            .strip_suffix(" s ago")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{}'s heartbeat reads {:?}", r.name, r.heartbeat))?;
        ensure!(
            age <= 8,
            "{} beats every 300 ms but its last heartbeat reads {age} s ago",
            r.name
        );
    }

    ensure!(
        !is_shown(c, "#error-bar").await?,
        "the error bar shows {:?}",
        c.find(Locator::Css("#error-bar")).await?.text().await?
    );
    Ok(())
}

/// The brake banner appears when the sweeper holds a mass lapse, and goes when an operator
/// releases the brake.
#[tokio::test]
async fn the_brake_banner_follows_the_sweeper() {
    let browser = Browser::launch(1400, 900).await;
    let app = TestApp::spawn_with(|s| {
        fast(s);
        s.liveness.stale_after_secs = 1.0;
        s.liveness.brake_fraction = 0.5;
        s.liveness.brake_min_workers = 3;
    })
    .await;
    let beater = Beater::start(&app);
    let fleet = ["brk-1", "brk-2", "brk-3", "brk-4"];
    for name in fleet {
        app.register(name, "regent").await;
        beater.beat(name);
    }
    let outcome = brake_scenario(&app, &browser, &beater, &fleet).await;
    if outcome.is_err() {
        let _ = browser
            .screenshot(&artifact("dashboard-brake-failure.png"))
            .await;
    }
    browser.close().await;
    outcome.unwrap_or_else(|e| panic!("{e:#}"));
}

async fn brake_scenario(
    app: &TestApp,
    browser: &Browser,
    beater: &Beater,
    fleet: &[&str],
) -> anyhow::Result<()> {
    let c = &browser.client;
    c.goto(&app.url("/")).await?;
    wait_rows(c, "four active workers", |rows| {
        rows.len() == 4 && rows.iter().all(|r| r.status == "active")
    })
    .await?;
    ensure!(!is_shown(c, "#brake-banner").await?, "no brake yet");

    // The whole fleet goes quiet at once: the sweeper holds the transitions.
    for name in fleet {
        beater.silence(name);
    }
    let banner = wait_js(
        c,
        "the brake banner",
        "const b = document.getElementById('brake-banner');
         return b.hidden ? null : b.textContent;",
        |text| text.as_str().is_some_and(|t| t.contains("brake engaged")),
    )
    .await?;
    ensure!(
        banner
            .as_str()
            .is_some_and(|t| t.contains("held") && t.contains("min 3 workers")),
        "banner reads {banner}"
    );
    let status = json(app.get("/api/workers/status").await, 200).await;
    ensure!(status["brake"]["engaged"] == true, "status {status}");

    // An operator releases it: the banner goes and the held workers turn stale.
    let r = app.post("/api/workers/liveness/release", &json!({})).await;
    ensure!(r.status() == 200, "release answered {}", r.status());
    wait_js(
        c,
        "the banner to go",
        "return document.getElementById('brake-banner').hidden;",
        |hidden| *hidden == json!(true),
    )
    .await?;
    wait_rows(c, "the released workers to show stale", |rows| {
        rows.len() == 4 && rows.iter().all(|r| r.status == "stale")
    })
    .await?;
    Ok(())
}

/// 10,000 workers: the page renders one page of 100 rows, and sorting, filtering and paging
/// answer at once instead of freezing the tab.
#[tokio::test]
async fn ten_thousand_workers_stay_usable() {
    use futures::StreamExt;
    const FLEET: usize = 10_000;
    let app = TestApp::spawn_with(|s| {
        s.liveness.stale_after_secs = 3600.0;
        s.liveness.offline_after_secs = 7200.0;
    })
    .await;
    let types = ["truemark", "regent", "goat", "skg", "bubble"];
    futures::stream::iter(0..FLEET)
        .map(|i| {
            let app = &app;
            async move {
                let r = app
                    .post(
                        "/api/workers/register",
                        &json!({
                            "name": format!("fleet-{i:05}"), "worker_type": types[i % types.len()],
                            "api_url": "http://localhost:8080", "user_id": format!("user_{}", i % 50),
                        }),
                    )
                    .await;
                assert_eq!(r.status(), 200, "registering fleet-{i:05}");
            }
        })
        .buffer_unordered(8)
        .collect::<()>()
        .await;

    let browser = Browser::launch(1400, 900).await;
    let outcome = large_fleet_scenario(&app, &browser, FLEET).await;
    if outcome.is_err() {
        let _ = browser
            .screenshot(&artifact("dashboard-10k-failure.png"))
            .await;
    }
    browser.close().await;
    outcome.unwrap_or_else(|e| panic!("{e:#}"));
}

async fn large_fleet_scenario(
    app: &TestApp,
    browser: &Browser,
    fleet: usize,
) -> anyhow::Result<()> {
    let c = &browser.client;
    c.goto(&app.url("/")).await?;
    let total = fleet.to_string();
    wait_js_for(
        c,
        "the whole fleet counted by the pager",
        "return document.getElementById('page-info').dataset.total;",
        Duration::from_secs(90),
        |t| *t == json!(total),
    )
    .await?;
    let rows = wait_rows(c, "the first page", |rows| rows.len() == 100).await?;
    ensure!(
        rows[0].name == "fleet-00000" && rows[99].name == "fleet-00099",
        "first page {} .. {}",
        rows[0].name,
        rows[99].name
    );
    let dom_rows: u64 = serde_json::from_value(
        c.execute(
            "return document.querySelectorAll('#workers-body tr').length;",
            vec![],
        )
        .await?,
    )?;
    ensure!(
        dom_rows == 100,
        "{dom_rows} rows in the DOM for {fleet} workers"
    );
    wait_js(c, "the live total tile", TILES, |t| {
        t["total"] == json!(total)
    })
    .await?;

    // Re-sorting 10k workers is one synchronous click handler: time it in the page.
    let took: f64 = serde_json::from_value(
        c.execute(
            "const t = performance.now();
             document.querySelector('th[data-sort=name] button').click();
             return performance.now() - t;",
            vec![],
        )
        .await?,
    )?;
    ensure!(
        took < 1500.0,
        "sorting {fleet} workers blocked the page for {took:.0} ms"
    );
    let rows = wait_rows(c, "names descending", |rows| {
        rows.len() == 100 && rows[0].name == "fleet-09999"
    })
    .await?;
    ensure!(rows[99].name == "fleet-09900", "last row {}", rows[99].name);

    // Typing a search narrows 10k workers to ten, quickly.
    let started = Instant::now();
    c.find(Locator::Css("#filter-text"))
        .await?
        .send_keys("fleet-0042")
        .await?;
    let expected: Vec<String> = (420..430).rev().map(|i| format!("fleet-{i:05}")).collect();
    wait_rows(c, "the ten matches of fleet-0042", |rows| {
        names(rows) == expected
    })
    .await?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(5), "the search took {took:?}");
    clear_search(c).await?;
    wait_rows(c, "the whole fleet again", |rows| {
        rows.len() == 100 && rows[0].name == "fleet-09999"
    })
    .await?;

    // Paging.
    c.find(Locator::Css("#page-next")).await?.click().await?;
    let rows = wait_rows(c, "the second page", |rows| {
        rows.len() == 100 && rows[0].name == "fleet-09899"
    })
    .await?;
    ensure!(
        rows[99].name == "fleet-09800",
        "second page ends at {}",
        rows[99].name
    );
    let info = c.find(Locator::Css("#page-info")).await?.text().await?;
    ensure!(info == "showing 101-200 of 10,000", "page info {info:?}");
    Ok(())
}

/// Builds the README's picture: a fleet of 32 in mixed states. Run on demand (it rewrites a
/// committed file): `cargo test --test dashboard -- --ignored readme_screenshot`.
#[tokio::test]
#[ignore = "rewrites docs/dashboard.png; run on demand"]
async fn readme_screenshot() {
    let browser = Browser::launch(1280, 800).await;
    let app = TestApp::spawn_with(|s| {
        s.liveness.stale_after_secs = 4.0;
        s.liveness.offline_after_secs = 8.0;
        s.liveness.sweep_interval_secs = 0.1;
        s.liveness.brake_min_workers = 1_000_000;
    })
    .await;
    let beater = Beater::start(&app);
    let types = [
        "truemark",
        "truemark-v2",
        "regent",
        "regent-pro",
        "goat",
        "skg",
        "bubble",
    ];
    let cities = [
        "Amsterdam",
        "Berlin",
        "Cairo",
        "Denver",
        "Edinburgh",
        "Florence",
        "Geneva",
        "Hanoi",
        "Istanbul",
        "Jakarta",
        "Kyoto",
        "Lisbon",
        "Madrid",
        "Nairobi",
        "Oslo",
        "Porto",
        "Quito",
        "Riga",
        "Seoul",
        "Tokyo",
        "Utrecht",
        "Valencia",
        "Warsaw",
        "Xian",
        "York",
        "Zagreb",
        "Athens",
        "Bogota",
        "Chicago",
        "Dublin",
        "Essen",
        "Fresno",
    ];
    let user = |i: usize| format!("user_{}", 100 + i * 7);
    let name = |i: usize| format!("{}-{}", cities[i], user(i));
    let register = |i: usize| {
        let app = &app;
        async move {
            let r = app
                .post(
                    "/api/workers/register",
                    &json!({
                        "name": name(i), "worker_type": types[i % types.len()],
                        "api_url": format!("http://10.0.{}.{}:8080", i / 8, 10 + i),
                        "user_id": user(i),
                    }),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
    };
    // 0..3 go offline, 3..7 stale, 7..9 are deregistered, 29..32 are re-deployed just before
    // the picture and have not sent a heartbeat yet; the rest are active.
    for i in 0..3 {
        register(i).await;
        app.heartbeat(&name(i)).await;
    }
    for i in 9..32 {
        register(i).await;
        beater.beat(&name(i));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 3..9 {
        register(i).await;
        app.heartbeat(&name(i)).await;
    }
    for i in 7..9 {
        app.delete(&format!("/api/workers/{}", encode(&name(i))))
            .await;
    }
    wait_api(&app, "3 offline and 4 stale workers", async |app| {
        app.get("/api/workers/status")
            .await
            .json::<Value>()
            .await
            .ok()
            .is_some_and(|s| s["counts"]["offline"] == 3 && s["counts"]["stale"] == 4)
    })
    .await
    .expect("states");
    for i in 29..32 {
        beater.silence(&name(i));
    }
    // A heartbeat already on its way would make the re-deployment active at once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for i in 29..32 {
        register(i).await;
    }
    let c = &browser.client;
    c.goto(&app.url("/")).await.expect("open");
    c.find(Locator::Css("th[data-sort=status] button"))
        .await
        .expect("status header")
        .click()
        .await
        .expect("sort by status");
    wait_rows(c, "the fleet in four states", |rows| {
        let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
        rows.len() == 30
            && (
                count("offline"),
                count("stale"),
                count("registered"),
                count("active"),
            ) == (3, 4, 3, 20)
    })
    .await
    .expect("rows");
    wait_js(c, "tiles", TILES, |t| {
        t["total"] == "30" && t["deregistered"] == "2"
    })
    .await
    .expect("tiles");
    // Let the heartbeat ages settle into the one-second tick.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    browser.screenshot(&shot).await.expect("screenshot");
    browser.close().await;
}

// ---------------------------------------------------------------------------------------------
// Reading the page
// ---------------------------------------------------------------------------------------------

/// One table row as the browser renders it.
#[derive(Debug, Clone, Deserialize)]
struct Row {
    name: String,
    status: String,
    badge: String,
    badge_bg: String,
    badge_color: String,
    model: String,
    serial: String,
    user: String,
    heartbeat: String,
}

const ROWS: &str = "return Array.from(document.querySelectorAll('#workers-body tr[data-worker]'))
    .map(tr => {
        const badge = tr.querySelector('span.status-badge');
        const style = getComputedStyle(badge);
        const cell = (c) => tr.querySelector('td.col-' + c).textContent;
        return {
            name: tr.dataset.worker, status: tr.dataset.status, badge: badge.className,
            badge_bg: style.backgroundColor, badge_color: style.color,
            model: cell('model'), serial: cell('serial'), user: cell('user'),
            heartbeat: cell('heartbeat'),
        };
    });";

const TILES: &str = "const out = {};
    for (const t of document.querySelectorAll('#status-tiles .tile'))
        out[t.id.replace('tile-', '')] = t.dataset.count;
    return out;";

const DETAIL: &str = "const panel = document.getElementById('worker-detail');
    const badge = document.querySelector('#detail-status .status-badge');
    return {
        open: !panel.hidden,
        title: document.getElementById('detail-title').textContent,
        status: badge ? badge.textContent : null,
        events: Array.from(document.querySelectorAll('#detail-events li'))
            .map(li => ({ id: li.dataset.eventId, kind: li.dataset.kind })),
        deployments: Array.from(document.querySelectorAll('#detail-deployments tbody tr'))
            .map(tr => [tr.dataset.serial, tr.classList.contains('current')]),
    };";

fn names(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.name.as_str()).collect()
}

/// Polls the table until `ok` holds, returning the rows that satisfied it.
async fn wait_rows(
    c: &Client,
    what: &str,
    ok: impl Fn(&[Row]) -> bool,
) -> anyhow::Result<Vec<Row>> {
    let value = wait_js(c, what, ROWS, |v| {
        serde_json::from_value::<Vec<Row>>(v.clone()).is_ok_and(|rows| ok(&rows))
    })
    .await?;
    Ok(serde_json::from_value(value)?)
}

/// Polls `script` in the page until its value satisfies `ok`; the error names what was
/// awaited and the last value seen.
async fn wait_js(
    c: &Client,
    what: &str,
    script: &str,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_js_for(c, what, script, UI_TIMEOUT, ok).await
}

async fn wait_js_for(
    c: &Client,
    what: &str,
    script: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let value = c
            .execute(script, vec![])
            .await
            .with_context(|| format!("running the probe for {what}"))?;
        if ok(&value) {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; the page shows {value}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_api(
    app: &TestApp,
    what: &str,
    mut ok: impl AsyncFnMut(&TestApp) -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < UI_TIMEOUT {
        if ok(app).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(anyhow!("timed out after {UI_TIMEOUT:?} waiting for {what}"))
}

async fn is_shown(c: &Client, css: &str) -> anyhow::Result<bool> {
    Ok(c.find(Locator::Css(css)).await?.is_displayed().await?)
}

async fn attr(c: &Client, css: &str, name: &str) -> anyhow::Result<String> {
    Ok(c.find(Locator::Css(css))
        .await?
        .attr(name)
        .await?
        .unwrap_or_default())
}

async fn page_total(c: &Client) -> anyhow::Result<u64> {
    attr(c, "#page-info", "data-total")
        .await?
        .parse()
        .context("#page-info data-total")
}

/// Picks an option the way a user does, so the page sees a real `change` event.
async fn select(c: &Client, css: &str, value: &str) -> anyhow::Result<()> {
    c.find(Locator::Css(css))
        .await?
        .select_by_value(value)
        .await
        .with_context(|| format!("choosing {value:?} in {css}"))
}

/// Empties the search box with the keyboard (select all, delete), firing `input` as typing does.
async fn clear_search(c: &Client) -> anyhow::Result<()> {
    let search = c.find(Locator::Css("#filter-text")).await?;
    search.send_keys("\u{E009}a\u{E009}\u{E003}").await?;
    let left = search.prop("value").await?.unwrap_or_default();
    ensure!(left.is_empty(), "the search box still holds {left:?}");
    Ok(())
}

async fn click_row(c: &Client, name: &str) -> anyhow::Result<()> {
    c.find(Locator::Css(&format!(
        "#workers-body tr[data-worker=\"{name}\"] td.col-name"
    )))
    .await
    .with_context(|| format!("{name}'s row"))?
    .click()
    .await?;
    Ok(())
}

/// Whether this build of the registry has the event stream the page listens to.
async fn stream_exists(app: &TestApp) -> bool {
    let r = app
        .client
        .get(app.url("/api/workers/events/stream"))
        .header("accept", "text/event-stream")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    r.is_ok_and(|r| {
        r.status() == 200
            && r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"))
    })
}

fn artifact(file: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join(file)
}

// ---------------------------------------------------------------------------------------------
// Heartbeats in the background
// ---------------------------------------------------------------------------------------------

/// Sends a heartbeat for each chosen worker every 300 ms, as live workers would.
struct Beater {
    names: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Beater {
    fn start(app: &TestApp) -> Beater {
        let names = Arc::new(Mutex::new(BTreeSet::<String>::new()));
        let (client, url) = (app.client.clone(), app.url("/api/workers/heartbeat"));
        let beating = names.clone();
        let task = tokio::spawn(async move {
            loop {
                let now: Vec<String> = beating.lock().expect("lock").iter().cloned().collect();
                for name in now {
                    let _ = client
                        .post(&url)
                        .json(&json!({ "worker_name": name }))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Beater { names, task }
    }

    fn beat(&self, name: &str) {
        self.names.lock().expect("lock").insert(name.to_string());
    }

    fn silence(&self, name: &str) {
        self.names.lock().expect("lock").remove(name);
    }
}

impl Drop for Beater {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------------

/// A headless Chromium driven through its own chromedriver; both are killed on drop.
struct Browser {
    client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a fresh headless Chromium; panics with the install command
    /// when either is missing.
    async fn launch(width: u32, height: u32) -> Browser {
        let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver"))
        else {
            panic!(
                "the dashboard browser test needs Chromium and chromedriver on PATH: \
                 apt-get install chromium chromium-driver"
            );
        };
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so Drop can end chromedriver and the browsers it
                // started together.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()))
        };
        let profile = std::env::temp_dir().join(format!(
            "dals-dashboard-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let client = match connect(port, &chromium, &profile, width, height).await {
            Ok(client) => client,
            Err(e) => {
                kill_group(driver.id());
                panic!(
                    "cannot drive {} through {}: {e:#}",
                    chromium.display(),
                    chromedriver.display()
                );
            }
        };
        let browser = Browser {
            client,
            driver,
            profile,
        };
        browser
            .client
            .set_window_size(width, height)
            .await
            .expect("window size");
        browser
    }

    /// Saves a PNG of the viewport.
    async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self.client.screenshot().await?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (chromedriver quits the browser) and then chromedriver.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.driver.id());
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn connect(
    port: u16,
    chromium: &Path,
    profile: &Path,
    width: u32,
    height: u32,
) -> anyhow::Result<Client> {
    let args = [
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-dev-shm-usage".to_string(),
        "--no-first-run".to_string(),
        "--no-default-browser-check".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-breakpad".to_string(),
        "--disable-crash-reporter".to_string(),
        "--disable-extensions".to_string(),
        "--force-device-scale-factor=1".to_string(),
        "--force-color-profile=srgb".to_string(),
        "--lang=en-US".to_string(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    // chromedriver takes a moment to listen, and the first browser start is slow on a busy
    // machine.
    loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(client) => return Ok(client),
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(anyhow!("{e}")),
        }
    }
}

/// The first executable called `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Ends the process group led by `pid` (chromedriver and the browsers it started).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}
