//! A stand-in for the public blocklist feeds, which cannot run here: an
//! HTTP/1.1 server (hyper) on 127.0.0.1 inside a test's namespace that
//! speaks APIBan's `banned` call (JSON pages chained by their ID, the end
//! as `{"ipaddress":["no new bans"],"ID":"none"}` with 400, a bad key as
//! ID `unauthorized`) and serves a VoIPBL-shaped text list. Each can be
//! switched to answering 500, garbage or 429, and the whole server
//! stopped (connections refused).
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::netns::NetNs;

/// The APIBan key the double takes.
pub const APIBAN_KEY: &str = "sipguard-test-key";
/// Where the list is served.
pub const LIST_PATH: &str = "/voipbl.txt";
/// The API's base path (`url` of an apiban feed).
pub const API_PATH: &str = "/api/";

/// How a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Good,
    /// 500 Internal Server Error.
    Error500,
    /// 200 with an HTML page (a captive portal, a proxy's error page).
    Garbage,
    /// 429 with Retry-After.
    RateLimited,
}

struct Content {
    list: String,
    /// ID asked with -> (addresses, next ID).
    pages: BTreeMap<String, (Vec<String>, String)>,
    list_mode: Mode,
    api_mode: Mode,
    /// Every path asked, in order (the key replaced by KEY).
    asked: Vec<String>,
}

pub struct FeedServer {
    pub port: u16,
    content: Arc<Mutex<Content>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl FeedServer {
    /// Serves `list` and APIBan `pages` ((ID, addresses, next ID)) on
    /// 127.0.0.1 in `ns`, on `port` (0: any).
    pub fn start(
        ns: &NetNs,
        port: u16,
        list: &str,
        pages: &[(&str, &[&str], &str)],
    ) -> Result<FeedServer> {
        let pages = pages
            .iter()
            .map(|(id, ips, next)| {
                let ips = ips.iter().map(|s| s.to_string()).collect();
                (id.to_string(), (ips, next.to_string()))
            })
            .collect();
        let content = Arc::new(Mutex::new(Content {
            list: list.to_string(),
            pages,
            list_mode: Mode::Good,
            api_mode: Mode::Good,
            asked: Vec::new(),
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let served = Arc::clone(&content);
        let thread = ns.run_in(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(serve(port, served, port_tx, stop_rx)));
            if let Err(e) = served {
                eprintln!("feed server: {e:#}");
            }
        });
        let port = port_rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .context("the feed server did not start")?;
        Ok(FeedServer {
            port,
            content,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_list_mode(&self, mode: Mode) {
        self.content.lock().unwrap().list_mode = mode;
    }

    pub fn set_api_mode(&self, mode: Mode) {
        self.content.lock().unwrap().api_mode = mode;
    }

    /// Adds an APIBan page (a new report after the last cursor).
    pub fn add_page(&self, id: &str, ips: &[&str], next: &str) {
        let ips = ips.iter().map(|s| s.to_string()).collect();
        self.content
            .lock()
            .unwrap()
            .pages
            .insert(id.to_string(), (ips, next.to_string()));
    }

    /// The paths asked so far.
    pub fn asked(&self) -> Vec<String> {
        self.content.lock().unwrap().asked.clone()
    }

    /// Closes the listener: from now on, connections are refused.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    port: u16,
    content: Arc<Mutex<Content>>,
    port_tx: std::sync::mpsc::Sender<u16>,
    mut stop: oneshot::Receiver<()>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    port_tx.send(listener.local_addr()?.port())?;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let content = Arc::clone(&content);
                connections.spawn(async move {
                    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer(&content, request.uri().path());
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    // Open connections close with the listener: the server is gone.
    connections.abort_all();
    Ok(())
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        answer.headers_mut().insert("content-type", value);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        answer
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    }
    answer
}

fn failing(mode: Mode) -> Option<Response<Full<Bytes>>> {
    match mode {
        Mode::Good => None,
        Mode::Error500 => Some(response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "Internal Server Error\n".into(),
        )),
        Mode::Garbage => Some(response(
            StatusCode::OK,
            "text/html",
            "<!DOCTYPE html>\n<html><body><h1>Welcome to our Wi-Fi</h1></body></html>\n".into(),
        )),
        Mode::RateLimited => Some(response(
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            r#"{"ipaddress":"rate limit exceeded","ID":"none"}"#.into(),
        )),
    }
}

fn answer(content: &Mutex<Content>, path: &str) -> Response<Full<Bytes>> {
    let mut content = content.lock().unwrap();
    let json = |status, body: String| response(status, "application/json", body);
    if path == LIST_PATH {
        content.asked.push(path.to_string());
        return failing(content.list_mode)
            .unwrap_or_else(|| response(StatusCode::OK, "text/plain", content.list.clone()));
    }
    let Some(rest) = path.strip_prefix(API_PATH) else {
        return response(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    };
    let mut parts = rest.splitn(3, '/');
    let (key, call, id) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    content.asked.push(format!("{API_PATH}KEY/{call}/{id}"));
    if let Some(failure) = failing(content.api_mode) {
        return failure;
    }
    if key != APIBAN_KEY {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"ipaddress":["unauthorized"],"ID":"unauthorized"}"#.into(),
        );
    }
    if call != "banned" {
        return json(StatusCode::NOT_FOUND, r#"{"ID":"none"}"#.into());
    }
    match content.pages.get(id) {
        Some((ips, next)) => {
            let ips: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
            json(
                StatusCode::OK,
                format!(r#"{{"ipaddress":[{}],"ID":"{next}"}}"#, ips.join(",")),
            )
        }
        None => json(
            StatusCode::BAD_REQUEST,
            r#"{"ipaddress":["no new bans"],"ID":"none"}"#.into(),
        ),
    }
}
