//! `delay-proxy TARGET ONE_WAY_MS`: forwards connections on a free loopback
//! port (printed on the first line) to TARGET, holding every byte ONE_WAY_MS
//! each way, until killed. See `fs_tests::proxy`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(ms)) = (
        args.get(1).and_then(|a| a.parse().ok()),
        args.get(2).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: delay-proxy TARGET_ADDR ONE_WAY_MS");
        std::process::exit(2);
    };
    let p = fs_tests::proxy::DelayProxy::start(target, std::time::Duration::from_millis(ms));
    println!("{}", p.port);
    loop {
        std::thread::park();
    }
}
