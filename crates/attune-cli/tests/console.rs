//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/ensure-chromium` if missing), driven over WebDriver against a real
//! server and worker on random ports. Each test saves screenshots under `target/ui-screenshots/`.

mod common;

use std::time::{Duration, Instant};

use attune_testkit::{Proc, TestDb};
use base64::Engine;
use common::{client, fast_env, server, worker};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// A Chromium session through chromedriver (both stopped on drop).
struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: Proc,
}

fn tools() -> (String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/ensure-chromium");
    #[allow(clippy::disallowed_methods)] // test tooling: installs the browser
    let out = std::process::Command::new(script).output().expect("run scripts/ensure-chromium");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace();
    (it.next().unwrap().to_owned(), it.next().unwrap().to_owned())
}

impl Browser {
    async fn start(width: u32, height: u32) -> Browser {
        let (chromium, chromedriver) = tools();
        let port = common::free_port();
        let driver = Proc::spawn("chromedriver", &chromedriver, &[&format!("--port={port}")], &[]);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http.get(format!("{base}/status")).send().await.ok();
            if let Some(r) = ready {
                if r.json::<Value>().await.map(|v| v["value"]["ready"] == true).unwrap_or(false) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start: {}", driver.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     format!("--window-size={width},{height}")],
        }}}});
        let r: Value =
            http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session =
            r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {r}")).to_owned();
        Browser { http, session: format!("{base}/session/{session}"), _driver: driver }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap().json::<Value>().await.unwrap()["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    /// The element `css` matches, if any.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        v[ELEMENT].as_str().map(str::to_owned)
    }

    async fn must(&self, css: &str) -> String {
        match self.find(css).await {
            Some(e) => e,
            None => {
                let url = self.call(reqwest::Method::GET, "/url", None).await;
                let source = self.call(reqwest::Method::GET, "/source", None).await;
                panic!("no element {css} on {url}: {}", source.as_str().unwrap_or_default());
            }
        }
    }

    async fn click(&self, css: &str) {
        let e = self.must(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    async fn type_in(&self, css: &str, text: &str) {
        let e = self.must(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({"text": text}))).await;
    }

    /// Empties a form field (one prefilled with its default).
    async fn clear(&self, css: &str) {
        let e = self.must(css).await;
        self.call(reqwest::Method::POST, &format!("/element/{e}/clear"), Some(json!({}))).await;
    }

    /// Waits until an element matches `css`.
    async fn wait_for(&self, css: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.find(css).await.is_none() {
            if Instant::now() > deadline {
                self.must(css).await; // panics with the page
                panic!("{css}: {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for an execution's page to show it ended (the page reloads itself when it does).
    async fn wait_ended(&self, status: &str) {
        self.wait_for(&format!("#execution[data-terminal=true] #status.{status}"), status).await;
    }

    async fn text(&self, css: &str) -> String {
        match self.find(css).await {
            Some(e) => self
                .call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .await
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        }
    }

    async fn attribute(&self, css: &str, name: &str) -> String {
        let e = self.must(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{e}/attribute/{name}"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the text of `css` satisfies `ok` (the page changing by itself, or reloaded
    /// by its script).
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{css}: {what}; it shows {t:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Runs `js` in the page and returns what it returns.
    async fn script(&self, js: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": js, "args": []}))).await
    }

    /// Types `keys` (WebDriver key codes allowed: `\u{E004}` Tab, `\u{E007}` Enter) into the
    /// element that has the focus, as a keyboard would.
    async fn press(&self, keys: &str) {
        let e = self.call(reqwest::Method::GET, "/element/active", None).await;
        let e = e[ELEMENT].as_str().expect("a focused element").to_owned();
        self.call(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({"text": keys}))).await;
    }

    /// The focused element: its id, else its text.
    async fn focused(&self) -> String {
        let v = self.script("const a = document.activeElement; return a.id || a.textContent.trim();").await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Presses Tab until the element with `id` has the focus (at most `limit` times); how many.
    async fn tab_to(&self, id: &str, limit: usize) -> usize {
        for n in 1..=limit {
            self.press(TAB).await;
            if self.focused().await == id {
                return n;
            }
        }
        panic!("#{id} not reached with {limit} Tabs; the focus is on {:?}", self.focused().await);
    }

    /// Form fields without a label, and whether the page is wider than the window.
    async fn unlabelled_and_overflow(&self) -> (Vec<String>, bool) {
        let v = self
            .script(
                "const fields = [...document.querySelectorAll('input, select, textarea')]
                   .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                   .map(e => e.name || e.id);
                 return [fields, document.documentElement.scrollWidth > window.innerWidth];",
            )
            .await;
        let fields =
            v[0].as_array().unwrap().iter().map(|f| f.as_str().unwrap_or_default().to_owned()).collect();
        (fields, v[1].as_bool().unwrap())
    }

    async fn sign_in(&self, url: &str, token: &str) {
        self.goto(&format!("{url}/login")).await;
        self.type_in("#token", token).await;
        self.click("#sign-in").await;
        self.wait_text("h1", "the overview after signing in", |t| t == "Overview").await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session (chromium exits); chromedriver is killed with its Proc.
        let (http, url) = (self.http.clone(), self.session.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { http.delete(url).send().await.ok() })
        })
        .join();
    }
}

/// A secret key, whose value the console must never show.
async fn c_key(url: &str) {
    let out = common::cli(url, &["key", "set", "api_password", "hunter2", "--secret"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_follows_and_cancels_from_the_browser() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let mut w = worker("w1", &url, &fast_env(&[]));
    let b = Browser::start(1280, 900).await;
    b.sign_in(&url, &common::tokens(&url).admin).await;
    b.wait_text("#workers", "the worker listed", |t| t.contains("w1") && t.contains("active")).await;
    b.screenshot("overview").await;

    // Run core.echo from its form: the page follows it to `succeeded`.
    b.goto(&format!("{url}/actions/core.echo")).await;
    b.type_in("#p-message", "hello from the console").await;
    b.screenshot("action-form").await;
    b.click("#run").await;
    b.wait_ended("succeeded").await;
    assert_eq!(b.text("#log").await, "hello from the console");
    b.screenshot("execution-succeeded").await;

    // A long action (core.sleep says how far it is each second): its log grows while it runs,
    // then cancel.
    b.goto(&format!("{url}/actions/core.sleep")).await;
    b.type_in("#p-seconds", "30").await;
    b.click("#run").await;
    b.wait_text("#log", "live output while it runs", |t| t.contains("sleeping 30 s")).await;
    b.wait_text("#log", "the log following the action", |t| t.contains("2 s of 30 s")).await;
    assert_eq!(b.text("#status").await, "running");
    b.wait_text("#attempt", "the attempt that started", |t| t == "1").await;
    b.screenshot("execution-live-log").await;
    b.click("#cancel").await;
    b.wait_ended("canceled").await;
    assert!(!b.text("#log").await.contains("30 s of 30 s"), "canceled before its end");

    // Rules, sensors and events; keys by name and tokens (an admin's).
    b.goto(&format!("{url}/automation")).await;
    b.wait_text("#rules", "the examples' rules", |t| t.contains("examples.")).await;
    b.screenshot("automation").await;
    c_key(&url).await;
    b.goto(&format!("{url}/access")).await;
    let keys = b.wait_text("#keys", "the key by name", |t| t.contains("api_password")).await;
    assert!(!keys.contains("hunter2"), "no key value is shown: {keys}");
    b.wait_text("#tokens", "the tokens", |t| t.contains("admin")).await;
    b.screenshot("access").await;

    // A killed worker turns inactive on the overview, without reloading the page.
    b.goto(&format!("{url}/")).await;
    b.wait_text("#workers", "the worker active", |t| t.contains("active")).await;
    w.signal(nix::sys::signal::Signal::SIGKILL);
    w.wait_exit(Duration::from_secs(10));
    b.wait_text("#workers [data-field=status]", "the killed worker inactive", |t| t == "inactive").await;
    b.screenshot("overview-worker-inactive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_buttons_and_cannot_change_anything() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let c = client(&url);
    let viewer = c
        .create_token(&attune_wire::CreateToken {
            name: "eve".into(),
            role: attune_core::auth::Role::Viewer,
            expires_in: None,
        })
        .await
        .unwrap()
        .secret;
    // An execution that waits (no worker), so that a cancel button would show for an operator.
    let e = c
        .create_execution(&attune_wire::CreateExecution {
            action_ref: "core.echo".into(),
            parameters: Some(json!({"message": "x"})),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = Browser::start(390, 844).await; // a phone's width
    b.sign_in(&url, &viewer).await;
    b.goto(&format!("{url}/executions/{}", e.id)).await;
    b.wait_text("#status", "the waiting execution", |t| t == "scheduled").await;
    assert!(b.find("#cancel").await.is_none() && b.find("#rerun").await.is_none(), "no buttons for a viewer");
    b.goto(&format!("{url}/actions/core.echo")).await;
    assert!(b.find("#run").await.is_none(), "no run form for a viewer");
    b.screenshot("viewer-action").await;
    // Posting anyway, with the session's own CSRF token, is refused.
    let csrf = b.attribute("meta[name=csrf]", "content").await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http
        .post(format!("{url}/executions/{}/cancel", e.id))
        .header("Cookie", format!("attune_session={viewer}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("viewer role may not"));
    // Nor can the API be written with the session cookie alone.
    let r = http
        .post(format!("{url}/api/v1/executions/{}/cancel", e.id))
        .header("Cookie", format!("attune_session={viewer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(c.get_execution(e.id).await.unwrap().status, attune_core::ExecutionStatus::Scheduled);
    // A bad token does not sign in.
    b.click("header .who button").await;
    b.wait_text("h1", "the sign-in page", |t| t == "Sign in").await;
    b.type_in("#token", "attune_nope").await;
    b.click("#sign-in").await;
    b.wait_text("[role=alert]", "the refusal", |t| t.contains("Not signed in")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inquiry_is_answered_from_the_form_its_schema_makes() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let c = client(&url);
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "note": {"type": "string"},
        "replicas": {"type": "integer"}}, "required": ["ok", "replicas"]});
    let ask = attune_wire::CreateExecution {
        action_ref: "core.ask".into(),
        parameters: Some(json!({"prompt": "Deploy to production?", "schema": schema})),
        ..Default::default()
    };
    let e = c.create_execution(&ask).await.unwrap();
    let b = Browser::start(1280, 900).await;
    b.sign_in(&url, &common::tokens(&url).admin).await;
    b.goto(&format!("{url}/inquiries")).await;
    b.wait_text("#inquiries", "the pending inquiry listed", |t| t.contains("Deploy to production?")).await;
    b.click(&format!("a[href=\"/inquiries/{}\"]", e.id)).await;
    b.wait_text("#prompt", "the inquiry's prompt", |t| t == "Deploy to production?").await;
    b.click("#p-ok").await;
    b.type_in("#p-replicas", "3").await;
    b.type_in("#p-note", "go ahead").await;
    b.screenshot("inquiry-form").await;
    b.click("#respond").await;
    b.wait_ended("succeeded").await;
    let done = c.get_execution(e.id).await.unwrap();
    assert_eq!(done.result, Some(json!({"ok": true, "replicas": 3, "note": "go ahead"})));
    b.screenshot("inquiry-answered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_shows_its_tasks_live_and_waits_for_an_answer() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let _w = worker("w1", &url, &fast_env(&[]));
    let b = Browser::start(1280, 900).await;
    b.sign_in(&url, &common::tokens(&url).admin).await;
    // Run the examples' workflow from its form; its page shows the tasks as they start, nested
    // workflow included, without a reload, until the approval waits for a person.
    b.goto(&format!("{url}/actions/examples.check_hosts")).await;
    b.clear("#p-count").await;
    b.type_in("#p-count", "3").await;
    b.click("#run").await;
    let tree = b
        .wait_text("#tree", "the tasks up to the waiting approval", |t| {
            t.contains("approve/1") && t.contains("pending") && t.contains("again/1")
        })
        .await;
    for task in ["list_hosts/1", "check_each/1/0", "check_each/1/2", "greet/1", "hello/1"] {
        assert!(tree.contains(task), "{task} in the tree: {tree}");
    }
    assert_eq!(b.text("#status").await, "running");
    b.screenshot("workflow-waiting").await;
    // The approval's row gains its Respond link when it starts waiting (a re-render that follows
    // the status shown in place).
    b.wait_for("#tree a.respond", "the approval's Respond link").await;
    b.click("#tree a.respond").await;
    b.wait_text("#prompt", "the approval's question", |t| t == "Report on 3 hosts?").await;
    b.click("#p-ok").await;
    b.click("#respond").await;
    b.wait_ended("succeeded").await;
    // The workflow goes on to its report and ends; its page follows.
    b.click("#parent").await;
    b.wait_ended("succeeded").await;
    let tree = b.text("#tree").await;
    assert!(
        tree.contains("report/1") && !tree.contains("running") && !tree.contains("check_each/1/3"),
        "{tree}"
    );
    b.screenshot("workflow-succeeded").await;
}

/// A page as a signed-in browser gets it (status and HTML).
async fn console_get(url: &str, token: &str, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("Cookie", format!("attune_session={token}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_executions_list_pages_and_filters_by_time() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let c = client(&url);
    let admin = common::tokens(&url).admin;
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut ids = Vec::new();
    for i in 0..106 {
        let e = c
            .create_execution(&attune_wire::CreateExecution {
                action_ref: "core.echo".into(),
                parameters: Some(json!({"message": format!("m{i}")})),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(e.id);
    }
    let rows = |html: &str| html.matches("<tr data-execution=").count();
    let (code, first) = console_get(&url, &admin, "/executions").await;
    assert_eq!((code, rows(&first)), (200, 100), "the newest 100");
    assert!(first.contains(&ids[105].to_string()) && !first.contains(&ids[5].to_string()));
    let cursor =
        first.split(r#"name="before" value=""#).nth(1).expect("an Older button").split('"').next().unwrap();
    let (_, older) = console_get(&url, &admin, &format!("/executions?status=&action=&before={cursor}")).await;
    assert_eq!(rows(&older), 6, "the rest");
    assert!(
        older.contains(&ids[0].to_string())
            && !older.contains(r#"id="older""#)
            && older.contains(r#"id="newest""#)
    );
    // By time (UTC): since before the first → all of them; since an hour ahead → none.
    let t = |d: chrono::DateTime<chrono::Utc>| d.format("%Y-%m-%dT%H:%M:%S").to_string();
    let (_, since) = console_get(&url, &admin, &format!("/executions?since={}", t(started))).await;
    assert_eq!(rows(&since), 100);
    let later = t(chrono::Utc::now() + chrono::Duration::hours(1));
    let (_, none) = console_get(&url, &admin, &format!("/executions?since={later}")).await;
    assert!(none.contains("No executions match."));
    let (_, until) = console_get(&url, &admin, &format!("/executions?until={}", t(started))).await;
    assert_eq!(rows(&until), 0, "none was created before the test started");
    let (code, bad) = console_get(&url, &admin, "/executions?since=yesterday").await;
    assert_eq!(code, 400);
    assert!(bad.contains("Since: &quot;yesterday&quot; is not a time"), "{bad}");
}

/// Keyboard only: sign in, skip the navigation, fill the action form and run it; every form field
/// of every page has a label; at 390 px wide no page is wider than the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_from_the_keyboard_and_at_phone_width() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let _w = worker("w1", &url, &fast_env(&[]));
    let admin = common::tokens(&url).admin;
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{url}/login")).await;
    assert_eq!(b.focused().await, "token", "the token field has the focus");
    b.press(&format!("{admin}{ENTER}")).await;
    b.wait_text("h1", "the overview after signing in with Enter", |t| t == "Overview").await;
    // The first Tab reaches the skip link; following it puts the focus past the navigation.
    b.goto(&format!("{url}/actions/core.echo")).await;
    b.press(TAB).await;
    assert_eq!(b.focused().await, "Skip to content");
    b.press(ENTER).await;
    let tabs = b.tab_to("p-message", 5).await;
    assert!(tabs <= 2, "the form's first field is right after the skip link's target ({tabs} Tabs)");
    b.press("typed, not clicked").await;
    b.tab_to("run", 5).await;
    b.press(ENTER).await;
    b.wait_ended("succeeded").await;
    assert_eq!(b.text("#log").await, "typed, not clicked");
    b.screenshot("keyboard-run").await;

    // Every page: labelled fields; then the same pages at 390 px.
    let ask = client(&url)
        .create_execution(&attune_wire::CreateExecution {
            action_ref: "core.ask".into(),
            parameters: Some(
                json!({"schema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}),
            ),
            ..Default::default()
        })
        .await
        .unwrap();
    let pages = [
        "/".to_string(),
        "/executions".into(),
        "/actions".into(),
        "/actions/core.echo".into(),
        "/actions/core.local".into(),
        "/automation".into(),
        "/inquiries".into(),
        format!("/inquiries/{}", ask.id),
        format!("/executions/{}", ask.id),
        "/dead-letters".into(),
        "/access".into(),
    ];
    for p in &pages {
        b.goto(&format!("{url}{p}")).await;
        let (unlabelled, _) = b.unlabelled_and_overflow().await;
        assert!(unlabelled.is_empty(), "{p}: fields without a label: {unlabelled:?}");
    }
    drop(b);
    let phone = Browser::start(390, 844).await;
    phone.sign_in(&url, &admin).await;
    for p in &pages {
        phone.goto(&format!("{url}{p}")).await;
        let (_, wider) = phone.unlabelled_and_overflow().await;
        if wider {
            phone.screenshot("phone-too-wide").await;
        }
        assert!(!wider, "{p} is wider than a 390 px screen");
    }
    phone.goto(&format!("{url}/")).await;
    phone.screenshot("phone-overview").await;
}
