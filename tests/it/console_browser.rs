//! The console in a real browser (issue 20): Debian's Chromium driven through its
//! chromedriver (WebDriver, `fantoccini`) against the real binary. Every screen is driven
//! through its `data-testid`s (API.md §10) and every effect checked through the API; a read
//! key is refused; the browser's console has no error (CSP violations included); the
//! secret is in no URL, cookie, storage or log line. `TAGCAST_CONSOLE_SCREENSHOTS=1` saves
//! a screenshot of each screen into docs/console/ (never by default).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Page, ClientBuilder, Locator};
use serde_json::{Value, json};
use tagcast::config::Config;

use crate::common::*;
use crate::console::{AK_READ, SK_READ, with_read_key};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver of our own on a free loopback port and one headless Chromium session
/// with a fresh profile; both stopped (by PID) when dropped.
struct Browser {
    page: Page,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

/// The browser's log (`goog:loggingPrefs`): chromedriver's `POST /session/{id}/se/log`.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

impl Browser {
    /// `None` (the skip recorded; a failure under CI=true) without Chromium.
    async fn start(width: u32, height: u32) -> Option<Browser> {
        if !crate::skip::require(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "Debian's chromium and chromium-driver (scripts/test installs them)",
        ) {
            return None;
        }
        let port = tagcast::devservers::free_port().unwrap();
        let driver = KillOnDrop::new(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let page = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(page) => break page,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("chromedriver at {url}: {e}"),
            }
        };
        Some(Browser {
            page,
            _driver: driver,
            _profile: profile,
        })
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.wait_for(selector).await
    }

    /// The element `selector` selects, waited for (bounded).
    async fn wait_for(&self, selector: &str) -> fantoccini::elements::Element {
        self.page
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
    }

    async fn testid(&self, id: &str) -> fantoccini::elements::Element {
        self.css(&format!("[data-testid={id}]")).await
    }

    async fn click(&self, id: &str) {
        self.testid(id).await.click().await.unwrap();
    }

