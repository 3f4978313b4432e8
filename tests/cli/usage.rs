//! Using the binary: bad input is one line and exit 2, `--help` is complete, and a
//! closed stdout ends a command quietly.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::{binary, check_ok, code, command, run_with_input, stderr, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("bad.redb").display());
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "backend = \"etcd\"\nendpointz = [\"x:1\"]\n").expect("write");
    let bad_config = bad_config.to_str().expect("utf8").to_owned();
    let u = Some(url.as_str());
    let table: &[(Option<&str>, &[&str], &str)] = &[
        (u, &["frobnicate"], "unrecognized subcommand"),
        (u, &[], "missing a command"),
        (u, &["get"], "<KEY>"),
        (u, &["put"], "<KEY>"),
        (u, &["put", "k", "v", "--ttl"], "--ttl"),
        (
            u,
            &["put", "k", "v", "--ttl", "3parsecs"],
            "invalid duration",
        ),
        (u, &["put", "k", "v", "--ttl", "-5s"], "-5"),
        (u, &["put", "k", "v", "--if-index", "abc"], "--if-index"),
        (
            u,
            &["put", "k", "v", "--create", "--if-index", "1"],
            "cannot be used with",
        ),
        (
            u,
            &["rm", "-r", "k", "--if-index", "1"],
            "cannot be used with",
        ),
        (u, &["get", "a/../b"], "invalid key"),
        (u, &["put", "a\u{1}b", "v"], "invalid key"),
        (u, &["get", ""], "invalid key"),
        (u, &["rm", "-r", ""], "invalid key"),
        (u, &["ls", "a/./b"], "invalid key"),
        (u, &["lock", "k"], "COMMAND"),
        (
            u,
            &["lock", "k", "--grace", "soon", "--", "true"],
            "--grace",
        ),
        (u, &["elect", "e", "--", "true"], "<ID>"),
        (u, &["import", "--concurrency", "0"], "--concurrency"),
        (Some("foo://x"), &["get", "k"], "foo"),
        (Some("etcd://"), &["get", "k"], ""),
        (Some("not a url"), &["get", "k"], ""),
        (Some("memory://"), &["ls"], "memory://"),
        (None, &["get", "k"], "no store given"),
        (
            None,
            &["--config", "/nonexistent/kvkit.toml", "get", "k"],
            "cannot read",
        ),
        (None, &["--config", &bad_config, "get", "k"], "endpointz"),
        (None, &["copy", "bogus://", &url], "bogus"),
        (u, &["import"], "line 1"),
    ];
    for (store, args, needle) in table {
        let input: &[u8] = if args == &["import"] {
            b"not json\n"
        } else {
            b""
        };
        let output = run_with_input(*store, args, input);
        let err = stderr(&output);
        assert_eq!(code(&output), 2, "kvkit {store:?} {args:?}: {err}");
        assert!(
            err.contains(needle),
            "kvkit {store:?} {args:?}: {err:?} lacks {needle:?}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "kvkit {store:?} {args:?}: not one line: {err:?}"
        );
        assert!(lines[0].starts_with("kvkit: "), "{err:?}");
        assert!(output.stdout.is_empty(), "{:?}", stdout(&output));
    }
}

#[test]
fn help_is_complete() {
    let help = command(None, &["--help"])
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(help).expect("utf8");
    for needle in [
        "get",
        "put",
        "rm",
        "ls",
        "exists",
        "watch",
        "lock",
        "elect",
        "leader",
        "export",
        "import",
        "copy",
        "--store",
        "--config",
        "KVKIT_STORE",
        "Exit status",
        "etcd://",
        "zk://",
        "consul://",
        "redb://",
        "memory://",
        "6  `lock`",
    ] {
        assert!(
            help.contains(needle),
            "kvkit --help lacks {needle:?}:\n{help}"
        );
    }
    for (sub, needles) in [
        ("get", &["--json", "raw" as &str][..]),
        ("put", &["--ttl", "--create", "--if-index", "stdin"]),
        ("rm", &["-r", "--if-index"]),
        ("ls", &["-l", "--json"]),
        ("exists", &["--json"]),
        ("watch", &["-r", "--json"]),
        (
            "lock",
            &[
                "--grace", "--ttl", "--try", "SIGTERM", "SIGKILL", "status 6",
            ],
        ),
        ("elect", &["--grace", "<ID>", "status 6"]),
        ("leader", &["--json"]),
        ("export", &["JSON lines", "base64", "ttl"]),
        ("import", &["--dry-run", "stdin"]),
        ("copy", &["SRC_URL", "DST_URL", "--concurrency", "report"]),
    ] {
        let output = command(None, &[sub, "--help"])
            .assert()
            .code(0)
            .get_output()
            .stdout
            .clone();
        let text = String::from_utf8(output).expect("utf8");
        for needle in needles {
            assert!(
                text.contains(needle),
                "kvkit {sub} --help lacks {needle:?}:\n{text}"
            );
        }
    }
    command(None, &["--version"]).assert().code(0);
}

/// `kvkit export | head -1`: the closed pipe ends the command quietly, with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("redb://{}", dir.path().join("data.redb").display());
    // Far more output than a pipe buffers (64 KiB on Linux).
    let value = "v".repeat(200);
    let input: String = (0..2000)
        .map(|i| format!("{{\"key\":\"k{i:05}\",\"value\":\"{value}\"}}\n"))
        .collect();
    check_ok(&run_with_input(Some(&url), &["import"], input.as_bytes()));
    let mut child = std::process::Command::new(binary())
        .env_remove("KVKIT_STORE")
        .args(["--store", &url, "export"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvkit");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read a line");
    assert!(first.contains("k00000"), "{first}");
    // The reader is gone now: the next writes fail with EPIPE.
    let output = tokio::task::block_in_place(|| child.wait_with_output()).expect("wait");
    assert_eq!(code(&output), 0, "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "");
}
