//! The web client in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver) with fantoccini. One chromedriver and
//! one test run every scenario in turn, since each Chromium is heavy on a
//! small machine. Every wait polls the page's DOM with a bound; nothing
//! sleeps for a fixed time.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use serde_json::{json, Value};

const USERS: &[(&str, &str)] = &[("alice", "pw-a"), ("bob", "pw-b"), ("carol", "pw-c")];

/// How long a page gets to show what a test waits for. Generous: Chromium
/// on a loaded 2-core machine can take seconds to start and render.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// chromedriver on a port it picked, killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let mut child = Command::new("/usr/bin/chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/chromedriver (apt-get install chromium chromium-driver)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let _ = tx.send(rest.trim_end_matches('.').trim().to_owned());
                }
            }
        });
        let port = rx
            .recv_timeout(START_TIMEOUT)
            .expect("chromedriver did not say its port");
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One headless Chromium with one page, in a fresh profile.
struct Page {
    rt: Arc<tokio::runtime::Runtime>,
    wd: Option<WebDriver>,
    name: &'static str,
    _profile: tempfile::TempDir,
}

impl Page {
    fn open(
        driver: &ChromeDriver,
        rt: &Arc<tokio::runtime::Runtime>,
        name: &'static str,
        url: &str,
        size: (u32, u32),
    ) -> Page {
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--no-first-run".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={},{}", size.0, size.1),
        ];
        let caps = json!({
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let wd = rt.block_on(async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let wd = ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&driver.url)
                .await
                .expect("a Chromium session");
            wd.set_window_size(size.0, size.1).await.unwrap();
            wd.goto(url).await.unwrap();
            wd
        });
        Page {
            rt: Arc::clone(rt),
            wd: Some(wd),
            name,
            _profile: profile,
        }
    }

    fn wd(&self) -> &WebDriver {
        self.wd.as_ref().unwrap()
    }

    /// Runs `script` (a function body; `return` gives the value).
    fn js(&self, script: &str) -> Value {
        self.rt
            .block_on(self.wd().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    /// Polls `script` until it returns something truthy, and returns it.
    fn wait(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let v = self.js(script);
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() >= deadline {
                let log = self.js("return document.querySelector('#messages')?.innerText ?? ''");
                let state = self.js("return document.body.dataset.state");
                panic!(
                    "{}: timed out after {PAGE_TIMEOUT:?} waiting for {what} (state {state}); messages:\n{}",
                    self.name,
                    log.as_str().unwrap_or("")
                );
            }
            // A poll of the DOM, bounded by PAGE_TIMEOUT: not a sync sleep.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fill(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.wd().find(Locator::Css(css)).await.unwrap();
            e.clear().await.unwrap();
            e.send_keys(text).await.unwrap();
        });
    }

    fn click(&self, css: &str) {
        self.rt.block_on(async {
            self.wd()
                .find(Locator::Css(css))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        });
    }

    fn login(&self, user: &str, password: &str) {
        self.wait(
            "the login form",
            "return document.querySelector('input[name=username]') !== null",
        );
        self.fill("input[name=username]", user);
        self.fill("input[name=password]", password);
        self.click("#login button[type=submit]");
        self.wait_online();
    }

    fn wait_online(&self) {
        self.wait(
            "logged in",
            "return document.body.dataset.state === 'online' && !document.querySelector('#chat-view').hidden",
        );
    }

    /// Types a command line and sends it.
    fn command(&self, line: &str) {
        self.fill("input[name=line]", line);
        self.click("#command button[type=submit]");
    }

    /// Waits until the log shows a line containing `text`.
    fn wait_text(&self, text: &str) {
        let script = format!(
            "return [...document.querySelectorAll('#messages li')].some(li => li.textContent.includes({}))",
            json!(text)
        );
        self.wait(&format!("{text:?} in the log"), &script);
    }

    /// The message element with this text: its class and data-id.
    fn message(&self, text: &str) -> (String, String) {
        let script = format!(
            "const li = [...document.querySelectorAll('#messages li[data-id]')]
                 .find(li => li.querySelector('.text').textContent === {});
             return li ? [li.className, li.dataset.id] : null",
            json!(text)
        );
        let v = self.wait(&format!("message {text:?}"), &script);
        (v[0].as_str().unwrap().into(), v[1].as_str().unwrap().into())
    }

    fn count(&self, css: &str) -> u64 {
        let script = format!("return document.querySelectorAll({}).length", json!(css));
        self.js(&script).as_u64().unwrap()
    }

    fn screenshot(&self, path: &std::path::Path) {
        let png = self.rt.block_on(self.wd().screenshot()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Some(wd) = self.wd.take() {
            let _ = self.rt.block_on(wd.close());
        }
    }
}