    async fn fill(&self, id: &str, text: &str) {
        let e = self.testid(id).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Replaces a text area's whole text the way a paste does (one input event).
    async fn paste(&self, id: &str, text: &str) {
        let e = self.testid(id).await;
        self.page
            .execute(
                "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                vec![serde_json::to_value(&e).unwrap(), json!(text)],
            )
            .await
            .unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.page.execute(script, vec![]).await.unwrap()
    }

    /// Waits (bounded) until `check` of the text of `selector` holds; returns that text.
    async fn text_until(&self, selector: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(e) = self.page.find(Locator::Css(selector)).await
                && let Ok(t) = e.text().await
            {
                if check(&t) {
                    return t;
                }
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{selector}: never {what}; last text {last:?}");
    }

    async fn count(&self, selector: &str) -> usize {
        self.page
            .find_all(Locator::Css(selector))
            .await
            .unwrap()
            .len()
    }

    async fn sign_in(&self, endpoint: &str, ak: &str, sk: &str) {
        self.page
            .goto(&format!("{endpoint}/console/"))
            .await
            .unwrap();
        self.fill("signin-access-key", ak).await;
        self.fill("signin-secret-key", sk).await;
        // The keyboard's way: Enter in the form submits it.
        self.testid("signin-secret-key")
            .await
            .send_keys("\u{E007}")
            .await
            .unwrap();
    }

    async fn screen(&self, id: &str) {
        self.click(&format!("nav-{id}")).await;
        self.testid(&format!("screen-{id}")).await;
    }

    /// Every entry of the browser's console at level SEVERE but the network lines of
    /// answers the test asked to be refused (`allowed` HTTP statuses).
    async fn console_errors(&self, allowed: &[u16]) -> Vec<String> {
        let log = self.page.issue_cmd(BrowserLog).await.unwrap();
        log.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .filter(|m| {
                !allowed
                    .iter()
                    .any(|s| m.contains(&format!("the server responded with a status of {s}")))
            })
            .collect()
    }

    /// With `TAGCAST_CONSOLE_SCREENSHOTS=1` only: docs/console/<name>.png.
    async fn screenshot(&self, name: &str) {
        if std::env::var("TAGCAST_CONSOLE_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.page.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The test accounts with a read key, on the suite's backend, run as the real binary with
/// its log kept.
fn server(dir: &Path, listen: Option<&str>) -> ChildServer {
    let mut c: Config = test_config(dir);
    with_read_key(&mut c);
    if let Some(l) = listen {
        c.listen = l.to_owned();
    }
    ChildServer::spawn_logged(dir, &c, "info")
}

async fn tag(client: &tagcast::call::Client, user: i64, tags: Value) {
    let a = call(
        client,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "Op": 0, "UserTags": [{"UserId": user, "Tags": tags}]}),
    )
    .await;
    assert_eq!(failed_infos(&a), Vec::<Value>::new());
}

#[tokio::test]
async fn an_operator_drives_every_screen_in_chromium_and_each_effect_shows_in_the_api() {
    let Some(b) = Browser::start(1280, 900).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = server(tmp.path(), None);
    let api = s.client();
    register(&api, APP, &[1, 2, 3, 4, 5, 6]).await;
    for (user, level) in [
        (1, "gold"),
        (2, "gold"),
        (3, "gold"),
        (4, "silver"),
        (5, "bronze"),
    ] {
        tag(&api, user, json!({"level": level, "city": "sh"})).await;
    }

    // A wrong secret is refused with the API's Code, and nothing else shows.
    b.sign_in(&s.endpoint, AK, "not-the-secret").await;
    b.text_until("[data-testid=signin-error]", "shows the Code", |t| {
        t.contains("SignatureDoesNotMatch")
    })
    .await;
    b.screenshot("signin").await;
    b.sign_in(&s.endpoint, AK, SK).await;

    // Apps: both of the account's apps, the users of each.
    b.testid("screen-apps").await;
    let row = format!("[data-testid=app-row][data-app-id='{APP}']");
    b.text_until(
        &format!("{row} [data-testid=app-users]"),
        "shows 6 users",
        |t| digits(t) == "6",
    )
    .await;
    assert_eq!(b.count("[data-testid=app-row]").await, 2);
    b.css(&format!("{row} [data-testid=app-choose]"))
        .await
        .click()
        .await
        .unwrap();
    b.text_until("[data-testid=app-select]", "is chosen", |_| true)
        .await;
    let chosen = b.testid("app-select").await.prop("value").await.unwrap();
    assert_eq!(chosen.as_deref(), Some(APP.to_string().as_str()));
    b.screenshot("apps").await;

    // Users: register one, set and delete a tag, each seen through the API.
    b.screen("users").await;
    b.fill("user-search", "555").await;
    b.click("user-search-submit").await;
    b.testid("user-not-registered").await;
    b.click("user-register").await;
    b.click("user-register-confirm").await;
    b.testid("user-profile").await;
    assert_eq!(tags_of(&api, APP, 0, 555).await, Some(vec![]));
    b.fill("tag-key", "level").await;
    b.fill("tag-value", "gold").await;
    b.click("tag-set").await;
    b.text_until("[data-testid=user-tags]", "shows the tag", |t| {
        t.contains("level:gold")
    })
    .await;
    assert_eq!(
        tags_of(&api, APP, 0, 555).await,
        Some(vec!["level:gold".to_owned()])
    );
    b.fill("tag-key", "vip").await;
    b.fill("tag-value", "yes").await;
    b.click("tag-set").await;
    b.text_until("[data-testid=user-tags]", "shows vip", |t| {
        t.contains("vip:yes")
    })
    .await;
    b.screenshot("users").await;
    b.fill("tag-key", "vip").await;
    b.click("tag-delete").await;
    b.text_until("[data-testid=user-tags]", "drops vip", |t| {
        !t.contains("vip:yes")
    })
    .await;
    assert_eq!(
        tags_of(&api, APP, 0, 555).await,
        Some(vec!["level:gold".to_owned()])
    );
    // A tag the API refuses: its Code and Message where the action was.
    b.fill("tag-key", "bad:key").await;
    b.fill("tag-value", "x").await;
    b.click("tag-set").await;
    b.text_until("[data-testid=tag-error]", "shows the refusal", |t| {
        t.contains("InvalidParam")
    })
    .await;

    // Tags: the catalog's counts are ListTags's; a key's values as bars.
    b.screen("tags").await;
    let level = "[data-testid=tag-catalog-row][data-key=level]";
    // Users 1 to 5 and 555.
    b.text_until(
        &format!("{level} [data-testid=tag-catalog-users]"),
        "counts 6 users",
        |t| digits(t) == "6",
    )
    .await;
    b.css(&format!("{level} [data-testid=tag-catalog-choose]"))
        .await
        .click()
        .await
        .unwrap();
    b.text_until(
        "[data-testid=tag-value-row][data-value=gold]",
        "shows gold's 4 users",
        |t| t.contains('4'),
    )
    .await;
    b.screenshot("tags").await;

    // Audience: the exact count of what is typed, an error for a refused filter.
    b.screen("audience").await;
    b.text_until("[data-testid=audience-count]", "counts everyone", |t| {
        digits(t) == "7"
    })
    .await;
    b.paste("audience-filter", r#"{"Tags":["level:gold"],"TagOp":0}"#)
        .await;
    b.text_until("[data-testid=audience-count]", "counts gold", |t| {
        digits(t) == "4"
    })
    .await;
    b.paste(
        "audience-filter",
        r#"{"Filter":{"And":[{"Tag":"level:gold"},{"Not":{"Tag":"city:sh"}}]}}"#,
    )
    .await;
    b.text_until("[data-testid=audience-count]", "counts the tree", |t| {
        digits(t) == "1"
    })
    .await;
    let counted = ok(&call(
        &api,
        "CountAudience",
        json!({"AppId": APP, "Filter": {"And": [{"Tag": "level:gold"}, {"Not": {"Tag": "city:sh"}}]}}),
    )
    .await);
    assert_eq!(counted["Count"], 1);
    b.paste("audience-filter", r#"{"Filter":{"Tag":":x"}}"#)
        .await;
    b.text_until("[data-testid=audience-error]", "shows why", |t| {
        !t.is_empty()
    })
    .await;
    b.paste("audience-filter", r#"{"Tags":["level:gold"],"TagOp":0}"#)
        .await;
    b.text_until("[data-testid=audience-count]", "counts gold again", |t| {
        digits(t) == "4"
    })
    .await;
    b.screenshot("audience").await;

    // Composer: the confirm step shows the count and the quota, then the send.
    b.fill("broadcast-content", r#"{"text":"from the console"}"#)
        .await;
    b.click("broadcast-send").await;
    let confirm = b
        .text_until(".confirm", "shows the count", |t| t.contains('4'))
        .await;
    assert!(confirm.contains("Quota left today"), "{confirm}");
    b.click("broadcast-confirm").await;
    // The result's element is there (hidden) from the start: wait for its text.
    b.text_until("[data-testid=broadcast-result]", "says sent", |t| {
        t.contains("Sent broadcast")
    })
    .await;
    let listed = ok(&call(&api, "ListBroadcasts", json!({"AppId": APP})).await);
    let sent = listed["Broadcasts"].as_array().unwrap();
    assert_eq!(sent.len(), 1, "{listed}");
    assert_eq!(sent[0]["AudienceCount"], 4, "{listed}");
    assert_eq!(
        sent[0]["Content"], r#"{"text":"from the console"}"#,
        "{listed}"
    );
    let id = sent[0]["BroadcastId"].as_str().unwrap().to_owned();

    // Broadcasts: the row, its delivery, recall with an in-page confirm.
    b.screen("broadcasts").await;
    let row = format!("[data-testid=broadcast-row][data-broadcast-id='{id}']");
    b.css(&format!("{row} [data-testid=broadcast-delivery]"))
        .await;
    b.screenshot("broadcasts").await;
    b.css(&format!("{row} [data-testid=broadcast-recall]"))
        .await
        .click()
        .await
        .unwrap();
    b.css(&format!("{row} [data-testid=broadcast-recall-confirm]"))
        .await
        .click()
        .await
        .unwrap();
    b.text_until(
        &format!("{row} [data-testid=broadcast-status]"),
        "says recalled",
        |t| t.contains("recalled"),
    )
    .await;
    let got = ok(&call(
        &api,
        "GetBroadcast",
        json!({"AppId": APP, "BroadcastId": id}),
    )
    .await);
    assert_eq!(got["Broadcast"]["Recalled"], true, "{got}");

    // Events: the audit trail of the console's own writes, then a new one followed.
    b.screen("events").await;
    b.text_until(
        "[data-testid=event-list]",
        "shows the console's writes",
        |t| t.contains("user.registered") && t.contains("555") && t.contains("broadcast.recalled"),
    )
    .await;
    let before = b.count("[data-testid=event-row]").await;
    tag(&api, 6, json!({"level": "new"})).await;
    b.text_until("[data-testid=event-list]", "follows the new write", |t| {
        t.contains("level")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.count("[data-testid=event-row]").await <= before {
        assert!(Instant::now() < deadline, "the followed event never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.screenshot("events").await;

    // Unregister, through its confirm.
    b.screen("users").await;
    b.fill("user-search", "555").await;
    b.click("user-search-submit").await;
    b.click("user-unregister").await;
    b.click("user-unregister-confirm").await;
    b.testid("user-not-registered").await;
    assert_eq!(tags_of(&api, APP, 0, 555).await, None);

    // The secret is in no URL, cookie or storage of the page, nor in any log line.
    let kept = b
        .js("return [location.href, document.cookie, JSON.stringify(localStorage), JSON.stringify(sessionStorage), document.documentElement.outerHTML].join('\\n');")
        .await;
    assert!(
        !kept.as_str().unwrap().contains(SK),
        "the secret is kept in the page"
    );
    let errors = b.console_errors(&[400, 401]).await;
    assert_eq!(errors, Vec::<String>::new(), "the browser's console");

    // Sign-out forgets the key: the sign-in form is back, empty.
    b.click("signout").await;
    b.testid("signin-submit").await;
    let secret = b
        .testid("signin-secret-key")
        .await
        .prop("value")
        .await
        .unwrap();
    assert_eq!(secret.as_deref(), Some(""));
    assert!(b.count("[data-testid=screen-apps]").await == 0);
    drop(b);
    let log = s.log.lock().unwrap().clone();
    assert!(
        log.iter().any(|l| l.contains("ListApps")),
        "the log has the console's calls"
    );
    assert!(
        log.iter().all(|l| !l.contains(SK)),
        "a log line holds the secret"
    );
}

#[tokio::test]
async fn a_read_key_sees_write_controls_disabled_and_the_server_refuses_its_writes() {
    let Some(b) = Browser::start(1280, 900).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = server(tmp.path(), None);
    let api = s.client();
    register(&api, APP, &[7]).await;
    b.sign_in(&s.endpoint, AK_READ, SK_READ).await;
    b.text_until("[data-testid=signed-in-as]", "names the role", |t| {
        t.contains("read")
    })
    .await;
    b.page
        .find(Locator::Css("[data-testid=app-select]"))
        .await
        .unwrap()
        .select_by_value(&APP.to_string())
        .await
        .unwrap();
    b.screen("users").await;
    b.fill("user-search", "7").await;
    b.click("user-search-submit").await;
    b.testid("user-profile").await;
    b.testid("read-only-note").await;
    for id in ["tag-set", "tag-delete", "user-unregister"] {
        assert!(
            !b.testid(id).await.is_enabled().await.unwrap(),
            "{id} is disabled"
        );
    }
    // Forced on in the page, the write is still refused by the server: AccessDenied.
    b.fill("tag-key", "level").await;
    b.fill("tag-value", "gold").await;
    b.js("document.querySelector('[data-testid=tag-set]').disabled = false;")
        .await;
    b.click("tag-set").await;
    b.text_until("[data-testid=tag-error]", "says AccessDenied", |t| {
        t.contains("AccessDenied") && t.contains("role is read")
    })
    .await;
    assert_eq!(tags_of(&api, APP, 0, 7).await, Some(vec![]));
    b.screen("audience").await;
    b.text_until("[data-testid=audience-count]", "counts (a read)", |t| {
        digits(t) == "1"
    })
    .await;
    assert!(!b.testid("broadcast-send").await.is_enabled().await.unwrap());
    let errors = b.console_errors(&[403]).await;
    assert_eq!(errors, Vec::<String>::new(), "the browser's console");
}

#[tokio::test]
async fn on_a_phone_sized_screen_the_console_fits_and_keeps_working_across_a_server_restart() {
    let Some(b) = Browser::start(390, 844).await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let s = server(tmp.path(), None);
    let api = s.client();
    register(&api, APP, &[8]).await;
    tag(&api, 8, json!({"level": "gold"})).await;
    b.sign_in(&s.endpoint, AK, SK).await;
    b.testid("screen-apps").await;
    b.page
        .find(Locator::Css("[data-testid=app-select]"))
        .await
        .unwrap()
        .select_by_value(&APP.to_string())
        .await
        .unwrap();
    for screen in ["apps", "users", "tags", "audience", "broadcasts", "events"] {
        b.screen(screen).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fits = b
            .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
            .await;
        assert_eq!(fits, json!(true), "{screen} scrolls sideways at 390 px");
    }
    b.screen("users").await;
    b.fill("user-search", "8").await;
    b.click("user-search-submit").await;
    b.text_until("[data-testid=user-tags]", "shows the tag", |t| {
        t.contains("level:gold")
    })
    .await;

    // The server restarts on the same address; the page, still signed in, goes on.
    let addr = s.endpoint.trim_start_matches("http://").to_owned();
    assert!(s.terminate().success());
    let s = server(tmp.path(), Some(&addr));
    tag(&s.client(), 8, json!({"level": "silver"})).await;
    b.click("user-search-submit").await;
    b.text_until("[data-testid=user-tags]", "shows the new tag", |t| {
        t.contains("level:silver")
    })
    .await;
    drop(s);
}
