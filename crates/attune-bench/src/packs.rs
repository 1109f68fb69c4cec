//! Packs as content (issue 14): the first run of a Python action whose pack has a
//! `requirements.txt`, on a worker that has never seen the pack (fetch by digest, unpack,
//! virtualenv, pip install from a wheel inside the pack: no network), then warm runs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use attune_core::ExecutionStatus;
use attune_wire::CreateExecution;

use crate::{cluster::Cluster, workloads::summary};

/// A pack `benchpy`: one Python action importing `attune_bench_dep`, a wheel the pack carries
/// (written here with Python's zipfile: a wheel is a zip, no build backend needed).
pub fn write_pack(dir: &std::path::Path) -> anyhow::Result<()> {
    let pack = dir.join("benchpy");
    std::fs::create_dir_all(pack.join("actions"))?;
    std::fs::create_dir_all(pack.join("wheels"))?;
    std::fs::write(pack.join("pack.yaml"), "ref: benchpy\ndescription: a pack with a dependency\n")?;
    std::fs::write(pack.join("actions/hello.yaml"), "ref: hello\nruntime: python\nentry_point: hello.py\n")?;
    std::fs::write(
        pack.join("actions/hello.py"),
        "import attune_bench_dep\nprint(attune_bench_dep.VALUE)\n",
    )?;
    std::fs::write(
        pack.join("requirements.txt"),
        "--no-index\n./wheels/attune_bench_dep-1.0-py3-none-any.whl\n",
    )?;
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "attune_bench_dep/__init__.py": "VALUE = 'ok'\n",
    "attune_bench_dep-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: attune-bench-dep\nVersion: 1.0\n",
    "attune_bench_dep-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: attune-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), text)
        h = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={h},{len(text.encode())}")
    record.append("attune_bench_dep-1.0.dist-info/RECORD,,")
    z.writestr(zipfile.ZipInfo("attune_bench_dep-1.0.dist-info/RECORD", (1980, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
"#;
    let wheel = pack.join("wheels/attune_bench_dep-1.0-py3-none-any.whl");
    #[allow(clippy::disallowed_methods)] // Python writes the wheel; not an action
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&wheel).output()?;
    if !out.status.success() {
        bail!("could not write the benchmark's wheel: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The cold run (submit → succeeded on a fresh worker), then `warm` runs one at a time:
/// (cold ms, warm p50/p95/p99 ms).
pub async fn run(c: &mut Cluster, concurrency: u32, warm: usize) -> anyhow::Result<(f64, [f64; 3])> {
    c.add_workers(1, concurrency).await?;
    let req = CreateExecution { action_ref: "benchpy.hello".into(), ..Default::default() };
    let once = || async {
        let t0 = Instant::now();
        let e = c.client.create_execution(&req).await?;
        let done = c.client.wait_execution(e.id, false, Duration::from_secs(300)).await?;
        if done.status != ExecutionStatus::Succeeded || done.stdout.trim() != "ok" {
            bail!("benchpy.hello ended {}: {:?} {}", done.status, done.error, done.stderr);
        }
        Ok::<f64, anyhow::Error>(t0.elapsed().as_secs_f64() * 1000.0)
    };
    let cold = once().await.context("the cold run")?;
    let mut ms = Vec::with_capacity(warm);
    for _ in 0..warm {
        ms.push(once().await?);
    }
    Ok((cold, summary(ms)))
}