/// A page on another origin that tries to open the chat server's `/ws`,
/// served from a port of its own (another port is another origin).
fn foreign_page(web: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let html = format!(
        "<!doctype html><title>elsewhere</title><p id=result>pending</p><script>\n\
         const w = new WebSocket('ws://{web}/ws');\n\
         w.onopen = () => {{ document.getElementById('result').textContent = 'open'; }};\n\
         w.onerror = () => {{ document.getElementById('result').textContent = 'refused'; }};\n\
         </script>"
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    addr
}

#[test]
fn the_web_client_in_chromium() {
    let mut server = TestServer::with(USERS, &[]);
    let web = server.web_addr().expect("web listener");
    let url = format!("http://{web}/");
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    );
    let driver = ChromeDriver::start();
    let alice = Page::open(&driver, &rt, "alice", &url, (1000, 640));
    let carol = Page::open(&driver, &rt, "carol", &url, (390, 640));

    // --- Two pages and a TCP client chat with one another.
    alice.login("alice", "pw-a");
    carol.login("carol", "pw-c");
    let mut bob = server.login("bob", "pw-b");

    alice.command("message carol are you coming tonight?");
    alice.wait_text("delivered to carol");
    let (class, _) = carol.message("are you coming tonight?");
    assert_eq!(class, "private");

    carol.command("broadcast hello everyone");
    let (class, id) = alice.message("hello everyone");
    assert_eq!(class, "broadcast", "someone else's broadcast");
    let (class, _) = carol.message("hello everyone");
    assert_eq!(class, "broadcast own", "her own broadcast is marked");
    let d = bob.expect_delivery();
    assert_eq!(
        (d.from.as_str(), d.text.as_str(), d.id.to_string()),
        ("carol", "hello everyone", id)
    );

    bob.send("message alice hi from the terminal");
    bob.expect("OK message alice delivered");
    let (class, _) = alice.message("hi from the terminal");
    assert_eq!(class, "private");

    alice.command("whoelse");
    alice.wait_text("online: bob, carol");
    alice.wait(
        "the online panel",
        "return [...document.querySelectorAll('#online button')].map(b => b.textContent).join(',') === 'bob,carol'",
    );
    // Clicking a name starts a message to them.
    alice.click("#online li:nth-child(2) button");
    let line = alice.js("return document.querySelector('input[name=line]').value");
    assert_eq!(line, json!("message carol "));
    alice.command("message carol see you at 8");
    carol.message("see you at 8");
    carol.command("message alice great, see you!");
    alice.message("great, see you!");

    // --- Markup from the network stays text.
    let xss = "<img src=x onerror=alert(1)>";
    bob.send(&format!("message alice {xss}"));
    bob.expect("OK message alice delivered");
    alice.message(xss);
    assert_eq!(
        alice.count("#messages img"),
        0,
        "no element made from a message"
    );
    assert!(
        alice.rt.block_on(alice.wd().get_alert_text()).is_err(),
        "no alert is open"
    );

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    alice.screenshot(&shots.join("web-alice.png"));
    carol.screenshot(&shots.join("web-carol.png"));

    // --- Busy and online.
    carol.click("#busy");
    carol.wait("the busy state", "return document.body.dataset.busy === 'true' && document.querySelector('#busy').getAttribute('aria-pressed') === 'true'");
    bob.send("message carol are you there?");
    bob.expect("OK message carol queued busy");
    let before = carol.count("#messages li[data-id]");
    carol.command("whoelse");
    carol.wait_text("online: alice, bob");
    assert_eq!(
        carol.count("#messages li[data-id]"),
        before,
        "held while busy"
    );
    carol.command("online");
    carol.message("are you there?");
    carol.wait(
        "the online state",
        "return document.body.dataset.busy === 'false'",
    );

    // --- A page on another origin cannot open the chat's WebSocket.
    let elsewhere = Page::open(
        &driver,
        &rt,
        "elsewhere",
        &format!("http://{}/", foreign_page(web)),
        (600, 400),
    );
    let result = elsewhere.wait(
        "the foreign page's verdict",
        "const r = document.getElementById('result').textContent; return r === 'pending' ? null : r",
    );
    assert_eq!(result, json!("refused"));
    assert!(server
        .stderr()
        .contains("refused a WebSocket from another origin"));
    drop(elsewhere);

    // --- A restart of chatd while a page is open: the page logs in again
    // and the message held meanwhile shows once.
    alice.command("busy");
    alice.wait("alice busy", "return document.body.dataset.busy === 'true'");
    bob.send("message alice held across the restart");
    bob.expect("OK message alice queued busy");
    let shown = alice.count("#messages li[data-id]");
    // The same web port after the restart, so the page finds the server.
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    std::fs::write(
        server.config_path(),
        config.replace("http_port = 0", &format!("http_port = {}", web.port())),
    )
    .unwrap();
    drop(bob);
    server.restart();
    assert_eq!(server.web_addr(), Some(web));
    alice.wait(
        "the page to notice and log in again",
        "return document.body.dataset.state === 'online' && [...document.querySelectorAll('#messages li')].some(li => li.textContent.includes('connection lost'))",
    );
    let (class, _) = alice.message("held across the restart");
    assert_eq!(class, "private");
    // Carol's page reconnects on its own backoff, which may take longer
    // than alice's: wait for it, so that the whoelse below has her.
    carol.wait(
        "carol's page to log in again",
        "return document.body.dataset.state === 'online' && [...document.querySelectorAll('#messages li')].some(li => li.textContent.includes('connection lost'))",
    );
    // Let anything redelivered arrive (a whoelse answered proves the
    // server sent everything before it), then count.
    alice.command("whoelse");
    alice.wait_text("online: carol");
    assert_eq!(
        alice.count("#messages li[data-id]"),
        shown + 1,
        "each message once"
    );
    assert_eq!(
        alice.js("return document.body.dataset.busy"),
        json!("false"),
        "busy ends with the session"
    );
}
