//! The web dashboard in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against `datamesh serve --webdav` on six storage
//! peers. The page must show the peers and live graphs at 1280×800 and on a
//! 390-px phone without sideways scrolling, load nothing from elsewhere, show
//! a peer's death, and work without JavaScript. Screenshots are kept in
//! `target/test-artifacts/`.

use fantoccini::{Client, ClientBuilder};
use fs_tests::{Cluster, Volume, have, sh};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver on a free port, killed when dropped.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Driver {
        let port = fs_tests::free_ports(1);
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the browser tests can run here (else says why they are skipped).
fn browser_tools() -> bool {
    let all = have("chromium") && have("chromedriver") && have("curl");
    if !all {
        eprintln!(
            "skipped: chromium, chromedriver or curl is missing (scripts/setup.sh installs them)"
        );
    }
    all
}

async fn browser(driver: &Driver) -> Client {
    browser_saving_to(driver, None).await
}

/// A session whose downloads land in `downloads`, without asking.
async fn browser_saving_to(driver: &Driver, downloads: Option<&std::path::Path>) -> Client {
    let mut caps = serde_json::Map::new();
    let mut options = json!({
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--window-size=1280,800"],
    });
    if let Some(d) = downloads {
        options["prefs"] = json!({
            "download.default_directory": d.display().to_string(),
            "download.prompt_for_download": false,
        });
    }
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a chromium session")
}

/// Evaluates `expr` in the page.
async fn eval(c: &Client, expr: &str) -> serde_json::Value {
    c.execute(&format!("return ({expr});"), vec![])
        .await
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// Waits until `expr` is true in the page.
async fn until(c: &Client, expr: &str, what: &str) {
    let start = Instant::now();
    loop {
        if eval(c, expr).await == json!(true) {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let text = eval(c, "document.body.innerText").await;
            panic!("{what}: `{expr}` never held; the page says:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn artifact(name: &str) -> std::path::PathBuf {
    let dir = fs_tests::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// What the page must be at any width: the peers listed, both graphs drawn
/// with a line, nothing loaded from another origin, no sideways scrolling.
async fn check_layout(c: &Client, width: u32, shot: &str) {
    until(
        c,
        "document.body.dataset.live === 'yes'",
        "the script refreshed the page",
    )
    .await;
    until(
        c,
        "document.querySelectorAll('li.peer').length === 6",
        "six peers listed",
    )
    .await;
    until(
        c,
        "[...document.querySelectorAll('svg.chart polyline.read')]\
            .some(p => p.getAttribute('points').split(' ').length > 3)",
        "a throughput line drawn",
    )
    .await;
    assert_eq!(
        eval(c, "document.querySelectorAll('svg.chart').length").await,
        json!(2)
    );
    assert_eq!(
        eval(c, "window.innerWidth").await,
        json!(width),
        "the window is {width} px wide"
    );
    assert_eq!(
        eval(
            c,
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        .await,
        json!(true),
        "no sideways scrolling at {width} px"
    );
    assert_eq!(
        eval(
            c,
            "performance.getEntriesByType('resource').every(e => e.name.startsWith(location.origin))"
        )
        .await,
        json!(true),
        "everything comes from the daemon"
    );
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    std::fs::write(artifact(shot), png).unwrap();
}

#[test]
fn the_dashboard_shows_peers_health_and_live_graphs_in_a_browser() {
    if !browser_tools() {
        return;
    }
    let v = Volume::new();
    let mut c = Cluster::start(&v, 6);
    let addr = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    let d = v.serve_with(&c.bootstrap_flags(), &["--webdav", &addr]);
    let url = format!("http://{addr}/");
    let dir = v.dir.path();

    // Without JavaScript: the numbers are in the page itself, and it says
    // where to mount the volume.
    sh(dir, "head -c 30000000 /dev/urandom > big.bin");
    sh(dir, &format!("curl -sf -T big.bin {url}dav/big.bin"));
    let start = Instant::now();
    let page = loop {
        let page = sh(dir, &format!("curl -sf {url}"));
        if page.matches("class=\"peer\"").count() == 6 && page.contains("to spare") {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the page never showed 6 peers and the volume's health:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(page.contains("href=\"dav/\""), "{page}");
    assert!(page.contains("6 of 6 reachable"), "{page}");
    assert!(page.contains("survives any 2 storage peers lost"), "{page}");
    let headers = sh(dir, &format!("curl -sfI {url}"));
    assert!(
        headers
            .to_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{headers}"
    );
    let json = sh(dir, &format!("curl -sf {url}dashboard.json"));
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["peers"]["Ok"].as_array().unwrap().len(), 6);
    assert_eq!(json["usage"]["Ok"]["files"], 1);

    // Reads while the browser looks, so the graphs have something to draw.
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (reading, url, dir) = (reading.clone(), url.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                // Not asserted: the last one may meet the daemon stopping.
                let _ = Command::new("curl")
                    .args(["-sf", &format!("{url}dav/big.bin"), "-o", "/dev/null"])
                    .current_dir(&dir)
                    .status();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };

    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = browser(&driver).await;
        b.goto(&url).await.unwrap();
        check_layout(&b, 1280, "dashboard-1280x800.png").await;
        // A phone.
        set_width(&b, 390, 844).await;
        check_layout(&b, 390, "dashboard-390-phone.png").await;
        b.set_window_size(1280, 800).await.unwrap();

        // A peer dies: the open page says so by itself.
        c.kill(5);
        until(
            &b,
            "document.querySelectorAll('li.peer .badge.bad').length === 1",
            "the dead peer shown unreachable",
        )
        .await;
        until(
            &b,
            "document.body.innerText.includes('5 of 6 reachable')",
            "the peer count",
        )
        .await;
        // And the health with it: every chunk lost a shard, one more loss
        // is survivable (surveyed again as soon as the peers changed).
        until(
            &b,
            "document.querySelector('.health .big').innerText === '1 to spare'",
            "the health after the loss",
        )
        .await;

        // The daemon stops: the page says it does not answer.
        reading.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(d.stop(), "serve ends cleanly");
        until(
            &b,
            "document.body.dataset.live === 'no'",
            "the page noticed the daemon is gone",
        )
        .await;
        b.close().await.unwrap();
    });
    reader.join().unwrap();
    eprintln!(
        "screenshots: {} and {}",
        artifact("dashboard-1280x800.png").display(),
        artifact("dashboard-390-phone.png").display()
    );
}

/// Sets the window's inner width to `width` (the frame counts in
/// set_window_size) and reloads.
async fn set_width(b: &Client, width: u32, height: u32) {
    b.set_window_size(width, height).await.unwrap();
    let inner = eval(b, "window.innerWidth").await.as_u64().unwrap() as u32;
    if inner != width {
        b.set_window_size(width + width.saturating_sub(inner), height)
            .await
            .unwrap();
    }
    b.refresh().await.unwrap();
}

/// Clicks the first element `css` finds.
async fn click(b: &Client, css: &str) {
    b.find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Types `text` into the field `css` finds, after clearing it.
async fn type_into(b: &Client, css: &str, text: &str) {
    let e = b
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

/// A person with only a browser uses the files: the listing (folders
/// first, breadcrumbs), a new folder, uploads by the picker (with progress)
/// and by drag and drop, an upload cancelled halfway that leaves nothing,
/// rename, move, delete (asked first, and a "no" keeps the file), a
/// download compared byte for byte, a snapshot with no change controls, a
/// form posted from another site refused, and a phone's width without
/// sideways scrolling. Screenshots are kept.
#[test]
fn a_browser_uploads_renames_moves_deletes_and_downloads_files() {
    if !browser_tools() {
        return;
    }
    let v = Volume::new();
    v.ok(&["init"]);
    let addr = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    let d = v.serve_with(&[], &["--webdav", &addr]);
    let url = format!("http://{addr}/dav/");
    let dir = v.dir.path();
    sh(
        dir,
        "mkdir up down && head -c 20000000 /dev/urandom > up/photo.jpg \
         && head -c 400000000 /dev/zero > up/huge.bin && printf 'hello\\n' > up/note.txt",
    );
    v.ok(&["mkdir", "/docs"]);
    v.ok(&[
        "put",
        &dir.join("up/note.txt").display().to_string(),
        "/docs/note.txt",
    ]);
    v.ok(&[
        "put",
        &dir.join("up/note.txt").display().to_string(),
        "/readme.txt",
    ]);
    v.ok(&["snapshot", "create", "before"]);
    let up = |n: &str| dir.join("up").join(n).display().to_string();
    let ls = |path: &str| v.ok(&["ls", path]);

    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = browser_saving_to(&driver, Some(&dir.join("down"))).await;
        b.goto(&url).await.unwrap();
        until(&b, "document.body.dataset.writes === 'yes'", "the Files view").await;
        assert_eq!(
            eval(&b, "[...document.querySelectorAll('tbody tr[data-name]')].map(r => r.dataset.name).join(' ')").await,
            json!("docs readme.txt"),
            "folders first"
        );

        // A new folder, then into it by its link.
        type_into(&b, "#mkdir input", "albums").await;
        click(&b, "#mkdir button").await;
        until(&b, "!!document.querySelector('tr.dir[data-name=albums]')", "the new folder").await;
        click(&b, "tr[data-name=albums] td.name a").await;
        until(&b, "document.querySelector('nav.crumbs').innerText === 'volume / albums'", "breadcrumbs").await;

        // Upload by the picker; the progress bar moves (seen across the
        // reload that follows through sessionStorage).
        eval(&b, "(new MutationObserver(() => { const p = document.querySelector('#uploads progress'); \
                  if (p && p.value > 0) sessionStorage.setItem('progress', p.value + '/' + p.max); }) \
                  .observe(document.getElementById('uploads'), {subtree: true, childList: true, attributes: true}), true)").await;
        b.find(fantoccini::Locator::Css("#pick")).await.unwrap().send_keys(&up("photo.jpg")).await.unwrap();
        until(&b, "!!document.querySelector('tr.file[data-name=\"photo.jpg\"]')", "the uploaded photo listed").await;
        let progress = eval(&b, "sessionStorage.getItem('progress')").await;
        assert!(progress.as_str().is_some_and(|p| p.ends_with("/20000000")), "progress: {progress}");

        // Dropped onto the page.
        eval(&b, "(() => { const dt = new DataTransfer(); \
                  dt.items.add(new File(['dropped '.repeat(100000)], 'dropped.txt', {type: 'text/plain'})); \
                  document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); \
                  return true; })()").await;
        until(&b, "!!document.querySelector('tr.file[data-name=\"dropped.txt\"]')", "the dropped file listed").await;
        assert_eq!(v.ok(&["cat", "/albums/dropped.txt"]), "dropped ".repeat(100000));

        // An upload cancelled halfway leaves nothing, not even its hidden file.
        b.find(fantoccini::Locator::Css("#pick")).await.unwrap().send_keys(&up("huge.bin")).await.unwrap();
        until(&b, "(document.querySelector('#uploads progress') || {}).value > 0", "the big upload under way").await;
        click(&b, "#uploads button").await;
        until(&b, "!!document.querySelector('#uploads li.failed')", "the upload cancelled").await;
        let start = Instant::now();
        while ls("/albums").contains("huge") {
            assert!(start.elapsed() < Duration::from_secs(30), "a cancelled upload left {}", ls("/albums"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        b.refresh().await.unwrap();

        // Rename, then move to another folder by a relative path.
        click(&b, "tr[data-name=\"photo.jpg\"] button.mv").await;
        type_into(&b, "tr[data-name=\"photo.jpg\"] input.to", "holiday.jpg").await;
        click(&b, "tr[data-name=\"photo.jpg\"] form button").await;
        until(&b, "!!document.querySelector('tr[data-name=\"holiday.jpg\"]')", "the renamed photo").await;
        click(&b, "tr[data-name=\"holiday.jpg\"] button.mv").await;
        type_into(&b, "tr[data-name=\"holiday.jpg\"] input.to", "../docs/holiday.jpg").await;
        click(&b, "tr[data-name=\"holiday.jpg\"] form button").await;
        until(&b, "!document.querySelector('tr[data-name=\"holiday.jpg\"]')", "the photo moved away").await;
        assert_eq!(ls("/albums"), "dropped.txt\n");

        // Delete asks first: "no" keeps the file, "yes" removes it.
        b.goto(&format!("{url}docs/")).await.unwrap();
        until(&b, "!!document.querySelector('tr[data-name=\"holiday.jpg\"]')", "the moved photo").await;
        click(&b, "tr[data-name=\"note.txt\"] button.rm").await;
        let asked = b.get_alert_text().await.unwrap();
        assert!(asked.contains("Delete note.txt"), "{asked}");
        b.dismiss_alert().await.unwrap();
        click(&b, "tr[data-name=\"note.txt\"] button.rm").await;
        b.accept_alert().await.unwrap();
        until(&b, "!document.querySelector('tr[data-name=\"note.txt\"]')", "the note deleted").await;
        assert_eq!(ls("/docs"), "holiday.jpg\n");

        // Download: the browser's own download, byte for byte.
        click(&b, "tr[data-name=\"holiday.jpg\"] a.get").await;
        let saved = dir.join("down/holiday.jpg");
        let start = Instant::now();
        while std::fs::metadata(&saved).map_or(true, |m| m.len() < 20_000_000) {
            assert!(start.elapsed() < Duration::from_secs(60), "the download never landed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            std::fs::read(&saved).unwrap() == std::fs::read(up("photo.jpg")).unwrap(),
            "the downloaded photo differs from the uploaded one"
        );
        let png = b.screenshot().await.unwrap();
        std::fs::write(artifact("files-1280x800.png"), png).unwrap();

        // A snapshot: listed, no change controls.
        b.goto(&format!("{url}.snapshots/before/docs/")).await.unwrap();
        until(&b, "document.body.dataset.writes === 'no'", "a snapshot read-only").await;
        assert_eq!(eval(&b, "document.querySelectorAll('button').length").await, json!(0));
        assert_eq!(
            eval(&b, "[...document.querySelectorAll('tbody tr[data-name]')].map(r => r.dataset.name).join(' ')").await,
            json!("note.txt")
        );

        // A page of another site posts a form to the gateway: refused.
        let form = format!(
            "data:text/html,<form method=post action='{url}evil.txt'><input name=a value=b></form>\
             <script>document.forms[0].submit()</script>"
        );
        b.goto(&form).await.unwrap();
        until(&b, "document.body.innerText.includes('another site')", "the cross-site POST refused").await;
        assert!(!ls("/").contains("evil"));

        // A phone: no sideways scrolling.
        b.goto(&format!("{url}docs/")).await.unwrap();
        set_width(&b, 390, 844).await;
        until(&b, "!!document.querySelector('tr[data-name=\"holiday.jpg\"]')", "the listing on a phone").await;
        assert_eq!(
            eval(&b, "document.documentElement.scrollWidth <= window.innerWidth").await,
            json!(true),
            "no sideways scrolling at 390 px"
        );
        let png = b.screenshot().await.unwrap();
        std::fs::write(artifact("files-390-phone.png"), png).unwrap();
        b.close().await.unwrap();
    });
    assert!(d.stop(), "serve ends cleanly");
    eprintln!("screenshots: {}", artifact("files-1280x800.png").display());
}

/// `GET http://ADDR/PATH` by curl: its status code, and how long it took.
fn timed_get(addr: &str, path: &str) -> (String, Duration) {
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "30"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        t.elapsed(),
    )
}

/// A scrape asks every storage peer for its figures. With one peer stopped
/// (SIGSTOP: connected, never answering) it held the listener 10 s, and a
/// WebDAV request beside it 9 s. Now the scrape waits 2 s at most, with the
/// figures last gathered, and the listener answers others meanwhile.
#[test]
fn a_stopped_peer_does_not_hold_up_the_listener() {
    let v = Volume::new();
    v.ok(&["init"]);
    let c = Cluster::start(&v, 3);
    let addr = format!("127.0.0.1:{}", fs_tests::free_ports(1));
    let d = v.serve_with(&c.bootstrap_flags(), &["--webdav", &addr]);
    let get = |path: &str| timed_get(&addr, path);
    assert_eq!(get("/metrics").0, "200");
    let pid = c.pid(0).to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let scrape_addr = addr.clone();
    let scrape = std::thread::spawn(move || timed_get(&scrape_addr, "/metrics"));
    std::thread::sleep(Duration::from_millis(300));
    let (code, beside) = get("/dav/");
    let (scraped, took) = scrape.join().unwrap();
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    eprintln!("scrape {took:?} ({scraped}), a WebDAV GET beside it {beside:?} ({code})");
    assert_eq!(scraped, "200");
    assert!(took < Duration::from_secs(5), "the scrape took {took:?}");
    assert!(
        beside < Duration::from_secs(2),
        "a request beside it took {beside:?}"
    );
    drop(d);
}

/// `--metrics` on another address than loopback served the dashboard (peer
/// ids, errors) to the whole network with no login, unasked. Now it needs
/// `--metrics-open`, said on purpose.
#[test]
fn metrics_on_another_address_than_loopback_needs_consent() {
    let v = Volume::new();
    v.ok(&["init"]);
    let port = fs_tests::free_ports(1);
    let any = format!("0.0.0.0:{port}");
    let out = Command::new("timeout")
        .arg("30")
        .arg(fs_tests::datamesh_bin())
        .arg("--home")
        .arg(v.home())
        .args(["serve", "--metrics", &any])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--metrics-open"), "{err}");
    let _d = v.serve_with(&[], &["--metrics", &any, "--metrics-open"]);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}
