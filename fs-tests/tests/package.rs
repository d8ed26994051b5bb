//! The Debian package, built and installed on this machine as a user would:
//! `scripts/package-deb.sh`, `apt install ./datamesh_….deb`, its man pages
//! and completions, a mount through an fstab line, and a clean removal.

use fs_tests::{Volume, require};
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn the_debian_package_installs_mounts_through_fstab_and_removes_cleanly() {
    require!("cargo-deb", "apt-get", "man");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: installing a package needs root");
        return;
    }
    let script = fs_tests::repo().join("scripts/package-deb.sh");
    let built = run(Command::new(script).env("DATAMESH_BIN", fs_tests::datamesh_bin()));
    let deb = built.lines().last().unwrap().trim().to_string();
    assert!(deb.ends_with(".deb"), "{built}");
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    let installed = || {
        assert!(run(Command::new("/usr/bin/datamesh").arg("--version")).contains("datamesh"));
        let page = run(Command::new("man").args(["-P", "cat", "datamesh"]));
        assert!(
            page.contains("SYNOPSIS") && page.contains("mount"),
            "{page}"
        );
        let page = run(Command::new("man").args(["-P", "cat", "datamesh-mount"]));
        assert!(page.contains("--entry-ttl"), "{page}");
        let complete = run(Command::new("bash")
            .arg("-c")
            .arg(". /usr/share/bash-completion/completions/datamesh && complete -p datamesh"));
        assert!(complete.contains("datamesh"), "{complete}");
        for f in [
            "/sbin/mount.datamesh",
            "/lib/systemd/system/datamesh-serve.service",
            "/usr/share/zsh/vendor-completions/_datamesh",
        ] {
            assert!(std::path::Path::new(f).exists(), "{f} is not installed");
        }
        // An fstab line (in a file of its own, not the machine's) and `mount`.
        let v = Volume::new();
        v.ok(&["put", "/etc/hostname", "/h"]);
        let fstab = v.dir.path().join("fstab");
        std::fs::write(
            &fstab,
            format!(
                "{} {} datamesh defaults,_netdev,attr_ttl=2 0 0\n",
                v.home().display(),
                v.mountpoint().display()
            ),
        )
        .unwrap();
        std::fs::create_dir_all(v.mountpoint()).unwrap();
        run(Command::new("mount")
            .arg("-T")
            .arg(&fstab)
            .arg(v.mountpoint()));
        let read = std::fs::read(v.mountpoint().join("h"));
        let written = std::fs::write(v.mountpoint().join("new"), "through fstab\n");
        run(Command::new("/usr/bin/datamesh")
            .arg("--home")
            .arg(v.home())
            .arg("umount")
            .arg(v.mountpoint()));
        assert_eq!(read.unwrap(), std::fs::read("/etc/hostname").unwrap());
        written.unwrap();
        assert_eq!(v.ok(&["cat", "/new"]), "through fstab\n");
    };
    let res = std::panic::catch_unwind(installed);
    // Removed whatever happened above.
    run(Command::new("apt-get")
        .args(["remove", "-y", "-qq", "--purge", "datamesh"])
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
    for f in [
        "/usr/bin/datamesh",
        "/sbin/mount.datamesh",
        "/usr/share/man/man1/datamesh.1",
    ] {
        assert!(
            !std::path::Path::new(f).exists(),
            "{f} is left after removal"
        );
    }
    let status = Command::new("dpkg")
        .args(["-s", "datamesh"])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "the package is still known to dpkg"
    );
}
