//! Feeds through the runtime, over in-memory maps: a list read from a file
//! (good, then garbage, gone, and good again), and APIBan's pages from a
//! stand-in on 127.0.0.1 (cursor, bad key, rate limit, expiry, restart).
use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::{config::FeedSection, Feed, FeedError, Store};
use crate::{
    fleet::{
        feeds::apiban::PageError,
        health::{Origin, SourceHealth},
        http::Http,
    },
    kernel::fake::FakeMaps,
    runtime::{bans::BanOrigin, Runtime},
    state::StateDir,
};

struct Site {
    runtime: Arc<Runtime>,
    maps: FakeMaps,
    dir: PathBuf,
    config: crate::policy::config::Config,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Site {
    /// A runtime whose config is `toml`; `dir` is kept (a restart).
    fn new(dir: &Path, toml: &str) -> Site {
        let (runtime, maps, config) = crate::runtime::fake_runtime(dir, toml);
        Site {
            runtime: Arc::new(runtime),
            maps,
            dir: dir.to_path_buf(),
            config,
        }
    }

    fn feed(&self, store: &Store) -> Feed {
        let section: FeedSection = self.config.feeds[0].clone();
        let key = section.api_key().unwrap();
        Feed::new(
            section,
            key,
            Http::new().unwrap(),
            Arc::clone(&self.runtime),
            store.clone(),
        )
        .unwrap()
    }

    fn store(&self) -> Store {
        let state = StateDir::open(&self.dir.join("state")).unwrap();
        Store::new(state.load_feeds(1000).unwrap())
    }

    fn nets(&self) -> Vec<String> {
        self.maps
            .state()
            .fleet
            .keys()
            .map(|n| n.to_string())
            .collect()
    }

    fn health(&self) -> SourceHealth {
        self.runtime.counters().fleet_health.rows().remove(0)
    }

    /// Restarts on the same state directory: the saved fleet deny set back.
    async fn restart(self, toml: &str) -> Site {
        let saved = StateDir::open(&self.dir.join("state"))
            .unwrap()
            .load_fleet(1000)
            .unwrap();
        let dir = self.dir.clone();
        std::mem::forget(self);
        let site = Site::new(&dir, toml);
        site.runtime.restore_fleet(saved, |_| true).await.unwrap();
        site
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sipguard-feeds-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn a_file_list_is_applied_and_its_last_good_list_kept() {
    let dir = temp_dir("file");
    let list = dir.join("drop.txt");
    let toml = format!(
        "[[allow]]\ncidr = \"192.0.2.100/32\"\n\n[[feeds]]\nname = \"local\"\nkind = \"list\"\n\
         file = \"{}\"\nrefresh = \"10s\"\n",
        list.display()
    );
    let site = Site::new(&dir, &toml);
    std::fs::write(
        &list,
        "# ours\n192.0.2.7\n198.51.100.0/24 ; scanners\nbad line\n10.0.0.1\n",
    )
    .unwrap();
    let store = site.store();
    let mut feed = site.feed(&store);
    assert_eq!(
        feed.start().await,
        Duration::ZERO,
        "nothing saved: ask at once"
    );
    feed.refresh().await.unwrap();
    assert_eq!(site.nets(), ["192.0.2.7/32", "198.51.100.0/24"]);
    let health = site.health();
    assert_eq!((health.entries, health.skipped, health.failing), (2, 2, 0));
    assert_eq!(health.origin, Origin::Feed);

    // Garbage, mostly bad lines, a vanished file: each keeps the list.
    let bad = [
        "<html><body>Not Found</body></html>\n",
        "error\nplease retry\n192.0.2.9\n",
    ];
    for text in bad {
        std::fs::write(&list, text).unwrap();
        let e = feed.refresh().await.unwrap_err();
        assert!(matches!(e, FeedError::NotAList(..)), "{e}");
        assert_eq!(site.nets(), ["192.0.2.7/32", "198.51.100.0/24"]);
    }
    std::fs::remove_file(&list).unwrap();
    let e = feed.refresh().await.unwrap_err();
    assert!(e.to_string().contains("drop.txt"), "{e}");
    assert_eq!(site.nets(), ["192.0.2.7/32", "198.51.100.0/24"]);

    // A good list again replaces it; the allow-listed entry is held but
    // spared by the verdict.
    std::fs::write(&list, "192.0.2.8\n192.0.2.100\n").unwrap();
    feed.refresh().await.unwrap();
    assert_eq!(site.nets(), ["192.0.2.8/32", "192.0.2.100/32"]);
    let why = site
        .runtime
        .explain("192.0.2.8".parse().unwrap())
        .await
        .unwrap();
    assert!(
        why.verdicts[0]
            .because
            .contains("192.0.2.8/32 (feed local)"),
        "{why:?}"
    );
    let rows = site.runtime.bans_by(Some(BanOrigin::Feed)).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].detail.as_str(), rows[0].listed),
        ("feed local", true)
    );
    assert!(site
        .runtime
        .bans_by(Some(BanOrigin::Crowdsec))
        .await
        .unwrap()
        .is_empty());
    assert!(
        site.runtime.bans_by(None).await.unwrap().is_empty(),
        "no ban-map rows"
    );

    // A local file may be emptied on purpose.
    std::fs::write(&list, "# nothing\n").unwrap();
    feed.refresh().await.unwrap();
    assert!(site.nets().is_empty());

