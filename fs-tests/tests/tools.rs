//! Everyday tools on the mountpoint: the tools' own checks and a comparison with
//! the source decide, not datamesh's view of itself.

use fs_tests::{Volume, require, sh};

#[test]
fn rsync_twice_transfers_nothing_the_second_time_and_inplace_updates() {
    require!("rsync");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "rsync -a /usr/share/doc/ doc/ && diff -r --no-dereference /usr/share/doc doc",
    );
    let second = sh(&m.at, "rsync -a --stats /usr/share/doc/ doc/");
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "second rsync transferred files:\n{second}"
    );
    // --inplace rewrites the changed blocks of the existing file.
    sh(
        &m.at,
        "head -c 5000000 /dev/urandom > ../src && rsync ../src inplace \
         && printf 'changed' | dd of=../src bs=1 seek=3000000 conv=notrunc status=none \
         && rsync -I --inplace --no-whole-file ../src inplace && cmp ../src inplace",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn tar_round_trip_keeps_xattrs_links_and_modes() {
    require!("tar", "setfattr", "getfattr");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "mkdir -p src/sub && head -c 300000 /dev/urandom > src/sub/data \
         && echo text > src/t && chmod 640 src/t && ln src/t src/hard && ln -s sub/data src/sym \
         && setfattr -n user.colour -v blue src/t \
         && tar --xattrs -cf archive.tar src \
         && mkdir out && tar --xattrs --xattrs-include='*' -xf archive.tar -C out \
         && diff -r --no-dereference src out/src \
         && test \"$(getfattr --only-values -n user.colour out/src/t)\" = blue \
         && test \"$(stat -c %a out/src/t)\" = 640 \
         && test \"$(stat -c %h out/src/t)\" = 2 \
         && test \"$(readlink out/src/sym)\" = sub/data",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn git_init_commit_clone_fsck_gc() {
    require!("git");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@e GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@e \
         && git init -q repo && cd repo && cp -r /usr/share/doc/bash . && git add -A \
         && git commit -qm one && echo more >> bash/copyright && git commit -qam two \
         && cd .. && git clone -q repo clone && cd clone && git fsck --strict \
         && git gc -q && git fsck && test \"$(git log --oneline | wc -l)\" = 2 \
         && diff -r --no-dereference --exclude=.git ../repo .",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn vim_edits_and_saves_a_file() {
    require!("vim");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "printf 'one\\ntwo\\nthree\\n' > notes.txt \
         && vim -es -u NONE -c '%s/two/TWO/' -c 'wq' notes.txt \
         && test \"$(sed -n 2p notes.txt)\" = TWO && test \"$(wc -l < notes.txt)\" = 3",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn sqlite_thousands_of_transactions_pass_integrity_check() {
    require!("sqlite3");
    let v = Volume::new();
    let m = v.mount();
    // Each INSERT is its own transaction: a journal created, synced and deleted.
    sh(
        &m.at,
        "sqlite3 db.sqlite 'CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT)' \
         && seq 1 3000 | sed \"s/.*/INSERT INTO t(v) VALUES(hex(randomblob(64)));/\" | sqlite3 db.sqlite \
         && test \"$(sqlite3 db.sqlite 'PRAGMA integrity_check')\" = ok \
         && test \"$(sqlite3 db.sqlite 'SELECT count(*) FROM t')\" = 3000",
    );
    assert!(m.unmount());
    let m = v.mount();
    sh(
        &m.at,
        "test \"$(sqlite3 db.sqlite 'PRAGMA integrity_check')\" = ok \
         && test \"$(sqlite3 db.sqlite 'SELECT count(*) FROM t')\" = 3000",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn restic_backup_check_read_data_and_restore() {
    require!("restic");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "export RESTIC_PASSWORD=secret RESTIC_REPOSITORY=repo RESTIC_CACHE_DIR=../cache \
         && restic init -q && restic backup -q /usr/share/doc/bash /usr/share/doc/git \
         && restic check -q --read-data && restic restore -q latest --target ../restored \
         && diff -r --no-dereference /usr/share/doc/bash ../restored/usr/share/doc/bash \
         && diff -r --no-dereference /usr/share/doc/git ../restored/usr/share/doc/git",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn borg_init_create_check() {
    require!("borg");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "export BORG_BASE_DIR=../borg-base BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
         && borg init -e none repo && borg create repo::one /usr/share/doc/bash \
         && borg check --verify-data repo \
         && mkdir ../x && cd ../x && borg extract ../mnt/repo::one \
         && diff -r --no-dereference /usr/share/doc/bash usr/share/doc/bash",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn links_xattrs_modes_owners_and_times() {
    require!("setfattr", "getfattr");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "echo shared > a && ln a b && test \"$(stat -c %h a)\" = 2 \
         && echo more >> b && test \"$(cat a)\" = \"$(printf 'shared\\nmore')\" \
         && rm a && test \"$(stat -c %h b)\" = 1 \
         && ln -s b s && test \"$(readlink s)\" = b && test \"$(cat s)\" = \"$(cat b)\" \
         && ln -s dangling d && test -L d && ! test -e d \
         && setfattr -n user.k -v v1 b && setfattr -n user.k2 -v v2 b \
         && test \"$(getfattr --only-values -n user.k b)\" = v1 \
         && getfattr -d b | grep -q 'user.k2=\"v2\"' \
         && setfattr -x user.k b && ! getfattr -n user.k b 2>/dev/null \
         && chmod 4751 b && chown 1234:5678 b && test \"$(stat -c %u:%g:%a b)\" = 1234:5678:751 \
         && chmod 4751 b && test \"$(stat -c %a b)\" = 4751 \
         && touch -d '2001-02-03 04:05:06.789' b \
         && test \"$(stat -c %y b)\" = '2001-02-03 04:05:06.789000000 +0000' \
         && mkfifo p && test -p p \
         && mkdir shared && chgrp 4321 shared && chmod 2775 shared \
         && mkdir shared/sub && touch shared/f && ln -s f shared/l \
         && test \"$(stat -c %g:%a shared/sub)\" = 4321:2755 \
         && test \"$(stat -c %g shared/f)\" = 4321",
    );
    assert!(m.unmount());
    // Everything above survives a remount.
    let m = v.mount();
    sh(
        &m.at,
        "test \"$(stat -c %a:%u:%g:%h b)\" = 4751:1234:5678:1 \
         && test \"$(stat -c %y b)\" = '2001-02-03 04:05:06.789000000 +0000' \
         && test \"$(getfattr --only-values -n user.k2 b)\" = v2 && test -p p && test -L d",
    );
    drop(m);
    v.assert_fsck_clean();
}

#[test]
fn rename_over_files_and_directories() {
    require!();
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "echo old > f && echo new > g && mv g f && test \"$(cat f)\" = new && ! test -e g \
         && mkdir -p d/x e && mv e d/x && test -d d/x/e \
         && mkdir full empty && touch full/x && ! mv -T empty full 2>../err \
         && grep -q 'Directory not empty' ../err && mv -T full empty && test -e empty/x",
    );
}

/// A 5 GiB file streamed in and read back: the mount's memory stays bounded.
#[test]
fn five_gib_file_round_trip_with_bounded_rss() {
    require!("b3sum");
    let v = Volume::new();
    let m = v.mount();
    // 80 copies of a 64 MiB + 4097 B random block: every chunk differs (no dedupe)
    // without generating 5 GiB of randomness.
    let out = sh(
        &m.at,
        "head -c $((64 * 1048576 + 4097)) /dev/urandom > ../block \
         && for i in $(seq 80); do cat ../block; done | tee big | b3sum --no-names \
         && b3sum --no-names big && stat -c %s big",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0], lines[1],
        "read back differs from what was written"
    );
    assert_eq!(lines[2], (80 * (64 * 1048576u64 + 4097)).to_string());
    let rss = m.peak_rss_kib();
    eprintln!("peak RSS of the mount: {} MiB", rss / 1024);
    assert!(
        rss < 400 * 1024,
        "mount peak RSS {} MiB ≥ 400 MiB",
        rss / 1024
    );
}

#[test]
fn fallocate_and_punch_hole_match_the_local_disk() {
    require!("fallocate");
    let v = Volume::new();
    let m = v.mount();
    // The same steps on the mount and on the local disk beside it, then compared.
    let steps = "cp ../src f \
         && fallocate -l 5000000 f && fallocate -n -o 0 -l 9000000 f \
         && fallocate -p -o 100000 -l 2100000 f && fallocate -p -o 4000000 -l 99999999 f \
         && stat -c %s f";
    let local = v.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    sh(v.dir.path(), "head -c 3000000 /dev/urandom > src");
    let (a, b) = (sh(&m.at, steps), sh(&local, steps));
    assert_eq!(a, b, "sizes differ");
    assert_eq!(a.trim(), "5000000");
    sh(&m.at, "cmp f ../local/f");
}

/// Locks are kept by the kernel for this mount (datamesh does not take them over):
/// flock(2) and fcntl locks exclude each other between processes on this host.
#[test]
fn flock_excludes_a_second_locker() {
    require!("flock");
    let v = Volume::new();
    let m = v.mount();
    sh(
        &m.at,
        "touch lk && flock lk sleep 2 & sleep 0.5; \
         if flock -n lk true; then echo 'second lock taken' >&2; exit 1; fi; \
         wait && flock -n lk true",
    );
}
