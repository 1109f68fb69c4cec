//! Packs as content (issue 14), with real processes: a pack is sent to the server as an archive
//! from a directory that is deleted afterwards; workers with data and working directories of
//! their own fetch it by digest, give it its Python and Node dependencies (installed from local
//! packages these tests build: no network), and run it; executions queued before a reload run
//! the version they were submitted against; archives that try to leave the pack are refused.

mod common;

use std::{path::Path, time::Duration};

use attune_client::Client;
use attune_core::ExecutionStatus;
use attune_testkit::TestDb;
use attune_wire::CreateExecution;
use common::{client, fast_env, server, tokens};
use serde_json::json;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A wheel of package `attune_fixture_dep` (version 1.0) written by hand into `dir`: a wheel is
/// a zip file, so no build backend (and no network) is needed.
fn fixture_wheel(dir: &Path) -> std::path::PathBuf {
    let script = r#"
import base64, hashlib, sys, zipfile
out = sys.argv[1] + "/attune_fixture_dep-1.0-py3-none-any.whl"
files = {
    "attune_fixture_dep/__init__.py": "def shout(s):\n    return s.upper() + '!'\n",
    "attune_fixture_dep-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: attune-fixture-dep\nVersion: 1.0\n",
    "attune_fixture_dep-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: attune-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={h},{len(data)}")
    record.append("attune_fixture_dep-1.0.dist-info/RECORD,,")
    z.writestr("attune_fixture_dep-1.0.dist-info/RECORD", "\n".join(record) + "\n")
print(out)
"#;
    #[allow(clippy::disallowed_methods)] // test fixture: Python builds the wheel
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A pack with a shell, a Python (importing the wheel through its requirements.txt) and a Node
/// action (requiring a local package through its package.json).
fn content_pack(root: &Path, deps: &Path) -> std::path::PathBuf {
    let wheel = fixture_wheel(deps);
    let node_dep = deps.join("fixture-dep");
    write(
        &node_dep.join("package.json"),
        r#"{"name": "fixture-dep", "version": "1.0.0", "main": "index.js"}"#,
    );
    write(&node_dep.join("index.js"), "module.exports = (s) => `${s}?`;\n");
    let p = root.join("content_demo");
    write(&p.join("pack.yaml"), "ref: content_demo\nversion: '1'\n");
    write(&p.join("requirements.txt"), &format!("--no-index\n{}\n", wheel.display()));
    write(
        &p.join("package.json"),
        &format!(
            r#"{{"name": "content-demo", "version": "1.0.0", "dependencies": {{"fixture-dep": "file:{}"}}}}"#,
            node_dep.display()
        ),
    );
    for (name, runtime, file, body) in [
        ("sh", "shell", "sh.sh", "printf '{\"from\": \"shell\", \"cwd\": \"%s\"}' \"$PWD\"\n"),
        (
            "py",
            "python",
            "py.py",
            "import json, sys\nfrom attune_fixture_dep import shout\nprint(json.dumps({\"said\": shout('hi'), \"prefix\": sys.prefix}))\n",
        ),
        (
            "js",
            "node",
            "js.js",
            "const dep = require('fixture-dep');\nconsole.log(JSON.stringify({said: dep('hi'), dir: __dirname}));\n",
        ),
    ] {
        write(
            &p.join(format!("actions/{name}.yaml")),
            &format!("ref: {name}\nruntime: {runtime}\nentry_point: {file}\noutput_format: json\n"),
        );
        write(&p.join("actions").join(file), body);
    }
    p
}

/// `attune worker` with a data directory and a working directory of its own, and label `w`.
fn worker_in(name: &str, url: &str, label: &str, dirs: &Path) -> attune_testkit::Proc {
    let data = dirs.join(format!("{name}-data"));
    let cwd = dirs.join(format!("{name}-cwd"));
    std::fs::create_dir_all(&cwd).unwrap();
    let mut env = fast_env(&[]);
    env.push(("ATTUNE__DATA_DIR".into(), data.display().to_string()));
    env.push(("ATTUNE__WORKER__TOKEN".into(), tokens(url).enroll));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = attune_testkit::Proc::spawn_in(
        name,
        Some(&cwd),
        common::BIN,
        &["--server", url, "worker", "--name", name, "--label", &format!("w={label}")],
        &env,
    );
    w.wait_line(Duration::from_secs(30), |l| l.contains("worker registered").then_some(()));
    w
}

async fn run_on(c: &Client, action: &str, label: Option<&str>) -> attune_core::Execution {
    let req = CreateExecution {
        action_ref: action.into(),
        parameters: Some(json!({})),
        worker_selector: label.map(|l| json!({ "w": l })),
        ..Default::default()
    };
    let e = c.create_execution(&req).await.unwrap();
    let e = c.wait_execution(e.id, false, Duration::from_secs(120)).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{action} on w={label:?}: {e:?}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_sent_as_content_runs_on_workers_that_share_no_directory() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let dirs = tempfile::tempdir().unwrap();
    let deps = tempfile::tempdir().unwrap();
    let source = tempfile::tempdir().unwrap();
    let pack = content_pack(source.path(), deps.path());

    let out = common::cli(&url, &["pack", "load", &pack.display().to_string(), "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let loaded = out.json();
    let digest = loaded["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest.len(), 64, "{loaded}");
    // The same content again: nothing changes.
    let again = common::cli(&url, &["pack", "load", &pack.display().to_string(), "-o", "json"]).json();
    assert_eq!((again["digest"].as_str(), again["unchanged"].as_bool()), (Some(digest.as_str()), Some(true)));
    drop(source); // the pack's directory is gone: only the server has it now

    let _w1 = worker_in("w1", &url, "1", dirs.path());
    let _w2 = worker_in("w2", &url, "2", dirs.path());
    let c = client(&url);
    for w in ["1", "2"] {
        let data = dirs.path().join(format!("w{w}-data"));
        let version = data.join("packs/content_demo").join(&digest);
        let sh = run_on(&c, "content_demo.sh", Some(w)).await;
        assert_eq!(sh.result.as_ref().unwrap()["from"], "shell");
        let cwd = sh.result.as_ref().unwrap()["cwd"].as_str().unwrap().to_owned();
        assert_eq!(Path::new(&cwd).canonicalize().unwrap(), version.join("actions").canonicalize().unwrap());
        assert_eq!(sh.pack_digest.as_deref(), Some(digest.as_str()), "the execution records its version");

        let py = run_on(&c, "content_demo.py", Some(w)).await;
        let r = py.result.unwrap();
        assert_eq!(r["said"], "HI!", "imported from the pack's requirements.txt: {r}");
        let prefix = Path::new(r["prefix"].as_str().unwrap()).canonicalize().unwrap();
        assert_eq!(prefix, version.join(".venv").canonicalize().unwrap(), "the pack's own virtualenv");

        let js = run_on(&c, "content_demo.js", Some(w)).await;
        assert_eq!(js.result.unwrap()["said"], "hi?", "required through the pack's package.json");
    }
    // Shown with its version.
    let show = common::cli(&url, &["pack", "show", "content_demo", "-o", "json"]).json();
    assert_eq!(show["versions"][0]["digest"], digest.as_str(), "{show}");
    assert_eq!(show["versions"][0]["current"], true);
    let list = common::cli(&url, &["pack", "list"]);
    assert!(list.stdout.contains(&digest[..12]), "{}", list.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_queued_before_a_reload_run_the_version_they_were_submitted_against() {
    let db = TestDb::postgres().await;
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let c = client(&url);
    let source = tempfile::tempdir().unwrap();
    let p = source.path().join("versions");
    write(&p.join("pack.yaml"), "ref: versions\n");
    write(&p.join("actions/which.yaml"), "ref: which\nruntime: shell\nentry_point: which.sh\n");
    write(&p.join("actions/which.sh"), "echo old\n");
    let load = || {
        let out = common::cli(&url, &["pack", "load", &p.display().to_string(), "-o", "json"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()["digest"].as_str().unwrap().to_owned()
    };
    let old = load();
    let req = CreateExecution { action_ref: "versions.which".into(), ..Default::default() };
    let mut queued = Vec::new();
    for _ in 0..50 {
        queued.push(c.create_execution(&req).await.unwrap().id);
    }
    write(&p.join("actions/which.sh"), "echo new\n");
    let new = load();
    assert_ne!(old, new, "changed content is a new version");
    let fresh = c.create_execution(&req).await.unwrap().id;

    let dirs = tempfile::tempdir().unwrap();
    let _w = worker_in("w", &url, "1", dirs.path());
    for id in &queued {
        let e = c.wait_execution(*id, false, Duration::from_secs(120)).await.unwrap();
        assert_eq!((e.status, e.stdout.trim()), (ExecutionStatus::Succeeded, "old"), "{e:?}");
        assert_eq!(e.pack_digest.as_deref(), Some(old.as_str()));
    }
    let e = c.wait_execution(fresh, false, Duration::from_secs(60)).await.unwrap();
    assert_eq!((e.status, e.stdout.trim()), (ExecutionStatus::Succeeded, "new"), "{e:?}");
    let versions = c.get_pack("versions").await.unwrap().versions;
    assert_eq!(versions.len(), 2, "both versions kept: {versions:?}");
    assert!(versions.iter().any(|v| v.digest == new && v.current));
    assert!(versions.iter().any(|v| v.digest == old && !v.current));
}

/// Archives made by Python's `tarfile`, which writes whatever it is told.
fn crafted(dir: &Path, name: &str, body: &str) -> Vec<u8> {
    let out = dir.join(name);
    let script = format!(
        "import io, os, tarfile, sys\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
         def add(n, data=b'x', **kw):\n    i = tarfile.TarInfo(n)\n    for k, v in kw.items(): setattr(i, k, v)\n    \
         i.size = len(data) if i.type == tarfile.REGTYPE else 0\n    t.addfile(i, io.BytesIO(data) if i.type == tarfile.REGTYPE else None)\n\
         add('pack.yaml', b'ref: evil\\n')\n{body}\nt.close()\n"
    );
    #[allow(clippy::disallowed_methods)] // test fixture: Python writes the hostile archives
    let o = std::process::Command::new("python3").arg("-c").arg(&script).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_that_leave_the_pack_or_are_too_large_are_refused_and_nothing_is_stored() {
    let db = TestDb::sqlite();
    let (_s, url) =
        server("srv", "127.0.0.1:0", &db.url, &fast_env(&[("ATTUNE__PACKS__MAX_ARCHIVE_BYTES", "65536")]));
    let c = client(&url);
    let dir = tempfile::tempdir().unwrap();
    let before = c.list_packs().await.unwrap();
    let random = "os.urandom(200000)";
    for (name, body, status, names) in [
        ("dotdot", "add('../evil.sh')", 422, "\"../evil.sh\""),
        ("absolute", "add('/etc/evil')", 422, "\"/etc/evil\""),
        (
            "passwd",
            "add('actions/passwd', type=tarfile.SYMTYPE, linkname='/etc/passwd')",
            422,
            "\"actions/passwd\"",
        ),
        ("up", "add('actions/up', type=tarfile.SYMTYPE, linkname='../../x')", 422, "\"actions/up\""),
        ("big", &format!("add('actions/blob', {random})"), 413, "packs.max_archive_bytes"),
    ] {
        let bytes = crafted(dir.path(), name, body);
        let err = c.upload_pack(bytes, true, None).await.expect_err(name);
        assert_eq!(err.status(), Some(status), "{name}: {err}");
        assert!(err.to_string().contains(names), "{name}: the message names the entry: {err}");
    }
    assert_eq!(c.list_packs().await.unwrap(), before, "nothing stored");
    assert_eq!(c.get_pack("evil").await.expect_err("no such pack").status(), Some(404));
    // Over the limit from the CLI too: a clear message and a non-zero exit.
    let p = dir.path().join("heavy");
    write(&p.join("pack.yaml"), "ref: heavy\n");
    #[allow(clippy::disallowed_methods)]
    let o = std::process::Command::new("python3")
        .args(["-c", "import os,sys; open(sys.argv[1],'wb').write(os.urandom(200000))"])
        .arg(p.join("blob.bin"))
        .status()
        .unwrap();
    assert!(o.success());
    let out = common::cli(&url, &["pack", "load", &p.display().to_string()]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("packs.max_archive_bytes"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_install_fails_the_execution_once_per_version_and_a_changed_pack_is_tried_afresh() {
    let db = TestDb::sqlite();
    let (_s, url) = server("srv", "127.0.0.1:0", &db.url, &fast_env(&[]));
    let c = client(&url);
    let source = tempfile::tempdir().unwrap();
    let deps = tempfile::tempdir().unwrap();
    let p = source.path().join("needy");
    write(&p.join("pack.yaml"), "ref: needy\n");
    write(&p.join("actions/go.yaml"), "ref: go\nruntime: python\nentry_point: go.py\n");
    write(&p.join("actions/go.py"), "import attune_fixture_dep\nprint(attune_fixture_dep.shout('ok'))\n");
    let missing = deps.path().join("attune_fixture_dep-1.0-py3-none-any.whl");
    write(&p.join("requirements.txt"), &format!("--no-index\n{}\n", missing.display()));
    let load = || {
        let out = common::cli(&url, &["pack", "load", &p.display().to_string()]);
        assert_eq!(out.code, 0, "{out:?}");
    };
    load();
    let dirs = tempfile::tempdir().unwrap();
    let w = worker_in("w", &url, "1", dirs.path());
    let req = CreateExecution { action_ref: "needy.go".into(), ..Default::default() };
    let mut errors = Vec::new();
    for _ in 0..2 {
        let e = c.create_execution(&req).await.unwrap();
        let e = c.wait_execution(e.id, false, Duration::from_secs(120)).await.unwrap();
        assert_eq!(e.status, ExecutionStatus::Failed, "{e:?}");
        let err = e.error.unwrap();
        assert_eq!(err["worker_error"], "pack_dependencies_failed", "{err}");
        assert!(err["error"].as_str().unwrap().contains("pip install"), "pip's command and message: {err}");
        errors.push(err);
    }
    assert_eq!(errors[0], errors[1], "the same failure, answered without installing again");
    let installs = w.output().matches("installing the dependencies of pack needy").count();
    assert_eq!(installs, 1, "one install attempt for the version: {}", w.output());
    // The dependency fixed: a new version, installed afresh, runs.
    fixture_wheel(deps.path());
    write(&p.join("requirements.txt"), &format!("--no-index\n{}\n\n", missing.display()));
    load();
    let e = c.create_execution(&req).await.unwrap();
    let e = c.wait_execution(e.id, false, Duration::from_secs(120)).await.unwrap();
    assert_eq!((e.status, e.stdout.trim()), (ExecutionStatus::Succeeded, "OK!"), "{e:?}");
}