    // Saved: a restart holds the list and waits for the refresh to be due.
    std::fs::write(&list, "192.0.2.9\n").unwrap();
    feed.refresh().await.unwrap();
    let site = site.restart(&toml).await;
    assert_eq!(site.nets(), ["192.0.2.9/32"]);
    let store = site.store();
    let mut feed = site.feed(&store);
    let wait = feed.start().await;
    assert!(wait > Duration::from_secs(5), "{wait:?}");
    assert_eq!(site.health().entries, 1);
}

/// APIBan's stand-in: pages by ID, a key, and a switch to 429.
#[derive(Default)]
struct Apiban {
    pages: BTreeMap<String, (Vec<String>, String)>,
    limited: bool,
    asked: Vec<String>,
}

async fn serve_apiban(apiban: Arc<StdMutex<Apiban>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let apiban = Arc::clone(&apiban);
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let answer = answer(&apiban, request.uri().path());
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

fn answer(apiban: &StdMutex<Apiban>, path: &str) -> Response<Full<Bytes>> {
    let mut apiban = apiban.lock().unwrap();
    apiban.asked.push(path.to_string());
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if apiban.limited {
        let mut r = reply(StatusCode::TOO_MANY_REQUESTS, String::new());
        r.headers_mut().insert(
            "retry-after",
            hyper::header::HeaderValue::from_static("900"),
        );
        return r;
    }
    let Some(id) = path.strip_prefix("/api/good-key/banned/") else {
        return reply(
            StatusCode::BAD_REQUEST,
            r#"{"ipaddress":["unauthorized"],"ID":"unauthorized"}"#.into(),
        );
    };
    match apiban.pages.get(id) {
        Some((ips, next)) => reply(
            StatusCode::OK,
            serde_json::json!({"ipaddress": ips, "ID": next}).to_string(),
        ),
        None => reply(
            StatusCode::BAD_REQUEST,
            r#"{"ipaddress":["no new bans"],"ID":"none"}"#.into(),
        ),
    }
}

fn apiban_toml(port: u16, key: &str) -> String {
    format!(
        "[[feeds]]\nname = \"apiban\"\nkind = \"apiban\"\nurl = \"http://127.0.0.1:{port}/api\"\n\
         key = \"{key}\"\nrefresh = \"10s\"\n"
    )
}

#[tokio::test]
async fn apiban_pages_follow_the_cursor_expire_and_restart_where_they_were() {
    let stand_in = Arc::new(StdMutex::new(Apiban::default()));
    let page = |id: &str, ips: &[&str], next: &str| {
        let ips = ips.iter().map(|s| s.to_string()).collect();
        stand_in
            .lock()
            .unwrap()
            .pages
            .insert(id.to_string(), (ips, next.to_string()));
    };
    page("100", &["192.0.2.1", "192.0.2.2", "nonsense"], "5");
    let port = serve_apiban(Arc::clone(&stand_in)).await;
    let dir = temp_dir("apiban");
    let toml = apiban_toml(port, "good-key");
    let site = Site::new(&dir, &toml);
    let store = site.store();
    let mut feed = site.feed(&store);
    feed.start().await;
    feed.refresh().await.unwrap();
    assert_eq!(site.nets(), ["192.0.2.1/32", "192.0.2.2/32"]);
    assert_eq!(
        stand_in.lock().unwrap().asked,
        ["/api/good-key/banned/100", "/api/good-key/banned/5"]
    );
    assert_eq!(feed.saved.cursor.as_deref(), Some("5"));

    // New reports after the cursor: asked from it, added to the rest.
    page("5", &["192.0.2.3"], "6");
    feed.refresh().await.unwrap();
    assert_eq!(
        site.nets(),
        ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"]
    );
    assert_eq!(feed.saved.cursor.as_deref(), Some("6"));
    assert!(!stand_in.lock().unwrap().asked[2..].contains(&"/api/good-key/banned/100".to_string()));

    // A rate limit: nothing changes, the wait honours Retry-After.
    stand_in.lock().unwrap().limited = true;
    match feed.refresh().await {
        Err(FeedError::RateLimited(wait)) => assert_eq!(wait, Duration::from_secs(900)),
        other => panic!("{other:?}"),
    }
    assert_eq!(site.nets().len(), 3);
    stand_in.lock().unwrap().limited = false;

    // An address APIBan listed more than `lifetime` ago leaves.
    let net = "192.0.2.1/32".parse().unwrap();
    feed.seen
        .insert(net, crate::state::unix_now() - 8 * 24 * 3600);
    feed.refresh().await.unwrap();
    assert_eq!(site.nets(), ["192.0.2.2/32", "192.0.2.3/32"]);

    // A restart takes up the saved cursor and times.
    let site = site.restart(&toml).await;
    let store = site.store();
    let mut feed = site.feed(&store);
    feed.start().await;
    assert_eq!(site.nets(), ["192.0.2.2/32", "192.0.2.3/32"]);
    page("6", &["192.0.2.4"], "7");
    feed.refresh().await.unwrap();
    assert_eq!(site.nets().len(), 3);
    assert_eq!(
        stand_in.lock().unwrap().asked.last().map(String::as_str),
        Some("/api/good-key/banned/7")
    );

    // A refused key is said so, and changes nothing.
    let site = site.restart(&apiban_toml(port, "bad-key")).await;
    let store = site.store();
    let mut feed = site.feed(&store);
    feed.start().await;
    let e = feed.refresh().await.unwrap_err();
    assert!(
        matches!(e, FeedError::Apiban(PageError::Unauthorized)),
        "{e}"
    );
    assert_eq!(site.nets().len(), 3);
}
